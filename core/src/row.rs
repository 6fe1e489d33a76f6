//! Typed rows: columns from `RowDescription`, values from `DataRow`, decoded
//! on demand with `postgres-types`' `FromSql`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use postgres_types::{FromSql, Kind, Type};

use crate::Error;

/// Whether `ty` may be one a session looked up (see `connection/types.rs`):
/// the catalog's own types have OIDs below 10000 and never change, those
/// of extensions and applications are above. A cheap test, run per batch
/// of rows.
pub(crate) fn maybe_learnt(ty: &Type) -> bool {
    ty.oid() >= 10_000
}

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

/// Values whose positions a row keeps; later ones are found by walking on
/// from the last kept one. Keeping them inline spares every row an
/// allocation, which is most of the cost of a decode-bound fetch.
const KEPT: usize = 8;

/// A kept position past `u16::MAX`: found by walking on from the last kept
/// position below it. Positions are `u16` so that a row is 32 bytes: a
/// fetch writes one `Row` per DataRow, and the smaller they are the fewer
/// cache misses filling the result costs.
const FAR: u16 = u16::MAX;

/// What the rows made from one socket read's DataRows share: the
/// statement's columns and the frames' bytes. A row then holds one
/// reference count instead of two (columns and bytes), and a fetch pays
/// one atomic increment and decrement per row instead of two of each.
pub(crate) struct RowBlock {
    columns: Arc<[Column]>,
    data: Bytes,
    /// The session's flag that its learnt types may be stale: set when a
    /// column of a learnt type is refused (see [`Row::try_get`]). Only
    /// blocks with such columns carry it.
    learnt: Option<Arc<AtomicBool>>,
}

impl RowBlock {
    pub(crate) fn new(columns: Arc<[Column]>, data: Bytes) -> Arc<RowBlock> {
        RowBlock::watched(columns, data, None)
    }

    /// `data` is at most `u32::MAX` bytes (rows keep `u32` offsets). With
    /// columns of types the session looked up, `learnt` is the session's
    /// flag raised when one of them is refused.
    pub(crate) fn watched(columns: Arc<[Column]>, data: Bytes, learnt: Option<Arc<AtomicBool>>) -> Arc<RowBlock> {
        debug_assert!(data.len() <= u32::MAX as usize);
        Arc::new(RowBlock { columns, data, learnt })
    }

    pub(crate) fn data(&self) -> &[u8] {
        &self.data
    }
}

/// One row of a result, decoded lazily column by column.
#[derive(Clone)]
pub struct Row {
    block: Arc<RowBlock>,
    /// The row's values in the block: for each, a 4-byte length (-1: NULL)
    /// and the bytes.
    start: u32,
    end: u32,
    /// Where each of the first `KEPT` values starts in the row (or `FAR`).
    starts: [u16; KEPT],
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("columns", &self.columns().iter().map(|c| &c.name).collect::<Vec<_>>())
            .finish()
    }
}

/// Something that picks a column: its position or its name.
/// A Rust value made from a whole row, its fields found by column name:
/// `#[derive(FromRow)]` for report queries and raw SQL that are not models
/// (an `Option` field takes NULL; extra columns are ignored).
///
/// ```
/// use duet_core::FromRow;
/// #[derive(FromRow, Debug)]
/// struct Totals {
///     name: String,
///     #[duet(column = "n")]
///     orders: i64,
///     last_note: Option<String>,
/// }
/// let op = duet_core::ops::query(
///     "SELECT u.name, count(*) AS n, max(o.note) AS last_note FROM users u JOIN orders o ON o.user_id = u.id GROUP BY u.name",
///     &[],
/// )
/// .rows_as::<Totals>();
/// # let _ = op;
/// ```
pub trait FromRow: Sized {
    fn from_row(row: &Row) -> Result<Self, Error>;
}

