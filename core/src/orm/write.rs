//! Writes of models: `save`, `delete`, `bulk_insert` with upserts, and
//! `get_or_create` / `update_or_create`. Each is an [`Operation`] built
//! from smaller ones: hooks run when it is first polled, the work they
//! queue goes out in the same batch as the write, and the database's
//! values come back into the model through `RETURNING`.

use std::borrow::{Borrow, BorrowMut};

use super::bulk_copy;
use super::expr::Col;
use super::model::{HookCtx, Model};
use super::queryset::{decode_models, QuerySet};
use super::render::Sql;
use crate::connection::QueryResult;
use crate::error::sqlstate;
use crate::ops::{atomic, lazy, pipeline, ready, then, then_result, BoxOp, Operation, Query};
use crate::params::{Param, ParamSource};
use crate::Error;

/// The most parameters one statement may bind (the protocol's limit).
const MAX_PARAMS: usize = u16::MAX as usize;

fn returning_all<M: Model>(s: &mut Sql) {
    s.push(" RETURNING ");
    s.list(M::META.columns, |s, c| s.ident(c.name));
}

/// The columns an `INSERT` writes, for models with (or without) a key.
fn inserted_columns<M: Model>(has_key: bool) -> Vec<usize> {
    let columns = M::META.columns;
    (0..columns.len()).filter(|&i| columns[i].inserted(has_key)).collect()
}

/// `INSERT INTO t (cols) VALUES (…), (…) [ON CONFLICT …] RETURNING *` for
/// models that all have (or all lack) a key, writing `cols` (their
/// [`inserted_columns`]); `bind` writes the placeholder of column `i` of a
/// model.
fn insert_sql<'m, M: Model>(
    models: impl IntoIterator<Item = &'m M>,
    cols: &[usize],
    conflict: Option<&Conflict>,
    returning: bool,
    mut bind: impl FnMut(&mut Sql, &'m M, usize),
) -> Sql {
    let meta = M::META;
    let mut s = Sql::new();
    s.push("INSERT INTO ");
    s.ident(meta.table);
    if cols.is_empty() {
        s.push(" DEFAULT VALUES");
    } else {
        s.push(" (");
        s.list(cols, |s, &i| s.ident(meta.columns[i].name));
        s.push(") VALUES ");
        s.list(models, |s, m| {
            s.push("(");
            s.list(cols, |s, &i| bind(s, m, i));
            s.push(")");
        });
    }
    if let Some(c) = conflict {
        c.render(&mut s);
    }
    if returning {
        returning_all::<M>(&mut s);
    }
    s
}

/// Models an `INSERT` owns, lending their fields as its parameters.
struct InsertedModels<M> {
    models: Vec<M>,
    cols: Vec<usize>,
}

impl<M: Model> ParamSource for InsertedModels<M> {
    fn params(&self) -> Vec<Param<'_>> {
        let mut out = Vec::with_capacity(self.models.len() * self.cols.len());
        for m in &self.models {
            out.extend(self.cols.iter().map(|&i| m.field(i)));
        }
        out
    }
}

/// `UPDATE t SET … WHERE pk = $n RETURNING *`.
fn update_sql<M: Model>(m: &M) -> Sql {
    let meta = M::META;
    let mut s = Sql::new();
    s.push("UPDATE ");
    s.ident(meta.table);
    s.push(" SET ");
    let cols: Vec<usize> = (0..meta.columns.len()).filter(|&i| meta.columns[i].updated()).collect();
    if cols.is_empty() {
        // Nothing to write but the row must still be found and returned.
        s.ident(meta.pk_column().name);
        s.push(" = ");
        s.ident(meta.pk_column().name);
    }
    s.list(&cols, |s, &i| {
        s.ident(meta.columns[i].name);
        s.push(" = ");
        s.param(m.value(i));
    });
    s.push(" WHERE ");
    meta.render_key_match(&mut s, |i| m.value(i));
    returning_all::<M>(&mut s);
    s
}

fn run_queued(queued: Vec<BoxOp<'static, ()>>) -> impl Operation<Output = ()> + Send {
    pipeline(queued).map(|_| Ok(())).infallible()
}

