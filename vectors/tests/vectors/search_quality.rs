use serde_json::{json, Map};
use vectors::edge::EdgeStore;
use vectors::{Collection, Embedder, Point, SearchRequest, VectorStore};

use crate::support::{minilm, TempDir};

#[derive(serde::Deserialize)]
struct Fixture {
    documents: Vec<Document>,
    questions: Vec<Question>,
}

#[derive(serde::Deserialize)]
struct Document {
    id: String,
    text: String,
}

#[derive(serde::Deserialize)]
struct Question {
    expected: String,
    text: String,
}

/// Documents and questions written for this project: the expected document
/// is the first hit for at least 90% of the questions, end to end through
/// the local embedder and the embedded store.
#[tokio::test]
async fn the_expected_document_is_the_first_hit_for_nine_questions_in_ten() -> anyhow::Result<()> {
    let fixture: Fixture = serde_json::from_str(include_str!("../fixtures/search_quality.json"))?;
    let dir = TempDir::new("quality");
    let model = minilm();
    let store = EdgeStore::open(dir.path(), model.info().dimension).await?;
    let texts = fixture.documents.iter().map(|d| d.text.clone()).collect();
    let vectors = model.embed(texts).await?;
    let points = fixture
        .documents
        .iter()
        .zip(vectors)
        .zip(1u64..)
        .map(|((d, vector), n)| {
            let mut payload = Map::new();
            payload.insert("name".into(), json!(d.id));
            payload.insert("kind".into(), json!("document"));
            Point {
                id: uuid::Uuid::from_u64_pair(0, n),
                vector,
                payload,
            }
        })
        .collect();
    store.upsert(Collection::Documentation, points).await?;

    let questions = fixture.questions.iter().map(|q| q.text.clone()).collect();
    let query_vectors = model.embed(questions).await?;
    let mut first = 0;
    let mut misses = Vec::new();
    for (q, vector) in fixture.questions.iter().zip(query_vectors) {
        let hits = store
            .search(Collection::Documentation, SearchRequest::new(vector, 3))
            .await?;
        let top = hits
            .first()
            .and_then(|h| h.payload.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_owned();
        if top == q.expected {
            first += 1;
        } else {
            misses.push(format!("{:?} -> {top} (expected {})", q.text, q.expected));
        }
    }
    let share = f64::from(first) / fixture.questions.len() as f64;
    assert!(
        share >= 0.9,
        "first hit for {share:.2} of the questions; misses: {misses:#?}"
    );
    Ok(())
}