/// Tuples are made by position: `query_as::<(i32, String)>` takes a row of
/// exactly two columns.
macro_rules! tuple_from_row {
    ($n:literal: $($t:ident),+) => {
        impl<$($t: for<'a> FromSql<'a>),+> FromRow for ($($t,)+) {
            fn from_row(row: &Row) -> Result<Self, Error> {
                if row.len() != $n {
                    return Err(Error::invalid(format!(
                        "a row of {} columns cannot be a tuple of {}",
                        row.len(),
                        $n
                    )));
                }
                let mut cursor = row.cursor();
                Ok(($(cursor.read::<$t>()?,)+))
            }
        }
    };
}
tuple_from_row!(1: A);
tuple_from_row!(2: A, B);
tuple_from_row!(3: A, B, C);
tuple_from_row!(4: A, B, C, D);
tuple_from_row!(5: A, B, C, D, E);
tuple_from_row!(6: A, B, C, D, E, F);
tuple_from_row!(7: A, B, C, D, E, F, G);
tuple_from_row!(8: A, B, C, D, E, F, G, H);

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
    /// Gives `rows` new columns (the same values): how a result whose types
    /// were looked up after it arrived gets them. Rows share blocks, so each
    /// block is copied once (its bytes are shared, not copied).
    pub(crate) fn set_columns(rows: &mut [Row], columns: &Arc<[Column]>) {
        let mut made: Vec<(*const RowBlock, Arc<RowBlock>)> = Vec::new();
        for row in rows {
            let old = Arc::as_ptr(&row.block);
            let block = match made.iter().find(|(p, _)| *p == old) {
                Some((_, b)) => b.clone(),
                None => {
                    let b = RowBlock::watched(columns.clone(), row.block.data.clone(), row.block.learnt.clone());
                    made.push((old, b.clone()));
                    b
                }
            };
            row.block = block;
        }
    }

    /// A row from the DataRow values at `range` of `block` (`count` of
    /// them), checked once here so that reading a value later needs no
    /// bounds errors.
    pub(crate) fn new(block: &Arc<RowBlock>, range: std::ops::Range<usize>, count: usize) -> Result<Row, Error> {
        let columns = &block.columns;
        if count != columns.len() {
            return Err(Error::protocol(format!(
                "DataRow has {count} values but RowDescription announced {} columns",
                columns.len()
            )));
        }
        let body = block
            .data
            .get(range.clone())
            .ok_or_else(|| Error::protocol("DataRow outside its block"))?;
        let mut starts = [0u16; KEPT];
        let mut at = 0usize;
        for i in 0..count {
            if let Some(start) = starts.get_mut(i) {
                *start = u16::try_from(at).unwrap_or(FAR);
            }
            let len = read_len(body, at).ok_or_else(|| Error::protocol("DataRow value length out of bounds"))?;
            at += 4 + len.unwrap_or(0);
            if at > body.len() {
                return Err(Error::protocol("DataRow value runs past the message"));
            }
        }
        if at != body.len() {
            return Err(Error::protocol("DataRow has bytes after its last value"));
        }
        let offset = |at: usize| u32::try_from(at).map_err(|_| Error::protocol("DataRow past 4 GiB in its block"));
        Ok(Row {
            block: block.clone(),
            start: offset(range.start)?,
            end: offset(range.end)?,
            starts,
        })
    }

    #[inline]
    fn body(&self) -> &[u8] {
        &self.block.data[self.start as usize..self.end as usize]
    }

    /// The bytes of value `i` (`None` for NULL); `i` is below `len()`.
    fn value(&self, i: usize) -> Option<&[u8]> {
        // The nearest kept position at or below `i` (value 0 is at 0).
        let from = (0..=i.min(KEPT - 1))
            .rev()
            .find(|&k| self.starts[k] != FAR)
            .unwrap_or(0);
        let mut at = self.starts[from] as usize;
        let body = self.body();
        for _ in from..i {
            at += 4 + read_len(body, at).flatten().unwrap_or(0);
        }
        let len = read_len(body, at).flatten()?;
        body.get(at + 4..at + 4 + len)
    }

    #[inline]
    pub fn columns(&self) -> &[Column] {
        &self.block.columns
    }

    pub fn len(&self) -> usize {
        self.block.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.block.columns.is_empty()
    }

    /// The raw binary value of a column (`None` for NULL).
    pub fn raw(&self, idx: usize) -> Option<&[u8]> {
        if idx < self.len() {
            self.value(idx)
        } else {
            None
        }
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
        let columns = self.columns();
        let Some(i) = idx.index_in(columns) else {
            return Err(no_column(&idx, columns));
        };
        self.decode(i, self.value(i))
    }

    /// Reads the row front to back: the values of consecutive columns
    /// without looking each one up (how tuples and models decode).
    pub fn cursor(&self) -> RowCursor<'_> {
        RowCursor { row: self, i: 0, at: 0 }
    }

    /// Value `value` of column `i` as a `T`, with the checks `try_get`
    /// promises.
    #[inline(always)]
    fn decode<'a, T: FromSql<'a>>(&'a self, i: usize, value: Option<&'a [u8]>) -> Result<T, Error> {
        let col = &self.columns()[i];
        if !T::accepts(&col.type_) {
            return Err(self.refused::<T>(i));
        }
        // An array value starts with a small dimension count (three zero
        // bytes): only then is the column's kind worth looking up.
        if let Some(bytes) = value.filter(|b| b.len() >= 12 && b[..3] == [0, 0, 0]) {
            if let postgres_types::Kind::Array(_) = col.type_.kind() {
                check_array(bytes).map_err(|why| {
                    Error::decode(format!("column {} ({:?}) is a malformed array: {why}", i, col.name))
                })?;
            }
        }
        let decoded = match value {
            Some(bytes) => T::from_sql(&col.type_, bytes),
            None => T::from_sql_null(&col.type_),
        };
        decoded.map_err(|e| unreadable::<T>(i, col, value.is_none(), e))
    }

    /// Column `i` refused `T`: perhaps a type the session learnt changed
    /// since (an enum given a label), so it is looked up afresh next time.
    #[cold]
    fn refused<T>(&self, i: usize) -> Error {
        let col = &self.columns()[i];
        if let Some(learnt) = &self.block.learnt {
            if maybe_learnt(&col.type_) {
                learnt.store(true, Ordering::Relaxed);
            }
        }
        Error::decode(format!(
            "column {} ({:?}) is of SQL type {}, which {} cannot hold",
            i,
            col.name,
            col.type_,
            std::any::type_name::<T>()
        ))
    }
}