fn first_model<M: Model>(r: QueryResult) -> Result<Option<M>, Error> {
    Ok(decode_models::<M>(r)?.pop())
}

/// See [`save`]. Output: the model (or the `&mut` borrow of it) with the
/// database's values in it.
pub type Save<'m, T> = BoxOp<'m, T>;

/// Writes one model: `INSERT … RETURNING` when its database-assigned key is
/// unset, `UPDATE … WHERE pk = … RETURNING` when it is set, and for a model
/// whose key the application gives, an upsert (`INSERT … ON CONFLICT (pk)
/// DO UPDATE`). Keys, defaults and generated columns come back into the
/// model. `before_save` runs first (its queued work goes out in the same
/// batch as the write), `after_save` once the row is back.
///
/// An `UPDATE` that finds no row fails with [`Error::NotFound`].
pub fn save<'m, M, T>(model: T) -> Save<'m, T>
where
    M: Model,
    T: BorrowMut<M> + Send + 'm,
{
    let op = lazy(move || {
        let mut model = model;
        let mut ctx = HookCtx::default();
        let meta = M::META;
        let auto = meta.pk_column().auto;
        let key = model.borrow().key();
        ctx.inserting = auto && key.is_none();
        model.borrow_mut().before_save(&mut ctx)?;
        // The hook may have changed the key.
        let key = model.borrow().key();
        let m: &M = model.borrow();
        let updating = auto && key.is_some();
        let sql = match (&key, updating) {
            (Some(_), true) => update_sql(m),
            _ => {
                let conflict = (!auto).then(|| Conflict::on_pk::<M>());
                let cols = inserted_columns::<M>(key.is_some());
                insert_sql([m], &cols, conflict.as_ref(), true, |s, m, i| s.param(m.value(i)))
            }
        };
        let write = Query::values(sql.text, sql.params);
        let apply = move |r: QueryResult, model: &mut T| -> Result<(), Error> {
            match first_model::<M>(r)? {
                Some(fresh) => *model.borrow_mut() = fresh,
                None if updating => {
                    return Err(Error::NotFound(
                        format!("{} with key {:?} (save found no row to update)", meta.name, key).into(),
                    ))
                }
                None => {}
            }
            Ok(())
        };
        if !M::HAS_HOOKS {
            // No hook can queue work behind the write, so the write is the
            // last request: a transaction around it commits in the same
            // round trip.
            let mut model = Some(model);
            let op: BoxOp<'m, T> = Box::new(write.map(move |r| {
                let mut m = model.take().ok_or_else(|| Error::misuse("save finished twice"))?;
                apply(r, &mut m)?;
                Ok(m)
            }));
            return Ok(op);
        }
        let before = std::mem::take(&mut ctx.queued);
        let op: BoxOp<'m, T> = Box::new(then(pipeline((run_queued(before), write)), move |((), r)| {
            apply(r, &mut model)?;
            model.borrow_mut().after_save(&mut ctx)?;
            let after = std::mem::take(&mut ctx.queued);
            let mut model = Some(model);
            Ok(run_queued(after).map(move |()| model.take().ok_or_else(|| Error::misuse("save finished twice"))))
        }));
        Ok(op)
    });
    Box::new(op)
}

/// Deletes one model's row by primary key; the number of rows deleted (0
/// if it was already gone). `before_delete` runs first (queued work goes
/// out with the `DELETE`), `after_delete` once it is done.
pub fn delete<'m, M, T>(model: T) -> BoxOp<'m, u64>
where
    M: Model,
    T: Borrow<M> + Send + 'm,
{
    Box::new(lazy(move || {
        let m: &M = model.borrow();
        if m.key().is_none() {
            return Err(Error::invalid(format!(
                "cannot delete a {} that was never saved (it has no key)",
                M::META.name
            )));
        }
        let mut ctx = HookCtx::default();
        m.before_delete(&mut ctx)?;
        let mut s = Sql::new();
        s.push("DELETE FROM ");
        s.ident(M::META.table);
        s.push(" WHERE ");
        M::META.render_key_match(&mut s, |i| m.value(i));
        let write = Query::values(s.text, s.params);
        if !M::HAS_HOOKS {
            let op: BoxOp<'m, u64> = Box::new(write.map(|r| Ok(r.rows_affected())).infallible());
            return Ok(op);
        }
        let before = std::mem::take(&mut ctx.queued);
        let op: BoxOp<'m, u64> = Box::new(then(pipeline((run_queued(before), write)), move |((), r)| {
            let n = r.rows_affected();
            model.borrow().after_delete(&mut ctx)?;
            let after = std::mem::take(&mut ctx.queued);
            Ok(run_queued(after).map(move |()| Ok(n)))
        }));
        Ok(op)
    }))
}

