//! A simulated Kubernetes control plane and node, for the Kubernetes runner's tests.
//!
//! [`MockKube`] is an API server (HTTP/1.1 on loopback) that stores Jobs, Pods and Secrets in
//! namespaces and serves what zwarm uses: create/get/list/delete, label selectors, `watch=true`
//! streams (from a resource version, replaying what happened since), pod logs with
//! `follow=true`, and a Job controller that makes each Job's pod. Deleting a Job with
//! `propagationPolicy=Foreground` marks it and its pods deleting; the node stops the pods, then
//! they and the Job go (as on a cluster).
//!
//! [`Node`] is a kubelet in the test process: it takes each new pod, schedules it when its
//! `nodeSelector` matches the node's labels (else `PodScheduled=False`, `Unschedulable`), pulls
//! its image when the node has it (else `ErrImagePull`), resolves its environment (`value`,
//! `secretKeyRef`, `envFrom` of Secrets; a missing Secret is `CreateContainerConfigError`),
//! runs its container's command as a local process in its own process group (a private root dir
//! in `ZWARM_POD_ROOT`, the termination message file in `ZWARM_TERMINATION_LOG`), appends its
//! stdout and stderr to the pod's log, and reports `Running`, then `terminated` with the exit code
//! and message. Every request is counted ([`MockKube::requests`]).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

type Body = BoxBody<Bytes, Infallible>;
type Key = (String, String, String); // kind, namespace, name

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change: (resource version, kind, namespace, event type, object).
    history: Vec<(u64, String, String, &'static str, Value)>,
    logs: HashMap<(String, String), (Vec<u8>, bool)>,
    requests: Vec<(String, String)>,
}

struct Inner {
    st: Mutex<Store>,
    generation: watch::Sender<u64>,
}

impl Inner {
    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Store `obj` (new or changed) and record the event.
    fn put(&self, kind: &str, obj: Value) -> Value {
        let mut obj = obj;
        {
            let mut st = self.st.lock().unwrap();
            st.rv += 1;
            let rv = st.rv;
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            let name = obj["metadata"]["name"].as_str().unwrap().to_string();
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            obj["metadata"]["namespace"] = json!(ns);
            let key = (kind.to_string(), ns.clone(), name);
            let ty = if st.objects.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            st.objects.insert(key, obj.clone());
            st.history.push((rv, kind.into(), ns, ty, obj.clone()));
        }
        self.bump();
        obj
    }

    fn remove(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let out = {
            let mut st = self.st.lock().unwrap();
            let mut obj = st.objects.remove(&(kind.into(), ns.into(), name.into()))?;
            st.rv += 1;
            let rv = st.rv;
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            st.history
                .push((rv, kind.into(), ns.into(), "DELETED", obj.clone()));
            obj
        };
        self.bump();
        Some(out)
    }

    fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.st
            .lock()
            .unwrap()
            .objects
            .get(&(kind.into(), ns.into(), name.into()))
            .cloned()
    }

    fn list(&self, kind: &str, ns: Option<&str>, sel: &[(String, String)]) -> Vec<Value> {
        self.st
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|((k, n, _), o)| k == kind && ns.is_none_or(|ns| ns == n) && matches(o, sel))
            .map(|(_, o)| o.clone())
            .collect()
    }

    fn update(&self, kind: &str, ns: &str, name: &str, f: impl FnOnce(&mut Value)) -> bool {
        let Some(mut o) = self.get(kind, ns, name) else {
            return false;
        };
        f(&mut o);
        self.put(kind, o);
        true
    }

    fn append_log(&self, ns: &str, pod: &str, bytes: &[u8], done: bool) {
        {
            let mut st = self.st.lock().unwrap();
            let e = st.logs.entry((ns.into(), pod.into())).or_default();
            e.0.extend_from_slice(bytes);
            e.1 |= done;
        }
        self.bump();
    }

    /// Remove a pod; a Job deleted in the foreground goes with its last pod.
    fn remove_pod(&self, ns: &str, name: &str) {
        let Some(pod) = self.remove("pods", ns, name) else {
            return;
        };
        let job = pod["metadata"]["labels"]["job-name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(j) = self.get("jobs", ns, &job)
            && j["metadata"]["deletionTimestamp"].is_string()
            && self
                .list("pods", Some(ns), &[("job-name".into(), job.clone())])
                .is_empty()
        {
            self.remove("jobs", ns, &job);
        }
    }
}

