//! One suite for every adapter of the port: the embedded engine always,
//! a Qdrant server when `COPILOT_QDRANT_URL` names one (reported as skipped
//! otherwise).

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};
use uuid::Uuid;
use vectors::edge::EdgeStore;
use vectors::{Collection, Filter, Point, SearchRequest, VectorError, VectorStore};

use crate::support::TempDir;

const DIM: usize = 8;

fn unit(seed: u64) -> Vec<f32> {
    // A deterministic spread of directions.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
    v
}

fn payload(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn point(seed: u64, owner: &str) -> Point {
    Point {
        id: Uuid::from_u64_pair(0, seed),
        vector: unit(seed),
        payload: payload(&[
            ("owner_user_id", json!(owner)),
            ("conversation_id", json!(format!("c-{}", seed % 3))),
            ("seed", json!(seed)),
        ]),
    }
}

async fn contract(store: &dyn VectorStore) -> anyhow::Result<()> {
    let c = Collection::Conversations;
    store.ensure_collections().await?;
    store.clear(c).await?;
    assert_eq!(store.count(c).await?, 0);

    // Upserts by id: the same points twice leave one copy each.
    let points: Vec<Point> = (1..=60)
        .map(|s| point(s, if s % 2 == 0 { "alice" } else { "bob" }))
        .collect();
    store.upsert(c, points.clone()).await?;
    store.upsert(c, points.clone()).await?;
    assert_eq!(store.count(c).await?, 60);
    let ids = store.ids(c).await?;
    let expected: BTreeSet<Uuid> = points.iter().map(|p| p.id).collect();
    assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>(), expected);

    // The nearest point to a stored vector is that point, with cosine ~1.
    let hits = store.search(c, SearchRequest::new(unit(7), 5)).await?;
    assert_eq!(hits.first().map(|h| h.id), Some(Uuid::from_u64_pair(0, 7)));
    assert!(
        (hits[0].score - 1.0).abs() < 1e-4,
        "score {}",
        hits[0].score
    );
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(hits[0].payload.get("seed"), Some(&json!(7)));

    // Filters restrict to the owner, and compose.
    let mut only_alice = SearchRequest::new(unit(7), 60);
    only_alice.filter = Filter::equals("owner_user_id", "alice");
    let hits = store.search(c, only_alice).await?;
    assert_eq!(hits.len(), 30);
    assert!(hits
        .iter()
        .all(|h| h.payload["owner_user_id"] == json!("alice")));
    let mut narrow = SearchRequest::new(unit(7), 60);
    narrow.filter = Filter::equals("owner_user_id", "alice")
        .and_any_of("conversation_id", vec!["c-0".into(), "c-1".into()]);
    let hits = store.search(c, narrow).await?;
    assert_eq!(hits.len(), 20);

    // An overwrite replaces the payload.
    let mut moved = point(8, "carol");
    moved.payload.insert("seed".into(), json!(800));
    store.upsert(c, vec![moved.clone()]).await?;
    let got = store.get(c, moved.id).await?.expect("point 8");
    assert_eq!(got.payload["owner_user_id"], json!("carol"));
    assert_eq!(got.payload["seed"], json!(800));

    // Deletes by id (missing ids are fine) and by filter.
    store
        .delete(
            c,
            vec![Uuid::from_u64_pair(0, 1), Uuid::from_u64_pair(9, 9)],
        )
        .await?;
    assert_eq!(store.count(c).await?, 59);
    assert!(store.get(c, Uuid::from_u64_pair(0, 1)).await?.is_none());
    // Left: 29 of alice's, the one moved to carol, and 29 of bob's.
    store
        .delete_matching(c, Filter::equals("owner_user_id", "bob"))
        .await?;
    assert_eq!(store.count(c).await?, 30);
    let mut bob = SearchRequest::new(unit(3), 60);
    bob.filter = Filter::equals("owner_user_id", "bob");
    assert!(store.search(c, bob).await?.is_empty());

    // A vector of the wrong dimension is refused and changes nothing.
    let wrong = Point {
        id: Uuid::from_u64_pair(1, 1),
        vector: vec![0.5; DIM + 1],
        payload: Map::new(),
    };
    let err = store
        .upsert(c, vec![wrong])
        .await
        .expect_err("wrong dimension");
    assert!(matches!(err, VectorError::Dimension { expected: DIM, got } if got == DIM + 1));
    assert_eq!(store.count(c).await?, 30);

    // Collections are separate.
    assert_eq!(store.count(Collection::Code).await?, 0);
    store.clear(c).await?;
    assert_eq!(store.count(c).await?, 0);
    Ok(())
}

