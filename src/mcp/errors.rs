//! What a host's model reads when a call fails: every [`ManagerError`] in words that name
//! zwarm's tools and say what to do next.
//!
//! The session manager's errors describe what went wrong without knowing about MCP; the tool
//! names and next steps live here. The match is exhaustive on purpose: a new variant must be
//! given its wording here before zwarm builds.

use crate::sessions::ManagerError;

/// The `isError` text for a failed tool call.
pub fn tool_error(e: &ManagerError) -> String {
    use ManagerError as E;
    match e {
        E::EmptyTask => {
            "`task` is empty: describe what the executor should do, ideally with acceptance criteria, and call delegate again.".into()
        }
        E::EmptyMessage => {
            "`message` is empty: say what the executor should do next, and call converse again.".into()
        }
        E::UnknownAdapter(a) => format!(
            "unknown adapter `{a}`: use {}, or omit it for the configured default.",
            crate::executor::names_for_humans(true)
        ),
        E::UnknownMode(m) => unknown_mode(m),
        E::NoSuchDir(d) => format!(
            "working_dir `{d}` does not exist or is not a directory: create it first, or pass an existing directory to delegate."
        ),
        E::OutsideRoots { dir, roots } => format!(
            "working_dir `{dir}` is outside the allowed roots ({roots}). Use a directory inside them, or ask the user to add a root to `allowed_roots` in the zwarm config."
        ),
        E::UnknownSession(id) => format!(
            "no session matches `{id}`. Call list_sessions to see session ids (any unique prefix of 8 or more characters works)."
        ),
        E::ShortPrefix(id) => format!(
            "session id `{id}` is too short: give the full id or a unique prefix of at least 8 characters (see list_sessions)."
        ),
        E::Ambiguous { prefix, candidates } => format!(
            "session id prefix `{prefix}` is ambiguous: it matches {candidates}. Give more characters (list_sessions shows full ids)."
        ),
        E::Busy(id) => format!(
            "session {id} is busy: a turn is still running. Call check_session with wait_seconds to wait for it, or end_session to stop it."
        ),
        E::Ended { id, status } => format!(
            "session {id} has ended ({status}); it cannot continue. Start a new session with delegate."
        ),
        E::Aborted { id, reason } => format!(
            "session {id} was stopped by a watcher ({reason}); it takes no more turns. Review what it did (check_session), then end_session it, and delegate a new session if the work should go on."
        ),
        E::ForeignOwner { id, pid } => format!(
            "session {id} belongs to another zwarm server that is still running (pid {pid}). Continue it from that host, or after that server exits; check_session still reads it."
        ),
        E::ShuttingDown => {
            "zwarm is shutting down; no new turns are started. Call again once the host has restarted zwarm.".into()
        }
        E::Watchers(w) => format!(
            "watcher configuration: {w}. Ask the user to fix the `[watchers]` section of the zwarm config."
        ),
        E::StillRunning(id) => format!(
            "session {id}: the running turn did not stop after the interrupt (its processes may be stuck). Try end_session again, or ask the user to restart zwarm, which stops every executor."
        ),
        E::Unreadable { id, reason } => format!(
            "session {id} could not be read from the state database: {reason}. It cannot continue: delegate a new session, and tell the user about the state dir problem (`zwarm doctor` checks it)."
        ),
        E::Executor(x) => format!("{x}"),
        E::Store(x) => format!(
            "could not save state: {x}. Nothing was started or changed. Tell the user to check that the state dir is writable and the disk is not full, then call again."
        ),
        E::StoreRead(x) => format!(
            "could not read state: {x}. Tell the user to check that the state dir is readable (`zwarm doctor` checks it), then call again."
        ),
        E::BadIsolation(i) => format!(
            "unknown isolation `{i}`: use `none` (the session works in the project directory) or `worktree` (a git worktree and branch of its own)."
        ),
        E::BaseWithoutWorktree(b) => format!(
            "`base` (`{b}`) applies only with isolation \"worktree\": add isolation: \"worktree\" to the delegate call, or omit base."
        ),
        E::BadBase { base, reason } => format!(
            "base `{base}` cannot be used: {reason}. Give a branch, tag or commit of the project's repository, or omit base to start from its current HEAD."
        ),
        E::NotGitRepo(d) => format!(
            "working_dir `{d}` is not in a git repository, so isolation \"worktree\" cannot be used there. Delegate with isolation \"none\", or make it a git repository with at least one commit (`git init && git add -A && git commit -m init`)."
        ),
        E::TooManyWorktrees { n, max } => format!(
            "{n} session worktrees exist already (max_worktrees is {max}). End sessions you are done with (end_session with integrate merge, keep or discard removes their worktree), or ask the user to raise max_worktrees in the zwarm config."
        ),
        E::Git(g) => format!(
            "git: {g}. Check the repository's state (uncommitted changes, a lock file), then call again."
        ),
        E::WorktreeGone { id, path, branch } => format!(
            "session {id}'s worktree `{path}` no longer exists (it was removed outside zwarm); zwarm will not run the session anywhere else. Its branch `{branch}` holds every committed turn: end_session, then delegate a new session with isolation \"worktree\" and base `{branch}` to go on."
        ),
        E::WorktreeRemoved { id, state, branch } => format!(
            "session {id}'s worktree was removed at end_session ({state}); zwarm will not run the session anywhere else. Its branch `{branch}` holds its work (unless discarded): delegate a new session with isolation \"worktree\" and base `{branch}` to go on."
        ),
        E::BadIntegrate(i) => format!(
            "unknown integrate `{i}`: use `merge` (merge the session's branch into the project's checked-out branch), `keep` (remove the worktree, keep the branch; the default) or `discard` (remove both)."
        ),
        E::NotIsolated { id, integrate } => format!(
            "session {id} has no worktree (isolation none): it worked in the project directly, so integrate `{integrate}` does not apply. Call end_session without integrate."
        ),
        E::MergeBusy(id) => format!(
            "session {id} is busy: a turn is still running. Wait for it (check_session with wait_seconds), review its diff, then call end_session with integrate merge."
        ),
        // The refusal (built with the conflicting files) already says what to do.
        E::MergeRefused(why) => why.clone(),
    }
}

/// The text for a `mode` that is neither sync nor async.
pub fn unknown_mode(m: &str) -> String {
    format!(
        "unknown mode `{m}`: use `sync` (wait for the turn) or `async` (return at once, then poll check_session)."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_tool_to_call_next() {
        let cases = [
            (ManagerError::UnknownSession("abc".into()), "list_sessions"),
            (ManagerError::Busy("s1".into()), "check_session"),
            (
                ManagerError::Ended {
                    id: "s1".into(),
                    status: "completed",
                },
                "delegate",
            ),
            (ManagerError::MergeBusy("s1".into()), "end_session"),
            (ManagerError::EmptyMessage, "converse"),
        ];
        for (e, tool) in cases {
            let t = tool_error(&e);
            assert!(t.contains(tool), "{t:?} does not name {tool}");
        }
    }
}
