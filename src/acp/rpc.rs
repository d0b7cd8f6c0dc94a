//! JSON-RPC 2.0 over newline-delimited stdio: the transport ACP uses.
//!
//! One writer task owns the agent's stdin, one reader task its stdout. Responses are matched to
//! the requests that wait for them; requests and notifications from the agent go to one
//! channel ([`Incoming`]) that the client reads in order. When the agent's stdout ends, every
//! waiting request fails with [`RpcError::Closed`] and the channel closes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// The longest line read from an agent (a file's content can be inside one).
const MAX_LINE: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The agent's stdout ended (it exited or closed it) before the answer came.
    #[error("the agent closed its connection")]
    Closed,
    /// The agent answered with a JSON-RPC error.
    #[error("the agent answered {method} with error {code}: {message}")]
    Remote {
        method: String,
        code: i64,
        message: String,
        data: Option<Value>,
    },
}

/// A message the agent sent on its own.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// A request zwarm must answer ([`Connection::respond`]).
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
}

type Answer = Result<Value, (i64, String, Option<Value>)>;
/// The requests waiting for an answer; `None` once the agent's stdout has ended.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Answer>>>>>;

/// The client end of one agent connection. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    out: mpsc::UnboundedSender<Out>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
}

impl Connection {
    /// Start the reader and writer tasks over an agent's stdin (`w`) and stdout (`r`).
    pub fn start<R, W>(r: R, w: W) -> (Connection, mpsc::UnboundedReceiver<Incoming>)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Out>();
        let (in_tx, in_rx) = mpsc::unbounded_channel::<Incoming>();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(write_loop(w, out_rx));
        tokio::spawn(read_loop(r, in_tx, pending.clone()));
        (
            Connection {
                out: out_tx,
                pending,
                next_id: Arc::new(AtomicU64::new(0)),
            },
            in_rx,
        )
    }

    /// Send a request and wait for its answer.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match self.pending.lock().as_mut() {
            Some(p) => p.insert(id, tx),
            None => return Err(RpcError::Closed),
        };
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if self.out.send(Out::Line(msg.to_string())).is_err() {
            if let Some(p) = self.pending.lock().as_mut() {
                p.remove(&id);
            }
            return Err(RpcError::Closed);
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err((code, message, data))) => Err(RpcError::Remote {
                method: method.to_string(),
                code,
                message,
                data,
            }),
            Err(_) => Err(RpcError::Closed),
        }
    }

    /// Send a notification (no answer). A closed connection is not an error here: the next
    /// request reports it.
    pub fn notify(&self, method: &str, params: Value) {
        let msg = json!({"jsonrpc": "2.0", "method": method, "params": params});
        let _ = self.out.send(Out::Line(msg.to_string()));
    }

    /// Close the agent's stdin (after what was sent before): how an ACP agent is told to end.
    pub fn close(&self) {
        let _ = self.out.send(Out::Close);
    }

    /// Answer a request of the agent.
    pub fn respond(&self, id: &Value, result: Value) {
        let msg = json!({"jsonrpc": "2.0", "id": id, "result": result});
        let _ = self.out.send(Out::Line(msg.to_string()));
    }

    /// Answer a request of the agent with an error.
    pub fn respond_error(&self, id: &Value, code: i64, message: &str) {
        let msg = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
        let _ = self.out.send(Out::Line(msg.to_string()));
    }
}

/// What the writer task is told.
enum Out {
    Line(String),
    Close,
}

async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::UnboundedReceiver<Out>) {
    while let Some(Out::Line(mut line)) = rx.recv().await {
        line.push('\n');
        if w.write_all(line.as_bytes()).await.is_err() || w.flush().await.is_err() {
            break;
        }
    }
    // Closed, every sender gone, or the pipe broke: closing stdin is how an ACP agent is told
    // to end.
    let _ = w.shutdown().await;
    drop(w);
}

async fn read_loop<R: AsyncRead + Unpin>(
    r: R,
    tx: mpsc::UnboundedSender<Incoming>,
    pending: Pending,
) {
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match read_bounded_line(&mut reader, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(msg) = serde_json::from_slice::<Value>(&buf) else {
            tracing::debug!(
                bytes = buf.len(),
                "acp: a line from the agent that is not JSON"
            );
            continue;
        };
        dispatch(msg, &tx, &pending);
    }
    // Fail every request still waiting, and every later one.
    pending.lock().take();
}

/// Read one line into `buf` (without the newline); lines over [`MAX_LINE`] are cut there.
async fn read_bounded_line<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(total);
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let keep = take - usize::from(done);
        let room = MAX_LINE.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..keep.min(room)]);
        r.consume(take);
        total += take;
        if done {
            return Ok(total);
        }
    }
}

fn dispatch(msg: Value, tx: &mpsc::UnboundedSender<Incoming>, pending: &Pending) {
    let method = msg
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_string);
    let id = msg.get("id").cloned().filter(|v| !v.is_null());
    match (method, id) {
        (Some(method), Some(id)) => {
            let params = msg.get("params").cloned().unwrap_or(Value::Null);
            let _ = tx.send(Incoming::Request { id, method, params });
        }
        (Some(method), None) => {
            let params = msg.get("params").cloned().unwrap_or(Value::Null);
            let _ = tx.send(Incoming::Notification { method, params });
        }
        (None, Some(id)) => {
            let Some(n) = id.as_u64() else { return };
            let Some(waiter) = pending.lock().as_mut().and_then(|p| p.remove(&n)) else {
                return;
            };
            let answer = match msg.get("error") {
                Some(e) => Err((
                    e.get("code").and_then(Value::as_i64).unwrap_or(-32603),
                    e.get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    e.get("data").cloned(),
                )),
                None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
            };
            let _ = waiter.send(answer);
        }
        (None, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_matched_and_agent_requests_delivered() {
        let (client_io, agent_io) = tokio::io::duplex(4096);
        let (cr, cw) = tokio::io::split(client_io);
        let (conn, mut incoming) = Connection::start(cr, cw);
        let (ar, mut aw) = tokio::io::split(agent_io);
        let agent = tokio::spawn(async move {
            let mut lines = BufReader::new(ar).lines();
            let line = lines.next_line().await.unwrap().unwrap();
            let req: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(req["method"], "initialize");
            let id = req["id"].clone();
            let out = format!(
                "not json\n{}\n{}\n{}\n",
                json!({"jsonrpc":"2.0","method":"session/update","params":{"x":1}}),
                json!({"jsonrpc":"2.0","id":"p1","method":"session/request_permission","params":{}}),
                json!({"jsonrpc":"2.0","id":id,"result":{"ok":true}}),
            );
            aw.write_all(out.as_bytes()).await.unwrap();
            let answer = lines.next_line().await.unwrap().unwrap();
            let answer: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(answer["id"], "p1");
            assert_eq!(answer["result"]["outcome"]["outcome"], "cancelled");
        });
        let r = conn.request("initialize", json!({})).await.unwrap();
        assert_eq!(r, json!({"ok": true}));
        assert!(matches!(
            incoming.recv().await,
            Some(Incoming::Notification { ref method, .. }) if method == "session/update"
        ));
        let Some(Incoming::Request { id, .. }) = incoming.recv().await else {
            panic!("expected a request");
        };
        conn.respond(&id, json!({"outcome": {"outcome": "cancelled"}}));
        agent.await.unwrap();
        // The agent's side is gone: its stdout ended.
        assert!(incoming.recv().await.is_none());
        assert!(matches!(
            conn.request("x", json!({})).await,
            Err(RpcError::Closed)
        ));
    }
}
