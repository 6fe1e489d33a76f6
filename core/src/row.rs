//! Typed rows: columns from `RowDescription`, values from `DataRow`, decoded
//! on demand with `postgres-types`' `FromSql`.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use postgres_types::{FromSql, Kind, Type};

use crate::Error;

/// One result column as the server described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_: Type,
    /// OID of the table the column comes from, 0 if it is computed.
    pub table_oid: u32,
    /// Attribute number within that table, 0 if computed.
    pub column_id: i16,
}

/// Maps a type OID to a `Type`. Built-in types are known statically; others
/// (enums, composites, extension types) get a placeholder whose name says
/// the OID, so `FromSql` impls refuse them with a clear type error instead of
/// misreading their bytes.
pub fn type_from_oid(oid: u32) -> Type {
    Type::from_oid(oid).unwrap_or_else(|| Type::new(format!("oid{oid}"), oid, Kind::Simple, "unknown".into()))
}

/// One row of a result, decoded lazily column by column.
#[derive(Clone)]
pub struct Row {
    columns: Arc<[Column]>,
    body: Bytes,
    ranges: Vec<Option<Range<usize>>>,
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("columns", &self.columns.iter().map(|c| &c.name).collect::<Vec<_>>())
            .finish()
    }
}

/// Something that picks a column: its position or its name.
pub trait RowIndex: std::fmt::Display {
    fn index_in(&self, columns: &[Column]) -> Option<usize>;
}

impl RowIndex for usize {
    fn index_in(&self, columns: &[Column]) -> Option<usize> {
        (*self < columns.len()).then_some(*self)
    }
}

impl RowIndex for &str {
    fn index_in(&self, columns: &[Column]) -> Option<usize> {
        columns.iter().position(|c| c.name == *self)
    }
}

impl Row {
    pub(crate) fn new(columns: Arc<[Column]>, body: Bytes, ranges: Vec<Option<Range<usize>>>) -> Result<Row, Error> {
        if ranges.len() != columns.len() {
            return Err(Error::protocol(format!(
                "DataRow has {} values but RowDescription announced {} columns",
                ranges.len(),
                columns.len()
            )));
        }
        Ok(Row { columns, body, ranges })
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The raw binary value of a column (`None` for NULL).
    pub fn raw(&self, idx: usize) -> Option<&[u8]> {
        self.ranges.get(idx).and_then(|r| r.clone()).map(|r| &self.body[r])
    }

    /// Decodes a column, panicking with the reason if it cannot be decoded.
    /// Use [`Row::try_get`] where a mismatch is an expected outcome.
    ///
    /// ```no_run
    /// # fn f(row: &duet_core::Row) {
    /// let id: i32 = row.get(0);
    /// let name: Option<String> = row.get("name");
    /// # }
    /// ```
    #[track_caller]
    pub fn get<'a, T: FromSql<'a>>(&'a self, idx: impl RowIndex) -> T {
        match self.try_get(idx) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// Decodes a column: a `Decode` error names the column and says whether
    /// it was missing, NULL for a non-`Option` type, of another SQL type, or
    /// malformed.
    pub fn try_get<'a, T: FromSql<'a>>(&'a self, idx: impl RowIndex) -> Result<T, Error> {
        let i = idx.index_in(&self.columns).ok_or_else(|| {
            Error::decode(format!(
                "no column {idx} (the row has {})",
                self.columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let col = &self.columns[i];
        if !T::accepts(&col.type_) {
            return Err(Error::decode(format!(
                "column {} ({:?}) is of SQL type {}, which {} cannot hold",
                i,
                col.name,
                col.type_,
                std::any::type_name::<T>()
            )));
        }
        let value = self.ranges[i].clone().map(|r| &self.body[r]);
        let decoded = match value {
            Some(bytes) => T::from_sql(&col.type_, bytes),
            None => T::from_sql_null(&col.type_),
        };
        decoded.map_err(|e| {
            let what = if value.is_none() {
                format!("is NULL, which {} cannot hold (use Option)", std::any::type_name::<T>())
            } else {
                format!("could not be read as {}: {e}", std::any::type_name::<T>())
            };
            Error::decode(format!("column {} ({:?}) {}", i, col.name, what))
        })
    }
}

/// A row from the simple query protocol: every value is text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleRow {
    pub columns: Arc<[String]>,
    pub values: Vec<Option<String>>,
}

impl SimpleRow {
    pub fn get(&self, idx: usize) -> Option<&str> {
        self.values.get(idx).and_then(|v| v.as_deref())
    }
}

/// What one statement of a simple (multi-statement) query produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimpleMessage {
    Row(SimpleRow),
    /// The statement finished; its command tag, e.g. `INSERT 0 3`.
    CommandComplete(String),
    /// The query string was empty.
    Empty,
}
