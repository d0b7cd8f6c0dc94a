//! ACP executors in a container: the launch is the `zwarm-acp` bridge, whose job (JSON on its
//! stdin) names the agent by its host path and points at the session's turn dir (approvals,
//! transcript). Inside, the agent is the program of the same name on the image's PATH, and the
//! turn dir is mounted read-write at the same path (nothing more of the state dir).

use std::path::PathBuf;

use crate::executor::acp::BRIDGE_NAME;

/// A bridge launch made ready for the container.
#[derive(Debug, PartialEq)]
pub(crate) struct BridgeTurn {
    /// The job with the agent's program as named in the image.
    pub stdin: Vec<u8>,
    /// Host dirs the bridge writes (the turn dir), to mount read-write at the same path.
    pub dirs: Vec<PathBuf>,
}

/// `None` unless `program` (as named in the image) is the bridge and `stdin` is its job.
pub(crate) fn bridge_turn(program: &str, stdin: Option<&[u8]>) -> Option<BridgeTurn> {
    if program != BRIDGE_NAME {
        return None;
    }
    let mut job: serde_json::Value = serde_json::from_slice(stdin?).ok()?;
    let obj = job.as_object_mut()?;
    let agent = obj.get("program")?.as_str()?.to_string();
    obj.insert(
        "program".into(),
        super::program_in_image(std::path::Path::new(&agent)).into(),
    );
    let mut dirs: Vec<PathBuf> = Vec::new();
    let approvals = obj
        .get("approvals")
        .and_then(|v| v.as_str())
        .map(PathBuf::from);
    let transcript_dir = obj
        .get("transcript")
        .and_then(|v| v.as_str())
        .and_then(|t| std::path::Path::new(t).parent().map(PathBuf::from));
    for d in approvals.into_iter().chain(transcript_dir) {
        if d.is_absolute() && d != std::path::Path::new("/") && !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    let stdin = serde_json::to_vec(&job).ok()?;
    Some(BridgeTurn { stdin, dirs })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_bridge_job_names_the_agent_in_the_image_and_mounts_only_the_turn_dir() {
        let job = json!({
            "program": "/home/u/node_modules/opencode-ai/bin/opencode.exe",
            "args": ["acp"],
            "cwd": "/w",
            "transcript": "/s/turns/t1/acp-turns.jsonl",
            "approvals": "/s/turns/t1",
        });
        let b = bridge_turn("zwarm-acp", Some(job.to_string().as_bytes())).unwrap();
        let out: serde_json::Value = serde_json::from_slice(&b.stdin).unwrap();
        assert_eq!(out["program"], "opencode");
        assert_eq!(out["args"], json!(["acp"]));
        assert_eq!(b.dirs, vec![PathBuf::from("/s/turns/t1")]);
    }

    #[test]
    fn other_launches_are_left_alone() {
        assert_eq!(bridge_turn("codex", Some(b"{\"program\":\"x\"}")), None);
        assert_eq!(bridge_turn("zwarm-acp", None), None);
        assert_eq!(bridge_turn("zwarm-acp", Some(b"not json")), None);
    }
}
