//! Rotating the master key: every data key re-wrapped, and every secret
//! sealed with it re-sealed, under the current one; no event is rewritten.

use uuid::Uuid;

use super::{DataKeys, MASTER_SEALED};
use crate::StoreError;

/// What [`DataKeys::rotate`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotated {
    pub data_keys: u64,
    pub secrets: u64,
}

/// Data keys per master key, and tombstones, as `keys status` shows them.
#[derive(Debug, Clone, Default)]
pub struct KeyCounts {
    pub by_master: Vec<(String, i64)>,
    pub destroyed: i64,
}

impl DataKeys {
    fn sealed_by_current(&self, stored: &str) -> bool {
        stored
            .strip_prefix(MASTER_SEALED)
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(id, _)| id == self.master.current_id())
    }

    /// Re-wraps every data key and re-seals every master-sealed secret
    /// under the current master key; `progress` hears the count so far.
    /// Events are not touched. Runs as the database owner.
    pub async fn rotate(&self, progress: impl Fn(u64)) -> Result<Rotated, StoreError> {
        let mut done = Rotated::default();
        loop {
            let rows: Vec<(Uuid, String, Vec<u8>)> = sqlx::query_as(
                "SELECT subject, master_key_id, wrapped FROM data_keys
                  WHERE wrapped IS NOT NULL AND master_key_id <> $1
                  ORDER BY subject LIMIT 1000",
            )
            .bind(self.master.current_id())
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            let mut tx = self.pool.begin().await?;
            for (subject, id, wrapped) in rows {
                let key = self.master.unwrap(&id, subject, &wrapped)?;
                sqlx::query(
                    "UPDATE data_keys SET master_key_id = $2, wrapped = $3
                      WHERE subject = $1 AND master_key_id = $4",
                )
                .bind(subject)
                .bind(self.master.current_id())
                .bind(self.master.wrap(subject, &key))
                .bind(&id)
                .execute(&mut *tx)
                .await?;
                done.data_keys += 1;
            }
            tx.commit().await?;
            progress(done.data_keys);
        }
        let secrets: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT user_id, mfa_secret FROM auth_users WHERE mfa_secret IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        for (user_id, stored) in secrets {
            if self.sealed_by_current(&stored) {
                continue;
            }
            let resealed = self.seal_secret(&self.open_secret(&stored)?);
            sqlx::query(
                "UPDATE auth_users SET mfa_secret = $2 WHERE user_id = $1 AND mfa_secret = $3",
            )
            .bind(user_id)
            .bind(resealed)
            .bind(&stored)
            .execute(&self.pool)
            .await?;
            done.secrets += 1;
        }
        Ok(done)
    }

    /// How many data keys each master key wraps, and how many are destroyed.
    pub async fn counts(&self) -> Result<KeyCounts, StoreError> {
        let by_master: Vec<(String, i64)> = sqlx::query_as(
            "SELECT master_key_id, count(*) FROM data_keys WHERE wrapped IS NOT NULL
              GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        let destroyed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM data_keys WHERE wrapped IS NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(KeyCounts {
            by_master,
            destroyed,
        })
    }
}
