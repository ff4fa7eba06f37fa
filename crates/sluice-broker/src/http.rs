//! The metrics endpoint: a deliberately tiny HTTP/1.1 server on tokio.
//!
//! `GET /metrics` answers the Prometheus text exposition ([`crate::metrics::render`]),
//! `GET /health` a small JSON body (200 while the broker serves, 503 once it shuts down);
//! any other path is 404, any other method 405, anything unparsable 400, an oversized
//! request head 431. `HEAD` is answered like `GET` without the body.
//!
//! Why no HTTP crate: two fixed GET routes do not need a router, a body parser or
//! keep-alive, and a hand-sized server makes every limit explicit. One request per
//! connection (`Connection: close`), so there is no pipelining or keep-alive state to get
//! wrong. A slow or hostile client cannot hurt the broker: at most
//! `metrics.max.connections` connections are served at once (more are closed on accept),
//! a request head larger than `metrics.request.max.bytes` is refused, and each connection
//! lives at most `metrics.request.timeout.ms` in total (reading, rendering, writing).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::broker::Broker;
use crate::config::BrokerConfig;

/// The limits of the endpoint, from `metrics.*` settings.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub connections_max: usize,
    pub request_bytes_max: usize,
    pub timeout: Duration,
}

impl HttpLimits {
    pub fn from_config(config: &BrokerConfig) -> HttpLimits {
        HttpLimits {
            connections_max: config.metrics_max_connections(),
            request_bytes_max: config.metrics_request_max_bytes(),
            timeout: Duration::from_millis(config.metrics_request_timeout_ms()),
        }
    }
}

/// Binds `metrics.listen` when it is set; `None` when the endpoint is off (the default).
pub async fn bind(config: &BrokerConfig) -> Result<Option<TcpListener>, crate::StartError> {
    let Some((host, port)) = config.metrics_listen() else {
        return Ok(None);
    };
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let listener =
        TcpListener::bind(&address)
            .await
            .map_err(|source| crate::StartError::Listen {
                address: address.clone(),
                source,
            })?;
    Ok(Some(listener))
}

/// Binds and spawns the endpoint when `metrics.listen` is set (else `None`); the task
/// ends at shutdown.
pub async fn spawn(
    config: &BrokerConfig,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, crate::StartError> {
    let Some(listener) = bind(config).await? else {
        return Ok(None);
    };
    let address = listener.local_addr().ok();
    tracing::info!(
        ?address,
        "metrics endpoint listening (GET /metrics, GET /health)"
    );
    let limits = HttpLimits::from_config(config);
    Ok(Some(tokio::spawn(serve(
        listener, broker, limits, shutdown,
    ))))
}

/// Serves the endpoint until shutdown. Connections still open then are dropped: they
/// only read metrics.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        tracing::debug!(%peer, "metrics endpoint busy; closing connection");
                        continue;
                    };
                    let broker = Arc::clone(&broker);
                    connections.spawn(async move {
                        let _slot = slot;
                        let served = tokio::time::timeout(
                            limits.timeout,
                            serve_connection(stream, &broker, limits.request_bytes_max),
                        )
                        .await;
                        if served.is_err() {
                            tracing::debug!(%peer, "metrics request timed out; closing connection");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = crate::server::stopped(&mut shutdown) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
}

/// An answer: status line, content type and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// `HEAD`: headers only.
    pub head_only: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            head_only: false,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            505 => "HTTP Version Not Supported",
            _ => "Error",
        };
        let allow = if self.status == 405 {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        let mut bytes = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// What a request head asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Health,
}

/// Parses a request head (up to and excluding the blank line). `Err` is the answer to a
/// request that cannot be served.
pub fn parse_request(head: &[u8]) -> Result<(Route, bool), Response> {
    let bad = || Response::text(400, "bad request");
    let head = std::str::from_utf8(head).map_err(|_| bad())?;
    let request_line = head.lines().next().ok_or_else(bad)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !version.starts_with("HTTP/") {
        return Err(bad());
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Response::text(505, "only HTTP/1.0 and HTTP/1.1"));
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(Response::text(405, "only GET and HEAD")),
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match path {
        "/metrics" => Ok((Route::Metrics, head_only)),
        "/health" => Ok((Route::Health, head_only)),
        _ => Err(Response {
            head_only,
            ..Response::text(404, "not found; try /metrics or /health")
        }),
    }
}

/// Where the request head ends (after `\r\n\r\n`, or a bare `\n\n`), if it does.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Reads the request head, bounded by `request_bytes_max`. `Ok(None)`: the client
/// went away before completing it.
async fn read_head(
    stream: &mut TcpStream,
    request_bytes_max: usize,
) -> std::io::Result<Result<Option<Vec<u8>>, Response>> {
    let mut buf = Vec::with_capacity(request_bytes_max.min(1024));
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(Ok(None));
        }
        buf.extend_from_slice(&chunk[..read]);
        if let Some(end) = head_end(&buf) {
            if end > request_bytes_max {
                return Ok(Err(Response::text(431, "request too large")));
            }
            buf.truncate(end);
            return Ok(Ok(Some(buf)));
        }
        if buf.len() >= request_bytes_max {
            return Ok(Err(Response::text(431, "request too large")));
        }
    }
}

