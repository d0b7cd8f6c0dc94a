//! Progress: while a sync call waits for a turn, the turn's activity goes to the host as
//! progress notifications (when the call carries a progress token), rate-limited; a call the
//! host cancels interrupts the turn it started.

use std::time::Duration;

use rmcp::RoleServer;
use rmcp::model::ProgressNotificationParam;
use rmcp::service::RequestContext;
use tokio_util::sync::CancellationToken;

use super::ZwarmServer;
use crate::sessions::ManagerError;

impl ZwarmServer {
    /// Wait for a session's turn, forwarding its progress to the host when the call carries a
    /// progress token. If the host cancels the call, the turn is interrupted.
    pub(super) async fn wait_turn(
        &self,
        session_id: &str,
        turn: u32,
        budget: Duration,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<crate::model::Session, ManagerError> {
        let token = ctx.meta.get_progress_token();
        let forward = token.map(|token| {
            let mut rx = self.manager.subscribe();
            let peer = ctx.peer.clone();
            let sid = session_id.to_string();
            let stop = CancellationToken::new();
            let stop2 = stop.clone();
            let handle = tokio::spawn(async move {
                let mut n = 0u32;
                // Token bucket: bursts of up to 10 pass, then 5 per second.
                let mut tokens = 10.0f64;
                let mut refilled = tokio::time::Instant::now();
                loop {
                    let notice = tokio::select! {
                        biased;
                        r = rx.recv() => r,
                        // Stopped: deliver what is already queued (the turn's end is sent
                        // before the waiter wakes), then finish.
                        _ = stop2.cancelled() => match rx.try_recv() {
                            Ok(n) => Ok(n),
                            Err(_) => break,
                        },
                    };
                    let notice = match notice {
                        Ok(n) => n,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    };
                    if notice.session_id != sid {
                        continue;
                    }
                    let Some(msg) = notice.message else { continue };
                    let is_end = matches!(
                        notice.event,
                        crate::event::ExecutorEvent::TurnCompleted { .. }
                            | crate::event::ExecutorEvent::TurnFailed { .. }
                    );
                    tokens = (tokens + refilled.elapsed().as_secs_f64() * 5.0).min(10.0);
                    refilled = tokio::time::Instant::now();
                    // A chatty executor cannot flood the host; the end of the turn always goes.
                    if tokens < 1.0 && !is_end {
                        continue;
                    }
                    tokens = (tokens - 1.0).max(0.0);
                    n += 1;
                    let _ = peer
                        .notify_progress(
                            ProgressNotificationParam::new(token.clone(), n as f64)
                                .with_message(msg),
                        )
                        .await;
                }
            });
            (stop, handle)
        });
        let s = self.wait_unless_asked(session_id, budget, &ctx.ct).await;
        if let Some((stop, handle)) = forward {
            stop.cancel();
            let _ = handle.await;
        }
        if ctx.ct.is_cancelled() && !self.shutdown.is_cancelled() {
            // The host gave up on this call (its timeout or the user): stop the turn it started.
            let m = self.manager.clone();
            let sid = session_id.to_string();
            tokio::spawn(async move {
                let _ = m
                    .interrupt_turn(
                        &sid,
                        Some(turn),
                        "interrupted: the MCP client cancelled the tool call that started this turn",
                    )
                    .await;
            });
        }
        s
    }
}
