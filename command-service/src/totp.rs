//! Time-based one-time passwords (RFC 6238: HMAC-SHA1, 30 s steps, six
//! digits; totp-rs computes them), for MFA at `session.start`. One step of
//! clock drift is allowed.

use chrono::{DateTime, Utc};
use totp_rs::{Algorithm, Secret, TOTP};

const STEP_SECONDS: i64 = 30;
const DIGITS: usize = 6;

/// The generator for a base32 `secret`. Unchecked length: secrets enrolled
/// before the 128-bit minimum (`domain::values::TotpSecret`) still verify.
fn totp(secret: &str) -> Option<TOTP> {
    let key = Secret::Encoded(secret.trim().to_ascii_uppercase())
        .to_bytes()
        .ok()?;
    (!key.is_empty())
        .then(|| TOTP::new_unchecked(Algorithm::SHA1, DIGITS, 1, STEP_SECONDS as u64, key))
}

/// A new secret for enrolment: 160 random bits (RFC 4226's recommended
/// length), base32.
pub fn new_secret() -> String {
    Secret::Raw(infra::auth::random_bytes::<20>().to_vec())
        .to_encoded()
        .to_string()
}

/// The `otpauth://` URI authenticator apps enrol from (a QR code of it).
pub fn otpauth_uri(secret: &str, account: &str) -> String {
    let label: String =
        url::form_urlencoded::byte_serialize(format!("{ISSUER}:{account}").as_bytes())
            .collect::<String>()
            .replace("%3A", ":");
    format!(
        "otpauth://totp/{label}?secret={secret}&issuer={ISSUER}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}"
    )
}

const ISSUER: &str = "copilot-data";

/// The time step `code` is valid for with the base32 `secret` at `now`
/// (±1 step of drift), or `None`. The step is what a sign-in remembers, so
/// the same code is refused a second time.
pub fn matching_step(secret: &str, code: &str, now: DateTime<Utc>) -> Option<i64> {
    let totp = totp(secret)?;
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = now.timestamp().div_euclid(STEP_SECONDS);
    // Every candidate is compared, so the time taken says nothing of which matched.
    let mut matched = None;
    for drift in -1..=1 {
        let at = u64::try_from((step + drift) * STEP_SECONDS).unwrap_or_default();
        let expected = totp.generate(at);
        if infra::auth::constant_time_eq(expected.as_bytes(), code.as_bytes()) {
            matched = Some(step + drift);
        }
    }
    matched
}

/// Whether `code` is valid for the base32 `secret` at `now` (±1 step).
pub fn verify(secret: &str, code: &str, now: DateTime<Utc>) -> bool {
    matching_step(secret, code, now).is_some()
}

/// The code for `secret` at `now`, for tests and clients.
pub fn generate(secret: &str, now: DateTime<Utc>) -> Option<String> {
    let at = u64::try_from(now.timestamp()).ok()?;
    Some(totp(secret)?.generate(at))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn rfc_6238_test_vectors() {
        // The RFC's SHA-1 secret "12345678901234567890" in base32, 8 digits
        // truncated to the last 6.
        let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        let at = |t| Utc.timestamp_opt(t, 0).single().expect("time");
        assert_eq!(generate(secret, at(59)).as_deref(), Some("287082"));
        assert_eq!(
            generate(secret, at(1_111_111_109)).as_deref(),
            Some("081804")
        );
        assert_eq!(
            generate(secret, at(1_234_567_890)).as_deref(),
            Some("005924")
        );
        assert!(verify(secret, "287082", at(59)));
        assert!(verify(secret, "287082", at(80)), "one step of drift");
        assert!(!verify(secret, "287082", at(200)));
        assert!(!verify(secret, "28708", at(59)));
        assert!(!verify("not base32!", "287082", at(59)));
    }
}
