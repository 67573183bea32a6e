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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{RecordedEvent, StoreError};

/// The first bytes of a sealed personal value.
pub const SEALED_MAGIC: [u8; 4] = *b"CDS1";
/// What a value whose key was destroyed reads as (`domain::personal::ERASED`,
/// which decodes as an erased personal value).
pub const ERASED: &str = "\u{0}copilot-data:erased\u{0}";
/// The event that destroys its stream's (its user's) data key.
const FORGOTTEN: &str = "user_forgotten";
/// The prefix of a sealed text (metadata, secrets kept as text).
const SEALED_TEXT: &str = "sealed:";
/// The prefix of a secret sealed with the master key (`mk1:<id>:<base64>`).
const MASTER_SEALED: &str = "mk1:";
const NONCE: usize = 12;
const HEADER: usize = SEALED_MAGIC.len() + 16 + NONCE;
/// How long an unwrapped key is used before the table is asked again
/// whether it still exists.
pub const RECHECK: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("a master key must be 64 hexadecimal digits (openssl rand -hex 32); item {0} is not")]
    MasterKeyFormat(usize),
    #[error("no master key is configured (COPILOT_MASTER_KEY or COPILOT_MASTER_KEY_FILE)")]
    NoMasterKey,
}

/// The master keys, newest first: the first wraps new data keys, the
/// others only unwrap keys not yet rotated. `Debug` shows fingerprints.
#[derive(Clone)]
pub struct MasterKeys {
    keys: Arc<Vec<(String, Aes256Gcm)>>,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MasterKeys")
            .field(&self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>())
            .finish()
    }
}

impl MasterKeys {
    /// Keys of 64 hexadecimal digits separated by whitespace or commas,
    /// the current one first.
    pub fn parse(text: &str) -> Result<MasterKeys, KeyError> {
        let mut keys = Vec::new();
        for (i, item) in text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let bytes = decode_hex(item).ok_or(KeyError::MasterKeyFormat(i + 1))?;
            keys.push((fingerprint(&bytes), Aes256Gcm::new(&bytes.into())));
        }
        if keys.is_empty() {
            return Err(KeyError::NoMasterKey);
        }
        Ok(MasterKeys {
            keys: Arc::new(keys),
        })
    }

    /// The fingerprint of the key new data keys are wrapped with.
    pub fn current_id(&self) -> &str {
        &self.keys[0].0
    }

    /// The fingerprints of all configured keys, current first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    fn current(&self) -> &Aes256Gcm {
        &self.keys[0].1
    }

    fn by_id(&self, id: &str) -> Option<&Aes256Gcm> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, c)| c)
    }

    fn wrap(&self, subject: Uuid, data_key: &[u8; 32]) -> Vec<u8> {
        seal_with(self.current(), &[], subject.as_bytes(), data_key)
    }

    fn unwrap(&self, id: &str, subject: Uuid, wrapped: &[u8]) -> Result<[u8; 32], StoreError> {
        let master = self.by_id(id).ok_or_else(|| {
            StoreError::Keys(format!(
                "the data key of {subject} is wrapped by master key {id}, which is not configured \
                 (configured: {}); put it back in COPILOT_MASTER_KEY, after the current one",
                self.ids().join(", ")
            ))
        })?;
        let plain = open_with(master, subject.as_bytes(), wrapped).ok_or_else(|| {
            StoreError::Keys(format!(
                "the data key of {subject} does not open with master key {id}: altered row"
            ))
        })?;
        plain
            .try_into()
            .map_err(|_| StoreError::Keys(format!("the data key of {subject} is not 32 bytes")))
    }
}

