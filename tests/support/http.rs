//! Minimal HTTP/1.1 server for the mocks: one std thread per server with its own
//! current-thread tokio runtime, one task per connection.
//!
//! Requests: request line + headers, body by `content-length` (missing = empty) or
//! `transfer-encoding: chunked`; `expect: 100-continue` is answered. Responses: JSON (with
//! content-length, keep-alive unless the client asked for `connection: close`), empty (HEAD), or
//! SSE (`connection: close`, no length: the body ends when the socket is closed).
//! Malformed requests get a 400 and the connection is closed; I/O errors just end the connection.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::RecordedRequest;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 256 * 1024 * 1024;

/// A parsed request.
pub(crate) struct Request {
    pub(crate) method: String,
    /// Request target as sent (path + query).
    pub(crate) target: String,
    /// Lowercased names; repeated headers joined with ", ".
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    /// The target without the query string.
    pub(crate) fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The body as JSON: empty → `{}` for POST / `null` otherwise; not JSON → `{"_raw": …}`.
    pub(crate) fn json_body(&self) -> Value {
        if self.body.is_empty() {
            return if self.method == "POST" {
                json!({})
            } else {
                Value::Null
            };
        }
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| json!({"_raw": String::from_utf8_lossy(&self.body)}))
    }

    pub(crate) fn recorded(&self, body: Value) -> RecordedRequest {
        RecordedRequest {
            method: self.method.clone(),
            path: self.target.clone(),
            headers: self.headers.clone(),
            body,
        }
    }
}

/// One piece of an SSE body.
pub(crate) enum SseStep {
    /// Written as `event: <type>\ndata: <json>\n\n`.
    Event(Value),
    Sleep(Duration),
}

pub(crate) enum Body {
    Json(Value),
    /// No body, `content-length: 0` (HEAD).
    Empty,
    Sse(Vec<SseStep>),
}

pub(crate) struct Response {
    pub(crate) status: u16,
    /// Extra headers, written after the content-type / content-length (JSON) or
    /// content-type / cache-control (SSE) headers.
    pub(crate) headers: Vec<(String, String)>,
    /// Sleep before anything is written.
    pub(crate) delay: Option<Duration>,
    pub(crate) body: Body,
}

impl Response {
    pub(crate) fn json(status: u16, body: Value) -> Self {
        Response {
            status,
            headers: Vec::new(),
            delay: None,
            body: Body::Json(body),
        }
    }

    pub(crate) fn empty(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            delay: None,
            body: Body::Empty,
        }
    }

    pub(crate) fn sse(events: Vec<SseStep>) -> Self {
        Response {
            status: 200,
            headers: Vec::new(),
            delay: None,
            body: Body::Sse(events),
        }
    }

    pub(crate) fn with_headers(mut self, headers: Vec<(String, String)>) -> Self {
        self.headers.extend(headers);
        self
    }

    pub(crate) fn with_delay(mut self, delay: Option<Duration>) -> Self {
        self.delay = delay;
        self
    }
}

/// The mock logic: called once per request, synchronously (keep it short; all waiting is
/// expressed as `Response::delay` / `SseStep::Sleep`).
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &Request) -> Response;
}

/// A running server; dropping it stops the accept loop and cancels all connections.
pub(crate) struct Server {
    pub(crate) port: u16,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Server {
    /// Bind 127.0.0.1:0 and serve on a new thread. Panics if binding or the runtime fails.
    pub(crate) fn start(name: &str, handler: Arc<dyn Handler>) -> Server {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .unwrap_or_else(|e| panic!("{name}: cannot bind 127.0.0.1:0: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{name}: local_addr: {e}"))
            .port();
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{name}: set_nonblocking: {e}"));
        let (tx, rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        std::thread::Builder::new()
            .name(format!("{name}-{port}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(accept_loop(listener, handler, rx, ready_tx));
                // Dropping `rt` here cancels every connection task (and closes its socket).
            })
            .unwrap_or_else(|e| panic!("{name}: cannot spawn server thread: {e}"));
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{name}: {e}"),
            Err(_) => panic!("{name}: server thread died during start-up"),
        }
        Server {
            port,
            shutdown: Some(tx),
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    handler: Arc<dyn Handler>,
    mut shutdown: oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("listener: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_connection(stream, handler.clone()));
                }
                // e.g. EMFILE: back off a little instead of spinning
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

enum ReadError {
    Io,
    Bad(String),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Io
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Read more bytes into `buf`; `false` at EOF.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.stream.read(&mut tmp).await?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n > 0)
    }

    /// The request head (without the blank line); `Ok(None)` on a clean EOF between requests.
    async fn read_head(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        loop {
            // RFC 9112 §2.2: ignore empty lines before the request line
            let lead = self
                .buf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            self.buf.drain(..lead);
            if let Some((end, term)) = find_head_end(&self.buf) {
                let head = self.buf[..end].to_vec();
                self.buf.drain(..end + term);
                return Ok(Some(head));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadError::Bad("request head too large".into()));
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Io)
                };
            }
        }
    }

    async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(ReadError::Io);
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One line without its line terminator.
    async fn read_line(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadError::Bad("line too long".into()));
            }
            if !self.fill().await? {
                return Err(ReadError::Io);
            }
        }
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let line = String::from_utf8_lossy(&line);
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| ReadError::Bad(format!("bad chunk size {size_text:?}")))?;
            if size == 0 {
                // trailers, up to the empty line
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                return Err(ReadError::Bad("body too large".into()));
            }
            body.extend(self.read_exact(size).await?);
            if !self.read_line().await?.is_empty() {
                return Err(ReadError::Bad("missing CRLF after chunk".into()));
            }
        }
    }

    /// Read one request. `Ok(None)`: the client closed the connection between requests.
    async fn read_request(&mut self) -> Result<Option<Request>, ReadError> {
        let Some(head) = self.read_head().await? else {
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&head);
        let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ReadError::Bad(format!("bad request line {request_line:?}")));
        };
        if !version.starts_with("HTTP/1.") {
            return Err(ReadError::Bad(format!("unsupported version {version:?}")));
        }
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                return Err(ReadError::Bad(format!("bad header line {line:?}")));
            };
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() {
                return Err(ReadError::Bad(format!("bad header line {line:?}")));
            }
            let value = value.trim().to_string();
            headers
                .entry(name)
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        if version == "HTTP/1.0" && !headers.contains_key("connection") {
            headers.insert("connection".into(), "close".into());
        }
        let expect_continue = headers
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        let chunked = headers
            .get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let body = if chunked {
            if expect_continue && self.buf.is_empty() {
                self.stream
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await?;
            }
            self.read_chunked().await?
        } else {
            let len = match headers.get("content-length") {
                None => 0,
                Some(v) => v
                    .split(',')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| ReadError::Bad(format!("bad content-length {v:?}")))?,
            };
            if len > MAX_BODY {
                return Err(ReadError::Bad("body too large".into()));
            }
            if expect_continue && len > self.buf.len() {
                self.stream
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await?;
            }
            self.read_exact(len).await?
        };
        Ok(Some(Request {
            method: method.to_string(),
            target: target.to_string(),
            headers,
            body,
        }))
    }
}

