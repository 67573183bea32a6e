//! Embeddings kept by (model, version, sha256 of the text), so rebuilding
//! the vector projection reloads vectors instead of running the model
//! again (table `embedding_cache`, migration 0012).

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use uuid::Uuid;
use vectors::ModelInfo;

/// A text the projection needs a vector for.
pub struct Wanted {
    pub hash: [u8; 32],
    pub owner: Option<Uuid>,
    pub text: String,
}

impl Wanted {
    pub fn new(text: &str, owner: Option<Uuid>) -> Wanted {
        Wanted {
            hash: Sha256::digest(text.as_bytes()).into(),
            owner,
            text: text.to_owned(),
        }
    }
}

/// The kept vectors of `wanted` made by `model`, by text hash.
pub async fn load(
    pool: &sqlx::PgPool,
    model: &ModelInfo,
    wanted: &[Wanted],
) -> Result<HashMap<[u8; 32], Vec<f32>>, sqlx::Error> {
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let hashes: Vec<&[u8]> = wanted.iter().map(|w| w.hash.as_slice()).collect();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT text_sha256, vector FROM embedding_cache
          WHERE model = $1 AND model_version = $2 AND text_sha256 = ANY($3)",
    )
    .bind(&model.name)
    .bind(&model.version)
    .bind(&hashes)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(hash, bytes)| {
            let hash: [u8; 32] = hash.try_into().ok()?;
            let vector = decode(&bytes)?;
            // A vector of another dimension is not this model's: embed again.
            (vector.len() == model.dimension).then_some((hash, vector))
        })
        .collect())
}

/// Keeps `vectors` (one per `wanted`, in order) as `model`'s.
pub async fn store(
    pool: &sqlx::PgPool,
    model: &ModelInfo,
    wanted: &[&Wanted],
    vectors: &[Vec<f32>],
) -> Result<(), sqlx::Error> {
    let hashes: Vec<&[u8]> = wanted.iter().map(|w| w.hash.as_slice()).collect();
    let owners: Vec<Option<Uuid>> = wanted.iter().map(|w| w.owner).collect();
    let encoded: Vec<Vec<u8>> = vectors.iter().map(|v| encode(v)).collect();
    sqlx::query(
        "INSERT INTO embedding_cache (model, model_version, text_sha256, owner_user_id, vector)
         SELECT $1, $2, h, o, v FROM UNNEST($3::bytea[], $4::uuid[], $5::bytea[]) AS t(h, o, v)
         ON CONFLICT DO NOTHING",
    )
    .bind(&model.name)
    .bind(&model.version)
    .bind(&hashes)
    .bind(&owners)
    .bind(&encoded)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes what was kept of `owner`'s texts (`user.forget`).
pub async fn forget(pool: &sqlx::PgPool, owner: Uuid) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM embedding_cache WHERE owner_user_id = $1")
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

fn encode(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn decode(bytes: &[u8]) -> Option<Vec<f32>> {
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}
