//! Stopping a turn: SIGINT, a grace period, SIGTERM, SIGKILL of the group and `cgroup.kill`,
//! then a sweep of everything carrying the turn's marker (see [`super`]).

use std::sync::Arc;
use std::time::Duration;

use super::ExecChild as Child;
use tokio::time::Instant;

use super::{Containment, TURN_MARKER, cgroup, proc_pids, proc_stat, reap_zombies_now};

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: killpg only sends a signal; a stale group id yields ESRCH, which we ignore.
        unsafe {
            libc::killpg(pgid, sig);
        }
    }
}

/// How long a stop waits after SIGTERM, and after SIGKILL, for the executor to exit.
const TERM_WAIT: Duration = Duration::from_secs(2);
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Time kept back from a deadline for the final sweep (cgroup.kill, marker scan, reaping).
const SWEEP_RESERVE: Duration = Duration::from_millis(250);
/// Budget of the sweep when no deadline is given.
const SWEEP_BUDGET: Duration = Duration::from_secs(1);

impl Containment {
    /// Stop a running executor within a deadline: SIGINT to the group, up to `grace` (shortened to fit),
    /// SIGTERM, then SIGKILL of the group and the turn's cgroup, and a sweep of marked
    /// processes, all finished by `deadline` (about 250 ms of it is kept for the kill and sweep;
    /// the SIGTERM step is skipped when no time is left for it). Only tokio timers on the async
    /// side; the sweep runs on the blocking pool. Returns whether the executor was reaped.
    pub async fn stop_turn(
        self: &Arc<Self>,
        child: &mut Child,
        marker: &str,
        grace: Duration,
        deadline: Instant,
    ) -> bool {
        let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            // Already reaped.
            self.sweep_async(marker.to_string(), None, None, deadline)
                .await;
            return true;
        };
        let soft = |cap: Duration| {
            cap.min(
                deadline
                    .saturating_duration_since(Instant::now())
                    .saturating_sub(SWEEP_RESERVE),
            )
        };
        signal_group(pid, libc::SIGINT);
        let mut reaped = wait_for(child, soft(grace)).await;
        if !reaped {
            let wait = soft(TERM_WAIT);
            if !wait.is_zero() {
                signal_group(pid, libc::SIGTERM);
                reaped = wait_for(child, wait).await;
            }
        }
        if !reaped {
            self.hard_kill(pid, marker);
            let left = deadline
                .saturating_duration_since(Instant::now())
                .saturating_sub(SWEEP_RESERVE / 2);
            reaped = wait_for(child, left.min(KILL_WAIT).max(Duration::from_millis(20))).await;
        }
        // The group may still hold tool processes after the leader exited.
        self.sweep_async(marker.to_string(), Some(pid), Some(pid), deadline)
            .await;
        reaped
    }

    /// SIGKILL the group and the turn's cgroup: quick signal sends and one cgroupfs write, no waits.
    fn hard_kill(&self, pgid: i32, marker: &str) {
        signal_group(pgid, libc::SIGKILL);
        if let Some(dir) = cgroup::find(&self.cgroups, marker) {
            cgroup::kill(&dir);
        }
    }

    /// Run [`sweep`] on the blocking pool, waiting for it at most until `deadline` (it goes on in
    /// the background if it takes longer).
    async fn sweep_async(
        self: &Arc<Self>,
        marker: String,
        pgid: Option<i32>,
        exclude: Option<i32>,
        deadline: Instant,
    ) {
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_millis(20));
        let me = self.clone();
        let task = tokio::task::spawn_blocking(move || me.sweep(&marker, pgid, exclude, budget));
        let _ = tokio::time::timeout_at(
            deadline.max(Instant::now() + Duration::from_millis(50)),
            task,
        )
        .await;
    }

    /// After a normal exit: kill leftovers of the turn (its group, its cgroup, and anything
    /// carrying the marker), remove its cgroup. Blocking (up to about a second).
    pub fn cleanup_after_exit(&self, pgid: Option<u32>, marker: &str) {
        let pg = pgid.and_then(|p| i32::try_from(p).ok());
        self.sweep(marker, pg, pg, SWEEP_BUDGET);
    }

    /// SIGKILL every process of the turn `marker`: its cgroup (if it has one, made by this server
    /// or an earlier one) and every process whose environment holds `ZWARM_TURN=<marker>`
    /// (except `exclude`, the executor itself, which tokio reaps); then reap those that are our
    /// children and remove the cgroup. Returns how many were killed. Blocking (up to about a
    /// second).
    pub fn kill_marked(&self, marker: &str, exclude: Option<i32>) -> usize {
        self.sweep(marker, None, exclude, SWEEP_BUDGET)
    }

    /// The blocking part of every stop: group SIGKILL, cgroup.kill and removal, marker scan,
    /// reaping — bounded by `budget` (with a zero budget: one pass of kills, no waiting).
    fn sweep(
        &self,
        marker: &str,
        pgid: Option<i32>,
        exclude: Option<i32>,
        budget: Duration,
    ) -> usize {
        // Probe first if nothing was started yet (adopting a dead server's session happens before
        // any spawn): that is what tells where turn cgroups live.
        let _ = self.current_mode();
        let until = std::time::Instant::now() + budget;
        let time_left = || until.saturating_duration_since(std::time::Instant::now());
        if let Some(pg) = pgid {
            signal_group(pg, libc::SIGKILL);
        }
        let mut killed: Vec<i32> = Vec::new();
        let in_cgroup = cgroup::find(&self.cgroups, marker);
        if let Some(dir) = &in_cgroup {
            let dir = dir.as_path();
            // The usual end: the executor and everything it started have exited, the cgroup
            // is empty (exited processes leave it at once), and there is nothing to list or kill.
            if !cgroup::emptied(dir) {
                let inside = cgroup::pids(dir);
                cgroup::kill(dir);
                killed.extend(inside.into_iter().filter(|p| Some(*p) != exclude));
                while cgroup::populated(dir) && !time_left().is_zero() {
                    std::thread::sleep(Duration::from_millis(5).min(time_left()));
                }
            }
            cgroup::remove(&self.cgroups, dir);
            cgroup::forget(&self.cgroups, marker);
        }
        let needle = format!("{TURN_MARKER}={marker}");
        let me = std::process::id() as i32;
        // A turn that ran in its own cgroup is gone with it: only a root process can move out,
        // and the reaper kills one it saw there when the turn is released (below). The marker
        // pass (a read of every process's environment) is for process-group mode, and for a
        // containment without a reaper.
        let passes = if in_cgroup.is_some() && self.reaper.get().is_some() {
            0
        } else {
            3
        };
        // Several passes: a process may fork between our scan and its death.
        for _ in 0..passes {
            let found = find_marked(&needle, me, exclude);
            if found.is_empty() {
                break;
            }
            for pid in &found {
                // SAFETY: sending a signal has no memory effects; ESRCH is ignored.
                unsafe {
                    libc::kill(*pid, libc::SIGKILL);
                }
                if !killed.contains(pid) {
                    killed.push(*pid);
                }
            }
            if time_left().is_zero() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20).min(time_left()));
        }
        reap(&killed, time_left().min(Duration::from_millis(500)));
        if !killed.is_empty() {
            // Orphans that exited on their own are reaped by the periodic housekeeping.
            reap_zombies_now();
        }
        // The turn is over: the reaper forgets it (and kills what left its cgroup).
        if let Some(r) = self.reaper.get() {
            r.release(marker);
        }
        if !killed.is_empty() {
            tracing::info!(
                marker,
                count = killed.len(),
                "killed leftover executor processes"
            );
        }
        killed.len()
    }
}

