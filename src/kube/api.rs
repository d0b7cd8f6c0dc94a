//! A small typed client for the part of the Kubernetes API the runner uses: Jobs (create,
//! delete, list), Pods (list, watch) and pod logs (follow). JSON over HTTP/1.1 (hyper, which
//! the container runner's Docker client already brings), one connection pool per runner.
//!
//! Why not `kube` + `k8s-openapi`: measured on a 2-core machine they add minutes to a cold
//! build (docs/kubernetes.md, "Why a small client"), for a handful of endpoints.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, BodyStream, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::KubeError;

/// Longest a request that is not a stream may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest JSON answer read (a pod list of a busy namespace).
const MAX_BODY: usize = 64 << 20;

/// Where the API server is and how to authenticate to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `http://host:port`, no trailing slash.
    pub server: String,
    /// Bearer token, when the kubeconfig's user has one.
    pub token: Option<String>,
    /// The context's namespace, when it names one.
    pub namespace: Option<String>,
}

impl Endpoint {
    /// The endpoint of `context` (else the current context) in a kubeconfig in JSON form
    /// (`kubectl config view --minify --flatten -o json`).
    pub fn from_kubeconfig(text: &str, context: Option<&str>) -> Result<Endpoint, KubeError> {
        let bad = |m: String| KubeError::Kubeconfig(m);
        let v: Value = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "it is not JSON ({e}); write one with `kubectl config view --minify --flatten -o json`"
            ))
        })?;
        let ctx_name = match context {
            Some(c) => c.to_string(),
            None => v["current-context"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| bad("it has no current-context".into()))?
                .to_string(),
        };
        let named = |list: &str, name: &str| -> Option<Value> {
            v[list]
                .as_array()?
                .iter()
                .find(|e| e["name"].as_str() == Some(name))
                .cloned()
        };
        let ctx = named("contexts", &ctx_name)
            .ok_or_else(|| bad(format!("it has no context `{ctx_name}`")))?;
        let ctx = &ctx["context"];
        let cluster_name = ctx["cluster"].as_str().unwrap_or_default();
        let cluster = named("clusters", cluster_name)
            .ok_or_else(|| bad(format!("it has no cluster `{cluster_name}`")))?;
        let server = cluster["cluster"]["server"]
            .as_str()
            .ok_or_else(|| bad(format!("cluster `{cluster_name}` has no server")))?
            .trim_end_matches('/')
            .to_string();
        if !server.starts_with("http://") {
            return Err(bad(format!(
                "its server is {server}: this build speaks plain HTTP to the API server only; run `kubectl proxy` (it handles TLS and authentication) and point a kubeconfig at http://127.0.0.1:8001"
            )));
        }
        let token = ctx["user"]
            .as_str()
            .and_then(|u| named("users", u))
            .and_then(|u| u["user"]["token"].as_str().map(str::to_string));
        Ok(Endpoint {
            server,
            token,
            namespace: ctx["namespace"].as_str().map(str::to_string),
        })
    }
}

/// The API server, with a connection pool.
#[derive(Clone)]
pub struct Api {
    ep: Endpoint,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A stream of bytes from the API server (a watch or a log).
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, KubeError>> + Send>>;

impl Api {
    pub fn new(ep: Endpoint) -> Api {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(http);
        Api { ep, client }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Request<Full<Bytes>>, KubeError> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.ep.server))
            .header("accept", "application/json");
        if let Some(t) = &self.ep.token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        b.body(body).map_err(|e| KubeError::Http(e.to_string()))
    }

    /// A JSON request; a status that is not 2xx is [`KubeError::Status`] with the server's
    /// message.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, KubeError> {
        let req = self.request(method, path, body)?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| KubeError::Http(e.to_string()))?;
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| KubeError::Http(e.to_string()))?
                .to_bytes();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if !status.is_success() {
                return Err(status_error(status, &v));
            }
            Ok(v)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| {
                KubeError::Http(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))
            })?
    }

    /// A streaming GET (a watch, a followed log): the body as it arrives.
    pub async fn stream(&self, path: &str) -> Result<ByteStream, KubeError> {
        let req = self.request(Method::GET, path, None)?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| KubeError::Http("no answer to a streaming request".into()))?
            .map_err(|e| KubeError::Http(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(status_error(status, &v));
        }
        let s = BodyStream::new(resp.into_body()).filter_map(|f| async move {
            match f {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(KubeError::Http(e.to_string()))),
            }
        });
        Ok(Box::pin(s))
    }
}

fn status_error(status: StatusCode, v: &Value) -> KubeError {
    KubeError::Status {
        code: status.as_u16(),
        message: v["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string()),
    }
}

/// Splits a byte stream into lines (a watch stream is one JSON event per line).
#[derive(Default)]
pub struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// Add bytes; returns the complete lines now in the buffer.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            if line.len() > 1 {
                out.push(line[..line.len() - 1].to_vec());
            }
        }
        out
    }
}

/// `k=v,k2=v2` for a label selector (values are checked label values, no escaping needed).
pub fn selector(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Percent-encode a query value (label selectors carry `=` and `,`).
pub fn query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_json() {
        let k = r#"{"current-context":"c","contexts":[{"name":"c","context":{"cluster":"k","user":"u","namespace":"agents"}}],
            "clusters":[{"name":"k","cluster":{"server":"http://127.0.0.1:8001/"}}],"users":[{"name":"u","user":{"token":"t"}}]}"#;
        let e = Endpoint::from_kubeconfig(k, None).unwrap();
        assert_eq!(e.server, "http://127.0.0.1:8001");
        assert_eq!(e.token.as_deref(), Some("t"));
        assert_eq!(e.namespace.as_deref(), Some("agents"));
        assert!(Endpoint::from_kubeconfig(k, Some("other")).is_err());
        let tls = k.replace("http://", "https://");
        let err = Endpoint::from_kubeconfig(&tls, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("kubectl proxy"), "{err}");
        assert!(Endpoint::from_kubeconfig("apiVersion: v1", None).is_err());
    }

    #[test]
    fn lines_and_queries() {
        let mut l = Lines::default();
        assert!(l.push(b"{\"a\"").is_empty());
        assert_eq!(
            l.push(b":1}\n\n{\"b\":2}\n{"),
            vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]
        );
        assert_eq!(query("a=b,c=d"), "a%3Db%2Cc%3Dd");
    }
}