#[tokio::test]
async fn the_embedded_store_keeps_the_contract() -> anyhow::Result<()> {
    let dir = TempDir::new("contract");
    let store = EdgeStore::open(dir.path(), DIM).await?;
    contract(&store).await
}

#[tokio::test]
async fn the_embedded_store_persists_and_indexes() -> anyhow::Result<()> {
    let dir = TempDir::new("persist");
    let c = Collection::Documentation;
    {
        let store = EdgeStore::open(dir.path(), DIM).await?;
        // Enough points that the optimiser builds an HNSW segment.
        let points: Vec<Point> = (1..=5_000).map(|s| point(s, "alice")).collect();
        for chunk in points.chunks(1_000) {
            store.upsert(c, chunk.to_vec()).await?;
        }
        store.optimize(c).await?;
    }
    let store = EdgeStore::open(dir.path(), DIM).await?;
    assert_eq!(store.count(c).await?, 5_000);
    let hits = store.search(c, SearchRequest::new(unit(4_321), 3)).await?;
    assert_eq!(
        hits.first().map(|h| h.id),
        Some(Uuid::from_u64_pair(0, 4_321))
    );
    // Reopening with another dimension is refused rather than corrupting.
    drop(store);
    let other = EdgeStore::open(dir.path(), DIM * 2).await;
    assert!(
        matches!(other, Err(VectorError::Dimension { .. })),
        "opened with another dimension"
    );
    Ok(())
}

#[tokio::test]
async fn a_qdrant_server_keeps_the_contract() -> anyhow::Result<()> {
    let Ok(url) = std::env::var("COPILOT_QDRANT_URL") else {
        eprintln!("skipped: COPILOT_QDRANT_URL is not set (no Qdrant server to test against)");
        return Ok(());
    };
    let prefix = format!("t{}_", &Uuid::new_v4().simple().to_string()[..12]);
    let api_key = std::env::var("COPILOT_QDRANT_API_KEY").ok();
    let connection = vectors::qdrant::QdrantConnection {
        url: &url,
        api_key: api_key.as_deref(),
        timeout: Some(std::time::Duration::from_secs(10)),
    };
    let store = vectors::qdrant::QdrantStore::connect(connection, DIM, &prefix)?;
    let result = contract(&store).await;
    store.drop_collections().await?;
    result
}

/// The seed's storage layout: conversations memory-mapped from disk, the
/// other collections in memory, and its optimiser settings, as persisted in
/// each shard's configuration.
#[tokio::test]
async fn the_embedded_store_lays_out_collections_as_the_seed_says() -> anyhow::Result<()> {
    let dir = TempDir::new("layout");
    let _store = EdgeStore::open(dir.path(), 384).await?;
    for c in Collection::ALL {
        let file = dir.path().join(c.name()).join("edge_config.json");
        let config: Value = serde_json::from_slice(&std::fs::read(&file)?)?;
        let on_disk = c == Collection::Conversations;
        assert_eq!(config["vectors"][""]["on_disk"], json!(on_disk), "{c}");
        assert_eq!(config["on_disk_payload"], json!(on_disk), "{c}");
        assert_eq!(config["hnsw_config"]["on_disk"], json!(false), "{c}");
        assert_eq!(config["hnsw_config"]["m"], json!(16), "{c}");
        let optimizers = &config["optimizers"];
        assert_eq!(optimizers["deleted_threshold"], json!(0.2), "{c}");
        // 200,000 and 20,000 points of 384 f32 components, in KB.
        assert_eq!(optimizers["max_segment_size"], json!(300_000), "{c}");
        assert_eq!(optimizers["indexing_threshold"], json!(30_000), "{c}");
    }
    Ok(())
}
