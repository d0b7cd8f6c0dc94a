//! The line framing in front of rmcp's stdio transport: every line a client sends gets an
//! answer, even one rmcp would drop.
//!
//! rmcp ignores lines that are not JSON (so an echoing peer cannot start an error storm), drops
//! lines over its size limit without a word, and answers a known method whose parameters do
//! not fit its types as an unknown method (−32601). A host then waits for a reply that never
//! comes, or is told the wrong thing. This layer reads stdin itself and answers, per JSON-RPC:
//!
//! * −32700 (parse error) for a line that is not JSON — invalid UTF-8, a lone surrogate escape,
//!   garbage — and for a line over [`max_request_bytes`], naming the limit;
//! * −32602 (invalid params) for a request to a method zwarm serves whose `params` are not what
//!   the method takes, naming the field (e.g. `arguments` given as a string);
//!
//! and passes every other line through to rmcp unchanged. Parse-error replies are rate-limited
//! (a burst of 20, then 10 a second), so a peer that echoes them cannot make zwarm spin. Replies
//! from both sources go to stdout through one writer, a whole line at a time.

use rmcp::RoleServer;
use rmcp::service::{RunningService, ServerInitializeError};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ZwarmServer;

/// The largest request line zwarm reads: rmcp's own limit (16 MiB), or more when the
/// configured `max_task_bytes` needs it (a task is JSON-escaped in the request).
pub fn max_request_bytes(max_task_bytes: usize) -> usize {
    let floor = 16 * 1024 * 1024;
    floor.max(max_task_bytes.saturating_mul(2).saturating_add(64 * 1024))
}

/// JSON-RPC "Parse error".
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC "Invalid params".
pub const INVALID_PARAMS: i64 = -32602;

/// Serve `server` over a byte stream pair (stdin, stdout) through the framing layer.
pub async fn serve<R, W>(
    server: ZwarmServer,
    input: R,
    output: W,
    ct: CancellationToken,
) -> Result<RunningService<RoleServer, ZwarmServer>, ServerInitializeError>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let limit = max_request_bytes(server.max_task_bytes());
    let (to_rmcp, rmcp_in) = tokio::io::duplex(256 * 1024);
    let (rmcp_out, from_rmcp) = tokio::io::duplex(256 * 1024);
    let (lines_tx, lines_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(write_lines(output, lines_rx));
    tokio::spawn(forward_replies(from_rmcp, lines_tx.clone()));
    tokio::spawn(read_requests(input, to_rmcp, lines_tx, limit, ct.clone()));
    let transport = rmcp::transport::async_rw::AsyncRwTransport::<RoleServer, _, _>::new_server(
        rmcp_in, rmcp_out,
    )
    .with_max_line_length(limit.saturating_add(2));
    rmcp::ServiceExt::serve_with_ct(server, transport, ct).await
}

/// The one writer of stdout.
async fn write_lines<W: AsyncWrite + Unpin>(mut out: W, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(line) = rx.recv().await {
        if out.write_all(&line).await.is_err() {
            return;
        }
        // Write what else is queued before flushing.
        while let Ok(more) = rx.try_recv() {
            if out.write_all(&more).await.is_err() {
                return;
            }
        }
        if out.flush().await.is_err() {
            return;
        }
    }
}

/// rmcp's replies, a line at a time, to the writer.
async fn forward_replies<R: AsyncRead + Unpin>(from: R, tx: mpsc::UnboundedSender<Vec<u8>>) {
    let mut r = BufReader::new(from);
    loop {
        let mut line = Vec::new();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    }
}

/// Read the client's lines; answer the bad ones, pass the rest to rmcp.
async fn read_requests<R, W>(
    input: R,
    mut to_rmcp: W,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    limit: usize,
    ct: CancellationToken,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut input = BufReader::with_capacity(64 * 1024, input);
    let mut limiter = Limiter::new();
    loop {
        let line = tokio::select! {
            _ = ct.cancelled() => break,
            l = read_line(&mut input, limit) => l,
        };
        let reply = match line {
            Line::Eof => break,
            Line::TooLong(n) => Some(error_reply(
                Value::Null,
                PARSE_ERROR,
                format!(
                    "request too large: {n} bytes or more, over zwarm's limit of {limit} bytes per request line ({} MiB). Send a shorter request (a long task can be split, or written to a file the executor reads).",
                    limit / (1024 * 1024)
                ),
            )),
            Line::Bytes(bytes) => match check(&bytes) {
                Ok(()) => {
                    if to_rmcp.write_all(&bytes).await.is_err()
                        || to_rmcp.write_all(b"\n").await.is_err()
                        || to_rmcp.flush().await.is_err()
                    {
                        break;
                    }
                    None
                }
                Err(reply) => Some(reply),
            },
        };
        if let Some(reply) = reply {
            let parse_error = reply["error"]["code"] == json!(PARSE_ERROR);
            if parse_error && !limiter.allow() {
                tracing::debug!("parse error not answered (rate limit)");
                continue;
            }
            tracing::warn!(error = %reply["error"]["message"], "bad request line");
            let mut out = reply.to_string().into_bytes();
            out.push(b'\n');
            if tx.send(out).is_err() {
                break;
            }
        }
    }
    // EOF (or shutdown): rmcp sees its input end.
    let _ = to_rmcp.shutdown().await;
}

enum Line {
    Bytes(Vec<u8>),
    /// Over the limit: at least this many bytes (the rest of the line was read and dropped).
    TooLong(usize),
    Eof,
}

