//! PostgreSQL's binary COPY format, written by hand: the fastest way to put
//! many rows into a table, and the same path the bare baseline of
//! `bench replay` uses.

use crate::table::{ColType, Value};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;
const TEXT_OID: i32 = 25;

#[derive(Debug, thiserror::Error)]
#[error("column {column}: a {value} value does not fit a {ty:?} column")]
pub struct EncodeError {
    pub column: &'static str,
    pub ty: ColType,
    pub value: &'static str,
}

/// A COPY ... FROM STDIN (FORMAT binary) payload under construction.
pub struct CopyBuffer {
    buf: Vec<u8>,
    rows: usize,
}

impl Default for CopyBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl CopyBuffer {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension
        CopyBuffer { buf, rows: 0 }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn begin_row(&mut self, fields: usize) {
        self.rows += 1;
        self.buf
            .extend_from_slice(&(i16::try_from(fields).unwrap_or(i16::MAX)).to_be_bytes());
    }

    /// Appends one field of type `ty`.
    pub fn field(
        &mut self,
        column: &'static str,
        ty: ColType,
        value: &Value,
    ) -> Result<(), EncodeError> {
        let mismatch = |value: &'static str| EncodeError { column, ty, value };
        match (ty, value) {
            (_, Value::Null) => self.buf.extend_from_slice(&(-1i32).to_be_bytes()),
            (ColType::Uuid, Value::Uuid(u)) => self.bytes(u.as_bytes()),
            (ColType::Text, Value::Text(s)) => self.bytes(s.as_bytes()),
            (ColType::Enum(_), Value::Label(s)) => self.bytes(s.as_bytes()),
            (ColType::Int2, Value::I16(v)) => self.bytes(&v.to_be_bytes()),
            (ColType::Int4, Value::I32(v)) => self.bytes(&v.to_be_bytes()),
            (ColType::Int8, Value::I64(v)) => self.bytes(&v.to_be_bytes()),
            (ColType::Bool, Value::Bool(v)) => self.bytes(&[u8::from(*v)]),
            (ColType::Timestamptz, Value::Ts(t)) => {
                let micros = t.timestamp_micros() - PG_EPOCH_OFFSET_MICROS;
                self.bytes(&micros.to_be_bytes());
            }
            (ColType::Jsonb, Value::Json(text)) => {
                self.len(text.len() + 1);
                self.buf.push(1); // jsonb format version
                self.buf.extend_from_slice(text.as_bytes());
            }
            (ColType::TextArray, Value::TextArray(items)) => self.text_array(items),
            (ColType::Numeric(scale), Value::Decimal(units)) => self.numeric(*units, scale),
            (_, other) => return Err(mismatch(kind(other))),
        }
        Ok(())
    }

    /// The finished payload (with the trailer).
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }

    fn len(&mut self, len: usize) {
        self.buf
            .extend_from_slice(&(i32::try_from(len).unwrap_or(i32::MAX)).to_be_bytes());
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.buf.extend_from_slice(bytes);
    }

    fn text_array(&mut self, items: &[String]) {
        let body: usize = if items.is_empty() {
            12
        } else {
            20 + items.iter().map(|s| 4 + s.len()).sum::<usize>()
        };
        self.len(body);
        let dims: i32 = if items.is_empty() { 0 } else { 1 };
        self.buf.extend_from_slice(&dims.to_be_bytes());
        self.buf.extend_from_slice(&0i32.to_be_bytes()); // no NULL elements
        self.buf.extend_from_slice(&TEXT_OID.to_be_bytes());
        if !items.is_empty() {
            self.len(items.len());
            self.buf.extend_from_slice(&1i32.to_be_bytes()); // lower bound
            for item in items {
                self.bytes(item.as_bytes());
            }
        }
    }

    /// `numeric` from a scaled integer: base-10000 digit groups, the
    /// integer part's groups first.
    fn numeric(&mut self, units: i64, scale: u16) {
        let negative = units < 0;
        let abs = units.unsigned_abs();
        let pow = 10u64.pow(u32::from(scale));
        let (mut int, frac) = (abs / pow, abs % pow);
        let mut int_groups = Vec::new();
        while int > 0 {
            int_groups.push(u16::try_from(int % 10_000).unwrap_or(0));
            int /= 10_000;
        }
        int_groups.reverse();
        // Fractional digits, left-aligned into groups of four.
        let frac_groups_len = usize::from(scale).div_ceil(4);
        let mut frac_scaled = frac;
        let pad = frac_groups_len * 4 - usize::from(scale);
        for _ in 0..pad {
            frac_scaled *= 10;
        }
        let mut frac_groups = vec![0u16; frac_groups_len];
        for group in frac_groups.iter_mut().rev() {
            *group = u16::try_from(frac_scaled % 10_000).unwrap_or(0);
            frac_scaled /= 10_000;
        }
        let weight = i16::try_from(int_groups.len()).unwrap_or(i16::MAX) - 1;
        let digits: Vec<u16> = int_groups.into_iter().chain(frac_groups).collect();
        self.len(8 + 2 * digits.len());
        let ndigits = i16::try_from(digits.len()).unwrap_or(i16::MAX);
        self.buf.extend_from_slice(&ndigits.to_be_bytes());
        self.buf.extend_from_slice(&weight.to_be_bytes());
        let sign: u16 = if negative { 0x4000 } else { 0 };
        self.buf.extend_from_slice(&sign.to_be_bytes());
        self.buf.extend_from_slice(&scale.to_be_bytes());
        for digit in digits {
            self.buf.extend_from_slice(&digit.to_be_bytes());
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Uuid(_) => "uuid",
        Value::Text(_) => "text",
        Value::I16(_) => "smallint",
        Value::I32(_) => "integer",
        Value::I64(_) => "bigint",
        Value::Bool(_) => "boolean",
        Value::Ts(_) => "timestamp",
        Value::Json(_) => "json",
        Value::TextArray(_) => "text[]",
        Value::Decimal(_) => "decimal",
        Value::Label(_) => "label",
    }
}
