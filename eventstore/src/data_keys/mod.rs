//! Crypto-shredding: each person's data in the log is sealed with that
//! person's own data key, and forgetting them destroys the key.
//!
//! Writers (the command service) seal every personal value of an event
//! with the data key of the event's data subject ([`DataKeys::sealer`]);
//! the sealed value is a MessagePack binary `CDS1 || subject || nonce ||
//! AES-256-GCM(value)`, so it names whose key opens it. Data keys live in
//! `data_keys` wrapped by a master key that only the services hold
//! (configuration or a file, never the database), so a copy of the
//! database alone reveals nothing personal.
//!
//! Every read through the store opens sealed values in place before the
//! caller sees the payload ([`DataKeys::open_events`]): readers decode
//! plain MessagePack as before, and a value whose key was destroyed reads
//! as [`ERASED`], which the domain's `Personal` type decodes as erased. The
//! `user_forgotten` event destroys the key in its own transaction (a
//! trigger, `migrations/0014_data_keys.sql`), whatever path appends it.
//!
//! Unwrapped keys are cached per process and checked against the table
//! again after [`RECHECK`], so a key destroyed by another process stops
//! opening anything here within that time (at once in the process that
//! appended the forget or projected it, see [`DataKeys::forgot`]).
//!
//! The master key is rotated without rewriting events: a new key goes
//! first in the configured list, [`DataKeys::rotate`] re-wraps every data
//! key (and every secret sealed with the master key) under it, and the old
//! one can then be dropped from the configuration.

mod master;
mod rotation;
mod sealed;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aes_gcm::aead::{KeyInit, OsRng};
use aes_gcm::Aes256Gcm;
use base64::Engine;
use sqlx::PgPool;
use uuid::Uuid;

pub use master::{KeyError, MasterKeys};
pub use rotation::{KeyCounts, Rotated};
pub use sealed::{looks_sealed, refuse_sealed, Sealer, SEALED_MAGIC};

use master::{open_with, seal_with};
use sealed::{
    blob_subject, collect_subjects, contains, metadata_texts, parse, text_blob, text_subject, walk,
};

use crate::{RecordedEvent, StoreError};

/// What a value whose key was destroyed reads as (`domain::personal::ERASED`,
/// which decodes as an erased personal value).
pub const ERASED: &str = "\u{0}copilot-data:erased\u{0}";
/// The event that destroys its stream's (its user's) data key.
const FORGOTTEN: &str = "user_forgotten";
/// The prefix of a secret sealed with the master key (`mk1:<id>:<base64>`).
const MASTER_SEALED: &str = "mk1:";
/// How long an unwrapped key is used before the table is asked again
/// whether it still exists.
pub const RECHECK: Duration = Duration::from_secs(60);

/// What the cache knows of a subject's key.
struct Slot {
    /// `None`: destroyed (or never made, for a subject named by a sealed value).
    cipher: Option<Aes256Gcm>,
    checked: Instant,
}

