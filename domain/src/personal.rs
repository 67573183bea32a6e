//! Personal data (values that belong to a person and must be forgettable)
//! and secrets (credential material that must never leave the log).
//!
//! Every field of an event that holds personal data (email, names, IPs,
//! user agents, message contents, free text written by a user) has the type
//! [`Personal`]. The storage layer can find them by type and encrypt them
//! with the owner's key; when the key is destroyed (`user.forget`) the value
//! reads back as [`Personal::Erased`]. `Debug` never prints the value, so
//! personal data does not end up in logs by accident.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Personal<T> {
    Value(T),
    /// The owner was forgotten; the value is gone for good.
    Erased,
}

impl<T> Personal<T> {
    pub fn new(value: T) -> Self {
        Personal::Value(value)
    }

    pub fn as_ref(&self) -> Option<&T> {
        match self {
            Personal::Value(v) => Some(v),
            Personal::Erased => None,
        }
    }

    pub fn is_erased(&self) -> bool {
        matches!(self, Personal::Erased)
    }
}

impl<T> fmt::Debug for Personal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Personal::Value(_) => f.write_str("Personal(..)"),
            Personal::Erased => f.write_str("Personal(erased)"),
        }
    }
}

/// What serialisation shows of personal data and of secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Showing {
    /// Everything: the log's own encoding and the projections' inputs.
    All,
    /// No secrets: what an admin may read of the log.
    NoSecrets,
    /// Neither secrets nor personal data: what leaves the store (the
    /// relay) and what outlives the owner's right to be forgotten (the
    /// audit log).
    Public,
}

/// Turns a personal value's MessagePack encoding into its sealed form, or
/// `None` when the value must not be kept (its owner was forgotten).
type Seal = std::rc::Rc<dyn Fn(&[u8]) -> Option<Vec<u8>>>;

thread_local! {
    static SHOWING: std::cell::Cell<Showing> = const { std::cell::Cell::new(Showing::All) };
    static SEALING: std::cell::RefCell<Option<Seal>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (an event's or a state's encoding for the log) with every
/// personal value written as the bytes `seal` makes of its MessagePack
/// encoding (its data subject's key, see `eventstore::data_keys`), or as
/// `nil` where `seal` gives nothing. Readers of the log get the values
/// opened again before they decode them.
pub fn sealed_with<R>(
    seal: impl Fn(&[u8]) -> Option<Vec<u8>> + 'static,
    f: impl FnOnce() -> R,
) -> R {
    let before = SEALING.with(|s| s.replace(Some(std::rc::Rc::new(seal))));
    let result = f();
    SEALING.with(|s| *s.borrow_mut() = before);
    result
}

/// What a personal value serialises as inside [`redacted`].
pub const REDACTED: &str = "[personal]";
/// What a secret serialises as inside [`redacted`] and [`without_secrets`].
pub const REDACTED_SECRET: &str = "[secret]";

fn showing<R>(mode: Showing, f: impl FnOnce() -> R) -> R {
    let before = SHOWING.with(|s| s.replace(mode));
    let result = f();
    SHOWING.with(|s| s.set(before));
    result
}

/// Runs `f` with every personal value serialising as [`REDACTED`] and
/// every secret as [`REDACTED_SECRET`]: the public form of an event.
pub fn redacted<R>(f: impl FnOnce() -> R) -> R {
    showing(Showing::Public, f)
}

/// Runs `f` with every secret serialising as [`REDACTED_SECRET`] (personal
/// data is shown).
pub fn without_secrets<R>(f: impl FnOnce() -> R) -> R {
    showing(Showing::NoSecrets, f)
}

/// Credential material in an event (a password's or key's hash, a session
/// token's hash): kept in the log, where the command side needs it, and
/// never shown outside it (the relay, the audit log, the raw log over
/// HTTP), where a hash would be something to crack. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The value, for the code that checks credentials against it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Serialised as the bare value (so stored events keep their form), or
/// [`REDACTED_SECRET`] inside [`redacted`] and [`without_secrets`].
impl<T: Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if SHOWING.with(std::cell::Cell::get) == Showing::All {
            self.0.serialize(s)
        } else {
            s.serialize_str(REDACTED_SECRET)
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Secret)
    }
}