/// What an `INSERT` does when a row with the same unique key exists.
#[derive(Clone, Debug)]
pub struct Conflict {
    target: Vec<&'static str>,
    /// `None`: `DO NOTHING`; otherwise the columns `DO UPDATE` overwrites.
    update: Option<Vec<&'static str>>,
}

impl Conflict {
    fn on_pk<M: Model>() -> Conflict {
        let meta = M::META;
        // Only what the INSERT supplied: EXCLUDED of a left-out column is its
        // default, which would overwrite the stored value.
        let update: Vec<&'static str> = meta
            .columns
            .iter()
            .filter(|c| c.updated() && c.inserted(true))
            .map(|c| c.name)
            .collect();
        Conflict {
            target: meta.key_columns().map(|c| c.name).collect(),
            update: Some(update),
        }
    }

    pub(super) fn render(&self, s: &mut Sql) {
        s.push(" ON CONFLICT (");
        s.list(&self.target, |s, c| s.ident(c));
        s.push(")");
        match &self.update {
            Some(cols) if !cols.is_empty() => {
                s.push(" DO UPDATE SET ");
                s.list(cols, |s, c| {
                    s.ident(c);
                    s.push(" = EXCLUDED.");
                    s.ident(c);
                });
            }
            _ => s.push(" DO NOTHING"),
        }
    }
}

/// Columns of model `M`, for `on_conflict`, `do_update` and `only`: one
/// column or a tuple of up to eight.
pub trait Columns<M> {
    fn names(&self) -> Vec<&'static str>;
}

impl<M, T> Columns<M> for Col<M, T> {
    fn names(&self) -> Vec<&'static str> {
        vec![self.name]
    }
}

macro_rules! column_tuples {
    ($($name:ident $idx:tt),+) => {
        impl<M, $($name: Columns<M>),+> Columns<M> for ($($name,)+) {
            fn names(&self) -> Vec<&'static str> {
                let mut v = Vec::new();
                $( v.extend(self.$idx.names()); )+
                v
            }
        }
    };
}
column_tuples!(A 0);
column_tuples!(A 0, B 1);
column_tuples!(A 0, B 1, C 2);
column_tuples!(A 0, B 1, C 2, D 3);
column_tuples!(A 0, B 1, C 2, D 3, E 4);
column_tuples!(A 0, B 1, C 2, D 3, E 4, F 5);
column_tuples!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
column_tuples!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

/// Inserts many models with as few statements as the protocol's
/// 65,535-parameter limit allows, all sent in one round trip. The output is
/// the rows as the database stored them (keys and defaults filled in), in
/// input order. Each model's `before_save` and `after_save` run.
///
/// With [`on_conflict`](Self::on_conflict), an upsert; the output then
/// holds only the rows inserted or updated (`DO NOTHING` skips the others).
///
/// ```
/// use duet_core::orm::prelude::*;
/// #[derive(Model)]
/// struct Tag { #[duet(primary_key, auto)] id: i32, #[duet(unique)] name: String, uses: i32 }
///
/// let tags = ["rust", "sql"].map(|n| Tag { id: 0, name: n.into(), uses: 1 });
/// // Insert new tags; for existing names, take the new `uses`.
/// let upsert = Tag::bulk_insert(tags).on_conflict(Tag::NAME).do_update(Tag::USES);
/// assert!(upsert.to_sql()[0].text.ends_with(
///     r#"ON CONFLICT ("name") DO UPDATE SET "uses" = EXCLUDED."uses" RETURNING "id", "name", "uses""#
/// ));
/// ```
pub struct BulkInsert<M: Model> {
    models: Vec<M>,
    conflict: Option<Conflict>,
    /// From how many models `execute` copies (see [`BulkInsert::copy_from`]).
    copy_from: usize,
    op: crate::ops::Deferred<BoxOp<'static, Vec<M>>>,
}

