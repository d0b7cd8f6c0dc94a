//! One watch on the pods of this zwarm's Jobs, shared by every running turn: a list (for the
//! resource version), then a `watch=true` stream from it; when the stream ends (the API server
//! closes watches after a while), list and watch again. Each turn subscribes to its label and
//! sees its pod's state change; nothing polls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

use super::api::{self, Api, Lines};
use super::manifest::{CONTAINER, LABEL};

/// What a turn needs to know about its pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodView {
    pub name: String,
    pub phase: String,
    /// The `PodScheduled=False` reason and message (`Unschedulable: 0/3 nodes …`).
    pub unschedulable: Option<String>,
    /// The container's waiting reason and message (`ErrImagePull: …`).
    pub waiting: Option<(String, String)>,
    pub running: bool,
    pub terminated: Option<Terminated>,
    /// The pod is gone (deleted, or its Job was).
    pub deleted: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Terminated {
    pub exit_code: i64,
    pub reason: String,
    pub message: String,
}

impl PodView {
    pub fn from_pod(pod: &Value) -> PodView {
        let status = &pod["status"];
        let mut v = PodView {
            name: pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            phase: status["phase"].as_str().unwrap_or_default().to_string(),
            ..Default::default()
        };
        if let Some(conds) = status["conditions"].as_array() {
            for c in conds {
                if c["type"] == "PodScheduled" && c["status"] == "False" {
                    v.unschedulable = Some(format!(
                        "{}: {}",
                        c["reason"].as_str().unwrap_or("Unschedulable"),
                        c["message"].as_str().unwrap_or_default()
                    ));
                }
            }
        }
        let cs = status["containerStatuses"]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == CONTAINER));
        if let Some(c) = cs {
            let st = &c["state"];
            if let Some(w) = st.get("waiting").filter(|w| w.is_object()) {
                v.waiting = Some((
                    w["reason"].as_str().unwrap_or_default().to_string(),
                    w["message"].as_str().unwrap_or_default().to_string(),
                ));
            }
            v.running = st.get("running").is_some_and(Value::is_object);
            if let Some(t) = st.get("terminated").filter(|t| t.is_object()) {
                v.terminated = Some(Terminated {
                    exit_code: t["exitCode"].as_i64().unwrap_or(-1),
                    reason: t["reason"].as_str().unwrap_or_default().to_string(),
                    message: t["message"].as_str().unwrap_or_default().to_string(),
                });
            }
        }
        v
    }
}

/// Every turn's pod view, by turn label.
pub struct Pods {
    subs: Mutex<HashMap<String, watch::Sender<Option<PodView>>>>,
}

impl Pods {
    /// Start watching the pods in `namespace` labelled with `selector`.
    pub fn start(api: Api, namespace: String, selector: String) -> Arc<Pods> {
        Self::start_with(api, namespace, selector, &[])
    }

    /// [`Pods::start`] with `labels` subscribed before the first list, so a pod that already
    /// exists (a turn re-attached after a restart) is seen as it is.
    pub fn start_with(api: Api, namespace: String, selector: String, labels: &[&str]) -> Arc<Pods> {
        let pods = Arc::new(Pods {
            subs: Mutex::new(HashMap::new()),
        });
        for l in labels {
            let _ = pods.subscribe(l);
        }
        let weak = Arc::downgrade(&pods);
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                if weak.strong_count() == 0 {
                    return;
                }
                match watch_once(&api, &namespace, &selector, &weak).await {
                    Ok(()) => pause = Duration::from_millis(100),
                    Err(e) => {
                        tracing::warn!("watching the turns' pods: {e}; watching again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(10));
                    }
                }
            }
        });
        pods
    }

    /// The pod of the turn `label` as it changes (`None` until it exists).
    pub fn subscribe(&self, label: &str) -> watch::Receiver<Option<PodView>> {
        self.subs
            .lock()
            .entry(label.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// The turn has ended: its pod's changes are no longer kept.
    pub fn forget(&self, label: &str) {
        self.subs.lock().remove(label);
    }

    fn update(&self, pod: &Value, deleted: bool) {
        let Some(label) = pod["metadata"]["labels"][LABEL].as_str() else {
            return;
        };
        let subs = self.subs.lock();
        if let Some(tx) = subs.get(label) {
            let mut v = PodView::from_pod(pod);
            v.deleted = deleted;
            tx.send_replace(Some(v));
        }
    }
}

/// One list and one watch, until the watch ends.
async fn watch_once(
    api: &Api,
    ns: &str,
    selector: &str,
    pods: &std::sync::Weak<Pods>,
) -> Result<(), super::KubeError> {
    let base = format!(
        "/api/v1/namespaces/{ns}/pods?labelSelector={}",
        api::query(selector)
    );
    let list = api.json(hyper::Method::GET, &base, None).await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    {
        let Some(p) = pods.upgrade() else {
            return Ok(());
        };
        for item in list["items"].as_array().into_iter().flatten() {
            p.update(item, false);
        }
    }
    let mut s = api
        .stream(&format!(
            "{base}&watch=true&allowWatchBookmarks=true&resourceVersion={rv}"
        ))
        .await?;
    let mut lines = Lines::default();
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        let Some(p) = pods.upgrade() else {
            return Ok(());
        };
        for line in lines.push(&chunk) {
            let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            match ev["type"].as_str() {
                Some("ADDED") | Some("MODIFIED") => p.update(&ev["object"], false),
                Some("DELETED") => p.update(&ev["object"], true),
                Some("ERROR") => {
                    // 410 Gone: the resource version is too old; list again.
                    return Ok(());
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_views() {
        let p = json!({"metadata": {"name": "p"}, "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}});
        let v = PodView::from_pod(&p);
        assert_eq!(
            v.unschedulable.as_deref(),
            Some("Unschedulable: 0/3 nodes are available")
        );
        let p = json!({"metadata": {"name": "p"}, "status": {"phase": "Pending", "containerStatuses": [
            {"name": "turn", "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}});
        assert_eq!(
            PodView::from_pod(&p).waiting,
            Some(("ErrImagePull".into(), "not found".into()))
        );
        let p = json!({"metadata": {"name": "p"}, "status": {"phase": "Failed", "containerStatuses": [
            {"name": "turn", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}});
        let t = PodView::from_pod(&p).terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_str()), (137, "OOMKilled"));
    }
}