/// The data keys of one database, unwrapped on demand and cached.
pub struct DataKeys {
    pool: PgPool,
    master: MasterKeys,
    cache: Mutex<HashMap<Uuid, Slot>>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeys")
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

impl DataKeys {
    pub fn new(pool: PgPool, master: MasterKeys) -> DataKeys {
        DataKeys {
            pool,
            master,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn master(&self) -> &MasterKeys {
        &self.master
    }

    fn cached(&self, subject: Uuid) -> Option<Option<Aes256Gcm>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(&subject)
            .filter(|slot| slot.checked.elapsed() < RECHECK)
            .map(|slot| slot.cipher.clone())
    }

    fn remember(&self, subject: Uuid, cipher: Option<Aes256Gcm>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(
            subject,
            Slot {
                cipher,
                checked: Instant::now(),
            },
        );
    }

    /// The subject was forgotten: stop opening their values at once.
    pub fn forgot(&self, subject: Uuid) {
        self.remember(subject, None);
    }

    /// The sealer of `subject`'s personal data if this process holds it.
    pub fn cached_sealer(&self, subject: Uuid) -> Option<Sealer> {
        self.cached(subject)
            .map(|cipher| Sealer { subject, cipher })
    }

    /// The sealer of `subject`'s personal data, making their data key on
    /// first use (in its own transaction, before any event sealed with it
    /// can commit).
    pub async fn sealer(&self, subject: Uuid) -> Result<Sealer, StoreError> {
        if let Some(cipher) = self.cached(subject) {
            return Ok(Sealer { subject, cipher });
        }
        let row = match self.key_row(subject).await? {
            Some(row) => row,
            None => self.make_key(subject).await?,
        };
        let cipher = self.cipher_of(subject, row)?;
        self.remember(subject, cipher.clone());
        Ok(Sealer { subject, cipher })
    }

    /// The subject's row: its wrapped key, or a tombstone.
    async fn key_row(
        &self,
        subject: Uuid,
    ) -> Result<Option<(Option<String>, Option<Vec<u8>>)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT master_key_id, wrapped FROM data_keys WHERE subject = $1")
                .bind(subject)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Makes the subject's data key, or reads the one another process made
    /// at the same moment.
    async fn make_key(
        &self,
        subject: Uuid,
    ) -> Result<(Option<String>, Option<Vec<u8>>), StoreError> {
        let mut data_key = [0u8; 32];
        data_key.copy_from_slice(&Aes256Gcm::generate_key(&mut OsRng));
        let made: Option<(Option<String>, Option<Vec<u8>>)> = sqlx::query_as(
            "INSERT INTO data_keys (subject, master_key_id, wrapped) VALUES ($1, $2, $3)
             ON CONFLICT (subject) DO NOTHING
             RETURNING master_key_id, wrapped",
        )
        .bind(subject)
        .bind(self.master.current_id())
        .bind(self.master.wrap(subject, &data_key))
        .fetch_optional(&self.pool)
        .await?;
        match made {
            Some(row) => Ok(row),
            None => self.key_row(subject).await?.ok_or_else(|| {
                StoreError::Keys(format!("the data key of {subject} vanished while made"))
            }),
        }
    }

    fn cipher_of(
        &self,
        subject: Uuid,
        row: (Option<String>, Option<Vec<u8>>),
    ) -> Result<Option<Aes256Gcm>, StoreError> {
        match row {
            (Some(id), Some(wrapped)) => {
                let key = self.master.unwrap(&id, subject, &wrapped)?;
                Ok(Some(Aes256Gcm::new(&key.into())))
            }
            _ => Ok(None),
        }
    }

    /// Loads the keys of `subjects` the cache does not hold (fresh), in
    /// one query.
    async fn load(&self, subjects: impl IntoIterator<Item = Uuid>) -> Result<(), StoreError> {
        let mut missing: Vec<Uuid> = subjects
            .into_iter()
            .filter(|s| self.cached(*s).is_none())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let rows: Vec<(Uuid, Option<String>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT subject, master_key_id, wrapped FROM data_keys WHERE subject = ANY($1)",
        )
        .bind(&missing)
        .fetch_all(&self.pool)
        .await?;
        let mut found = std::collections::HashSet::new();
        for (subject, id, wrapped) in rows {
            found.insert(subject);
            let cipher = self.cipher_of(subject, (id, wrapped))?;
            self.remember(subject, cipher);
        }
        for subject in missing.into_iter().filter(|s| !found.contains(s)) {
            // A sealed value without any key row: the table was not
            // restored with the log, or the row was deleted by hand.
            tracing::warn!(%subject, "a sealed value names a subject without a data key; it reads as erased");
            self.remember(subject, None);
        }
        Ok(())
    }

    /// Opens, in place, every sealed value of the events' payloads and
    /// metadata: its plain encoding where the key exists, `nil` (erased)
    /// where it was destroyed.
    pub async fn open_events(&self, events: &mut [RecordedEvent]) -> Result<(), StoreError> {
        self.open_sealed(events).await?;
        // A reader that has seen a forget stops opening that person's data
        // (their key is destroyed in the table already).
        for event in events.iter().filter(|e| e.event_type == FORGOTTEN) {
            self.forgot(event.stream_id);
        }
        Ok(())
    }

    async fn open_sealed(&self, events: &mut [RecordedEvent]) -> Result<(), StoreError> {
        let mut parsed: Vec<(usize, rmpv::Value)> = Vec::new();
        let mut subjects = Vec::new();
        for (i, event) in events.iter().enumerate() {
            for text in metadata_texts(&event.metadata).into_iter().flatten() {
                if let Some(subject) = text_subject(text) {
                    subjects.push(subject);
                }
            }
            if !contains(&event.payload, &SEALED_MAGIC) {
                continue;
            }
            let value = parse(&event.payload)?;
            collect_subjects(&value, &mut subjects);
            parsed.push((i, value));
        }
        if subjects.is_empty() {
            return Ok(());
        }
        self.load(subjects).await?;
        for (i, value) in parsed {
            events[i].payload = self.opened(value)?;
        }
        for event in events.iter_mut() {
            let m = &mut event.metadata;
            for field in [
                &mut m.ip,
                &mut m.user_agent,
                &mut m.claimed_ip,
                &mut m.claimed_user_agent,
            ] {
                // Only a real sealed text: one that merely starts like
                // one is a client's text.
                if let Some(text) = field.as_deref().filter(|t| text_subject(t).is_some()) {
                    *field = self.open_text(text)?;
                }
            }
        }
        Ok(())
    }

    /// Opens the sealed values of one MessagePack document (a snapshot).
    pub async fn open_payload(&self, payload: &mut Vec<u8>) -> Result<(), StoreError> {
        if !contains(payload, &SEALED_MAGIC) {
            return Ok(());
        }
        let value = parse(payload)?;
        let mut subjects = Vec::new();
        collect_subjects(&value, &mut subjects);
        self.load(subjects).await?;
        *payload = self.opened(value)?;
        Ok(())
    }

    /// The MessagePack of `value` with its sealed values opened (keys loaded).
    fn opened(&self, mut value: rmpv::Value) -> Result<Vec<u8>, StoreError> {
        self.open_value(&mut value)?;
        let mut payload = Vec::new();
        rmpv::encode::write_value(&mut payload, &value)
            .map_err(|e| StoreError::Corrupt(format!("re-encoding an opened payload: {e}")))?;
        Ok(payload)
    }

    /// Opens the sealed texts among the top-level fields of a JSON object
    /// (an event's metadata as stored).
    pub async fn open_json(&self, value: &mut serde_json::Value) -> Result<(), StoreError> {
        let Some(object) = value.as_object_mut() else {
            return Ok(());
        };
        let sealed = |v: &serde_json::Value| v.as_str().and_then(text_subject).is_some();
        let subjects: Vec<Uuid> = object
            .values()
            .filter_map(|v| v.as_str().and_then(text_subject))
            .collect();
        if subjects.is_empty() {
            return Ok(());
        }
        self.load(subjects).await?;
        for field in object.values_mut().filter(|v| sealed(v)) {
            let opened = self.open_text(field.as_str().unwrap_or_default())?;
            *field = opened.map_or(serde_json::Value::Null, serde_json::Value::String);
        }
        Ok(())
    }

    fn open_value(&self, value: &mut rmpv::Value) -> Result<(), StoreError> {
        let mut failure = None;
        walk(value, &mut |v| {
            let rmpv::Value::Binary(bytes) = v else {
                return;
            };
            let Some(subject) = blob_subject(bytes) else {
                return;
            };
            match self.open_blob(subject, bytes) {
                Ok(Some(plain)) => match rmpv::decode::read_value(&mut plain.as_slice()) {
                    Ok(opened) => *v = opened,
                    Err(e) => failure = Some(StoreError::Corrupt(format!("sealed value: {e}"))),
                },
                Ok(None) => *v = rmpv::Value::from(ERASED),
                Err(e) => failure = Some(e),
            }
        });
        failure.map_or(Ok(()), Err)
    }

    /// The plain bytes of a sealed blob of a loaded subject; `None` if the
    /// key was destroyed.
    fn open_blob(&self, subject: Uuid, blob: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let cipher = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(&subject) {
                Some(slot) => slot.cipher.clone(),
                None => {
                    return Err(StoreError::Keys(format!(
                        "the data key of {subject} was not loaded"
                    )))
                }
            }
        };
        let Some(cipher) = cipher else {
            return Ok(None);
        };
        let (header, sealed) = blob.split_at(SEALED_MAGIC.len() + 16);
        open_with(&cipher, header, sealed).map(Some).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "a personal value of {subject} does not open with its key: altered"
            ))
        })
    }

    fn open_text(&self, text: &str) -> Result<Option<String>, StoreError> {
        let blob = text_blob(text)
            .ok_or_else(|| StoreError::Corrupt("a sealed text is not base64".into()))?;
        let subject = blob_subject(&blob)
            .ok_or_else(|| StoreError::Corrupt("a sealed text has no header".into()))?;
        Ok(self
            .open_blob(subject, &blob)?
            .map(|plain| String::from_utf8_lossy(&plain).into_owned()))
    }

    /// A secret kept as text (a TOTP seed in `auth_users`), sealed with
    /// the current master key: `mk1:<key id>:<base64>`.
    pub fn seal_secret(&self, secret: &str) -> String {
        let id = self.master.current_id();
        let sealed = seal_with(self.master.current(), &[], id.as_bytes(), secret.as_bytes());
        format!(
            "{MASTER_SEALED}{id}:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(sealed)
        )
    }

    /// The secret [`DataKeys::seal_secret`] sealed. A value written before
    /// secrets were sealed is returned as it is (`keys rotate` seals it).
    pub fn open_secret(&self, stored: &str) -> Result<String, StoreError> {
        let Some(rest) = stored.strip_prefix(MASTER_SEALED) else {
            return Ok(stored.to_owned());
        };
        let (id, body) = rest
            .split_once(':')
            .ok_or_else(|| StoreError::Corrupt("a sealed secret has no key id".into()))?;
        let master = self.master.by_id(id).ok_or_else(|| {
            StoreError::Keys(format!(
                "a secret is sealed with master key {id}, which is not configured"
            ))
        })?;
        let sealed = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(body)
            .map_err(|_| StoreError::Corrupt("a sealed secret is not base64".into()))?;
        let plain = open_with(master, id.as_bytes(), &sealed)
            .ok_or_else(|| StoreError::Corrupt("a sealed secret does not open: altered".into()))?;
        String::from_utf8(plain)
            .map_err(|_| StoreError::Corrupt("a sealed secret is not text".into()))
    }
}