/// Checks a binary array's header against the bytes that follow it before
/// `FromSql` sees it: postgres-types reserves room for as many elements as
/// the header claims, so a hostile count must not reach it. Each element
/// takes at least its 4-byte length word.
fn check_array(bytes: &[u8]) -> Result<(), String> {
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|w| i32::from_be_bytes([w[0], w[1], w[2], w[3]]))
    };
    let Some(ndim) = word(0) else {
        return Err("shorter than its header".into());
    };
    // PostgreSQL's MAXDIM.
    let ndim = usize::try_from(ndim)
        .ok()
        .filter(|n| *n <= 6)
        .ok_or(format!("{ndim} dimensions"))?;
    let header = 12 + 8 * ndim;
    let mut count: usize = 1;
    for d in 0..ndim {
        let len = word(12 + 8 * d).ok_or("shorter than its header")?;
        let len = usize::try_from(len).map_err(|_| format!("dimension of length {len}"))?;
        count = count.saturating_mul(len);
    }
    if ndim == 0 {
        count = 0;
    }
    let room = bytes.len().saturating_sub(header);
    if count.saturating_mul(4) > room {
        return Err(format!(
            "its header claims {count} elements but only {room} bytes follow"
        ));
    }
    Ok(())
}

/// The length word at `at`: `Some(None)` for NULL (any negative length, as
/// the protocol has it), `None` when `at` is out of bounds.
#[inline]
#[cold]
fn no_column(idx: &dyn std::fmt::Display, columns: &[Column]) -> Error {
    Error::decode(format!(
        "no column {idx} (the row has {})",
        columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
    ))
}

#[cold]
fn unreadable<T>(i: usize, col: &Column, null: bool, e: Box<dyn std::error::Error + Sync + Send>) -> Error {
    let what = if null {
        format!("is NULL, which {} cannot hold (use Option)", std::any::type_name::<T>())
    } else {
        format!("could not be read as {}: {e}", std::any::type_name::<T>())
    };
    Error::decode(format!("column {} ({:?}) {}", i, col.name, what))
}

/// Reads a row's values in column order (see [`Row::cursor`]).
pub struct RowCursor<'r> {
    row: &'r Row,
    /// The next column, and where its value starts in the row's body.
    i: usize,
    at: usize,
}