fn matches(o: &Value, sel: &[(String, String)]) -> bool {
    sel.iter()
        .all(|(k, v)| o["metadata"]["labels"][k.as_str()].as_str() == Some(v.as_str()))
}

fn parse_selector(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(target: &str) -> HashMap<String, String> {
    target
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect()
}

fn json_response(code: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

fn status(code: StatusCode, msg: &str) -> Response<Body> {
    json_response(
        code,
        json!({"kind": "Status", "status": "Failure", "message": msg, "code": code.as_u16()}),
    )
}

fn stream_response(rx: tokio::sync::mpsc::UnboundedReceiver<Bytes>) -> Response<Body> {
    let s = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    let body = StreamBody::new(s.map(|b| Ok::<_, Infallible>(Frame::data(b))));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .unwrap()
}

/// The simulated API server.
pub struct MockKube {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
    rt: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl MockKube {
    pub fn start() -> MockKube {
        let inner = Arc::new(Inner {
            st: Mutex::new(Store::default()),
            generation: watch::channel(0).0,
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        // Its own runtime on its own thread: usable from sync and async tests alike.
        let (htx, hrx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let i = inner.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            htx.send(rt.handle().clone()).unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let serve = async move {
                    loop {
                        let Ok((sock, _)) = listener.accept().await else {
                            continue;
                        };
                        let _ = sock.set_nodelay(true);
                        let i = i.clone();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let i = i.clone();
                                async move { Ok::<_, Infallible>(handle(i, req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {},
                    _ = stopped => {},
                }
            });
            rt.shutdown_background();
        });
        let rt = hrx.recv().unwrap();
        MockKube {
            inner,
            addr,
            rt,
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (JSON) pointing at this server, context `mock`, namespace `ns`.
    pub fn kubeconfig(&self, ns: &str) -> String {
        json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "mock",
            "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "mock", "namespace": ns}}],
            "clusters": [{"name": "mock", "cluster": {"server": self.url()}}],
            "users": [{"name": "mock", "user": {}}],
        })
        .to_string()
    }

    /// A Secret with these keys (`stringData`).
    pub fn put_secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        let d: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        self.inner.put(
            "secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "stringData": d}),
        );
    }

    pub fn jobs(&self, ns: &str) -> Vec<Value> {
        self.inner.list("jobs", Some(ns), &[])
    }

    pub fn pods(&self, ns: &str) -> Vec<Value> {
        self.inner.list("pods", Some(ns), &[])
    }

    /// Every request so far: (method, target).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.inner.st.lock().unwrap().requests.clone()
    }

    /// Remove a Job and its pods at once, as a cluster that lost them (no termination).
    pub fn lose_job(&self, ns: &str, name: &str) {
        for p in self
            .inner
            .list("pods", Some(ns), &[("job-name".into(), name.into())])
        {
            let pn = p["metadata"]["name"].as_str().unwrap().to_string();
            self.inner.remove("pods", ns, &pn);
        }
        self.inner.remove("jobs", ns, name);
    }

    /// Wait (without polling) until `f` holds for the store, or panic after `limit`.
    pub async fn until(
        &self,
        limit: std::time::Duration,
        what: &str,
        f: impl Fn(&MockKube) -> bool,
    ) {
        let mut rx = self.inner.generation.subscribe();
        let fut = async {
            loop {
                if f(self) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(limit, fut).await.is_err() {
            panic!(
                "{what}: not within {limit:?}; jobs {:?}",
                self.jobs("agents")
            );
        }
    }

    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }
}

async fn handle(i: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let target = req.uri().to_string();
    i.st.lock()
        .unwrap()
        .requests
        .push((method.to_string(), target.clone()));
    let q = query(&target);
    let path = target.split('?').next().unwrap_or("").to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // [api, v1, namespaces, ns, kind, (name, (log))] or [apis, batch, v1, namespaces, ns, kind, …]
    let rest: &[&str] = match parts.as_slice() {
        ["api", "v1", "namespaces", rest @ ..] => rest,
        ["apis", "batch", "v1", "namespaces", rest @ ..] => rest,
        _ => return status(StatusCode::NOT_FOUND, "unknown path"),
    };
    let sel = q
        .get("labelSelector")
        .map(|s| parse_selector(s))
        .unwrap_or_default();
    match (method, rest) {
        (Method::GET, [ns, kind]) if q.get("watch").map(String::as_str) == Some("true") => {
            let since: u64 = q
                .get("resourceVersion")
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            watch_stream(i, ns.to_string(), kind.to_string(), sel, since)
        }
        (Method::GET, [ns, kind]) => {
            let items = i.list(kind, Some(ns), &sel);
            let rv = i.st.lock().unwrap().rv;
            let limit: usize = q
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(usize::MAX);
            let items: Vec<Value> = items.into_iter().take(limit).collect();
            json_response(
                StatusCode::OK,
                json!({"kind": "List", "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
            )
        }
        (Method::POST, [ns, kind]) => {
            let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "not JSON");
            };
            obj["metadata"]["namespace"] = json!(ns);
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if name.is_empty() || i.get(kind, ns, &name).is_some() {
                return status(StatusCode::CONFLICT, "already exists or no name");
            }
            obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
            let stored = i.put(kind, obj);
            if *kind == "jobs" {
                make_pod(&i, &stored);
            }
            json_response(StatusCode::CREATED, stored)
        }
        (Method::GET, [ns, kind, name]) => match i.get(kind, ns, name) {
            Some(o) => json_response(StatusCode::OK, o),
            None => status(
                StatusCode::NOT_FOUND,
                &format!("{kind} \"{name}\" not found"),
            ),
        },
        (Method::DELETE, [ns, "jobs", name]) => {
            let Some(job) = i.get("jobs", ns, name) else {
                return status(StatusCode::NOT_FOUND, &format!("jobs \"{name}\" not found"));
            };
            let foreground = q.get("propagationPolicy").map(String::as_str) == Some("Foreground");
            let pods = i.list("pods", Some(ns), &[("job-name".into(), name.to_string())]);
            for p in &pods {
                let pn = p["metadata"]["name"].as_str().unwrap();
                i.update("pods", ns, pn, |p| {
                    p["metadata"]["deletionTimestamp"] = json!("now")
                });
            }
            if foreground && !pods.is_empty() {
                i.update("jobs", ns, name, |j| {
                    j["metadata"]["deletionTimestamp"] = json!("now")
                });
            } else {
                i.remove("jobs", ns, name);
            }
            json_response(StatusCode::OK, job)
        }
        (Method::DELETE, [ns, "pods", name]) => {
            if !i.update("pods", ns, name, |p| {
                p["metadata"]["deletionTimestamp"] = json!("now")
            }) {
                return status(StatusCode::NOT_FOUND, "not found");
            }
            json_response(StatusCode::OK, json!({}))
        }
        (Method::GET, [ns, "pods", name, "log"]) => {
            let follow = q.get("follow").map(String::as_str) == Some("true");
            log_stream(i, ns.to_string(), name.to_string(), follow)
        }
        _ => status(StatusCode::NOT_FOUND, "unknown path"),
    }
}

/// The Job controller: one pod per Job, from its template.
fn make_pod(i: &Inner, job: &Value) {
    let ns = job["metadata"]["namespace"].as_str().unwrap();
    let jn = job["metadata"]["name"].as_str().unwrap();
    let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels["job-name"] = json!(jn);
    labels["controller-uid"] = job["metadata"]["uid"].clone();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..5];
    i.put(
        "pods",
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{jn}-{suffix}"), "namespace": ns, "labels": labels,
                "ownerReferences": [{"kind": "Job", "name": jn, "uid": job["metadata"]["uid"]}]},
            "spec": job["spec"]["template"]["spec"],
            "status": {"phase": "Pending"},
        }),
    );
}

fn watch_stream(
    i: Arc<Inner>,
    ns: String,
    kind: String,
    sel: Vec<(String, String)>,
    since: u64,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let mut generation = i.generation.subscribe();
    tokio::spawn(async move {
        let mut seen = since;
        loop {
            // What happened since `seen`, and the version it is complete up to, in one look.
            let events: Vec<(u64, Value)> = {
                let st = i.st.lock().unwrap();
                let from = st.history.partition_point(|(rv, ..)| *rv <= seen);
                let ev = st.history[from..]
                    .iter()
                    .filter(|(_, k, n, _, o)| *k == kind && *n == ns && matches(o, &sel))
                    .map(|(rv, _, _, ty, o)| (*rv, json!({"type": ty, "object": o})))
                    .collect();
                seen = st.rv.max(seen);
                ev
            };
            for (_, e) in events {
                if tx.send(Bytes::from(format!("{e}\n"))).is_err() {
                    return;
                }
            }
            tokio::select! {
                r = generation.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    stream_response(rx)
}

fn log_stream(i: Arc<Inner>, ns: String, pod: String, follow: bool) -> Response<Body> {
    if i.get("pods", &ns, &pod).is_none() {
        return status(StatusCode::NOT_FOUND, &format!("pods \"{pod}\" not found"));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let mut generation = i.generation.subscribe();
    tokio::spawn(async move {
        let mut sent = 0;
        loop {
            let (chunk, done, gone) = {
                let st = i.st.lock().unwrap();
                let gone = !st
                    .objects
                    .contains_key(&("pods".into(), ns.clone(), pod.clone()));
                match st.logs.get(&(ns.clone(), pod.clone())) {
                    Some((b, d)) => (b[sent..].to_vec(), *d, gone),
                    None => (Vec::new(), false, gone),
                }
            };
            sent += chunk.len();
            if !chunk.is_empty() && tx.send(Bytes::from(chunk)).is_err() {
                return;
            }
            if done || gone || !follow {
                return;
            }
            tokio::select! {
                r = generation.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    stream_response(rx)
}

#[derive(Clone)]
enum Admitted {
    Runs(Option<Running>),
    Killing,
}

/// What runs a pod's container.
#[derive(Clone)]
enum Running {
    Group(i32),
    Container(bollard::Docker, String),
}

impl Running {
    fn kill(&self) {
        match self {
            // SAFETY: signalling the process group this node started.
            Running::Group(pg) => unsafe {
                libc::kill(-pg, libc::SIGKILL);
            },
            Running::Container(d, id) => {
                let (d, id) = (d.clone(), id.clone());
                tokio::spawn(async move {
                    let _ = d
                        .kill_container(
                            &id,
                            None::<bollard::query_parameters::KillContainerOptions>,
                        )
                        .await;
                });
            }
        }
    }
}

/// A simulated node: see the module docs.
pub struct Node {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone, Default)]
pub struct NodeOpts {
    pub labels: BTreeMap<String, String>,
    pub images: Vec<String>,
    /// PATH of the pods' processes (the image's tools: sh, git, the executor CLIs).
    pub path: String,
    /// Where the pods' private roots go.
    pub root: PathBuf,
    /// Run each pod's container with this Docker daemon (`--network host`, the images it has)
    /// instead of as a local process; `mounts` are host paths bound at the same path (what a
    /// pod reaches over the network on a cluster, e.g. the git remote).
    pub docker: Option<DockerNode>,
}

#[derive(Clone)]
pub struct DockerNode {
    pub docker: bollard::Docker,
    pub mounts: Vec<PathBuf>,
}

impl Node {
    pub fn start(kube: &MockKube, opts: NodeOpts) -> Node {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let i = kube.inner.clone();
        kube.rt.spawn(async move {
            let mut generation = i.generation.subscribe();
            // Per pod: the process group of its running container (None: none), or killing.
            let mut seen: HashMap<(String, String), Admitted> = HashMap::new();
            loop {
                for pod in i.list("pods", None, &[]) {
                    let ns = pod["metadata"]["namespace"].as_str().unwrap().to_string();
                    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
                    let key = (ns.clone(), name.clone());
                    let deleting = pod["metadata"]["deletionTimestamp"].is_string();
                    let terminated =
                        pod["status"]["containerStatuses"][0]["state"]["terminated"].is_object();
                    match (seen.get(&key).cloned(), deleting) {
                        (None, false) => {
                            let run = admit(&i, &opts, &pod).await;
                            seen.insert(key, Admitted::Runs(run));
                        }
                        (Some(Admitted::Runs(Some(run))), true) if !terminated => {
                            run.kill();
                            // The pod goes when its process has been reaped (see `admit`).
                            seen.insert(key, Admitted::Killing);
                        }
                        (Some(Admitted::Killing), true) if !terminated => {}
                        (_, true) => {
                            i.remove_pod(&ns, &name);
                            seen.remove(&key);
                        }
                        _ => {}
                    }
                }
                tokio::select! {
                    r = generation.changed() => if r.is_err() { return },
                    _ = &mut stopped => return,
                }
            }
        });
        Node { stop: Some(stop) }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn set_status(i: &Inner, ns: &str, name: &str, f: impl FnOnce(&mut Value)) {
    i.update("pods", ns, name, |p| f(&mut p["status"]));
}

/// Schedule, pull and start a new pod; what runs its container when it runs.
async fn admit(i: &Arc<Inner>, o: &NodeOpts, pod: &Value) -> Option<Running> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap().to_string();
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let spec = &pod["spec"];
    let fits = spec["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| o.labels.get(k).map(String::as_str) == v.as_str());
    if !fits {
        set_status(i, &ns, &name, |s| {
            s["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}]);
        });
        return None;
    }
    let c = &spec["containers"][0];
    let image = c["image"].as_str().unwrap_or_default();
    let waiting = |reason: &str, message: String| {
        let (reason, message) = (reason.to_string(), message);
        set_status(i, &ns, &name, move |s| {
            s["conditions"] = json!([{"type": "PodScheduled", "status": "True"}]);
            s["containerStatuses"] = json!([{"name": c["name"], "ready": false,
                "state": {"waiting": {"reason": reason, "message": message}}}]);
        });
    };
    if !o.images.iter().any(|im| im == image) {
        waiting(
            "ErrImagePull",
            format!("failed to pull and unpack image \"{image}\": not found"),
        );
        return None;
    }
    let mut env: Vec<(String, String)> = Vec::new();
    let secret = |n: &str| i.get("secrets", &ns, n);
    for f in c["envFrom"].as_array().into_iter().flatten() {
        let sn = f["secretRef"]["name"].as_str().unwrap_or_default();
        let Some(s) = secret(sn) else {
            waiting(
                "CreateContainerConfigError",
                format!("secret \"{sn}\" not found"),
            );
            return None;
        };
        for (k, v) in s["stringData"].as_object().into_iter().flatten() {
            env.push((k.clone(), v.as_str().unwrap_or_default().to_string()));
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let k = e["name"].as_str().unwrap().to_string();
        if let Some(v) = e["value"].as_str() {
            env.push((k, v.to_string()));
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            let sn = r["name"].as_str().unwrap_or_default();
            let v = secret(sn).and_then(|s| {
                s["stringData"][r["key"].as_str().unwrap_or_default()]
                    .as_str()
                    .map(str::to_string)
            });
            let Some(v) = v else {
                waiting(
                    "CreateContainerConfigError",
                    format!("secret \"{sn}\" not found"),
                );
                return None;
            };
            env.push((k, v));
        }
    }
    if let Some(d) = &o.docker {
        return run_in_docker(i, d, pod, env).await;
    }
    let argv: Vec<String> = c["command"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(c["args"].as_array().into_iter().flatten())
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect();
    // Every pod of a cluster sees the same paths (its image's), so codex's state, which records
    // absolute paths, is found again by the next pod: the node roots a session's pods at one
    // path (each pod's root is removed when it ends, so every pod still starts empty).
    let rootname = pod["metadata"]["labels"]["zwarm.dev/session"]
        .as_str()
        .unwrap_or(&name)
        .to_string();
    let root = o.root.join(rootname);
    std::fs::create_dir_all(&root).unwrap();
    let term = o.root.join(format!("{name}.termination"));
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", &o.path)
        .envs(env)
        .env("ZWARM_POD_ROOT", &root)
        .env("ZWARM_TERMINATION_LOG", &term)
        .current_dir(&root)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            waiting("RunContainerError", e.to_string());
            return None;
        }
    };
    let pgid = child.id().map(|p| Running::Group(p as i32));
    set_status(i, &ns, &name, |s| {
        s["phase"] = json!("Running");
        s["conditions"] = json!([{"type": "PodScheduled", "status": "True"}]);
        s["containerStatuses"] = json!([{"name": c["name"], "ready": true,
            "state": {"running": {"startedAt": "now"}}}]);
    });
    let (i2, cname) = (i.clone(), c["name"].clone());
    tokio::spawn(async move {
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (mut bo, mut be) = ([0u8; 16384], [0u8; 16384]);
        let (mut o_open, mut e_open) = (true, true);
        while o_open || e_open {
            tokio::select! {
                r = out.read(&mut bo), if o_open => match r {
                    Ok(0) | Err(_) => o_open = false,
                    Ok(n) => i2.append_log(&ns, &name, &bo[..n], false),
                },
                r = err.read(&mut be), if e_open => match r {
                    Ok(0) | Err(_) => e_open = false,
                    Ok(n) => i2.append_log(&ns, &name, &be[..n], false),
                },
            }
        }
        let st = child.wait().await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        let code = st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(9));
        let message = std::fs::read_to_string(&term).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&root);
        i2.append_log(&ns, &name, b"", true);
        let deleting = i2
            .get("pods", &ns, &name)
            .is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string());
        set_status(&i2, &ns, &name, |s| {
            s["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
            s["containerStatuses"] = json!([{"name": cname, "ready": false, "state": {"terminated": {
                "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }, "message": message}}}]);
        });
        if deleting {
            i2.remove_pod(&ns, &name);
        }
    });
    pgid
}

/// `4Gi`, `512Mi`, `1G`, `100000` → bytes.
fn quantity(q: &str) -> Option<i64> {
    let units: [(&str, i64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("K", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (u, m) in units {
        if let Some(n) = q.strip_suffix(u) {
            return n.parse::<i64>().ok().map(|n| n * m);
        }
    }
    q.parse().ok()
}

/// Run a pod's container on the node's Docker daemon: its command, its environment, its
/// memory limit, the host network, the termination message file bound in; its output becomes
/// the pod's log, its end (exit code, OOM kill) the pod's status.
async fn run_in_docker(
    i: &Arc<Inner>,
    d: &DockerNode,
    pod: &Value,
    env: Vec<(String, String)>,
) -> Option<Running> {
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::{
        CreateContainerOptions, LogsOptions, RemoveContainerOptions, WaitContainerOptions,
    };
    let ns = pod["metadata"]["namespace"].as_str().unwrap().to_string();
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let c = &pod["spec"]["containers"][0];
    let cmd: Vec<String> = c["command"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(c["args"].as_array().into_iter().flatten())
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect();
    let term = std::env::temp_dir().join(format!("zwarm-kube-term-{}", uuid::Uuid::new_v4()));
    std::fs::write(&term, "").unwrap();
    let mut binds: Vec<String> = d
        .mounts
        .iter()
        .map(|m| format!("{0}:{0}:rw", m.display()))
        .collect();
    binds.push(format!("{}:/dev/termination-log:rw", term.display()));
    let memory = c["resources"]["limits"]["memory"]
        .as_str()
        .and_then(quantity);
    let body = ContainerCreateBody {
        image: c["image"].as_str().map(str::to_string),
        cmd: Some(cmd),
        env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some([("zwarm-kube-test.pod".to_string(), name.clone())].into()),
        host_config: Some(HostConfig {
            binds: Some(binds),
            network_mode: Some("host".into()),
            memory,
            memory_swap: memory,
            ..Default::default()
        }),
        ..Default::default()
    };
    let cname = format!("zwarm-kube-test-{name}");
    let created = d
        .docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(cname),
                ..Default::default()
            }),
            body,
        )
        .await;
    let id = match created {
        Ok(r) => r.id,
        Err(e) => {
            set_status(i, &ns, &name, |s| {
                s["containerStatuses"] = json!([{"name": c["name"], "ready": false,
                    "state": {"waiting": {"reason": "CreateContainerError", "message": e.to_string()}}}]);
            });
            return None;
        }
    };
    if let Err(e) = d.docker.start_container(&id, None).await {
        set_status(i, &ns, &name, |s| {
            s["containerStatuses"] = json!([{"name": c["name"], "ready": false,
                "state": {"waiting": {"reason": "RunContainerError", "message": e.to_string()}}}]);
        });
        return None;
    }
    set_status(i, &ns, &name, |s| {
        s["phase"] = json!("Running");
        s["conditions"] = json!([{"type": "PodScheduled", "status": "True"}]);
        s["containerStatuses"] = json!([{"name": c["name"], "ready": true,
            "state": {"running": {"startedAt": "now"}}}]);
    });
    let (i2, docker, id2, cn) = (i.clone(), d.docker.clone(), id.clone(), c["name"].clone());
    tokio::spawn(async move {
        let mut logs = docker.logs(
            &id2,
            Some(LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        while let Some(Ok(chunk)) = logs.next().await {
            i2.append_log(&ns, &name, &chunk.into_bytes(), false);
        }
        let mut w = docker.wait_container(
            &id2,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        );
        let _ = w.next().await;
        let state = docker
            .inspect_container(&id2, None)
            .await
            .ok()
            .and_then(|c| c.state);
        let code = state.as_ref().and_then(|s| s.exit_code).unwrap_or(137);
        let oom = state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
        let message = std::fs::read_to_string(&term).unwrap_or_default();
        let _ = std::fs::remove_file(&term);
        let _ = docker
            .remove_container(
                &id2,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        i2.append_log(&ns, &name, b"", true);
        let deleting = i2
            .get("pods", &ns, &name)
            .is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string());
        let reason = match (oom, code) {
            (true, _) => "OOMKilled",
            (_, 0) => "Completed",
            _ => "Error",
        };
        set_status(&i2, &ns, &name, |s| {
            s["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
            s["containerStatuses"] = json!([{"name": cn, "ready": false, "state": {"terminated": {
                "exitCode": code, "reason": reason, "message": message}}}]);
        });
        if deleting {
            i2.remove_pod(&ns, &name);
        }
    });
    Some(Running::Container(d.docker.clone(), id))
}
