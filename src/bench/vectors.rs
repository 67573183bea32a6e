//! `bench vectors`: the local embedder's throughput, and the embedded vector
//! store on `--points` points: upsert rate, HNSW search latency and recall@10,
//! each beside its baseline (one-at-a-time embedding, exact search) measured
//! in the same run.
//!
//! Embedding 100k texts would take most of an hour on two cores, so the
//! points are derived from `--real` real embeddings of generated operations
//! sentences: the real vectors themselves, and normalised mixes of two of
//! them with a little noise, which stay in the region of the space that
//! real sentences occupy. The queries are real embeddings of held-out
//! sentences.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use infra::Settings;
use serde_json::Map;
use uuid::Uuid;
use vectors::edge::EdgeStore;
use vectors::embed::MiniLm;
use vectors::{Collection, Point, SearchRequest, VectorStore};

use super::report::{Figure, Latencies};
use crate::cli::BenchArgs;

const QUERIES: usize = 500;
const UPSERT_BATCH: usize = 1_000;
const ONE_AT_A_TIME: usize = 100;

const SERVICES: &[&str] = &[
    "checkout API",
    "payments worker",
    "search cluster",
    "auth service",
    "PostgreSQL primary",
    "Redis cache",
    "NATS stream",
    "billing job",
    "image resizer",
    "notification sender",
    "GraphQL gateway",
    "Kubernetes ingress",
    "CI runner",
    "feature-flag service",
    "CDN edge",
];
const SYMPTOMS: &[&str] = &[
    "returns 502 errors",
    "times out under load",
    "runs out of memory",
    "has rising p99 latency",
    "drops connections",
    "fills its disk",
    "lags behind its queue",
    "serves stale data",
    "rejects valid tokens",
    "crash-loops after start",
    "spikes to full CPU",
    "loses messages",
];
const CAUSES: &[&str] = &[
    "after the last deployment",
    "since the certificate rotation",
    "when the cache is cold",
    "during the nightly batch",
    "after a config change",
    "since the schema migration",
    "when traffic doubles",
    "after a node was replaced",
    "because a dependency is slow",
];
const ACTIONS: &[&str] = &[
    "roll back the release",
    "raise the connection pool",
    "add an index",
    "restart the pods",
    "increase the memory limit",
    "purge the cache",
    "scale out the workers",
    "renew the certificate",
    "fix the retry loop",
    "throttle the clients",
];

/// A deterministic sentence about an operations problem.
fn sentence(n: usize) -> String {
    let pick = |list: &[&'static str], salt: usize| list[(n / salt + n * 7 + salt) % list.len()];
    format!(
        "The {} {} {}; we should {} (case {n}).",
        pick(SERVICES, 1),
        pick(SYMPTOMS, SERVICES.len()),
        pick(CAUSES, SERVICES.len() * SYMPTOMS.len()),
        pick(ACTIONS, 3)
    )
}

/// A small deterministic generator (no dependency needed for a bench).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f32 {
        (self.next() % 1_000_000) as f32 / 1_000_000.0
    }
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    v
}

