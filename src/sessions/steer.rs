//! Steering from the terminal: a server carries out the requests terminal commands leave for
//! it in the store ([`crate::store::requests`]): end one of its sessions, continue one, or
//! interrupt a turn. `zwarm end ID` on a session this server owns lands here.
//!
//! A small task polls this server's request folder every [`POLL`] (one directory listing),
//! claims what it finds, and carries each request out in its own task through the engine's
//! normal paths ([`Manager::end_integrated`], [`Manager::converse`],
//! [`Manager::interrupt_turn`]), exactly as a host's tool call would be; then it writes the
//! answer the asker waits for. It stops with the server.

use std::time::Duration;

use super::{Manager, blocking};
use crate::store::requests::{self, Ask, IntegratedFacts, LinkFacts, Outcome, Request};
use crate::watch::Call;

/// How often the request folder is looked at (a request is picked up within this).
pub const POLL: Duration = Duration::from_millis(250);

/// Start the task (once, from [`Manager::start_with`]).
pub(super) fn spawn(m: &Manager) {
    let m = m.clone();
    tokio::spawn(async move {
        let root = m.inner.store.root().to_path_buf();
        let instance = m.inner.instance.clone();
        // Folders of servers that are gone hold nothing anyone waits for.
        let store = m.inner.store.clone();
        let r = root.clone();
        blocking(move || requests::prune(&r, |i| store.owner_alive(i))).await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = m.inner.shutdown.cancelled() => break,
            }
            let (r, i) = (root.clone(), instance.clone());
            let taken = match blocking(move || requests::take(&r, &i)).await {
                Some(Ok(t)) => t,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read requests from the terminal");
                    continue;
                }
                None => continue,
            };
            for (id, req) in taken {
                let m = m.clone();
                let (root, instance) = (root.clone(), instance.clone());
                tokio::spawn(async move {
                    let outcome = match req {
                        Ok(req) => carry_out(&m, req).await,
                        Err(error) => Outcome {
                            error: Some(format!("the request was not valid: {error}")),
                            ..Outcome::default()
                        },
                    };
                    let outcome = Outcome {
                        request_id: id,
                        server_pid: std::process::id(),
                        ..outcome
                    };
                    let r = blocking(move || requests::answer(&root, &instance, &outcome)).await;
                    if let Some(Err(e)) = r {
                        tracing::error!(error = %e, "cannot answer a request from the terminal");
                    }
                });
            }
        }
    });
}

/// Do what the request asks, through the engine's normal paths.
async fn carry_out(m: &Manager, req: Request) -> Outcome {
    tracing::info!(session = %req.session_id, request = req.ask.name(), from_pid = req.from_pid, "request from the terminal");
    let id = req.session_id;
    match req.ask {
        Ask::End {
            verdict,
            summary,
            integrate,
            accept_outside_symlinks,
        } => match m
            .end_integrated_with(
                &id,
                verdict,
                summary,
                integrate.as_deref(),
                accept_outside_symlinks,
            )
            .await
        {
            Ok((s, interrupted, integrated)) => Outcome {
                status: Some(s.status),
                interrupted,
                integrated: integrated.map(|i| IntegratedFacts {
                    integrate: i.integrate.map(|x| x.as_str().to_string()),
                    merged: i.merged,
                    commit: i.commit,
                    branch: i.branch,
                    state: i.state,
                    warning: i.warning,
                    outside_links: i
                        .outside_links
                        .into_iter()
                        .map(|l| LinkFacts {
                            path: l.path,
                            target: l.target,
                        })
                        .collect(),
                }),
                ..Outcome::default()
            },
            Err(e) => failed(e),
        },
        Ask::Converse { message } => {
            // The watchers see a converse from the terminal like a host's.
            let call = Call::Converse {
                session_id: id.clone(),
                message: message.clone(),
                // The terminal waits for the turn.
                mode: crate::model::Mode::Sync,
            };
            let notes = match m.check_call(&call, false).await {
                Ok(n) => n,
                Err(refusal) => {
                    return Outcome {
                        error: Some(refusal.to_string()),
                        ..Outcome::default()
                    };
                }
            };
            match m.converse(&id, &message).await {
                Ok((sid, turn)) => {
                    m.attach_notes(&sid, Some(turn), &notes).await;
                    Outcome {
                        turn: Some(turn),
                        notes: notes
                            .iter()
                            .map(|n| format!("watcher {}: {}", n.watcher, n.message))
                            .collect(),
                        ..Outcome::default()
                    }
                }
                Err(e) => failed(e),
            }
        }
        Ask::Interrupt { turn } => match m
            .interrupt_turn(&id, turn, "interrupted from the terminal")
            .await
        {
            Ok(interrupted) => Outcome {
                interrupted,
                ..Outcome::default()
            },
            Err(e) => failed(e),
        },
    }
}

fn failed(e: super::ManagerError) -> Outcome {
    Outcome {
        error: Some(e.to_string()),
        ..Outcome::default()
    }
}
