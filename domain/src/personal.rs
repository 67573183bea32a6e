//! Personal data: values that belong to a person and must be forgettable.
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

thread_local! {
    static REDACTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// What a personal value serialises as inside [`redacted`].
pub const REDACTED: &str = "[personal]";

/// Runs `f` with every personal value serialising as [`REDACTED`]: for
/// copies that must outlive the owner's right to be forgotten (the audit
/// log keeps the facts of an event, not the person's data).
pub fn redacted<R>(f: impl FnOnce() -> R) -> R {
    let before = REDACTING.with(|r| r.replace(true));
    let result = f();
    REDACTING.with(|r| r.set(before));
    result
}

/// Serialised as the bare value, or `null` when erased (or [`REDACTED`]
/// inside [`redacted`]).
impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Personal::Value(_) if REDACTING.with(std::cell::Cell::get) => s.serialize_str(REDACTED),
            Personal::Value(v) => v.serialize(s),
            Personal::Erased => s.serialize_none(),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            Some(v) => Personal::Value(v),
            None => Personal::Erased,
        })
    }
}
