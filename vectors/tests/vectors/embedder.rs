use vectors::Embedder;

use crate::support::{cosine, minilm};

#[derive(serde::Deserialize)]
struct Reference {
    model: String,
    sentences: Vec<Sentence>,
}

#[derive(serde::Deserialize)]
struct Sentence {
    text: String,
    embedding: Vec<f32>,
}

/// The fixture holds sentence-transformers' own embeddings of a few
/// sentences (English, code, accents and CJK), computed once with the same
/// model files.
#[tokio::test]
async fn local_model_matches_the_sentence_transformers_reference() -> anyhow::Result<()> {
    let reference: Reference =
        serde_json::from_str(include_str!("../fixtures/minilm_reference.json"))?;
    let model = minilm();
    assert_eq!(model.info().name, reference.model);
    assert_eq!(model.info().dimension, 384);
    let texts: Vec<String> = reference.sentences.iter().map(|s| s.text.clone()).collect();
    let got = model.embed(texts.clone()).await?;
    assert_eq!(got.len(), texts.len());
    for (s, v) in reference.sentences.iter().zip(&got) {
        let similarity = cosine(&s.embedding, v);
        assert!(similarity > 0.999, "{:?}: cosine {similarity}", s.text);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not normalised: {norm}");
    }
    // Batching (padding to the longest text) must not change a text's vector.
    for (text, batched) in texts.iter().zip(&got) {
        let alone = model.embed(vec![text.clone()]).await?;
        assert!(
            cosine(&alone[0], batched) > 0.99999,
            "{text:?} differs alone"
        );
    }
    Ok(())
}

#[tokio::test]
async fn texts_longer_than_the_model_window_are_truncated_not_refused() -> anyhow::Result<()> {
    let long = "the deployment failed again ".repeat(400);
    let got = minilm().embed(vec![long, String::new()]).await?;
    assert_eq!(got.len(), 2);
    assert!(got
        .iter()
        .all(|v| v.len() == 384 && v.iter().all(|x| x.is_finite())));
    Ok(())
}
