//! The rows a batch of events changes, coalesced in memory and written with
//! one binary COPY per table: new rows straight into the table, changes to
//! existing rows through a staging table and one UPDATE.
//!
//! Events carry absolute facts (running totals, new statuses), so most
//! changes are "set column to value" and need no read; counters an event
//! only increments are "add to column". Several events on one row within a
//! batch become one write.

use std::collections::HashMap;
use std::fmt::Write as _;

use sqlx::PgConnection;

use crate::copy::{CopyBuffer, EncodeError};
use crate::table::{ColType, RowKey, TableDef, Value};

#[derive(Debug, Clone)]
enum Cell {
    Keep,
    Set(Value),
    Add(i64),
}

#[derive(Default)]
struct Pending {
    inserts: HashMap<RowKey, Vec<Value>>,
    updates: HashMap<RowKey, Vec<Cell>>,
}

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Pending changes to a fixed set of tables.
pub struct ChangeSet {
    tables: Vec<(&'static TableDef, Pending)>,
}

impl ChangeSet {
    /// Changes to `tables`, written in that order.
    pub fn new(tables: &[&'static TableDef]) -> Self {
        ChangeSet {
            tables: tables.iter().map(|t| (*t, Pending::default())).collect(),
        }
    }

    /// The pending changes of `table`, for a row `key` of it. A key without
    /// its parent in a child table (or with one elsewhere) is a programming
    /// error, caught by every test, like an unknown column.
    fn pending(&mut self, table: &'static TableDef, key: RowKey) -> &mut Pending {
        if table.parent.is_some() != key.parent.is_some() {
            panic!("row {key:?} does not fit the key of table {}", table.name);
        }
        let slot = self
            .tables
            .iter()
            .position(|(t, _)| std::ptr::eq(*t, table));
        match slot {
            Some(i) => &mut self.tables[i].1,
            None => panic!("table {} is not part of this change set", table.name),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tables
            .iter()
            .all(|(_, p)| p.inserts.is_empty() && p.updates.is_empty())
    }

    /// A new row (from [`TableDef::new_row`]). False if its key already
    /// has a pending new row: the caller's event is then inconsistent.
    pub fn insert(&mut self, table: &'static TableDef, row: Vec<Value>) -> bool {
        let Some(id) = table.key_of(&row) else {
            return false;
        };
        let pending = self.pending(table, id);
        if pending.inserts.contains_key(&id) || pending.updates.contains_key(&id) {
            return false;
        }
        pending.inserts.insert(id, row);
        true
    }

    /// Sets a column of row `id` (new in this batch or already stored).
    pub fn set(
        &mut self,
        table: &'static TableDef,
        id: impl Into<RowKey>,
        column: &str,
        value: Value,
    ) {
        let id = id.into();
        let index = table.index(column);
        let width = table.columns.len();
        let pending = self.pending(table, id);
        if let Some(row) = pending.inserts.get_mut(&id) {
            row[index] = value;
            return;
        }
        let cells = pending
            .updates
            .entry(id)
            .or_insert_with(|| vec![Cell::Keep; width]);
        cells[index] = Cell::Set(value);
    }

    /// Adds `delta` to an integer column of row `id`.
    pub fn add(
        &mut self,
        table: &'static TableDef,
        id: impl Into<RowKey>,
        column: &str,
        delta: i64,
    ) {
        let id = id.into();
        let index = table.index(column);
        let width = table.columns.len();
        let pending = self.pending(table, id);
        if let Some(row) = pending.inserts.get_mut(&id) {
            row[index] = added(&row[index], delta);
            return;
        }
        let cells = pending
            .updates
            .entry(id)
            .or_insert_with(|| vec![Cell::Keep; width]);
        cells[index] = match &cells[index] {
            Cell::Keep => Cell::Add(delta),
            Cell::Add(d) => Cell::Add(d + delta),
            Cell::Set(v) => Cell::Set(added(v, delta)),
        };
    }

    /// Writes every pending change into `schema` and forgets them: new rows
    /// first, one COPY per table; then the changed rows of every table
    /// staged (one message creates the staging tables, one COPY each) and
    /// applied by one message of UPDATEs. Only new rows are referenced by
    /// other tables' keys, so every change sees the rows it may point to.
    pub async fn flush(&mut self, conn: &mut PgConnection, schema: &str) -> Result<(), FlushError> {
        let mut staged = Vec::new();
        for (table, pending) in &mut self.tables {
            if !pending.inserts.is_empty() {
                let rows = std::mem::take(&mut pending.inserts);
                copy_rows(conn, schema, table, rows.into_values()).await?;
            }
            if !pending.updates.is_empty() {
                staged.push((*table, std::mem::take(&mut pending.updates)));
            }
        }
        if staged.is_empty() {
            return Ok(());
        }
        let ddl: Vec<String> = staged
            .iter()
            .map(|(table, _)| stage_ddl(schema, table))
            .collect();
        run_sql(&mut *conn, &ddl.join(";\n")).await?;
        // The staged rows are few next to the table, and neither has fresh
        // statistics during a rebuild: without these the planner may hash
        // the whole table for every batch. For the rest of this transaction
        // only.
        let mut updates =
            String::from("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off");
        for (table, rows) in staged {
            stage_rows(&mut *conn, schema, table, rows).await?;
            updates.push_str(";\n");
            updates.push_str(&update_sql(schema, table));
        }
        run_sql(&mut *conn, &updates).await?;
        Ok(())
    }

    /// Forgets pending changes (after a failed transaction).
    pub fn clear(&mut self) {
        for (_, pending) in &mut self.tables {
            pending.inserts.clear();
            pending.updates.clear();
        }
    }
}

fn added(value: &Value, delta: i64) -> Value {
    match value {
        Value::I32(v) => Value::I32(
            i32::try_from(i64::from(*v) + delta).unwrap_or(if delta < 0 { 0 } else { i32::MAX }),
        ),
        Value::I64(v) => Value::I64(v.saturating_add(delta)),
        Value::I16(v) => Value::I16(i16::try_from(i64::from(*v) + delta).unwrap_or(i16::MAX)),
        _ => Value::I64(delta),
    }
}

/// COPYs whole rows into `schema.table`.
pub async fn copy_rows(
    conn: &mut PgConnection,
    schema: &str,
    table: &TableDef,
    rows: impl IntoIterator<Item = Vec<Value>>,
) -> Result<u64, FlushError> {
    let mut buffer = CopyBuffer::new();
    for row in rows {
        buffer.begin_row(table.columns.len());
        for (column, value) in table.columns.iter().zip(&row) {
            buffer.field(column.name, column.ty, value)?;
        }
    }
    let sql = format!(
        "COPY \"{schema}\".{} ({}) FROM STDIN (FORMAT binary)",
        table.name,
        table.column_list()
    );
    send_copy(conn, &sql, buffer.finish()).await
}

/// Runs a binary COPY ... FROM STDIN with `payload`.
pub async fn send_copy(
    conn: &mut PgConnection,
    sql: &str,
    payload: Vec<u8>,
) -> Result<u64, FlushError> {
    let mut copy = conn.copy_in_raw(sql).await?;
    if let Err(error) = copy.send(payload).await {
        // Ends the COPY so the connection stays usable for the rollback.
        let _ = copy.abort("copy failed").await;
        return Err(error.into());
    }
    Ok(copy.finish().await?)
}

/// Runs `sql` (one or more statements, no parameters) with the simple
/// query protocol.
pub async fn run_sql(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::Executor::execute(conn, sql).await?;
    Ok(())
}

fn stage_name(schema: &str, table: &TableDef) -> String {
    format!("\"stage_{schema}_{}\"", table.name)
}

/// Creates (if this session has not yet) the staging table of `table`'s
/// changed rows, emptied at every commit.
fn stage_ddl(schema: &str, table: &TableDef) -> String {
    let mut ddl = format!(
        "CREATE TEMP TABLE IF NOT EXISTS {} (id uuid, set_mask bigint, add_mask bigint",
        stage_name(schema, table)
    );
    // Enum values are staged as text and cast in the UPDATE: a staging
    // table typed with the schema's enums would lose those columns (by
    // cascade) when a blue/green swap drops the retired schema, and the
    // live writer's next batch would fail.
    for column in &table.columns[1..] {
        let _ = write!(ddl, ", {} {}", column.name, column.ty.staged());
    }
    ddl.push_str(") ON COMMIT DELETE ROWS");
    ddl
}

/// COPYs the changed rows of `table` into its staging table: each with a
/// mask of the columns it sets and one of those it adds to.
async fn stage_rows(
    conn: &mut PgConnection,
    schema: &str,
    table: &TableDef,
    updates: HashMap<RowKey, Vec<Cell>>,
) -> Result<(), FlushError> {
    let mut buffer = CopyBuffer::new();
    let parent = table.parent.map(|column| table.index(column));
    for (key, cells) in updates {
        buffer.begin_row(table.columns.len() + 2);
        let (mut set_mask, mut add_mask) = (0i64, 0i64);
        for (i, cell) in cells.iter().enumerate().skip(1) {
            match cell {
                Cell::Keep => {}
                Cell::Set(_) => set_mask |= 1 << i,
                Cell::Add(_) => add_mask |= 1 << i,
            }
        }
        buffer.field("id", ColType::Uuid, &Value::Uuid(key.id))?;
        buffer.field("set_mask", ColType::Int8, &Value::I64(set_mask))?;
        buffer.field("add_mask", ColType::Int8, &Value::I64(add_mask))?;
        for (i, (column, cell)) in table.columns.iter().zip(&cells).enumerate().skip(1) {
            let value = match cell {
                // The parent's id is staged (its mask bit unset) for the
                // UPDATE's join.
                Cell::Keep if Some(i) == parent => Value::opt_uuid(key.parent),
                Cell::Keep => Value::Null,
                Cell::Set(v) => v.clone(),
                Cell::Add(d) => match column.ty {
                    ColType::Int4 => Value::count(*d),
                    ColType::Int2 => Value::I16(i16::try_from(*d).unwrap_or(i16::MAX)),
                    _ => Value::I64(*d),
                },
            };
            buffer.field(column.name, column.ty, &value)?;
        }
    }
    let columns = std::iter::once("id, set_mask, add_mask".to_string())
        .chain(table.columns[1..].iter().map(|c| c.name.to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    send_copy(
        conn,
        &format!(
            "COPY {} ({columns}) FROM STDIN (FORMAT binary)",
            stage_name(schema, table)
        ),
        buffer.finish(),
    )
    .await?;
    Ok(())
}

/// The UPDATE that applies (and empties) the staging table of `table`.
fn update_sql(schema: &str, table: &TableDef) -> String {
    let mut sql = format!(
        "WITH s AS (DELETE FROM {} RETURNING *) UPDATE \"{schema}\".{} AS t SET ",
        stage_name(schema, table),
        table.name
    );
    for (i, column) in table.columns.iter().enumerate().skip(1) {
        if i > 1 {
            sql.push_str(", ");
        }
        let name = column.name;
        let bit = 1i64 << i;
        let cast = match column.ty {
            ColType::Enum(_) => format!("::{}", column.ty.sql(schema)),
            _ => String::new(),
        };
        let _ = write!(
            sql,
            "{name} = CASE WHEN s.set_mask & {bit} <> 0 THEN s.{name}{cast}"
        );
        if matches!(column.ty, ColType::Int2 | ColType::Int4 | ColType::Int8) {
            let _ = write!(
                sql,
                " WHEN s.add_mask & {bit} <> 0 THEN t.{name} + s.{name}"
            );
        }
        let _ = write!(sql, " ELSE t.{name} END");
    }
    sql.push_str(" FROM s WHERE t.id = s.id");
    if let Some(parent) = table.parent {
        let _ = write!(sql, " AND t.{parent} = s.{parent}");
    }
    sql
}
