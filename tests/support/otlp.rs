//! A tiny OTLP/HTTP trace receiver for tests and benches: a loopback HTTP/1.1 server that
//! decodes each `POST` body as a protobuf `ExportTraceServiceRequest` and keeps the spans.
//! `Receiver::silent()` accepts requests and never answers (a collector that hangs).
//!
//! Included with `#[path = "support/otlp.rs"] mod otlp;` by the files that use it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::Value;

/// One span as received, with hex ids and attributes as JSON values.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub trace_state: String,
    pub name: String,
    pub start: u64,
    pub end: u64,
    pub attrs: BTreeMap<String, Value>,
    /// (name, attributes)
    pub events: Vec<(String, BTreeMap<String, Value>)>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
}

impl Span {
    pub fn attr(&self, k: &str) -> &Value {
        self.attrs.get(k).unwrap_or(&Value::Null)
    }

    pub fn events_named(&self, name: &str) -> Vec<&BTreeMap<String, Value>> {
        self.events
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, a)| a)
            .collect()
    }
}

/// One export request: its path, headers (names lowercased) and how many spans it held.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub content_type: String,
    pub spans: usize,
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    spans: Vec<Span>,
    connections: usize,
}

pub struct Receiver {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// A receiver that answers every export with 200.
    pub fn start() -> Receiver {
        Self::spawn(true)
    }

    /// A receiver that reads requests and never answers them.
    pub fn silent() -> Receiver {
        Self::spawn(false)
    }

    fn spawn(answer: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the OTLP receiver");
        let port = listener.local_addr().expect("local addr").port();
        let state: Arc<Mutex<State>> = Arc::default();
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                st.lock().unwrap().connections += 1;
                let st = st.clone();
                std::thread::spawn(move || serve(conn, st, answer));
            }
        });
        Receiver { port, state }
    }

    /// The OTLP/HTTP traces URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// The base URL (`OTEL_EXPORTER_OTLP_ENDPOINT` style, without `/v1/traces`).
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    pub fn spans(&self) -> Vec<Span> {
        self.state.lock().unwrap().spans.clone()
    }
}

fn serve(conn: TcpStream, st: Arc<Mutex<State>>, answer: bool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let chunked = headers
            .get("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            match read_chunked(&mut r) {
                Some(b) => b,
                None => return,
            }
        } else {
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len.min(64 << 20)];
            if r.read_exact(&mut body).is_err() {
                return;
            }
            body
        };
        let spans = decode(&body);
        {
            let mut s = st.lock().unwrap();
            s.requests.push(Request {
                path,
                content_type: headers.get("content-type").cloned().unwrap_or_default(),
                headers,
                spans: spans.len(),
            });
            s.spans.extend(spans);
        }
        if !answer {
            // Hold the connection without a word until the client gives up.
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
            return;
        }
        let ok =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if w.write_all(ok.as_bytes()).is_err() {
            return;
        }
    }
}

/// A `Transfer-Encoding: chunked` body (what Node's exporters send).
fn read_chunked(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size).ok()?;
        let size = usize::from_str_radix(size.trim().split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            let mut end = String::new();
            r.read_line(&mut end).ok()?;
            return Some(body);
        }
        if body.len() + size > 64 << 20 {
            return None;
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).ok()?;
        let mut crlf = String::new();
        r.read_line(&mut crlf).ok()?;
    }
}

fn decode(body: &[u8]) -> Vec<Span> {
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return vec![];
    };
    let mut out = vec![];
    for rs in req.resource_spans {
        let res = rs
            .resource
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        let service = res
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        for ss in rs.scope_spans {
            for s in ss.spans {
                let status = s.status.unwrap_or_default();
                out.push(Span {
                    service: service.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    trace_state: s.trace_state,
                    name: s.name,
                    start: s.start_time_unix_nano,
                    end: s.end_time_unix_nano,
                    attrs: attrs(&s.attributes),
                    events: s
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attrs(&e.attributes)))
                        .collect(),
                    status_code: status.code,
                    status_message: status.message,
                });
            }
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(value).unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn value(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(a.values.iter().map(value).collect()),
        Some(any_value::Value::KvlistValue(l)) => Value::Object(
            l.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.as_ref().map(value).unwrap_or(Value::Null),
                    )
                })
                .collect(),
        ),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex(b)),
        _ => Value::Null,
    }
}
