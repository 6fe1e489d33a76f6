//! `bulk_insert(..).execute()` of many models by binary COPY instead of
//! multi-row `INSERT`s: no SQL text or parameter list to build and parse,
//! values encoded straight into the stream.
//!
//! The target's column types are read first, as the parameter types of
//! the `INSERT` the rows would otherwise take (binary COPY values must be
//! encoded as the column's exact type: an application's enum, a domain —
//! which a result column would report as its base type), then the rows
//! stream in. With `ON CONFLICT`, they are copied into a
//! temporary table and moved by one `INSERT … SELECT … ON CONFLICT`.

use std::time::Instant;

use postgres_types::Type;

use super::model::Model;
use super::render::Sql;
use super::write::Conflict;
use crate::copy::CopyIn;
use crate::ops::{pipeline, prepare_owned, then, BoxOp, Operation, Query, Step};
use crate::params::Param;
use crate::{Connection, Error};

/// From this many models on, `execute` copies instead of inserting. Below
/// it the round trip for the column types eats what COPY saves: measured
/// with `benches/src/bin/copy_bench.rs` on a 2-core machine, COPY took
/// 0.98× the INSERTs' time at 100 models, 0.85× at 300, 0.80× at 1,000
/// and 0.60× at 10,000.
pub(super) const COPY_THRESHOLD: usize = 500;

/// The temporary tables upserts copy their rows into: one name each, so
/// two upserts in one pipeline do not share one.
static STAGING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Loads `models` (all writing the columns `cols`) by COPY; the output is
/// the number of rows written.
pub(super) fn copy_models<M: Model>(
    models: Vec<M>,
    cols: Vec<usize>,
    conflict: Option<Conflict>,
) -> BoxOp<'static, u64> {
    let meta = M::META;
    let mut names = Sql::new();
    names.list(&cols, |s, &i| s.ident(meta.columns[i].name));
    let names = names.text;
    let mut table = Sql::new();
    table.ident(meta.table);
    let table = table.text;
    let mut placeholders = Sql::new();
    placeholders.list(&cols, |s, _| s.placeholder());
    let describe = prepare_owned(format!("INSERT INTO {table} ({names}) VALUES ({})", placeholders.text));
    let Some(conflict) = conflict else {
        let sql = format!("COPY {table} ({names}) FROM STDIN (FORMAT binary)");
        return Box::new(then(describe, move |st| {
            Ok(CopyRows::new(models, cols, st.params(), sql))
        }));
    };
    let staging = format!(
        "duet_bulk_staging_{}",
        STAGING.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let create = format!("CREATE TEMPORARY TABLE {staging} AS SELECT {names} FROM {table} WITH NO DATA");
    let prepare = pipeline((
        describe,
        Query::owned(format!("DROP TABLE IF EXISTS pg_temp.{staging}"), Vec::new()),
        Query::owned(create, Vec::new()),
    ));
    let mut merge = Sql::new();
    merge.push(&format!(
        "INSERT INTO {table} ({names}) SELECT {names} FROM pg_temp.{staging}"
    ));
    conflict.render(&mut merge);
    let merge = merge.text;
    Box::new(then(prepare, move |(described, _, _)| {
        let sql = format!("COPY pg_temp.{staging} ({names}) FROM STDIN (FORMAT binary)");
        let copy = CopyRows::new(models, cols, described.params(), sql);
        Ok(then(copy, move |_| {
            let moved = pipeline((
                Query::owned(merge, Vec::new()),
                Query::owned(format!("DROP TABLE pg_temp.{staging}"), Vec::new()),
            ));
            Ok(moved.map(|(merged, _)| Ok(merged.rows_affected())))
        }))
    }))
}

/// Streams the rows of `models` into a binary COPY. Polled outside a batch
/// it waits for the socket as it goes, so memory stays bounded; inside one
/// (an `atomic` or `pipeline` around it) it queues all rows and ends the
/// copy at once, so the batch's next statements may follow it.
struct CopyRows<M> {
    models: Vec<M>,
    cols: Vec<usize>,
    types: Vec<Type>,
    sql: String,
    copy: Option<CopyIn>,
    next: usize,
}

impl<M: Model> CopyRows<M> {
    fn new(models: Vec<M>, cols: Vec<usize>, types: &[Type], sql: String) -> Self {
        CopyRows {
            models,
            cols,
            types: types.to_vec(),
            sql,
            copy: None,
            next: 0,
        }
    }

    /// Writes rows until all are queued or, when `wait` allows, until
    /// the socket must catch up. `Ok(true)` once every row is queued.
    fn write_rows(&mut self, conn: &mut Connection, now: Instant, wait: bool) -> Result<bool, Error> {
        let copy = self.copy.as_mut().expect("started");
        let mut values: Vec<Param<'_>> = Vec::with_capacity(self.cols.len());
        while self.next < self.models.len() {
            if wait && copy.must_flush(conn) {
                match copy.flush().poll(conn, now) {
                    Step::Pending => return Ok(false),
                    Step::Ready(r) => r?,
                }
            }
            let m = &self.models[self.next];
            values.clear();
            values.extend(self.cols.iter().map(|&i| m.field(i)));
            copy.write_row(conn, &values)?;
            self.next += 1;
        }
        Ok(true)
    }
}

impl<M: Model> Operation for CopyRows<M> {
    type Output = u64;

    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<u64> {
        if self.copy.is_none() {
            if conn.foreign_transaction_open() {
                // A sibling's transaction is open: the copy must not run in it.
                return Step::Pending;
            }
            match CopyIn::start(conn, &self.sql, now) {
                Ok(mut c) => {
                    c.binary(&self.types);
                    self.copy = Some(c);
                }
                Err(e) => return Step::Ready(Err(e)),
            }
        }
        let wait = !conn.in_batch();
        match self.write_rows(conn, now, wait) {
            Ok(true) => {}
            Ok(false) => return Step::Pending,
            Err(e) => {
                self.abandon(conn);
                return Step::Ready(Err(e));
            }
        }
        let copy = self.copy.as_mut().expect("started");
        copy.finish().poll(conn, now)
    }

    fn submitted_all(&self) -> bool {
        self.next == self.models.len() && self.copy.as_ref().is_some_and(|c| c.is_over() || c.finishing())
    }

    fn abandon(&mut self, conn: &mut Connection) {
        if let Some(c) = &mut self.copy {
            c.abandon(conn);
        }
    }
}