/// The first half of an upsert: the conflict target is chosen, the action
/// not yet.
pub struct OnConflict<M: Model> {
    insert: BulkInsert<M>,
    target: Vec<&'static str>,
}

impl<M: Model> OnConflict<M> {
    /// `ON CONFLICT (…) DO NOTHING`.
    pub fn do_nothing(mut self) -> BulkInsert<M> {
        self.insert.conflict = Some(Conflict {
            target: self.target,
            update: None,
        });
        self.insert
    }

    /// `ON CONFLICT (…) DO UPDATE SET col = EXCLUDED.col` for `cols`.
    pub fn do_update(mut self, cols: impl Columns<M>) -> BulkInsert<M> {
        self.insert.conflict = Some(Conflict {
            target: self.target,
            update: Some(cols.names()),
        });
        self.insert
    }
}

impl<M: Model> BulkInsert<M> {
    pub fn new(models: impl IntoIterator<Item = M>) -> Self {
        BulkInsert {
            models: models.into_iter().collect(),
            conflict: None,
            copy_from: bulk_copy::COPY_THRESHOLD,
            op: Default::default(),
        }
    }

    /// Names the unique columns whose conflict is handled; choose
    /// `.do_nothing()` or `.do_update(cols)` next.
    pub fn on_conflict(self, target: impl Columns<M>) -> OnConflict<M> {
        OnConflict {
            target: target.names(),
            insert: self,
        }
    }