impl<'r> RowCursor<'r> {
    /// The next column's value as a `T` (the checks of [`Row::try_get`]).
    #[inline]
    pub fn read<T: FromSql<'r>>(&mut self) -> Result<T, Error> {
        let row = self.row;
        if self.i >= row.len() {
            return Err(no_column(&self.i, row.columns()));
        }
        let body = row.body();
        // Row::new checked every length against the body.
        let value = match read_len(body, self.at).flatten() {
            Some(len) => {
                let v = body.get(self.at + 4..self.at + 4 + len);
                self.at += 4 + len;
                v
            }
            None => {
                self.at += 4;
                None
            }
        };
        let i = self.i;
        self.i += 1;
        row.decode(i, value)
    }

    /// Skips column values up to column `i` (a model after another's
    /// columns in a join).
    pub fn skip_to(&mut self, i: usize) {
        let body = self.row.body();
        while self.i < i && self.i < self.row.len() {
            self.at += 4 + read_len(body, self.at).flatten().unwrap_or(0);
            self.i += 1;
        }
    }
}

fn read_len(body: &[u8], at: usize) -> Option<Option<usize>> {
    let word = body.get(at..at + 4)?;
    let len = i32::from_be_bytes([word[0], word[1], word[2], word[3]]);
    Some(usize::try_from(len).ok())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(n: usize) -> Arc<[Column]> {
        (0..n)
            .map(|i| Column {
                name: format!("c{i}"),
                type_: Type::TEXT,
                table_oid: 0,
                column_id: 0,
            })
            .collect()
    }

    /// A row of its own block, as a single DataRow would give.
    fn row(columns: Arc<[Column]>, body: Bytes, count: usize) -> Result<Row, Error> {
        let len = body.len();
        Row::new(&RowBlock::new(columns, body), 0..len, count)
    }

    fn body(values: &[Option<&str>]) -> Bytes {
        let mut b = Vec::new();
        for v in values {
            match v {
                Some(s) => {
                    b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.into()
    }

    #[test]
    fn values_past_the_kept_positions_are_found_by_walking() {
        let values: Vec<Option<String>> = (0..13).map(|i| (i % 4 != 2).then(|| "x".repeat(i))).collect();
        let refs: Vec<Option<&str>> = values.iter().map(|v| v.as_deref()).collect();
        let row = row(columns(13), body(&refs), 13).unwrap();
        for (i, v) in refs.iter().enumerate() {
            assert_eq!(row.raw(i), v.map(str::as_bytes), "value {i}");
            assert_eq!(row.get::<Option<String>>(i).as_deref(), *v, "value {i}");
        }
        assert_eq!(row.raw(13), None);
        assert_eq!(row.get::<Option<String>>("c12").as_deref(), refs[12]);
    }

    #[test]
    fn values_past_64_kib_are_found_by_walking() {
        let big = "y".repeat(70_000);
        let values: Vec<Option<&str>> = vec![Some(&big), Some("a"), None, Some(&big), Some("b")];
        let row = row(columns(5), body(&values), 5).unwrap();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(row.raw(i), v.map(str::as_bytes), "value {i}");
        }
        assert_eq!(std::mem::size_of::<Row>(), 32, "half a cache line");
    }

    #[test]
    fn rows_of_one_block_read_their_own_ranges() {
        let (a, b) = (body(&[Some("one"), None]), body(&[Some("two"), Some("2")]));
        let mut data = a.to_vec();
        data.extend_from_slice(&b);
        let block = RowBlock::new(columns(2), data.into());
        let first = Row::new(&block, 0..a.len(), 2).unwrap();
        let second = Row::new(&block, a.len()..a.len() + b.len(), 2).unwrap();
        drop(block);
        assert_eq!(first.get::<Option<String>>(0).as_deref(), Some("one"));
        assert_eq!(first.get::<Option<String>>(1), None);
        assert_eq!(second.get::<String>(0), "two");
        assert_eq!(second.get::<String>(1), "2");
        let block = RowBlock::new(columns(2), a.clone());
        assert!(Row::new(&block, 0..a.len() + 1, 2).is_err(), "a range past the block");
    }

    #[test]
    fn malformed_rows_are_refused() {
        let ok = body(&[Some("ab"), None]);
        assert!(row(columns(2), ok.clone(), 2).is_ok());
        assert!(
            row(columns(3), ok.clone(), 2).is_err(),
            "count differs from the columns"
        );
        assert!(row(columns(2), ok.slice(..ok.len() - 1), 2).is_err(), "truncated");
        let mut long = ok.to_vec();
        long.push(0);
        assert!(row(columns(2), long.into(), 2).is_err(), "trailing bytes");
        let huge = body(&[Some("ab")]);
        let mut lying = huge.to_vec();
        lying[..4].copy_from_slice(&1000i32.to_be_bytes());
        assert!(row(columns(1), lying.into(), 1).is_err(), "length past the end");
    }
}
