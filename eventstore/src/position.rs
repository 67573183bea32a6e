//! The global position of an event: the key of the gap-safe order.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where an event sits in the global order of the log.
///
/// Ordered by `(generation, tx_id, seq)`; see the crate documentation for why
/// this order, unlike `seq` alone, never lets a later-committing event sort
/// before a position already handed out. Its text form `generation.tx_id.seq`
/// is the consistency token clients pass back (`X-Min-Position`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// Grows when the store is restored into a cluster whose transaction
    /// counter is behind the stored events.
    pub generation: i32,
    /// The 64-bit id of the transaction that inserted the event.
    pub tx_id: i64,
    /// Insertion order within the transaction.
    pub seq: i64,
}

impl Position {
    /// Before every event.
    pub const START: Position = Position {
        generation: 0,
        tx_id: 0,
        seq: 0,
    };
}

impl Position {
    /// A text form that sorts (as bytes) in the order of positions, for
    /// stores that compare strings (a Lua script in Redis).
    pub fn sort_key(&self) -> String {
        format!(
            "{:010}.{:020}.{:020}",
            self.generation.max(0),
            self.tx_id.max(0),
            self.seq.max(0)
        )
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.generation, self.tx_id, self.seq)
    }
}

/// A position token that is not of the form `generation.tx_id.seq`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid position {0:?}: expected three non-negative integers `generation.tx_id.seq`")]
pub struct ParsePositionError(pub String);

impl FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.chars().take(64).collect());
        let mut parts = s.split('.');
        let mut next = || -> Result<i64, ParsePositionError> {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            part.parse::<i64>().map_err(|_| err())
        };
        let generation = i32::try_from(next()?).map_err(|_| err())?;
        let tx_id = next()?;
        let seq = next()?;
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Position {
            generation,
            tx_id,
            seq,
        })
    }
}

impl Serialize for Position {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_orders() {
        let a = Position {
            generation: 1,
            tx_id: 900,
            seq: 5,
        };
        let b = Position {
            generation: 2,
            tx_id: 3,
            seq: 1,
        };
        assert_eq!(a.to_string(), "1.900.5");
        assert_eq!("1.900.5".parse::<Position>(), Ok(a));
        assert!(a < b, "a later generation sorts after every earlier one");
        assert!(Position::START < a);
    }

    #[test]
    fn rejects_malformed_tokens() {
        for bad in [
            "",
            "1.2",
            "1.2.3.4",
            "a.b.c",
            "1.-2.3",
            "1..3",
            "99999999999.1.1",
            " 1.2.3",
        ] {
            assert!(
                bad.parse::<Position>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
