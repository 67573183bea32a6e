//! The OpenAI-compatible embedder against a local HTTP server of the test's
//! own, which answers as such a service does (and sometimes does not).

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vectors::embed::HttpEmbedder;
use vectors::{EmbedError, Embedder};

/// How the server answers a request body.
type Answer = Arc<dyn Fn(&Value) -> (u16, String) + Send + Sync>;

/// Serves HTTP/1.1 on a free port; records each request's auth header and body.
async fn serve(answer: Answer) -> (String, Arc<Mutex<Vec<(Option<String>, Value)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Headers, then as much body as Content-Length says.
                let (head_end, length) = loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // A TLS handshake (record type 22) is not HTTP: hang up.
                    if buf.first() == Some(&0x16) {
                        return;
                    }
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let auth = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("authorization: ")
                            .or_else(|| l.strip_prefix("Authorization: "))
                    })
                    .map(str::to_owned);
                let body: Value = serde_json::from_slice(&buf[head_end..head_end + length])
                    .unwrap_or(Value::Null);
                let (status, reply) = answer(&body);
                log.lock().expect("log").push((auth, body));
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/v1"), seen)
}

/// Like a real service: one vector per input, listed in reverse order (the
/// client must use `index`), not quite unit length.
fn embeddings(dimension: usize) -> Answer {
    Arc::new(move |body: &Value| {
        let inputs = body["input"].as_array().cloned().unwrap_or_default();
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .rev()
            .map(|(i, text)| {
                let len = text.as_str().map_or(0, str::len) as f32;
                let mut v = vec![0.5_f32; dimension];
                v[0] = len;
                json!({"object": "embedding", "index": i, "embedding": v})
            })
            .collect();
        (
            200,
            json!({"object": "list", "data": data, "model": body["model"]}).to_string(),
        )
    })
}

#[tokio::test]
async fn embeds_through_an_openai_compatible_service() -> anyhow::Result<()> {
    let (url, seen) = serve(embeddings(8)).await;
    let embedder = HttpEmbedder::new(&url, "text-embedding-ada-002", 8, Some("sk-test".into()))?;
    assert_eq!(embedder.info().dimension, 8);
    let texts: Vec<String> = (0..300).map(|i| "x".repeat(i + 1)).collect();
    let vectors = embedder.embed(texts.clone()).await?;
    assert_eq!(vectors.len(), 300);
    for (text, v) in texts.iter().zip(&vectors) {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalised");
        // In the texts' order, whatever order the service listed them in.
        let expected =
            text.len() as f32 / (text.len() as f32 * text.len() as f32 + 7.0 * 0.25).sqrt();
        assert!((v[0] - expected).abs() < 1e-5);
    }
    let requests = seen.lock().expect("seen").clone();
    assert_eq!(requests.len(), 2, "batches of 256");
    for (auth, body) in &requests {
        assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
        assert_eq!(body["model"], json!("text-embedding-ada-002"));
    }
    Ok(())
}

#[tokio::test]
async fn a_wrong_dimension_or_count_is_a_bad_answer() -> anyhow::Result<()> {
    let (url, _) = serve(embeddings(4)).await;
    let embedder = HttpEmbedder::new(&url, "m", 8, None)?;
    let err = embedder
        .embed(vec!["a".into()])
        .await
        .expect_err("dimension 4");
    assert!(
        matches!(err, EmbedError::BadAnswer(ref m) if m.contains("dimension 4")),
        "{err}"
    );

    let (url, _) = serve(Arc::new(|_: &Value| (200, json!({"data": []}).to_string()))).await;
    let embedder = HttpEmbedder::new(&url, "m", 8, None)?;
    let err = embedder
        .embed(vec!["a".into()])
        .await
        .expect_err("no vectors");
    assert!(matches!(err, EmbedError::BadAnswer(_)), "{err}");

    let (url, _) = serve(Arc::new(|_: &Value| {
        (400, json!({"error": {"message": "bad model"}}).to_string())
    }))
    .await;
    let embedder = HttpEmbedder::new(&url, "m", 8, None)?;
    let err = embedder.embed(vec!["a".into()]).await.expect_err("400");
    assert!(
        matches!(err, EmbedError::BadAnswer(ref m) if m.contains("bad model")),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_or_absent_service_is_unavailable() -> anyhow::Result<()> {
    let (url, _) = serve(Arc::new(|_: &Value| (503, "{}".to_owned()))).await;
    let embedder = HttpEmbedder::new(&url, "m", 8, None)?;
    assert!(matches!(
        embedder.embed(vec!["a".into()]).await,
        Err(EmbedError::Unavailable(_))
    ));

    let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let embedder = HttpEmbedder::new(&format!("http://{closed}/v1"), "m", 8, None)?;
    assert!(matches!(
        embedder.embed(vec!["a".into()]).await,
        Err(EmbedError::Unavailable(_))
    ));

    assert!(
        HttpEmbedder::new("ftp://example.com/v1", "m", 8, None).is_err(),
        "not an HTTP URL"
    );
    // An https endpoint gets TLS: a plain-HTTP server behind an https URL
    // is a failed handshake, not a silent downgrade.
    let (url, seen) = serve(embeddings(8)).await;
    let https = url.replacen("http://", "https://", 1);
    let embedder = HttpEmbedder::new(&https, "m", 8, None)?;
    assert!(matches!(
        embedder.embed(vec!["a".into()]).await,
        Err(EmbedError::Unavailable(_))
    ));
    assert!(
        seen.lock().expect("seen").is_empty(),
        "no request was sent in clear text"
    );
    Ok(())
}
