//! The master keys: parsed from configuration, named by fingerprint, and
//! the AES-256-GCM that wraps data keys and seals values.

use std::sync::Arc;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::StoreError;

pub(super) const NONCE: usize = 12;

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

    pub(super) fn current(&self) -> &Aes256Gcm {
        &self.keys[0].1
    }

    pub(super) fn by_id(&self, id: &str) -> Option<&Aes256Gcm> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, c)| c)
    }

    pub(super) fn wrap(&self, subject: Uuid, data_key: &[u8; 32]) -> Vec<u8> {
        seal_with(self.current(), &[], subject.as_bytes(), data_key)
    }

    pub(super) fn unwrap(
        &self,
        id: &str,
        subject: Uuid,
        wrapped: &[u8],
    ) -> Result<[u8; 32], StoreError> {
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
pub(super) fn fingerprint(key: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(b"copilot-data master key\n")
        .chain_update(key)
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn decode_hex(text: &str) -> Option<[u8; 32]> {
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
pub(super) fn seal_with(cipher: &Aes256Gcm, prefix: &[u8], aad: &[u8], plain: &[u8]) -> Vec<u8> {
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
pub(super) fn open_with(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE + 16 {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
        .ok()
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
}
