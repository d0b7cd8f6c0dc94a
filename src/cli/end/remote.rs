//! Asking the live server that owns a session to act on it (`zwarm end`, `zwarm run
//! --session`, `top`'s `e`): the request goes through the store
//! ([`crate::store::requests`]), the owner picks it up within a second and carries it out
//! through the engine's normal paths ([`crate::sessions`]' steer task), and the answer comes
//! back the same way.

use std::time::{Duration, Instant};

use crate::store::readonly::ReadOnlyStore;
use crate::store::requests::{self, Ask, Outcome};

/// How long the owner has to pick a request up before the asker takes it back (it polls
/// four times a second, so only a stopped or stuck server misses this).
pub const PICKUP: Duration = Duration::from_secs(5);
/// How often the asker looks for the answer.
const POLL: Duration = Duration::from_millis(100);

/// How asking went.
#[derive(Debug)]
pub enum Asked {
    /// The owner's answer (which may be a refusal: [`Outcome::error`]).
    Answered(Outcome),
    /// The owner exited before it answered: the session can be adopted now.
    OwnerGone,
    /// No answer in time; the text says what became of the request.
    NoAnswer(String),
}

/// The live server owning a session: its instance id and pid.
#[derive(Debug, Clone)]
pub struct Owner {
    pub instance: String,
    pub pid: u32,
}

/// The live server that owns session `id`, if any (read-only).
pub fn live_owner(store: &ReadOnlyStore, id: &str) -> anyhow::Result<Option<Owner>> {
    let extra = store.extras(&[id.to_string()])?.remove(id);
    Ok(extra
        .filter(|x| store.owner_alive(&x.owner_instance))
        .map(|x| Owner {
            instance: x.owner_instance,
            pid: x.owner_pid,
        }))
}

/// Send `ask` about session `id` to its owner and wait for the answer: at most [`PICKUP`]
/// for the owner to claim it (else it is withdrawn, and nothing happens), then up to `wait`
/// in all. Blocking.
pub fn ask(
    store: &ReadOnlyStore,
    id: &str,
    owner: &Owner,
    ask: Ask,
    wait: Duration,
) -> anyhow::Result<Asked> {
    let what = ask.name();
    let p = requests::send(store.root(), &owner.instance, id, ask)?;
    let start = Instant::now();
    let short = crate::cli::short_id(id);
    loop {
        if let Some(o) = p.outcome()? {
            return Ok(Asked::Answered(o));
        }
        if !store.owner_alive(&owner.instance) {
            // It may have answered on its way out.
            let _ = p.withdraw();
            if let Some(o) = p.outcome()? {
                return Ok(Asked::Answered(o));
            }
            return Ok(Asked::OwnerGone);
        }
        let waited = start.elapsed();
        if !p.taken() && waited >= PICKUP.min(wait) {
            if p.withdraw()? {
                return Ok(Asked::NoAnswer(format!(
                    "the zwarm server that owns session {short} (pid {}) did not pick up the {what} request within {} s (is it stopped or stuck?); the request was taken back and nothing changed. Try again, or act from that server's host.",
                    owner.pid,
                    waited.as_secs()
                )));
            }
            // Claimed just now: its answer is coming.
            continue;
        }
        if waited >= wait {
            return Ok(Asked::NoAnswer(format!(
                "the zwarm server that owns session {short} (pid {}) took the {what} request but did not answer within {} s; it may still carry it out: see `zwarm show {short}`.",
                owner.pid,
                wait.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    }
}