    /// Inserts without bringing the rows back: the output is the number of
    /// rows written. For a model without hooks nothing is returned or
    /// decoded, which is what a bulk load wants: from 500 models on (all
    /// with, or all without, their key) the rows go by binary `COPY` (an
    /// upsert through a temporary table), below that by multi-row
    /// `INSERT`s. A model with hooks is inserted as by the operation
    /// itself, so `after_save` still sees each stored row.
    ///
    /// ```
    /// use duet_core::orm::prelude::*;
    /// #[derive(Model, Clone)]
    /// struct Reading { #[duet(primary_key, auto)] id: i64, sensor: i32, value: f64 }
    ///
    /// let batch: Vec<Reading> = (0..3).map(|i| Reading { id: 0, sensor: i, value: 0.5 }).collect();
    /// let load = Reading::bulk_insert(batch).execute(); // an Operation<Output = u64>
    /// # let _ = load;
    /// ```
    pub fn execute(self) -> BoxOp<'static, u64> {
        if M::HAS_HOOKS {
            return Box::new(self.map(|stored| Ok(stored.len() as u64)));
        }
        let BulkInsert {
            models,
            conflict,
            copy_from,
            ..
        } = self;
        if !models.is_empty() && models.len() >= copy_from {
            // One COPY for models that all write the same columns.
            let has_key = models[0].key().is_some();
            let cols = inserted_columns::<M>(has_key);
            if !cols.is_empty() && models.iter().all(|m| m.key().is_some() == has_key) {
                return bulk_copy::copy_models(models, cols, conflict);
            }
        }
        Box::new(lazy(move || {
            let writes = Self::statements(models, conflict.as_ref(), false);
            Ok(pipeline(writes).map(|results| Ok(results.iter().map(|r| r.rows_affected()).sum())))
        }))
    }

    /// From how many models [`execute`](Self::execute) loads by `COPY`
    /// instead of multi-row `INSERT`s (500 unless set; `usize::MAX`
    /// never copies, `0` always does).
    pub fn copy_from(mut self, models: usize) -> Self {
        self.copy_from = models;
        self
    }

    /// The statements, rendered (for tests and logs). Hooks have not run.
    pub fn to_sql(&self) -> Vec<Sql> {
        let mut rest = &self.models[..];
        Self::chunks(&self.models)
            .into_iter()
            .map(|(len, has_key)| {
                let (chunk, after) = rest.split_at(len);
                rest = after;
                let cols = inserted_columns::<M>(has_key);
                insert_sql(chunk, &cols, self.conflict.as_ref(), true, |s, m, i| {
                    s.param(m.value(i))
                })
            })
            .collect()
    }

    /// How the models split into statements: runs of models that all have
    /// (or all lack) a key, each under the parameter limit.
    fn chunks(models: &[M]) -> Vec<(usize, bool)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < models.len() {
            let has_key = models[i].key().is_some();
            let width = inserted_columns::<M>(has_key).len();
            // Nothing to bind: `DEFAULT VALUES` inserts one row, so each
            // model needs a statement of its own (all still in one batch).
            let per_statement = MAX_PARAMS.checked_div(width).unwrap_or(1);
            let start = i;
            while i < models.len() && i - start < per_statement && models[i].key().is_some() == has_key {
                i += 1;
            }
            out.push((i - start, has_key));
        }
        out
    }

    /// One `INSERT` per chunk, each owning its models.
    fn statements(models: Vec<M>, conflict: Option<&Conflict>, returning: bool) -> Vec<Query<'static>> {
        let chunks = Self::chunks(&models);
        let mut models = models.into_iter();
        chunks
            .into_iter()
            .map(|(len, has_key)| {
                let chunk: Vec<M> = models.by_ref().take(len).collect();
                let cols = inserted_columns::<M>(has_key);
                let sql = insert_sql(&chunk, &cols, conflict, returning, |s, _, _| s.placeholder());
                Query::from_source(sql.text, Box::new(InsertedModels { models: chunk, cols }))
            })
            .collect()
    }

    fn build(models: Vec<M>, conflict: Option<Conflict>) -> Result<BoxOp<'static, Vec<M>>, Error> {
        let mut models = models;
        let mut ctx = HookCtx::default();
        for m in models.iter_mut() {
            ctx.inserting = conflict.is_none();
            m.before_save(&mut ctx)?;
        }
        let count = models.len();
        let writes = Self::statements(models, conflict.as_ref(), true);
        if !M::HAS_HOOKS {
            // Nothing can follow the inserts: a transaction around them
            // commits in the same round trip.
            return Ok(Box::new(pipeline(writes).map(move |results| {
                let mut stored = Vec::with_capacity(count);
                for r in results {
                    stored.extend(decode_models::<M>(r)?);
                }
                Ok(stored)
            })));
        }
        let before = std::mem::take(&mut ctx.queued);
        let plain_insert = conflict.is_none();
        let op =
            then(
                pipeline((run_queued(before), pipeline(writes))),
                move |((), results)| {
                    let mut stored = Vec::with_capacity(count);
                    for r in results {
                        stored.extend(decode_models::<M>(r)?);
                    }
                    let mut ctx = HookCtx::default();
                    for m in stored.iter_mut() {
                        ctx.inserting = plain_insert;
                        m.after_save(&mut ctx)?;
                    }
                    let after = std::mem::take(&mut ctx.queued);
                    let mut stored = Some(stored);
                    Ok(run_queued(after)
                        .map(move |()| stored.take().ok_or_else(|| Error::misuse("insert finished twice"))))
                },
            );
        Ok(Box::new(op))
    }
}

impl<M: Model> Operation for BulkInsert<M> {
    type Output = Vec<M>;
    fn poll(&mut self, conn: &mut crate::Connection, now: std::time::Instant) -> crate::Step<Vec<M>> {
        let BulkInsert {
            models, conflict, op, ..
        } = self;
        op.poll_with(conn, now, || {
            if models.is_empty() {
                return Err(crate::Step::Ready(Ok(Vec::new())));
            }
            Self::build(std::mem::take(models), conflict.take()).map_err(|e| crate::Step::Ready(Err(e)))
        })
    }
    fn submitted_all(&self) -> bool {
        self.op.submitted_all()
    }
    fn abandon(&mut self, conn: &mut crate::Connection) {
        self.op.abandon(conn)
    }
}