/// A key's public name: the first 8 bytes of a domain-separated SHA-256.
fn fingerprint(key: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(b"copilot-data master key\n")
        .chain_update(key)
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

/// `prefix || nonce || AES-256-GCM(plain)` with `prefix || aad` as the
/// associated data (so the header cannot be moved to another subject).
fn seal_with(cipher: &Aes256Gcm, prefix: &[u8], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let associated = [prefix, aad].concat();
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: &associated,
            },
        )
        // Only fails for messages beyond GCM's 64 GiB limit.
        .unwrap_or_default();
    let mut out = Vec::with_capacity(prefix.len() + NONCE + sealed.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens `nonce || ciphertext` sealed with `aad` as the associated data.
fn open_with(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE + 16 {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
        .ok()
}

/// Seals the personal values of one data subject. A forgotten subject's
/// sealer erases instead: nothing personal is kept for them again.
#[derive(Clone)]
pub struct Sealer {
    subject: Uuid,
    cipher: Option<Aes256Gcm>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("subject", &self.subject)
            .field("forgotten", &self.cipher.is_none())
            .finish()
    }
}

impl Sealer {
    pub fn subject(&self) -> Uuid {
        self.subject
    }

    /// The sealed form of a value's MessagePack encoding; `None` when the
    /// subject was forgotten (the value is then not kept at all).
    pub fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let cipher = self.cipher.as_ref()?;
        let mut prefix = Vec::with_capacity(HEADER);
        prefix.extend_from_slice(&SEALED_MAGIC);
        prefix.extend_from_slice(self.subject.as_bytes());
        Some(seal_with(cipher, &prefix, &[], plain))
    }

    /// A sealed text (metadata such as a client address).
    pub fn seal_text(&self, text: &str) -> Option<String> {
        self.seal(text.as_bytes()).map(|sealed| {
            format!(
                "{SEALED_TEXT}{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(sealed)
            )
        })
    }
}

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
        let mut data_key = [0u8; 32];
        data_key.copy_from_slice(&Aes256Gcm::generate_key(&mut OsRng));
        let wrapped = self.master.wrap(subject, &data_key);
        // Kept unless the subject has a key (or a tombstone) already; then
        // that one is read back.
        let made: Option<(Option<String>, Option<Vec<u8>>)> = sqlx::query_as(
            "WITH made AS (
                INSERT INTO data_keys (subject, master_key_id, wrapped) VALUES ($1, $2, $3)
                ON CONFLICT (subject) DO NOTHING
                RETURNING master_key_id, wrapped)
             SELECT master_key_id, wrapped FROM made
             UNION ALL
             SELECT master_key_id, wrapped FROM data_keys WHERE subject = $1
             LIMIT 1",
        )
        .bind(subject)
        .bind(self.master.current_id())
        .bind(&wrapped)
        .fetch_optional(&self.pool)
        .await?;
        let row = match made {
            Some(row) => row,
            // Another process made it while this statement waited; its
            // snapshot could not see that row, the next statement does.
            None => {
                sqlx::query_as("SELECT master_key_id, wrapped FROM data_keys WHERE subject = $1")
                    .bind(subject)
                    .fetch_one(&self.pool)
                    .await?
            }
        };
        let cipher = self.cipher_of(subject, row)?;
        self.remember(subject, cipher.clone());
        Ok(Sealer { subject, cipher })
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
        for (i, mut value) in parsed {
            self.open_value(&mut value)?;
            let mut payload = Vec::with_capacity(events[i].payload.len());
            rmpv::encode::write_value(&mut payload, &value)
                .map_err(|e| StoreError::Corrupt(format!("re-encoding an opened payload: {e}")))?;
            events[i].payload = payload;
        }
        for event in events.iter_mut() {
            let m = &mut event.metadata;
            for field in [
                &mut m.ip,
                &mut m.user_agent,
                &mut m.claimed_ip,
                &mut m.claimed_user_agent,
            ] {
                if let Some(text) = field.as_deref().filter(|t| t.starts_with(SEALED_TEXT)) {
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
        let mut value = parse(payload)?;
        let mut subjects = Vec::new();
        collect_subjects(&value, &mut subjects);
        self.load(subjects).await?;
        self.open_value(&mut value)?;
        payload.clear();
        rmpv::encode::write_value(payload, &value)
            .map_err(|e| StoreError::Corrupt(format!("re-encoding an opened payload: {e}")))?;
        Ok(())
    }

    /// Opens the sealed texts among the top-level fields of a JSON object
    /// (an event's metadata as stored).
    pub async fn open_json(&self, value: &mut serde_json::Value) -> Result<(), StoreError> {
        let Some(object) = value.as_object_mut() else {
            return Ok(());
        };
        let sealed = |v: &serde_json::Value| v.as_str().is_some_and(|t| t.starts_with(SEALED_TEXT));
        let subjects: Vec<Uuid> = object
            .values()
            .filter(|v| sealed(v))
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

/// Refuses a payload holding sealed values when no master key is
/// configured, rather than hand out ciphertext as if it were the value.
pub fn refuse_sealed(events: &[RecordedEvent]) -> Result<(), StoreError> {
    let sealed = events.iter().any(|e| {
        contains(&e.payload, &SEALED_MAGIC)
            || metadata_texts(&e.metadata)
                .into_iter()
                .flatten()
                .any(|t| t.starts_with(SEALED_TEXT))
    });
    if sealed {
        return Err(StoreError::Keys(KeyError::NoMasterKey.to_string()));
    }
    Ok(())
}

fn metadata_texts(m: &crate::Metadata) -> [Option<&str>; 4] {
    [
        m.ip.as_deref(),
        m.user_agent.as_deref(),
        m.claimed_ip.as_deref(),
        m.claimed_user_agent.as_deref(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn parse(payload: &[u8]) -> Result<rmpv::Value, StoreError> {
    rmpv::decode::read_value(&mut &payload[..])
        .map_err(|e| StoreError::Corrupt(format!("payload is not MessagePack: {e}")))
}

fn walk(value: &mut rmpv::Value, f: &mut impl FnMut(&mut rmpv::Value)) {
    match value {
        rmpv::Value::Array(items) => items.iter_mut().for_each(|v| walk(v, f)),
        rmpv::Value::Map(entries) => entries.iter_mut().for_each(|(_, v)| walk(v, f)),
        other => f(other),
    }
}

fn collect_subjects(value: &rmpv::Value, out: &mut Vec<Uuid>) {
    match value {
        rmpv::Value::Array(items) => items.iter().for_each(|v| collect_subjects(v, out)),
        rmpv::Value::Map(entries) => entries.iter().for_each(|(_, v)| collect_subjects(v, out)),
        rmpv::Value::Binary(bytes) => out.extend(blob_subject(bytes)),
        _ => {}
    }
}

/// The subject a sealed blob names, if `bytes` is one.
fn blob_subject(bytes: &[u8]) -> Option<Uuid> {
    if bytes.len() < HEADER + 16 || bytes[..4] != SEALED_MAGIC {
        return None;
    }
    Uuid::from_slice(&bytes[4..20]).ok()
}

fn text_blob(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text.strip_prefix(SEALED_TEXT)?)
        .ok()
}

fn text_subject(text: &str) -> Option<Uuid> {
    blob_subject(&text_blob(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn master_keys_parse_and_name_themselves_without_showing_the_key() {
        let keys = MasterKeys::parse(&format!("{KEY_A}\n{KEY_B}\n")).expect("two keys");
        assert_eq!(keys.ids().len(), 2);
        assert_eq!(keys.current_id().len(), 16);
        let shown = format!("{keys:?}");
        assert!(!shown.contains(KEY_A) && !shown.contains("00112233"));
        assert!(matches!(
            MasterKeys::parse("abc"),
            Err(KeyError::MasterKeyFormat(1))
        ));
        assert!(matches!(
            MasterKeys::parse(" \n"),
            Err(KeyError::NoMasterKey)
        ));
    }

    #[test]
    fn a_wrapped_key_opens_only_for_its_subject_and_master() {
        let keys = MasterKeys::parse(KEY_A).expect("key");
        let subject = Uuid::now_v7();
        let data_key = [7u8; 32];
        let wrapped = keys.wrap(subject, &data_key);
        assert_eq!(
            keys.unwrap(keys.current_id(), subject, &wrapped)
                .expect("opens"),
            data_key
        );
        assert!(keys
            .unwrap(keys.current_id(), Uuid::now_v7(), &wrapped)
            .is_err());
        let other = MasterKeys::parse(KEY_B).expect("key");
        assert!(other.unwrap(keys.current_id(), subject, &wrapped).is_err());
    }

    #[test]
    fn a_sealed_value_names_its_subject_and_hides_its_text() {
        let subject = Uuid::now_v7();
        let sealer = Sealer {
            subject,
            cipher: Some(Aes256Gcm::new(&[9u8; 32].into())),
        };
        let sealed = sealer.seal(b"ada@example.com").expect("sealed");
        assert_eq!(blob_subject(&sealed), Some(subject));
        assert!(!contains(&sealed, b"ada@example.com"));
        let forgotten = Sealer {
            subject,
            cipher: None,
        };
        assert!(forgotten.seal(b"x").is_none());
        let text = sealer.seal_text("10.0.0.1").expect("sealed");
        assert_eq!(text_subject(&text), Some(subject));
    }
}
