//! Prometheus metrics: one registry for the process, and a `/metrics`
//! endpoint (axum) for roles that have no HTTP server of their own.

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::http::header;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

/// The process-wide registry every component registers its metrics in.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::new)
}

/// The registry in Prometheus' text format.
pub fn render() -> String {
    let mut buffer = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&registry().gather(), &mut buffer) {
        tracing::warn!(%error, "cannot encode metrics");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// Serves `GET /metrics` (and `GET /healthz`, for liveness probes) on
/// `addr` until the task is dropped. Returns the bound address (useful
/// with port 0).
pub async fn serve(addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "the metrics endpoint stopped");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_the_registry_in_text_format() {
        let counter =
            prometheus::IntCounter::new("infra_test_total", "a test counter").expect("counter");
        registry()
            .register(Box::new(counter.clone()))
            .expect("register");
        counter.inc_by(3);
        let (addr, task) = serve("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
        socket
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        socket.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("infra_test_total 3"), "{response}");
        let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
        socket
            .write_all(b"GET /nothing HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        socket.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        task.abort();
    }
}
