//! `bench vector-rebuild`: the vector projection of a generated log, first
//! with every text embedded by the local model (the baseline), then rebuilt
//! from the start (`replay --projection vectors`), reloading the kept
//! embeddings. `--real` sets how many embeddable items the log holds (texts
//! of messages, resolved incidents, runbooks and documents).

use std::time::Instant;

use eventstore::{EventStore, StoreOptions};
use infra::Settings;
use projector::{Sink, VectorConfig};
use testkit::history::History;

use super::report::Figure;
use super::scratch::ScratchDb;
use crate::cli::BenchArgs;
use crate::ops::progress_bar;

const GENERATE_BATCH: usize = 500;
const EMBEDDABLE: &str = "SELECT count(*) FROM events WHERE event_type IN
    ('message_appended', 'incident_resolved', 'runbook_created', 'runbook_updated',
     'document_indexed', 'code_indexed')";

pub async fn run(args: &BenchArgs, settings: &Settings) -> anyhow::Result<Vec<Figure>> {
    let (scratch, pool) = ScratchDb::create(&settings.database, 8, args.keep).await?;
    let store = EventStore::connect(pool.clone(), StoreOptions::default()).await?;
    let mut history = History::new(11);
    let items = loop {
        let items: i64 = sqlx::query_scalar(EMBEDDABLE).fetch_one(&pool).await?;
        if items.unsigned_abs() as usize >= args.real {
            break items.unsigned_abs();
        }
        let batch = (0..GENERATE_BATCH)
            .map(|_| history.next_append())
            .collect::<Result<Vec<_>, _>>()?;
        for outcome in store.append_batch(&batch).await {
            outcome?;
        }
    };
    let events = crate::ops::log_size(&store).await?;
    let model = super::vectors::local_model(settings)?;
    let points =
        std::env::temp_dir().join(format!("copilot-bench-rebuild-{}", uuid::Uuid::new_v4()));
    let config = VectorConfig {
        store: projector::vector_model::edge_opener(points.clone(), 384),
        embedder: model,
        breakers: None,
    };
    let run = |label: &'static str| {
        let (store, config) = (store.clone(), config.clone());
        async move {
            let bar = progress_bar(events, label);
            let started = Instant::now();
            projector::catch_up_sink(&store, &Sink::Vectors(config), "bench", 500, &|n| {
                bar.set_position(n)
            })
            .await?;
            bar.finish_and_clear();
            anyhow::Ok(started.elapsed())
        }
    };
    let first = run("embed").await?;
    projector::rebuild::reset_vectors(&store).await?;
    let rebuild = run("rebuild").await?;
    drop(config);
    let _ = std::fs::remove_dir_all(&points);
    drop(store);
    scratch.drop_db(pool).await?;
    let per_s = |d: std::time::Duration| items as f64 / d.as_secs_f64().max(1e-9);
    Ok(vec![
        Figure::compared(
            "vectors.rebuild.items_per_s",
            per_s(rebuild),
            "items/s",
            "vectors.first_projection.items_per_s",
            per_s(first),
        ),
        Figure::alone("vectors.rebuild.items", items as f64, "items"),
        Figure::alone("vectors.rebuild.events", events as f64, "events"),
    ])
}
