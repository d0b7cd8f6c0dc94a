//! One turn's Job: follows its pod through the shared watch, streams its log as the executor's
//! stdout, explains why the cluster ended it, and brings its code back when it is done.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::manifest::{CONTAINER, FAILED_PUSH, FAILED_SETUP};
use super::pods::{PodView, Terminated};
use super::{Shared, sync};
use crate::runner::{Finished, TurnProcess};

/// How long stopping may take without a deadline, after the grace period.
const STOP_BOUND: Duration = Duration::from_secs(20);
/// How long the log stream may lag behind the container's end.
const LOG_DRAIN: Duration = Duration::from_secs(30);
/// How often a broken log stream is asked for again.
const LOG_ATTEMPTS: usize = 5;
/// Buffer between the log stream and the engine's reader.
const PIPE: usize = 256 * 1024;

/// What the driver found when the turn ended.
#[derive(Debug, Default)]
struct Outcome {
    exit: Option<ExitStatus>,
    cause: Option<String>,
    files: Vec<Option<String>>,
}

/// What the driver needs to bring the turn's code back.
pub(crate) struct Return {
    pub cwd: PathBuf,
    pub branch: String,
    pub session: String,
    pub read_back: Vec<PathBuf>,
}

pub(crate) struct KubeTurn {
    shared: Arc<Shared>,
    job: String,
    label: String,
    read_back: Vec<PathBuf>,
    stopping: Arc<AtomicBool>,
    done: watch::Receiver<Option<Arc<parking_lot::Mutex<Outcome>>>>,
    driver: Option<JoinHandle<()>>,
    deleted: bool,
}

impl KubeTurn {
    /// Start following a created Job. `pod` was subscribed before the Job was created. The
    /// stdout handed back starts `skip` bytes into the pod's log (what a re-attached turn's
    /// raw log already holds).
    pub(crate) fn follow(
        shared: Arc<Shared>,
        job: String,
        label: String,
        pod: watch::Receiver<Option<PodView>>,
        ret: Return,
        skip: u64,
    ) -> (KubeTurn, super::Output, super::Output) {
        let (out_w, out_r) = tokio::io::duplex(PIPE);
        let (err_w, err_r) = tokio::io::duplex(PIPE);
        let (done_tx, done) = watch::channel(None);
        let stopping = Arc::new(AtomicBool::new(false));
        let read_back = ret.read_back.clone();
        let driver = tokio::spawn(drive(
            shared.clone(),
            job.clone(),
            pod,
            ret,
            out_w,
            err_w,
            stopping.clone(),
            done_tx,
            skip,
        ));
        (
            KubeTurn {
                shared,
                job,
                label,
                read_back,
                stopping,
                done,
                driver: Some(driver),
                deleted: false,
            },
            Box::pin(out_r),
            Box::pin(err_r),
        )
    }
}

#[async_trait::async_trait]
impl TurnProcess for KubeTurn {
    async fn wait(&mut self) {
        let _ = self.done.wait_for(Option::is_some).await;
    }

    async fn stop(&mut self, grace: Duration, deadline: Option<Instant>) {
        if self.done.borrow().is_some() {
            return;
        }
        self.stopping.store(true, Ordering::SeqCst);
        let by = deadline.unwrap_or_else(|| Instant::now() + grace + STOP_BOUND);
        let _ = tokio::time::timeout_at(
            by,
            self.shared
                .delete_job(&self.job, "Foreground", Some(grace.as_secs())),
        )
        .await;
        self.deleted = true;
        let _ = tokio::time::timeout_at(by, self.wait()).await;
    }

    fn detach(mut self: Box<Self>) {
        self.let_go();
    }

    async fn finish(mut self: Box<Self>) -> Finished {
        let outcome = self.done.borrow().clone();
        if let Some(d) = self.driver.take() {
            d.abort();
        }
        if !self.deleted {
            self.shared.delete_job(&self.job, "Background", None).await;
            self.deleted = true;
        }
        self.shared.pods.forget(&self.label);
        let Some(o) = outcome else {
            return Finished::default();
        };
        let mut o = o.lock();
        let files = self
            .read_back
            .iter()
            .cloned()
            .zip(o.files.drain(..).chain(std::iter::repeat(None)))
            .collect();
        Finished {
            exit: o.exit,
            files,
            cause: o.cause.take(),
        }
    }
}

impl KubeTurn {
    /// Stop following without deleting the Job (another server follows it).
    fn let_go(&mut self) {
        if let Some(d) = self.driver.take() {
            d.abort();
        }
        self.deleted = true;
        self.shared.pods.forget(&self.label);
    }
}

impl Drop for KubeTurn {
    // A turn dropped without `finish` (its supervisor panicked or was cancelled) leaves no Job.
    fn drop(&mut self) {
        if let Some(d) = self.driver.take() {
            d.abort();
        }
        if self.deleted {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (shared, job) = (self.shared.clone(), self.job.clone());
            rt.spawn(async move { shared.delete_job(&job, "Foreground", None).await });
        }
        self.shared.pods.forget(&self.label);
    }
}

