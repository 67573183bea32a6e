//! The sealed form of a personal value, and finding sealed values in a
//! MessagePack payload or an event's metadata.

use aes_gcm::Aes256Gcm;
use base64::Engine;
use uuid::Uuid;

use super::master::{seal_with, NONCE};
use super::KeyError;
use crate::{RecordedEvent, StoreError};

/// The first bytes of a sealed personal value.
pub const SEALED_MAGIC: [u8; 4] = *b"CDS1";
/// The prefix of a sealed text (metadata, secrets kept as text).
pub(super) const SEALED_TEXT: &str = "sealed:";
pub(super) const HEADER: usize = SEALED_MAGIC.len() + 16 + NONCE;

/// Seals the personal values of one data subject. A forgotten subject's
/// sealer erases instead: nothing personal is kept for them again.
#[derive(Clone)]
pub struct Sealer {
    pub(super) subject: Uuid,
    pub(super) cipher: Option<Aes256Gcm>,
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

/// Refuses a payload holding sealed values when no master key is
/// configured, rather than hand out ciphertext as if it were the value.
/// Only a real sealed value counts (a MessagePack binary with the sealed
/// header, a metadata text that decodes to one): a person's text that
/// merely contains the magic bytes or starts with `sealed:` is data.
pub fn refuse_sealed(events: &[RecordedEvent]) -> Result<(), StoreError> {
    for event in events {
        let sealed_text = metadata_texts(&event.metadata)
            .into_iter()
            .flatten()
            .any(|t| text_subject(t).is_some());
        if sealed_text || holds_sealed_value(&event.payload)? {
            return Err(StoreError::Keys(KeyError::NoMasterKey.to_string()));
        }
    }
    Ok(())
}

/// Whether a MessagePack document holds a sealed value.
fn holds_sealed_value(payload: &[u8]) -> Result<bool, StoreError> {
    if !contains(payload, &SEALED_MAGIC) {
        return Ok(false);
    }
    let mut subjects = Vec::new();
    collect_subjects(&parse(payload)?, &mut subjects);
    Ok(!subjects.is_empty())
}

/// Whether `text` would be read as a sealed text: such a text, written
/// in the clear (a client's claim with no key to seal it), is not kept.
pub fn looks_sealed(text: &str) -> bool {
    text.starts_with(SEALED_TEXT)
}

pub(super) fn metadata_texts(m: &crate::Metadata) -> [Option<&str>; 4] {
    [
        m.ip.as_deref(),
        m.user_agent.as_deref(),
        m.claimed_ip.as_deref(),
        m.claimed_user_agent.as_deref(),
    ]
}

/// Every event read is searched for [`SEALED_MAGIC`], so this is a
/// vectorised search rather than a comparison at each offset (which cost
/// a replay 4 % of its own time).
pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

pub(super) fn parse(payload: &[u8]) -> Result<rmpv::Value, StoreError> {
    rmpv::decode::read_value(&mut &payload[..])
        .map_err(|e| StoreError::Corrupt(format!("payload is not MessagePack: {e}")))
}

pub(super) fn walk(value: &mut rmpv::Value, f: &mut impl FnMut(&mut rmpv::Value)) {
    match value {
        rmpv::Value::Array(items) => items.iter_mut().for_each(|v| walk(v, f)),
        rmpv::Value::Map(entries) => entries.iter_mut().for_each(|(_, v)| walk(v, f)),
        other => f(other),
    }
}

pub(super) fn collect_subjects(value: &rmpv::Value, out: &mut Vec<Uuid>) {
    match value {
        rmpv::Value::Array(items) => items.iter().for_each(|v| collect_subjects(v, out)),
        rmpv::Value::Map(entries) => entries.iter().for_each(|(_, v)| collect_subjects(v, out)),
        rmpv::Value::Binary(bytes) => out.extend(blob_subject(bytes)),
        _ => {}
    }
}

/// The subject a sealed blob names, if `bytes` is one.
pub(super) fn blob_subject(bytes: &[u8]) -> Option<Uuid> {
    if bytes.len() < HEADER + 16 || bytes[..4] != SEALED_MAGIC {
        return None;
    }
    Uuid::from_slice(&bytes[4..20]).ok()
}

pub(super) fn text_blob(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text.strip_prefix(SEALED_TEXT)?)
        .ok()
}

pub(super) fn text_subject(text: &str) -> Option<Uuid> {
    blob_subject(&text_blob(text)?)
}

#[cfg(test)]
mod tests {
    use aes_gcm::aead::KeyInit;

    use super::*;

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
