//! Which keys seal a decided command's personal data (see
//! `eventstore::data_keys`): each event's data subject's, and the actor's
//! for the client address and program in the metadata.

use std::collections::HashMap;

use domain::context::Actor;
use domain::Aggregate;
use eventstore::data_keys::{DataKeys, Sealer};
use eventstore::StoreError;
use uuid::Uuid;

/// The sealers an append needs, by subject. Empty without a master key:
/// personal data is then written in the clear.
#[derive(Debug, Default)]
pub(super) struct Sealers {
    enabled: bool,
    by_subject: HashMap<Uuid, Sealer>,
}

/// The subjects whose keys seal `events` (appended to `aggregate_id` in
/// `state`) and the metadata of `actor`'s append.
pub(super) fn subjects<A: Aggregate>(
    aggregate_id: Uuid,
    state: &A::State,
    events: &[A::Event],
    actor: &Actor,
) -> Vec<Uuid> {
    let mut subjects: Vec<Uuid> = events
        .iter()
        .filter_map(|e| A::data_subject(aggregate_id, state, e))
        .collect();
    subjects.extend(metadata_subject::<A>(aggregate_id, state, events, actor));
    subjects.sort_unstable();
    subjects.dedup();
    subjects
}

/// Whose address a command's metadata records: the signed-in actor's, or
/// for a sign-in (no actor yet) the person it signs in.
pub(super) fn metadata_subject<A: Aggregate>(
    aggregate_id: Uuid,
    state: &A::State,
    events: &[A::Event],
    actor: &Actor,
) -> Option<Uuid> {
    actor.user_id().map(|u| u.0).or_else(|| {
        events
            .iter()
            .find_map(|e| A::data_subject(aggregate_id, state, e))
    })
}

impl Sealers {
    /// Makes (or reads) the keys of `subjects`.
    pub(super) async fn make(
        keys: Option<&DataKeys>,
        subjects: Vec<Uuid>,
    ) -> Result<Sealers, StoreError> {
        let Some(keys) = keys else {
            return Ok(Sealers::default());
        };
        let mut by_subject = HashMap::with_capacity(subjects.len());
        for subject in subjects {
            by_subject.insert(subject, keys.sealer(subject).await?);
        }
        Ok(Sealers {
            enabled: true,
            by_subject,
        })
    }

    /// The keys of `subjects` if this process holds them all already (the
    /// request/reply lane does not wait for the database).
    pub(super) fn cached(keys: Option<&DataKeys>, subjects: Vec<Uuid>) -> Option<Sealers> {
        let Some(keys) = keys else {
            return Some(Sealers::default());
        };
        let mut by_subject = HashMap::with_capacity(subjects.len());
        for subject in subjects {
            by_subject.insert(subject, keys.cached_sealer(subject)?);
        }
        Some(Sealers {
            enabled: true,
            by_subject,
        })
    }

    /// Encodes `event` with its personal values sealed for `subject`.
    pub(super) fn encode<E: domain::codec::EventCodec>(
        &self,
        subject: Option<Uuid>,
        event: &E,
    ) -> Result<Vec<u8>, domain::codec::CodecError> {
        match self.sealer(subject)? {
            Some(sealer) => {
                let sealer = sealer.clone();
                domain::personal::sealed_with(move |plain| sealer.seal(plain), || event.encode())
            }
            None => event.encode(),
        }
    }

    /// A text of `subject`'s (a client address) as the log keeps it.
    pub(super) fn text(
        &self,
        subject: Option<Uuid>,
        text: Option<String>,
    ) -> Result<Option<String>, domain::codec::CodecError> {
        let Some(text) = text else { return Ok(None) };
        Ok(match self.sealer(subject)? {
            Some(sealer) => sealer.seal_text(&text),
            // Kept in the clear, a text that reads as sealed would be
            // taken for one by every reader: a client's claim is dropped.
            None => Some(text).filter(|t| !eventstore::data_keys::looks_sealed(t)),
        })
    }

    fn sealer(&self, subject: Option<Uuid>) -> Result<Option<&Sealer>, domain::codec::CodecError> {
        let Some(subject) = subject.filter(|_| self.enabled) else {
            return Ok(None);
        };
        self.by_subject.get(&subject).map(Some).ok_or_else(|| {
            domain::codec::CodecError::Sealing(format!("no data key was made for {subject}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_client_text_that_reads_as_sealed_is_not_kept() {
        // No master key (or no subject to seal for): texts stay in the
        // clear, except one every reader would take for a sealed value.
        let clear = Sealers::default();
        assert_eq!(
            clear.text(None, Some("curl/8".into())).expect("text"),
            Some("curl/8".into())
        );
        assert_eq!(
            clear.text(None, Some("sealed:AAAA".into())).expect("text"),
            None
        );
        assert_eq!(
            clear
                .text(Some(Uuid::now_v7()), Some("sealed:AAAA".into()))
                .expect("text"),
            None
        );
    }
}
