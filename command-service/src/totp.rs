//! Time-based one-time passwords (RFC 6238: HMAC-SHA1, 30 s steps, six
//! digits), for MFA at `session.start`. One step of clock drift is allowed.

use chrono::{DateTime, Utc};

const STEP_SECONDS: i64 = 30;
const DIGITS: u32 = 6;

/// The time step `code` is valid for with the base32 `secret` at `now`
/// (±1 step of drift), or `None`. The step is what a sign-in remembers, so
/// the same code is refused a second time.
pub fn matching_step(secret: &str, code: &str, now: DateTime<Utc>) -> Option<i64> {
    let key = base32_decode(secret)?;
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = now.timestamp().div_euclid(STEP_SECONDS);
    // Every candidate is compared, so the time taken says nothing of which matched.
    let mut matched = None;
    for drift in -1..=1 {
        let expected = format!(
            "{:0width$}",
            hotp(&key, (step + drift) as u64),
            width = DIGITS as usize
        );
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
    let key = base32_decode(secret)?;
    let step = now.timestamp().div_euclid(STEP_SECONDS) as u64;
    Some(format!(
        "{:0width$}",
        hotp(&key, step),
        width = DIGITS as usize
    ))
}

fn hotp(key: &[u8], counter: u64) -> u32 {
    let mac = hmac_sha1(key, &counter.to_be_bytes());
    let offset = usize::from(mac[19] & 0x0f);
    let binary = (u32::from(mac[offset] & 0x7f) << 24)
        | (u32::from(mac[offset + 1]) << 16)
        | (u32::from(mac[offset + 2]) << 8)
        | u32::from(mac[offset + 3]);
    binary % 10u32.pow(DIGITS)
}

fn hmac_sha1(key: &[u8], message: &[u8]) -> [u8; 20] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..20].copy_from_slice(&sha1_smol::Sha1::from(key).digest().bytes());
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = sha1_smol::Sha1::new();
    inner.update(&block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = sha1_smol::Sha1::new();
    outer.update(&block.map(|b| b ^ 0x5c));
    outer.update(&inner.digest().bytes());
    outer.digest().bytes()
}

fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut bits: u64 = 0;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.chars().filter(|c| *c != '=' && !c.is_whitespace()) {
        let value = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u64 - 'A' as u64,
            c @ '2'..='7' => c as u64 - '2' as u64 + 26,
            _ => return None,
        };
        bits = (bits << 5) | value;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    (!out.is_empty()).then_some(out)
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