/// Serialised as the bare value, or `null` when erased (or [`REDACTED`]
/// inside [`redacted`], erased or not).
impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // Erased too: the public form of an event (the audit log, the
            // relay) is the same before and after its owner is forgotten,
            // so a rebuild equals what was written live.
            _ if SHOWING.with(std::cell::Cell::get) == Showing::Public => s.serialize_str(REDACTED),
            Personal::Value(v) => match SEALING.with(|cell| cell.borrow().clone()) {
                Some(seal) => {
                    let plain = crate::codec::encode(v).map_err(serde::ser::Error::custom)?;
                    match seal(&plain) {
                        Some(sealed) => s.serialize_bytes(&sealed),
                        None => s.serialize_str(ERASED),
                    }
                }
                None => v.serialize(s),
            },
            Personal::Erased => s.serialize_none(),
        }
    }
}

/// What the log holds where a personal value can no longer be read (its
/// owner's key was destroyed): `eventstore::data_keys` writes it when it
/// opens such a value, and the sealer writes it for a forgotten owner. A
/// value rather than `nil`, so an optional personal field reads back as
/// present and erased, as it was written, not as never given.
pub const ERASED: &str = "\u{0}copilot-data:erased\u{0}";

/// The types a personal value may have, and how each recognises [`ERASED`].
pub trait PersonalValue {
    fn is_erased_marker(&self) -> bool;
}

impl PersonalValue for String {
    fn is_erased_marker(&self) -> bool {
        self == ERASED
    }
}

impl PersonalValue for serde_json::Value {
    fn is_erased_marker(&self) -> bool {
        self.as_str() == Some(ERASED)
    }
}

impl<'de, T: Deserialize<'de> + PersonalValue> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            Some(v) if !v.is_erased_marker() => Personal::Value(v),
            _ => Personal::Erased,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Note {
        author: String,
        text: Personal<String>,
        secret: Secret<Personal<String>>,
    }

    fn note() -> Note {
        Note {
            author: "ops".into(),
            text: Personal::new("call Ada at home".into()),
            secret: Secret::new(Personal::new("JBSWY3DPEHPK3PXP".into())),
        }
    }

    #[test]
    fn sealing_replaces_every_personal_value_with_what_the_sealer_makes() {
        let sealed = sealed_with(
            |plain| Some([b"S:".as_slice(), plain].concat()),
            || crate::codec::encode(&note()),
        )
        .expect("encodes");
        let as_value: rmpv::Value =
            rmpv::decode::read_value(&mut sealed.as_slice()).expect("msgpack");
        let fields = as_value.as_map().expect("a map");
        let field = |name: &str| {
            &fields
                .iter()
                .find(|(k, _)| k.as_str() == Some(name))
                .expect(name)
                .1
        };
        assert_eq!(field("author").as_str(), Some("ops"));
        // The personal values are binary (the sealed bytes), not text.
        let text = field("text").as_slice().expect("binary");
        assert!(text.starts_with(b"S:"));
        assert!(field("secret")
            .as_slice()
            .expect("binary")
            .starts_with(b"S:"));
        // Outside the scope values are written as they are again.
        let plain = crate::codec::encode(&note()).expect("encodes");
        assert_eq!(
            crate::codec::decode::<Note>(&plain).expect("decodes"),
            note()
        );
    }

    #[test]
    fn a_sealer_that_keeps_nothing_erases() {
        let erased = sealed_with(|_| None, || crate::codec::encode(&note())).expect("encodes");
        let read: Note = crate::codec::decode(&erased).expect("decodes");
        assert!(read.text.is_erased());
        assert!(read.secret.expose().is_erased());
        assert_eq!(read.author, "ops");
    }

    #[test]
    fn an_optional_erased_value_reads_back_present_and_erased() {
        #[derive(Debug, Serialize, Deserialize)]
        struct Titled {
            title: Option<Personal<String>>,
            context: Option<Personal<serde_json::Value>>,
        }
        let erased = crate::codec::encode(&serde_json::json!({"title": ERASED, "context": ERASED}))
            .expect("encodes");
        let read: Titled = crate::codec::decode(&erased).expect("decodes");
        assert!(read.title.as_ref().is_some_and(Personal::is_erased));
        assert!(read.context.as_ref().is_some_and(Personal::is_erased));
        // Its public form equals that of the value it replaced.
        let public = redacted(|| serde_json::to_value(&read)).expect("json");
        assert_eq!(public["title"], REDACTED);
        let never: Titled = crate::codec::decode(
            &crate::codec::encode(&serde_json::json!({"title": null})).expect("encodes"),
        )
        .expect("decodes");
        assert!(never.title.is_none());
    }
}