async fn wait_for(child: &mut Child, limit: Duration) -> bool {
    if limit.is_zero() {
        return matches!(child.try_wait(), Ok(Some(_)));
    }
    tokio::time::timeout(limit, child.wait()).await.is_ok()
}

fn find_marked(needle: &str, me: i32, exclude: Option<i32>) -> Vec<i32> {
    let mut out = Vec::new();
    for pid in proc_pids() {
        if pid == me || Some(pid) == exclude {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) && !is_zombie(pid) {
            out.push(pid);
        }
    }
    out
}

fn is_zombie(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|st| st.state == 'Z')
}

/// Reap killed processes that were re-parented to us (we are a subreaper), waiting up to
/// `limit`. Only the given pids are waited for, so tokio's own children are never touched.
fn reap(pids: &[i32], limit: Duration) {
    let until = std::time::Instant::now() + limit;
    loop {
        let mut pending = false;
        for pid in pids {
            let mut status = 0;
            // SAFETY: waitpid on a specific pid with WNOHANG; ECHILD (not our child) is fine.
            let r = unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) };
            if r == 0 {
                pending = true;
            }
        }
        if !pending || std::time::Instant::now() >= until {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The entries of `dir` that a process which is gone left behind: those whose name `pid_of`
/// reads a process id from, other than this process's, where that process is not alive.
/// (What a server killed before its clean-up left: socket folders, probe cgroups.)
pub(crate) fn left_by_dead(
    dir: &std::path::Path,
    pid_of: impl Fn(&str) -> Option<u32>,
) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(&pid_of)
                .is_some_and(|pid| pid != me && !i32::try_from(pid).is_ok_and(pid_alive))
        })
        .map(|e| e.path())
        .collect()
}

/// Whether a process id is alive (not a zombie). Used by tests and diagnostics.
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists && !is_zombie(pid)
}
