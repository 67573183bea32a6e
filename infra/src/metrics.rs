//! Prometheus metrics: one registry for the process, and a small `/metrics`
//! endpoint for roles that have no HTTP server of their own.

use std::net::SocketAddr;
use std::sync::OnceLock;

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// Serves `GET /metrics` on `addr` until the task is dropped. Any other
/// path is 404. Returns the bound address (useful with port 0).
pub async fn serve(addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let Ok(n) = socket.read(&mut request).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&request[..n]);
                let response = if head.starts_with("GET /metrics ")
                    || head.starts_with("GET /metrics?")
                {
                    let body = render();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        socket.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("infra_test_total 3"), "{response}");
        task.abort();
    }
}
