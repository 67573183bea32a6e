//! Values parsed at the edge: once one exists, it is valid.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::DomainError;

/// Why a value could not be parsed (the caller adds the field name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

macro_rules! bounded_text {
    ($($(#[$doc:meta])* $name:ident: $min:expr, $max:expr;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const MIN_CHARS: usize = $min;
            pub const MAX_CHARS: usize = $max;

            pub fn parse(value: impl Into<String>) -> Result<Self, ParseError> {
                let value: String = value.into();
                let trimmed = value.trim();
                let chars = trimmed.chars().count();
                if chars < Self::MIN_CHARS {
                    return Err(ParseError(if Self::MIN_CHARS == 1 {
                        "must not be empty".to_string()
                    } else {
                        format!("must have at least {} characters", Self::MIN_CHARS)
                    }));
                }
                if chars > Self::MAX_CHARS {
                    return Err(ParseError(format!("must have at most {} characters", Self::MAX_CHARS)));
                }
                if trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') {
                    return Err(ParseError("must not contain control characters".into()));
                }
                Ok($name(trimmed.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $name::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    )*};
}

bounded_text! {
    /// A person's display name.
    DisplayName: 1, 100;
    /// Titles of conversations and incidents.
    Title: 1, 200;
    /// Names of workflows, runbooks, API keys, steps.
    Name: 1, 200;
    /// Free text: descriptions, notes, summaries, reasons, errors.
    Text: 1, 10_000;
    /// Long free text: root causes, indexed content.
    LongText: 1, 200_000;
    /// A message of a conversation (about 100k characters).
    MessageText: 0, 100_000;
    /// A password as typed (hashed before it reaches an event).
    Password: 8, 256;
    /// Short identifiers: model names, languages, trigger sources, services.
    Label: 1, 100;
}

/// An e-mail address, lower-cased.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(value: impl Into<String>) -> Result<Self, ParseError> {
        let value = value.into().trim().to_lowercase();
        let err = || ParseError(format!("{value:?} is not an e-mail address"));
        if value.len() > 254 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err());
        }
        let (local, domain) = value.split_once('@').ok_or_else(err)?;
        if local.is_empty()
            || local.len() > 64
            || domain.contains('@')
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return Err(err());
        }
        Ok(Email(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Email(..)")
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Email::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

macro_rules! string_enum {
    ($($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? })*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(ParseError(format!(
                        "{other:?} is not one of {}",
                        [$($text),+].join(", ")
                    ))),
                }
            }
        }
    )*};
}

string_enum! {
    Role { Admin = "admin", Operator = "operator", Viewer = "viewer" }
    MessageRole { User = "user", Assistant = "assistant", System = "system", Tool = "tool" }
    Severity { Critical = "critical", High = "high", Medium = "medium", Low = "low" }
    IncidentStatus { Open = "open", Investigating = "investigating", Mitigated = "mitigated", Resolved = "resolved", Closed = "closed" }
    ExecutionStatus { Pending = "pending", Running = "running", Succeeded = "succeeded", Failed = "failed", Cancelled = "cancelled" }
    StepStatus { Pending = "pending", Running = "running", Succeeded = "succeeded", Failed = "failed", Skipped = "skipped", Retrying = "retrying" }
    WorkflowStatus { Draft = "draft", Active = "active", Inactive = "inactive", Deleted = "deleted" }
    ConversationStatus { Active = "active", Archived = "archived", Deleted = "deleted" }
    /// What an API key may do.
    Scope { CommandsWrite = "commands:write", Read = "read", Admin = "admin" }
}

/// Up to 20 tags, each 1-64 characters of `a-z 0-9 - _ : .`, lower-cased, no repeats.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Tags(BTreeSet<String>);

impl Tags {
    pub const MAX: usize = 20;

