//! The read-model tables as the projections see them: columns, their types
//! and defaults, and the values a projection writes into them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A column's PostgreSQL type, as far as the binary COPY format cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Uuid,
    Text,
    Int2,
    Int4,
    Int8,
    Bool,
    Timestamptz,
    Jsonb,
    TextArray,
    /// `numeric` with this many fractional digits.
    Numeric(u16),
    /// An enum type of the read-model schema, by name.
    Enum(&'static str),
}

impl ColType {
    /// The type's SQL name, schema-qualified where it lives in `schema`.
    pub fn sql(self, schema: &str) -> String {
        match self {
            ColType::Uuid => "uuid".into(),
            ColType::Text => "text".into(),
            ColType::Int2 => "smallint".into(),
            ColType::Int4 => "integer".into(),
            ColType::Int8 => "bigint".into(),
            ColType::Bool => "boolean".into(),
            ColType::Timestamptz => "timestamptz".into(),
            ColType::Jsonb => "jsonb".into(),
            ColType::TextArray => "text[]".into(),
            ColType::Numeric(_) => "numeric".into(),
            ColType::Enum(name) => format!("\"{schema}\".{name}"),
        }
    }

    /// The type of the column in a staging table: that of the table, but
    /// enums as `text` (same binary form), so the staging table depends on
    /// no schema.
    pub fn staged(self) -> String {
        match self {
            ColType::Enum(_) => "text".into(),
            other => other.sql(""),
        }
    }
}

/// A value to write; `Null` for SQL NULL.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Uuid(Uuid),
    Text(String),
    I16(i16),
    I32(i32),
    I64(i64),
    Bool(bool),
    Ts(DateTime<Utc>),
    /// JSON text, already serialised.
    Json(String),
    TextArray(Vec<String>),
    /// `units / 10^scale` (the scale is the column's).
    Decimal(i64),
    /// An enum label.
    Label(&'static str),
}

impl Value {
    pub fn opt_text(value: Option<&str>) -> Value {
        value.map_or(Value::Null, |v| Value::Text(v.to_string()))
    }

    pub fn opt_uuid(value: Option<Uuid>) -> Value {
        value.map_or(Value::Null, Value::Uuid)
    }

    pub fn json(value: &serde_json::Value) -> Value {
        Value::Json(value.to_string())
    }

    pub fn opt_json(value: Option<&serde_json::Value>) -> Value {
        value.map_or(Value::Null, Value::json)
    }

    /// A count from an event, saturated into the column's range.
    pub fn count(value: impl TryInto<i32>) -> Value {
        Value::I32(value.try_into().unwrap_or(i32::MAX))
    }

    pub fn big(value: impl TryInto<i64>) -> Value {
        Value::I64(value.try_into().unwrap_or(i64::MAX))
    }
}

#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColType,
    /// What a new row holds until an event says otherwise (the DDL's default).
    pub default: fn() -> Value,
}

/// A table keyed by a `uuid` column named `id` (the first column), or,
/// for the children of an aggregate (messages, steps), by their parent's
/// id and `id` together: a client chooses a child's id, and it is unique
/// only within its parent.
#[derive(Debug)]
pub struct TableDef {
    pub name: &'static str,
    /// The parent's id column of a child table, part of its key.
    pub parent: Option<&'static str>,
    pub columns: &'static [Column],
}

/// The key of a row: its `id`, under its parent's id for a child table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowKey {
    pub parent: Option<Uuid>,
    pub id: Uuid,
}

impl RowKey {
    /// The key of child `id` of `parent`.
    pub fn child(parent: Uuid, id: Uuid) -> Self {
        RowKey {
            parent: Some(parent),
            id,
        }
    }
}

impl From<Uuid> for RowKey {
    fn from(id: Uuid) -> Self {
        RowKey { parent: None, id }
    }
}

impl TableDef {
    /// The index of column `name`. Column names are fixed in this crate's
    /// code, so a miss is a programming error caught by every test.
    pub fn index(&self, name: &str) -> usize {
        match self.columns.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => panic!("table {} has no column {name}", self.name),
        }
    }

    /// A new row with every column at its default and its key set.
    pub fn new_row(&self, key: impl Into<RowKey>) -> Vec<Value> {
        let key = key.into();
        let mut row: Vec<Value> = self.columns.iter().map(|c| (c.default)()).collect();
        row[0] = Value::Uuid(key.id);
        if let (Some(column), Some(parent)) = (self.parent, key.parent) {
            row[self.index(column)] = Value::Uuid(parent);
        }
        row
    }

    /// The key of `row` (made by [`TableDef::new_row`]); `None` if its key
    /// columns are not set.
    pub fn key_of(&self, row: &[Value]) -> Option<RowKey> {
        let Some(Value::Uuid(id)) = row.first() else {
            return None;
        };
        let parent = match self.parent {
            None => None,
            Some(column) => match row.get(self.index(column)) {
                Some(Value::Uuid(parent)) => Some(*parent),
                _ => return None,
            },
        };
        Some(RowKey { parent, id: *id })
    }

    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub(crate) fn null() -> Value {
    Value::Null
}