fn insert_one<M: Model>(m: M) -> impl Operation<Output = M> + Send {
    BulkInsert::new([m]).map(|mut v| {
        v.pop()
            .ok_or_else(|| Error::protocol("INSERT … RETURNING returned no row"))
    })
}

/// Inserts `model` under a savepoint: `(model, true)`, or, if a concurrent
/// writer got the same unique key in first (23505), what `recover` fetches.
/// A plain INSERT even for a given key: `save` would upsert and never see
/// the concurrent row.
fn insert_or_recover<M, R>(model: M, recover: R) -> BoxOp<'static, (M, bool)>
where
    M: Model,
    R: FnOnce() -> BoxOp<'static, (M, bool)> + Send + 'static,
{
    Box::new(then_result(
        atomic(insert_one(model)),
        move |r| -> Result<BoxOp<'static, (M, bool)>, Error> {
            match r {
                Ok(m) => Ok(Box::new(ready(Ok((m, true))))),
                Err(e) if is_unique_violation(&e) => Ok(recover()),
                Err(e) => Err(e),
            }
        },
    ))
}

fn is_unique_violation(e: &Error) -> bool {
    e.code() == Some(sqlstate::UNIQUE_VIOLATION)
}

impl<M: Model> QuerySet<M> {
    /// The one matching row, or a new one from `make`, saved: `(model,
    /// created)`. Race-safe: the insert runs under a savepoint, and if a
    /// concurrent writer inserted the same unique key first (SQLSTATE
    /// 23505), the row it wrote is fetched and returned instead. The query
    /// set should select on unique columns; several matches fail with
    /// [`Error::MultipleFound`].
    ///
    /// ```
    /// use duet_core::orm::prelude::*;
    /// #[derive(Model)]
    /// struct Tag { #[duet(primary_key, auto)] id: i32, #[duet(unique)] name: String }
    ///
    /// // In a driver: let (tag, created) = client.run(op)?;
    /// let op = Tag::objects()
    ///     .filter(Tag::NAME.eq("rust"))
    ///     .get_or_create(|| Tag { id: 0, name: "rust".into() });
    /// # let _ = op;
    /// ```
    pub fn get_or_create<F>(self, make: F) -> impl Operation<Output = (M, bool)> + Send
    where
        F: FnOnce() -> M + Send + 'static,
    {
        let again = self.clone();
        then(
            self.get_opt(),
            move |found| -> Result<BoxOp<'static, (M, bool)>, Error> {
                Ok(match found {
                    Some(m) => Box::new(ready(Ok((m, false)))),
                    None => insert_or_recover(make(), move || Box::new(again.get().map(|m| Ok((m, false))))),
                })
            },
        )
    }

    /// Updates the one matching row with `update` and saves it, or saves a
    /// new one from `make`: `(model, created)`. Runs in a transaction (a
    /// savepoint inside one) with the row locked `FOR UPDATE`; race-safe
    /// like [`get_or_create`](Self::get_or_create).
    pub fn update_or_create<U, F>(self, update: U, make: F) -> impl Operation<Output = (M, bool)> + Send
    where
        U: FnOnce(&mut M) + Send + 'static,
        F: FnOnce() -> M + Send + 'static,
    {
        let locked = self.for_update();
        let again = locked.clone();
        let update_found = move |mut m: M, update: U| -> BoxOp<'static, (M, bool)> {
            update(&mut m);
            Box::new(save::<M, M>(m).map(|m| Ok((m, false))))
        };
        atomic(then(
            locked.get_opt(),
            move |found| -> Result<BoxOp<'static, (M, bool)>, Error> {
                Ok(match found {
                    Some(m) => update_found(m, update),
                    None => insert_or_recover(make(), move || {
                        Box::new(then(again.get(), move |m| Ok(update_found(m, update))))
                    }),
                })
            },
        ))
    }
}