async fn serve_connection(mut stream: TcpStream, broker: &Broker, request_bytes_max: usize) {
    let peer: Option<SocketAddr> = stream.peer_addr().ok();
    let response = match read_head(&mut stream, request_bytes_max).await {
        Err(error) => {
            tracing::debug!(?peer, %error, "metrics connection read failed");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(refusal)) => refusal,
        Ok(Ok(Some(head))) => match parse_request(&head) {
            Err(refusal) => refusal,
            Ok((route, head_only)) => Response {
                head_only,
                ..answer(route, broker)
            },
        },
    };
    if response.status >= 400 {
        tracing::debug!(
            ?peer,
            status = response.status,
            "metrics endpoint refused a request"
        );
    }
    if let Err(error) = stream.write_all(&response.to_bytes()).await {
        tracing::debug!(?peer, %error, "metrics connection write failed");
        return;
    }
    let _ = stream.shutdown().await;
}

fn answer(route: Route, broker: &Broker) -> Response {
    match route {
        Route::Metrics => Response {
            status: 200,
            content_type: crate::metrics::CONTENT_TYPE,
            body: crate::metrics::render(broker),
            head_only: false,
        },
        Route::Health => {
            let serving = !*broker.shutdown_signal().borrow();
            let body = serde_json::json!({
                "status": if serving { "serving" } else { "shutting_down" },
                "node_id": broker.node_id(),
                "cluster_id": broker.cluster_id(),
            });
            Response {
                status: if serving { 200 } else { 503 },
                content_type: "application/json",
                body: format!("{body}\n"),
                head_only: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_get_and_head_of_known_paths() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap(),
            (Route::Metrics, false)
        );
        assert_eq!(
            parse_request(b"HEAD /health?probe=1 HTTP/1.0\r\n").unwrap(),
            (Route::Health, true)
        );
    }

    #[test]
    fn refuses_everything_else_with_a_4xx_or_505() {
        let status = |head: &[u8]| parse_request(head).unwrap_err().status;
        assert_eq!(status(b"GET /nope HTTP/1.1\r\n"), 404);
        assert_eq!(status(b"POST /metrics HTTP/1.1\r\n"), 405);
        assert_eq!(status(b"GET /metrics HTTP/2.0\r\n"), 505);
        assert_eq!(status(b"GET /metrics\r\n"), 400);
        assert_eq!(status(b"GET  /metrics HTTP/1.1\r\n"), 400);
        assert_eq!(status(b"\xff\xfe garbage"), 400);
        assert_eq!(status(b""), 400);
        assert_eq!(status(b"\x00\x00\x00\x10\x00\x12"), 400);
    }

    #[test]
    fn response_bytes_carry_length_and_close() {
        let response = Response::text(404, "not found");
        let text = String::from_utf8(response.to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 10\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nnot found\n"));
        let head = Response {
            head_only: true,
            ..Response::text(200, "ok")
        };
        let text = String::from_utf8(head.to_bytes()).unwrap();
        assert!(text.ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n"));
        let not_allowed = String::from_utf8(Response::text(405, "x").to_bytes()).unwrap();
        assert!(not_allowed.contains("Allow: GET, HEAD\r\n"));
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