    pub fn parse(values: Vec<String>) -> Result<Self, ParseError> {
        let mut tags = BTreeSet::new();
        for value in values {
            let tag = value.trim().to_lowercase();
            if tag.is_empty() || tag.chars().count() > 64 {
                return Err(ParseError(format!(
                    "tag {value:?} must have 1 to 64 characters"
                )));
            }
            if !tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c))
            {
                return Err(ParseError(format!(
                    "tag {value:?} may only hold a-z, 0-9, '-', '_', ':' and '.'"
                )));
            }
            tags.insert(tag);
        }
        if tags.len() > Self::MAX {
            return Err(ParseError(format!("at most {} tags", Self::MAX)));
        }
        Ok(Tags(tags))
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Both sets together, or an error if that is more than [`Tags::MAX`].
    pub fn union(&self, other: &Tags) -> Result<Tags, ParseError> {
        let merged: BTreeSet<String> = self.0.union(&other.0).cloned().collect();
        if merged.len() > Self::MAX {
            return Err(ParseError(format!("at most {} tags", Self::MAX)));
        }
        Ok(Tags(merged))
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Tags::parse(Vec::<String>::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Money in micro-dollars (1e-6 USD), so totals add up exactly; at most
/// `MAX` micro-dollars. On the wire it is a decimal number or a decimal
/// string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Money<const MAX: i64> {
    micros: i64,
}

/// A single cost a client reports: at most one million dollars.
pub type CostUsd = Money<{ 1_000_000 * 1_000_000 }>;

/// A sum of costs (a conversation's total): anything the micro-dollars of
/// an `i64` hold. Events carry it, so it must read back whatever it grew to.
pub type CostTotal = Money<{ i64::MAX }>;

impl<const MAX: i64> Money<MAX> {
    pub const ZERO: Self = Money { micros: 0 };

    pub fn from_micros(micros: i64) -> Result<Self, ParseError> {
        if !(0..=MAX).contains(&micros) {
            return Err(ParseError(format!(
                "must be between 0 and {} dollars",
                MAX / 1_000_000
            )));
        }
        Ok(Money { micros })
    }

    pub fn micros(self) -> i64 {
        self.micros
    }

    /// Parses a decimal with at most six fractional digits.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let err = || {
            ParseError(format!(
                "{text:?} is not a decimal amount with at most 6 decimals"
            ))
        };
        let (whole, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
        if whole.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || frac.len() > 6
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(err());
        }
        let whole: i64 = whole.parse().map_err(|_| err())?;
        let frac_micros: i64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<6}").parse().map_err(|_| err())?
        };
        let micros = whole
            .checked_mul(1_000_000)
            .and_then(|w| w.checked_add(frac_micros))
            .ok_or_else(err)?;
        Self::from_micros(micros)
    }

    /// `self + other`, if it stays within this amount's bound.
    pub fn checked_add<const OTHER: i64>(self, other: Money<OTHER>) -> Option<Self> {
        self.micros
            .checked_add(other.micros)
            .and_then(|micros| Self::from_micros(micros).ok())
    }
}

impl<const MAX: i64> fmt::Display for Money<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:06}",
            self.micros / 1_000_000,
            self.micros % 1_000_000
        )
    }
}