/// Position of the end of the head and the length of the terminator (`\r\n\r\n` or `\n\n`).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) if b < a => Some((b, 2)),
        (Some(a), _) => Some((a, 4)),
        (None, Some(b)) => Some((b, 2)),
        (None, None) => None,
    }
}

async fn serve_connection(stream: TcpStream, handler: Arc<dyn Handler>) {
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    loop {
        let req = match conn.read_request().await {
            Ok(Some(req)) => req,
            Ok(None) | Err(ReadError::Io) => break,
            Err(ReadError::Bad(msg)) => {
                let resp = Response::json(
                    400,
                    json!({"error": {"message": format!("mock: bad request: {msg}"), "type": "invalid_request_error"}}),
                );
                let _ = write_response(&mut conn.stream, resp, false).await;
                break;
            }
        };
        let wants_close = req
            .headers
            .get("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"));
        let resp = handler.handle(&req);
        match write_response(&mut conn.stream, resp, !wants_close).await {
            Ok(true) => continue,
            Ok(false) | Err(_) => break,
        }
    }
    let _ = conn.stream.shutdown().await;
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

fn head(status: u16, fixed: &[(&str, String)], extra: &[(String, String)], close: bool) -> String {
    let mut h = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in fixed {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    for (k, v) in extra {
        // never let a script inject header lines
        let k: String = k.chars().filter(|c| !c.is_control()).collect();
        let v: String = v.chars().filter(|c| !c.is_control()).collect();
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        h.push_str("connection: close\r\n");
    }
    h.push_str("\r\n");
    h
}

/// Write `resp`; `Ok(true)` if the connection may serve another request.
async fn write_response(
    stream: &mut TcpStream,
    resp: Response,
    keep_alive: bool,
) -> io::Result<bool> {
    if let Some(d) = resp.delay {
        tokio::time::sleep(d).await;
    }
    match resp.body {
        Body::Json(v) => {
            let body = serde_json::to_vec(&v).unwrap_or_else(|_| b"null".to_vec());
            let fixed = [
                ("content-type", "application/json".to_string()),
                ("content-length", body.len().to_string()),
            ];
            let mut out = head(resp.status, &fixed, &resp.headers, !keep_alive).into_bytes();
            out.extend_from_slice(&body);
            stream.write_all(&out).await?;
            stream.flush().await?;
            Ok(keep_alive)
        }
        Body::Empty => {
            let fixed = [("content-length", "0".to_string())];
            stream
                .write_all(head(resp.status, &fixed, &resp.headers, !keep_alive).as_bytes())
                .await?;
            stream.flush().await?;
            Ok(keep_alive)
        }
        Body::Sse(steps) => {
            let fixed = [
                ("content-type", "text/event-stream".to_string()),
                ("cache-control", "no-cache".to_string()),
            ];
            stream
                .write_all(head(resp.status, &fixed, &resp.headers, true).as_bytes())
                .await?;
            stream.flush().await?;
            for step in steps {
                match step {
                    SseStep::Event(ev) => {
                        let name = ev.get("type").and_then(Value::as_str).unwrap_or("message");
                        let frame = format!("event: {name}\ndata: {ev}\n\n");
                        stream.write_all(frame.as_bytes()).await?;
                        stream.flush().await?;
                    }
                    SseStep::Sleep(d) => tokio::time::sleep(d).await,
                }
            }
            let _ = stream.shutdown().await;
            Ok(false)
        }
    }
}