/// One `\n`-terminated line (without the `\n` and a trailing `\r`), never buffering more than
/// `limit` bytes of it.
async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>, limit: usize) -> Line {
    let mut buf = Vec::new();
    let mut dropped = 0usize;
    loop {
        let chunk = match r.fill_buf().await {
            Ok(c) => c,
            Err(_) => return Line::Eof,
        };
        if chunk.is_empty() {
            // EOF: a last line without its newline is incomplete; nothing to deliver.
            return Line::Eof;
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if dropped == 0 && buf.len() + take <= limit {
            buf.extend_from_slice(&chunk[..take]);
        } else {
            dropped = dropped.max(buf.len()) + take;
            buf = Vec::new();
        }
        r.consume(take + usize::from(done));
        if done {
            if dropped > 0 {
                return Line::TooLong(dropped);
            }
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Line::Bytes(buf);
        }
    }
}

fn error_reply(id: Value, code: i64, message: String) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Whether a line may go on to rmcp; else the reply to send.
fn check(bytes: &[u8]) -> Result<(), Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        // rmcp skips empty lines too; nothing to answer.
        return Ok(());
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        error_reply(
            Value::Null,
            PARSE_ERROR,
            format!(
                "Parse error: the request is not valid UTF-8 (invalid byte at offset {}). Send JSON-RPC as UTF-8 JSON, one message per line.",
                e.valid_up_to()
            ),
        )
    })?;
    let v: Value = serde_json::from_str(text).map_err(|e| {
        error_reply(
            Value::Null,
            PARSE_ERROR,
            format!("Parse error: {e}. Send one JSON-RPC message per line."),
        )
    })?;
    check_params(&v)
}

/// Methods zwarm serves whose parameters it checks here, with what each field must be.
fn check_params(v: &Value) -> Result<(), Value> {
    let (Some(method), Some(id)) = (v.get("method").and_then(Value::as_str), v.get("id")) else {
        return Ok(()); // notifications, responses and malformed messages: rmcp's business
    };
    let fields: &[(&str, Kind, bool)] = match method {
        "tools/call" => &[
            ("name", Kind::String, true),
            ("arguments", Kind::Object, false),
        ],
        "prompts/get" => &[
            ("name", Kind::String, true),
            ("arguments", Kind::Object, false),
        ],
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            &[("uri", Kind::String, true)]
        }
        "tools/list" | "resources/list" | "resources/templates/list" | "prompts/list" => {
            &[("cursor", Kind::String, false)]
        }
        _ => return Ok(()),
    };
    let bad = |what: String| {
        Err(error_reply(
            id.clone(),
            INVALID_PARAMS,
            format!("Invalid params for {method}: {what}"),
        ))
    };
    let params = match v.get("params") {
        None | Some(Value::Null) => {
            return match fields.iter().find(|(_, _, required)| *required) {
                Some((name, kind, _)) => bad(format!(
                    "`params` is missing; it needs `{name}` ({}).",
                    kind.name()
                )),
                None => Ok(()),
            };
        }
        Some(Value::Object(p)) => p,
        Some(other) => {
            return bad(format!(
                "`params` must be an object, got {}.",
                type_name(other)
            ));
        }
    };
    for (name, kind, required) in fields {
        match params.get(*name) {
            None | Some(Value::Null) if *required => {
                return bad(format!("`{name}` is missing; it must be {}.", kind.name()));
            }
            None | Some(Value::Null) => {}
            Some(x) if !kind.fits(x) => {
                return bad(format!(
                    "`{name}` must be {}, got {}.",
                    kind.name(),
                    type_name(x)
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    String,
    Object,
}

impl Kind {
    fn fits(self, v: &Value) -> bool {
        match self {
            Kind::String => v.is_string(),
            Kind::Object => v.is_object(),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::String => "a string",
            Kind::Object => "an object",
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A burst of 20 parse-error replies, then 10 a second.
struct Limiter {
    tokens: f64,
    at: std::time::Instant,
}

impl Limiter {
    fn new() -> Limiter {
        Limiter {
            tokens: 20.0,
            at: std::time::Instant::now(),
        }
    }
    fn allow(&mut self) -> bool {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * 10.0).min(20.0);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<(), Value>) -> i64 {
        r.err()
            .and_then(|v| v["error"]["code"].as_i64())
            .unwrap_or(0)
    }

    #[test]
    fn bad_lines_get_parse_errors_and_bad_params_name_the_field() {
        assert_eq!(code(check(b"garbage")), PARSE_ERROR);
        assert_eq!(code(check(b"{\"a\":\"\xff\"}")), PARSE_ERROR);
        assert_eq!(code(check(br#"{"a":"\ud800"}"#)), PARSE_ERROR);
        let r = check(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"delegate","arguments":"x"}}"#,
        )
        .unwrap_err();
        assert_eq!(r["error"]["code"], json!(INVALID_PARAMS));
        assert_eq!(r["id"], json!(7));
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("`arguments`")
        );
        assert!(check(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_sessions"}}"#).is_ok());
        assert!(check(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).is_ok());
    }

    #[tokio::test]
    async fn a_long_line_is_dropped_without_buffering_it_and_the_next_one_is_read() {
        let mut data = vec![b'x'; 100_000];
        data.extend_from_slice(b"\n{}\r\n");
        let mut r = BufReader::with_capacity(4096, &data[..]);
        assert!(matches!(read_line(&mut r, 1000).await, Line::TooLong(n) if n >= 100_000));
        assert!(matches!(read_line(&mut r, 1000).await, Line::Bytes(b) if b == b"{}"));
        assert!(matches!(read_line(&mut r, 1000).await, Line::Eof));
    }
}