/// Why the cluster will not run the pod, from a container that waits: `None` while waiting is
/// normal (creating, pulling).
fn waiting_failure(image: &str, reason: &str, message: &str) -> Option<String> {
    match reason {
        "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
            Some(format!(
                "the cluster could not pull the image `{image}` ({reason}: {message}); set runner.kubernetes.image to an image the nodes can pull"
            ))
        }
        "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => Some(
            format!("the cluster could not start the turn's container ({reason}: {message})"),
        ),
        _ => None,
    }
}

/// The cluster's reason for a container that ended, when it was not the executor's own end.
fn terminated_cause(t: &Terminated, memory: Option<&str>) -> Option<String> {
    match t.reason.as_str() {
        "OOMKilled" => Some(format!(
            "the turn's pod ran out of memory{} and was killed (raise runner.kubernetes.memory, or make the task smaller)",
            memory.map(|m| format!(" (limit {m})")).unwrap_or_default()
        )),
        "DeadlineExceeded" => Some("the turn's Job ran past its activeDeadlineSeconds".into()),
        _ if matches!(t.exit_code as i32, FAILED_SETUP | FAILED_PUSH) && !t.message.is_empty() => {
            Some(t.message.clone())
        }
        _ => None,
    }
}

/// A container's exit code as a process status (`128 + n` is signal `n`).
fn exit_status(code: i64) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    if (129..=128 + 31).contains(&code) {
        ExitStatus::from_raw((code - 128) as i32)
    } else {
        ExitStatus::from_raw(((code & 0xff) as i32) << 8)
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    shared: Arc<Shared>,
    job: String,
    mut pod: watch::Receiver<Option<PodView>>,
    ret: Return,
    out_w: DuplexStream,
    mut err_w: DuplexStream,
    stopping: Arc<AtomicBool>,
    done: watch::Sender<Option<Arc<parking_lot::Mutex<Outcome>>>>,
    skip: u64,
) {
    let cfg = &shared.cfg;
    let schedule_by = Instant::now() + Duration::from_secs(cfg.schedule_timeout_seconds);
    let mut out_w = Some(out_w);
    let mut log: Option<JoinHandle<Held>> = None;
    let mut started = false;
    let mut last_pending: Option<String> = None;
    let mut outcome = Outcome::default();
    let mut ended: Option<Terminated> = None;
    loop {
        let view = pod.borrow_and_update().clone();
        if let Some(v) = view {
            if let Some(t) = &v.terminated
                && !v.deleted
            {
                if log.is_none() && !v.name.is_empty() {
                    log = Some(follow_log(&shared, &v.name, out_w.take(), skip));
                }
                ended = Some(t.clone());
                break;
            }
            if v.deleted {
                if !stopping.load(Ordering::SeqCst) {
                    outcome.cause = Some(
                        "the turn's pod was deleted before it ended (its Job was deleted, or the cluster lost it)".into(),
                    );
                }
                break;
            }
            if let Some((reason, message)) = &v.waiting
                && let Some(c) = waiting_failure(&cfg.image, reason, message)
            {
                outcome.cause = Some(c);
                shared.delete_job(&job, "Foreground", Some(0)).await;
                break;
            }
            if v.running {
                started = true;
                if log.is_none() {
                    log = Some(follow_log(&shared, &v.name, out_w.take(), skip));
                }
            }
            last_pending = v.unschedulable.clone().or(last_pending);
        }
        tokio::select! {
            r = pod.changed() => if r.is_err() {
                outcome.cause = Some("zwarm stopped watching the turn's pod".into());
                break;
            },
            _ = tokio::time::sleep_until(schedule_by), if !started => {
                outcome.cause = Some(format!(
                    "the turn's pod was not running within {} s (runner.kubernetes.schedule_timeout_seconds){}",
                    cfg.schedule_timeout_seconds,
                    last_pending.map(|p| format!(": the pod was never scheduled: {p}")).unwrap_or_default()
                ));
                shared.delete_job(&job, "Foreground", Some(0)).await;
                break;
            }
        }
    }
    let mut held: Held = None;
    if let Some(mut l) = log {
        match tokio::time::timeout(LOG_DRAIN, &mut l).await {
            Ok(r) => held = r.ok().flatten(),
            Err(_) => l.abort(),
        }
    }
    drop(out_w);
    // The turn's work is lost when it could not be pushed back or fetched: then the executor's
    // end-of-turn line is not passed on, so the engine fails the turn with the
    // cause instead of reporting a success whose changes are not there.
    let mut lost = false;
    if let Some(t) = ended
        && !stopping.load(Ordering::SeqCst)
    {
        outcome.exit = Some(exit_status(t.exit_code));
        outcome.cause = terminated_cause(&t, cfg.memory.as_deref());
        if t.exit_code as i32 == FAILED_SETUP || t.exit_code as i32 == FAILED_PUSH {
            lost = outcome.cause.is_some();
        } else {
            let remote = cfg.git_remote.clone().unwrap_or_default();
            let n = ret.read_back.len();
            let r = tokio::task::spawn_blocking(move || {
                sync::fetch_turn(&ret.cwd, &remote, &ret.branch, &ret.session, n)
            })
            .await;
            let failed = match r {
                Ok(Ok(back)) => {
                    outcome.files = back.files;
                    if let Some(e) = back.stderr {
                        let _ = err_w.write_all(e.as_bytes()).await;
                    }
                    None
                }
                Ok(Err(e)) => Some(e),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failed {
                lost = true;
                outcome.cause = Some(e);
            }
        }
    }
    if let Some((mut w, tail)) = held {
        if !lost {
            let _ = w.write_all(&tail).await;
        }
        let _ = w.shutdown().await;
    }
    if let Some(c) = &outcome.cause {
        let _ = err_w.write_all(format!("\nzwarm: {c}\n").as_bytes()).await;
    }
    let _ = err_w.shutdown().await;
    done.send_replace(Some(Arc::new(parking_lot::Mutex::new(outcome))));
}

/// The stdout pipe and the executor's end-of-turn line, held back until the turn's fate is known.
type Held = Option<(DuplexStream, Vec<u8>)>;

/// Stream the pod's log (the executor's stdout) from byte `skip` into the engine's pipe until
/// it ends; the end-of-turn line is held back and handed to the driver with the pipe.
fn follow_log(
    shared: &Arc<Shared>,
    pod: &str,
    out: Option<DuplexStream>,
    skip: u64,
) -> JoinHandle<Held> {
    let shared = shared.clone();
    let path = format!(
        "/api/v1/namespaces/{}/pods/{pod}/log?container={CONTAINER}&follow=true",
        shared.cfg.namespace
    );
    tokio::spawn(async move {
        let mut out = out?;
        // A stream that breaks is asked for again, the bytes already seen skipped (the log is
        // served from its start each time), and so are the `skip` bytes passed on before.
        let (mut seen, mut open) = (usize::try_from(skip).unwrap_or(usize::MAX), true);
        let mut hold: Vec<u8> = Vec::new();
        for attempt in 0..LOG_ATTEMPTS {
            let mut s = match shared.api.stream(&path).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(pod = %path, attempt, "following the turn's pod log: {e}");
                    break;
                }
            };
            let mut at = 0usize;
            let mut broke = false;
            while let Some(chunk) = s.next().await {
                match chunk {
                    Ok(b) => {
                        let skip = seen.saturating_sub(at).min(b.len());
                        at += b.len();
                        seen += b.len() - skip;
                        hold.extend_from_slice(&b[skip..]);
                        let pass = pass_on(&hold);
                        if pass > 0 {
                            if open && out.write_all(&hold[..pass]).await.is_err() {
                                open = false;
                            }
                            hold.drain(..pass);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(pod = %path, attempt, "the pod's log stream broke: {e}; following it again");
                        broke = true;
                        break;
                    }
                }
            }
            if !broke {
                break;
            }
        }
        Some((out, hold))
    })
}

