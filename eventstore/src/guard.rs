//! What an append checks again in its own statement before it writes.
//!
//! The command service decides a command under a credential it verified a
//! moment ago (often from a cache). Rather than look the credential up
//! again before appending, it hands the append a [`Guard`]: the statement
//! that writes the events first checks, per request and in the same
//! transaction, that the command id has no stored outcome and that the
//! credential still holds for that user and role (migration 0011). What
//! fails a check is written nowhere and is answered
//! [`crate::AppendError::Decided`] or [`crate::AppendError::Unverified`].

use uuid::Uuid;

/// The credential a request was decided under. [`Guard::NONE`] checks only
/// that the command id has no stored outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// Hash of the bearer token: of a session token, as in `auth_sessions`;
    /// of a whole API key, which matches no session. `None`: no credential
    /// to check.
    pub token_hash: Option<String>,
    /// The API key the request was decided under, checked instead of a
    /// session: still the user's, not revoked, not expired.
    pub key_id: Option<Uuid>,
    /// The user and role the request was decided as; the user must still
    /// have that role and be neither locked nor deleted.
    pub user_id: Uuid,
    pub role: String,
}

impl Guard {
    /// No credential to check: only a stored outcome of the command id
    /// holds the request back.
    pub const NONE: Guard = Guard {
        token_hash: None,
        key_id: None,
        user_id: Uuid::nil(),
        role: String::new(),
    };
}
