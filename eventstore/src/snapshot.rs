//! Snapshots: the encoded state of a stream at a version.

use uuid::Uuid;

use crate::{EventStore, Snapshot, StoreError};

impl EventStore {
    /// Stores a snapshot unless a newer one is already stored.
    pub async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO snapshots (stream_id, version, schema_version, state)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (stream_id) DO UPDATE
                SET version = EXCLUDED.version, schema_version = EXCLUDED.schema_version,
                    state = EXCLUDED.state, taken_at = now()
              WHERE snapshots.version < EXCLUDED.version",
        )
        .bind(snapshot.stream_id)
        .bind(i64::try_from(snapshot.version).unwrap_or(i64::MAX))
        .bind(snapshot.schema_version)
        .bind(&snapshot.state)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The newest snapshot of a stream, if any.
    pub async fn load_snapshot(&self, stream_id: Uuid) -> Result<Option<Snapshot>, StoreError> {
        let row: Option<(i64, i32, Vec<u8>)> = sqlx::query_as(
            "SELECT version, schema_version, state FROM snapshots WHERE stream_id = $1",
        )
        .bind(stream_id)
        .fetch_optional(self.pool())
        .await?;
        let Some((version, schema_version, mut state)) = row else {
            return Ok(None);
        };
        // A snapshot holds personal data sealed like the events it sums up.
        if let Some(keys) = self.data_keys() {
            keys.open_payload(&mut state).await?;
        }
        Ok(Some(Snapshot {
            stream_id,
            version: version.unsigned_abs(),
            schema_version,
            state,
        }))
    }
}