/// How much of `buf` can be passed on: its complete lines up to the executor's end-of-turn
/// event (codex's `turn.completed`, claude's `result`), which is held back with whatever
/// follows it until the turn's code is back.
fn pass_on(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(n) = buf[at..].iter().position(|b| *b == b'\n') {
        if is_turn_end(&buf[at..at + n]) {
            break;
        }
        at += n + 1;
    }
    at
}

fn is_turn_end(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<&'a str>,
    }
    matches!(
        serde_json::from_slice::<Typed>(line)
            .ok()
            .and_then(|t| t.kind),
        Some("turn.completed" | "result")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        assert!(
            waiting_failure("img", "ErrImagePull", "not found")
                .unwrap()
                .contains("`img`")
        );
        assert!(waiting_failure("img", "ContainerCreating", "").is_none());
        let oom = Terminated {
            exit_code: 137,
            reason: "OOMKilled".into(),
            message: String::new(),
        };
        assert!(
            terminated_cause(&oom, Some("1Gi"))
                .unwrap()
                .contains("limit 1Gi")
        );
        let push = Terminated {
            exit_code: FAILED_PUSH as i64,
            reason: "Error".into(),
            message: "rejected".into(),
        };
        assert_eq!(terminated_cause(&push, None).as_deref(), Some("rejected"));
        let own = Terminated {
            exit_code: 1,
            reason: "Error".into(),
            message: String::new(),
        };
        assert!(terminated_cause(&own, None).is_none());
        assert_eq!(exit_status(0).code(), Some(0));
        assert_eq!(pass_on(b"a\nb\nc"), 4);
        assert_eq!(pass_on(b"abc"), 0);
        let log = b"{\"type\":\"item.completed\"}\n{\"type\":\"turn.completed\"}\nx\n";
        assert_eq!(pass_on(log), 26);
        assert_eq!(pass_on(b"{\"type\":\"result\",\"x\":1}\n"), 0);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_status(137).signal(), Some(9));
    }
}