fn bar(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {human_pos}/{human_len} {per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The local model the settings name (or the default place).
pub fn local_model(settings: &Settings) -> anyhow::Result<Arc<MiniLm>> {
    let dir = settings
        .vectors
        .model_dir
        .clone()
        .unwrap_or_else(MiniLm::default_dir);
    Ok(Arc::new(MiniLm::load(&dir)?))
}

pub async fn run(args: &BenchArgs, settings: &Settings) -> anyhow::Result<Vec<Figure>> {
    let model = local_model(settings)?;
    let real = args.real.max(2);
    let points_wanted = args.points.max(real);
    let mut figures = Vec::new();

    // Embedding: batched on every core, beside one text at a time.
    let texts: Vec<String> = (0..real + QUERIES).map(sentence).collect();
    let few: Vec<String> = texts[..ONE_AT_A_TIME].to_vec();
    let single = {
        let model = model.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            for t in &few {
                model.embed_blocking(std::slice::from_ref(t))?;
            }
            Ok::<_, vectors::EmbedError>(ONE_AT_A_TIME as f64 / started.elapsed().as_secs_f64())
        })
        .await??
    };
    let progress = bar(texts.len() as u64, "embed");
    let (embedded, batched) = {
        let model = model.clone();
        let texts = texts.clone();
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut out = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(256) {
                out.extend(model.embed_blocking(chunk)?);
                progress.inc(chunk.len() as u64);
            }
            let rate = texts.len() as f64 / started.elapsed().as_secs_f64();
            Ok::<_, vectors::EmbedError>((out, rate))
        })
        .await??
    };
    progress.finish_and_clear();
    figures.push(Figure::compared(
        "embed, batched 32 (sentences)",
        batched,
        "texts/s",
        "one at a time",
        single,
    ));
    let (base, queries) = embedded.split_at(real);

    // The points: the real vectors, then mixes of two with noise.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut points: Vec<Point> = Vec::with_capacity(points_wanted);
    for (i, v) in base.iter().enumerate() {
        points.push(Point {
            id: Uuid::from_u64_pair(0, i as u64),
            vector: v.clone(),
            payload: Map::new(),
        });
    }
    while points.len() < points_wanted {
        let a = &base[(rng.next() % real as u64) as usize];
        let b = &base[(rng.next() % real as u64) as usize];
        let w = 0.5 + 0.5 * rng.unit();
        let v: Vec<f32> = a
            .iter()
            .zip(b)
            .map(|(x, y)| w * x + (1.0 - w) * y + 0.02 * (rng.unit() - 0.5))
            .collect();
        points.push(Point {
            id: Uuid::from_u64_pair(0, points.len() as u64),
            vector: normalized(v),
            payload: Map::new(),
        });
    }

    let scratch =
        std::env::temp_dir().join(format!("copilot-bench-vectors-{}", Uuid::now_v7().simple()));
    let result = measure_store(&scratch, points, queries, &mut figures).await;
    if !args.keep {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result?;
    Ok(figures)
}

async fn measure_store(
    dir: &std::path::Path,
    points: Vec<Point>,
    queries: &[Vec<f32>],
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let store = EdgeStore::open(dir, 384).await?;
    let c = Collection::Documentation;
    let total = points.len();
    let progress = bar(total as u64, "upsert");
    let started = Instant::now();
    let mut rest = points;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(UPSERT_BATCH));
        let batch = std::mem::replace(&mut rest, tail);
        let n = batch.len() as u64;
        store.upsert(c, batch).await?;
        progress.inc(n);
    }
    let loaded = started.elapsed();
    progress.finish_and_clear();
    // Whatever the last upserts left unindexed is indexed before searching.
    store.optimize(c).await?;
    store.flush().await?;
    figures.push(Figure {
        name: format!("upsert {total} points (index builds included)"),
        value: ((total as f64 / loaded.as_secs_f64()) * 1000.0).round() / 1000.0,
        unit: "points/s",
        baseline_name: None,
        baseline_value: None,
        ratio: None,
    });
    // Search: HNSW beside exact search of the same engine, same queries.
    let mut hnsw = Latencies::default();
    let mut exact = Latencies::default();
    let mut recall_sum = 0.0;
    let progress = bar(queries.len() as u64, "search");
    for q in queries {
        let mut request = SearchRequest::new(q.clone(), 10);
        request.exact = true;
        let t = Instant::now();
        let truth = store.search(c, request).await?;
        exact.push(t.elapsed());
        let t = Instant::now();
        let found = store.search(c, SearchRequest::new(q.clone(), 10)).await?;
        hnsw.push(t.elapsed());
        let hits = found
            .iter()
            .filter(|h| truth.iter().any(|t| t.id == h.id))
            .count();
        recall_sum += hits as f64 / truth.len().max(1) as f64;
        progress.inc(1);
    }
    progress.finish_and_clear();
    let n = queries.len().max(1) as f64;
    figures.push(Figure::compared(
        "search p50, HNSW ef=128",
        hnsw.quantile_ms(0.5),
        "ms",
        "exact search p50",
        exact.quantile_ms(0.5),
    ));
    figures.push(Figure::compared(
        "search p99, HNSW ef=128",
        hnsw.quantile_ms(0.99),
        "ms",
        "exact search p99",
        exact.quantile_ms(0.99),
    ));
    figures.push(Figure::compared(
        "recall@10, HNSW",
        recall_sum / n,
        "fraction",
        "exact search",
        1.0,
    ));
    Ok(())
}