impl<const MAX: i64> Serialize for Money<MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de, const MAX: i64> Deserialize<'de> for Money<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(u64),
            Float(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(text) => Self::parse(&text),
            Raw::Int(n) => i64::try_from(n)
                .ok()
                .and_then(|n| n.checked_mul(1_000_000))
                .ok_or_else(|| ParseError("too large".into()))
                .and_then(Self::from_micros),
            // A JSON/MessagePack float: round to the micro-dollar.
            Raw::Float(x) if (0.0..9.2e12).contains(&x) => {
                Self::from_micros((x * 1_000_000.0).round() as i64)
            }
            Raw::Float(_) => Err(ParseError(
                "must be a finite, non-negative number of dollars".into(),
            )),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// Free JSON a client attaches (a session's context): an object of at
/// most [`JsonObject::MAX_BYTES`] bytes as JSON text.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct JsonObject(Box<serde_json::Value>);

impl JsonObject {
    pub const MAX_BYTES: usize = 16 * 1024;

    pub fn parse(value: serde_json::Value) -> Result<Self, ParseError> {
        if !value.is_object() {
            return Err(ParseError("must be an object".into()));
        }
        let size = value.to_string().len();
        if size > Self::MAX_BYTES {
            return Err(ParseError(format!(
                "is {size} bytes as JSON, more than {}",
                Self::MAX_BYTES
            )));
        }
        Ok(JsonObject(Box::new(value)))
    }

    pub fn into_inner(self) -> serde_json::Value {
        *self.0
    }
}

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        JsonObject::parse(serde_json::Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// How a conversation's model is asked (the seed's "model
/// configuration"): the common sampling parameters, each within the range
/// model APIs accept. Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Sequences that end the answer; whitespace is common ("\n\n"), so
    /// these are not trimmed labels.
    pub stop: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl ModelConfig {
    pub const MAX_TOKENS: u32 = 1_000_000;
    pub const MAX_STOP: usize = 4;
    pub const MAX_STOP_CHARS: usize = 64;

    /// The field that is out of range, and why.
    pub fn check(&self) -> Result<(), DomainError> {
        let range = |field: &str, value: Option<f64>, lo: f64, hi: f64| match value {
            Some(v) if !(lo..=hi).contains(&v) => Err(DomainError::invalid(
                format!("model_config.{field}"),
                format!("must be from {lo} to {hi}"),
            )),
            _ => Ok(()),
        };
        range("temperature", self.temperature, 0.0, 2.0)?;
        range("top_p", self.top_p, 0.0, 1.0)?;
        range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        if self
            .max_tokens
            .is_some_and(|m| m == 0 || m > Self::MAX_TOKENS)
        {
            return Err(DomainError::invalid(
                "model_config.max_tokens",
                format!("must be from 1 to {}", Self::MAX_TOKENS),
            ));
        }
        let stop = self.stop.as_deref().unwrap_or_default();
        if stop.len() > Self::MAX_STOP {
            return Err(DomainError::invalid(
                "model_config.stop",
                format!("at most {} sequences", Self::MAX_STOP),
            ));
        }
        for (i, sequence) in stop.iter().enumerate() {
            let chars = sequence.chars().count();
            if chars == 0 || chars > Self::MAX_STOP_CHARS || sequence.contains('\0') {
                return Err(DomainError::invalid(
                    format!("model_config.stop[{i}]"),
                    format!(
                        "must have 1 to {} characters and no NUL",
                        Self::MAX_STOP_CHARS
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A workflow's environment variables: names of `A-Z 0-9 _` (not starting
/// with a digit, at most 64), values of at most 4,096 characters, at most
/// 50 of them. Not for secrets: they are kept in the log and shown to
/// every signed-in user, so names that say they hold one are refused.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Environment(std::collections::BTreeMap<String, String>);

impl Environment {
    pub const MAX_VARS: usize = 50;
    pub const MAX_NAME: usize = 64;
    pub const MAX_VALUE: usize = 4096;
    /// Parts of a name that say the value is a secret.
    const SECRET_WORDS: [&'static str; 6] = [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "PRIVATE_KEY",
    ];

    pub fn parse(vars: std::collections::BTreeMap<String, String>) -> Result<Self, ParseError> {
        if vars.len() > Self::MAX_VARS {
            return Err(ParseError(format!("at most {} variables", Self::MAX_VARS)));
        }
        for (name, value) in &vars {
            let good_name = !name.is_empty()
                && name.len() <= Self::MAX_NAME
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !good_name {
                return Err(ParseError(format!(
                    "{name:?} is not a variable name (A-Z, 0-9 and _, not starting with a digit, at most {} characters)",
                    Self::MAX_NAME
                )));
            }
            if let Some(word) = Self::SECRET_WORDS.iter().find(|w| name.contains(*w)) {
                return Err(ParseError(format!(
                    "{name} looks like a secret ({word}): an environment is kept in the log and shown \
                     to every signed-in user; pass the name of a secret in your secret store instead"
                )));
            }
            if value.chars().count() > Self::MAX_VALUE || value.contains('\0') {
                return Err(ParseError(format!(
                    "the value of {name} must have at most {} characters and no NUL",
                    Self::MAX_VALUE
                )));
            }
        }
        Ok(Environment(vars))
    }

    pub fn into_inner(self) -> std::collections::BTreeMap<String, String> {
        self.0
    }
}

impl<'de> Deserialize<'de> for Environment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Environment::parse(std::collections::BTreeMap::deserialize(d)?)
            .map_err(serde::de::Error::custom)
    }
}

/// A TOTP secret being enrolled: base32 (RFC 4648, padding optional) of at
/// least 128 bits, as RFC 4226 asks, upper-cased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TotpSecret(String);

impl TotpSecret {
    pub const MIN_BYTES: usize = 16;

    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let text = text.trim().to_ascii_uppercase();
        let bytes = totp_rs::Secret::Encoded(text.clone())
            .to_bytes()
            .map_err(|_| ParseError("must be base32 (A-Z, 2-7)".into()))?;
        if bytes.len() < Self::MIN_BYTES || text.len() > 128 {
            return Err(ParseError(format!(
                "must hold {} to 80 bytes (26 to 128 base32 characters)",
                Self::MIN_BYTES
            )));
        }
        Ok(TotpSecret(text))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl<'de> Deserialize<'de> for TotpSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TotpSecret::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A vector embedding; its dimension is checked against the configured one
/// by [`Embedding::check_dimension`] before a command is decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Embedding(Vec<f32>);

impl Embedding {
    pub fn new(values: Vec<f32>) -> Result<Self, ParseError> {
        if values.is_empty() || values.len() > 4096 {
            return Err(ParseError("must have 1 to 4096 dimensions".into()));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(ParseError("must hold finite numbers only".into()));
        }
        Ok(Embedding(values))
    }

    pub fn values(&self) -> &[f32] {
        &self.0
    }

    pub fn check_dimension(&self, field: &str, expected: usize) -> Result<(), DomainError> {
        if self.0.len() != expected {
            return Err(DomainError::invalid(
                field,
                format!(
                    "has {} dimensions, the configured embedder has {expected}",
                    self.0.len()
                ),
            ));
        }
        Ok(())
    }
}

impl Eq for Embedding {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totp_secrets_are_base32_of_at_least_128_bits() {
        let good = TotpSecret::parse(" jbswy3dpehpk3pxpjbswy3dpehpk3pxp ").expect("160 bits");
        assert_eq!(good.into_inner(), "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP");
        assert!(
            TotpSecret::parse("JBSWY3DPEHPK3PXP").is_err(),
            "80 bits is too few"
        );
        assert!(TotpSecret::parse("not base32 at all 0189!!!!!!!!").is_err());
        assert!(TotpSecret::parse(&"A".repeat(200)).is_err(), "too long");
    }

    #[test]
    fn emails_parse_lower_cased_and_reject_garbage() {
        assert_eq!(
            Email::parse(" Ada@Example.COM ").map(|e| e.as_str().to_string()),
            Ok("ada@example.com".into())
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@.example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bounded_text_trims_and_bounds() {
        assert_eq!(
            Title::parse("  hello ").map(Title::into_inner),
            Ok("hello".into())
        );
        assert!(Title::parse("   ").is_err());
        assert!(Title::parse("x".repeat(201)).is_err());
        assert!(Title::parse("bell\u{7}").is_err());
        assert!(Password::parse("short").is_err());
    }

    #[test]
    fn tags_are_normalised_and_bounded() {
        let tags = Tags::parse(vec!["DB".into(), "db".into(), "ops:oncall".into()]).expect("tags");
        assert_eq!(tags.iter().collect::<Vec<_>>(), vec!["db", "ops:oncall"]);
        assert!(Tags::parse(vec!["has space".into()]).is_err());
        assert!(Tags::parse((0..21).map(|i| format!("t{i}")).collect()).is_err());
    }

    #[test]
    fn money_is_exact() {
        assert_eq!(CostUsd::parse("0.00412").map(CostUsd::micros), Ok(4120));
        assert_eq!(
            CostUsd::parse("12").map(|c| c.to_string()),
            Ok("12.000000".into())
        );
        assert!(CostUsd::parse("0.0000001").is_err());
        assert!(CostUsd::parse("-1").is_err());
        let from_float: CostUsd = serde_json::from_str("0.1").expect("float");
        assert_eq!(from_float.micros(), 100_000);
        let sum = (0..10)
            .try_fold(CostUsd::ZERO, |acc, _| acc.checked_add(from_float))
            .expect("sum");
        assert_eq!(sum.to_string(), "1.000000", "no floating-point drift");
    }

    #[test]
    fn enums_parse_their_contract_names() {
        assert_eq!(
            "investigating".parse::<IncidentStatus>(),
            Ok(IncidentStatus::Investigating)
        );
        assert!("urgent".parse::<Severity>().is_err());
        assert_eq!(
            serde_json::to_string(&Scope::CommandsWrite).ok().as_deref(),
            Some("\"commands:write\"")
        );
        assert_eq!(
            serde_json::from_str::<Role>("\"operator\"").ok(),
            Some(Role::Operator)
        );
    }

    #[test]
    fn embeddings_check_their_dimension() {
        let e = Embedding::new(vec![0.1; 384]).expect("embedding");
        assert!(e.check_dimension("embedding", 384).is_ok());
        assert_eq!(
            e.check_dimension("embedding", 1536).map_err(|e| e.code()),
            Err("invalid")
        );
        assert!(Embedding::new(vec![f32::NAN]).is_err());
    }
}
