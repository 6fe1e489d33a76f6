//! Partially loaded models: `QuerySet::only(cols)` reads the key and the
//! named columns, nothing else (a wide row's `text` and `bytea` columns
//! stay on the server). A Rust struct cannot have a field missing, so the
//! result is a [`Partial<M>`]: read a loaded column through the model's
//! typed handle, change it, and save only what changed.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

use postgres_types::{FromSql, ToSql};

use super::expr::{BinOp, Col, Expr, Value};
use super::model::{Key, Model};
use super::queryset::{cond, CollectOp, QuerySet};
use super::render::Sql;
use super::write::Columns;
use crate::ops::{BoxOp, Operation, Query};
use crate::{Error, Row};

/// A model with some of its columns loaded (see [`QuerySet::only`]).
///
/// ```
/// use duet_core::orm::prelude::*;
/// #[derive(Model)]
/// struct Page { #[duet(primary_key, auto)] id: i64, title: String, body: String, views: i64 }
///
/// // SELECT "pages"."id", "pages"."title", "pages"."views" FROM "pages" …
/// let light = Page::objects().filter(Page::VIEWS.gt(100)).only((Page::TITLE, Page::VIEWS));
/// assert!(!light.to_sql().text.contains("body"));
/// // In a driver: for mut p in client.run(light.all())? {
/// //     let views: i64 = p.get(Page::VIEWS)?;
/// //     p.set(Page::VIEWS, views + 1);
/// //     client.run(p.save())?;          // UPDATE "pages" SET "views" = $1 WHERE "pages"."id" = $2
/// // }
/// ```
pub struct Partial<M: Model> {
    row: Row,
    /// Model column `i` is at `at[i]` in `row`, if loaded.
    at: Vec<Option<usize>>,
    /// Columns set since loading: model column, value to bind, the value
    /// again to read back.
    changed: Vec<(usize, Value, Arc<dyn Any + Send + Sync>)>,
    _model: PhantomData<fn() -> M>,
}

impl<M: Model> std::fmt::Debug for Partial<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loaded: Vec<&str> = (0..self.at.len())
            .filter(|i| self.at[*i].is_some())
            .map(|i| M::META.columns[i].name)
            .collect();
        write!(f, "Partial<{}>{loaded:?}", M::META.name)
    }
}

impl<M: Model> Partial<M> {
    /// Reads a row whose columns are named as the model's (what `only`
    /// selects).
    pub fn from_row(row: &Row) -> Result<Self, Error> {
        let at: Vec<Option<usize>> = M::META
            .columns
            .iter()
            .map(|c| row.columns().iter().position(|rc| rc.name == c.name))
            .collect();
        if let Some(missing) = M::META
            .key_columns()
            .find(|c| !row.columns().iter().any(|rc| rc.name == c.name))
        {
            return Err(Error::invalid(format!(
                "a partial {} needs its key column {}",
                M::META.name,
                missing.name
            )));
        }
        Ok(Partial {
            row: row.clone(),
            at,
            changed: Vec::new(),
            _model: PhantomData,
        })
    }

    /// True when `col` was loaded (or set since).
    pub fn is_loaded<T>(&self, col: Col<M, T>) -> bool {
        self.at[col.index].is_some() || self.changed.iter().any(|(i, _, _)| *i == col.index)
    }

    /// A column's value: the one set since loading, else the loaded one; an
    /// error naming the column when it was not loaded.
    pub fn get<T>(&self, col: Col<M, T>) -> Result<T, Error>
    where
        T: for<'a> FromSql<'a> + Clone + Send + Sync + 'static,
    {
        if let Some((_, _, v)) = self.changed.iter().rev().find(|(i, _, _)| *i == col.index) {
            if let Some(v) = v.downcast_ref::<T>() {
                return Ok(v.clone());
            }
        }
        match self.at[col.index] {
            Some(at) => self.row.try_get(at),
            None => Err(Error::invalid(format!(
                "{}.{} was not loaded: name it in only(…)",
                M::META.table,
                col.name
            ))),
        }
    }

    /// The primary key (a one-column key).
    pub fn key(&self) -> Result<M::Key, Error>
    where
        M::Key: Key,
    {
        self.row.try_get(self.at[M::META.pk].expect("checked when read"))
    }

    /// Sets a column (loaded or not) for the next [`save`](Self::save).
    pub fn set<T>(&mut self, col: Col<M, T>, value: T)
    where
        T: ToSql + Send + Sync + 'static,
    {
        let value = Arc::new(value);
        self.changed.retain(|(i, _, _)| *i != col.index);
        self.changed.push((col.index, value.clone(), value));
    }

    /// `UPDATE … SET` the columns set since loading `WHERE` key: the
    /// output is the number of rows updated (0 when the row is gone, or
    /// nothing was set). Hooks do not run: they need the whole model. For
    /// models with a one-column key.
    pub fn save(&self) -> BoxOp<'static, u64>
    where
        M::Key: Key,
    {
        if self.changed.is_empty() {
            return Box::new(crate::ops::ready(Ok(0)));
        }
        let key = match self.key() {
            Ok(k) => k,
            Err(e) => return Box::new(crate::ops::ready(Err(e))),
        };
        let meta = M::META;
        let mut s = Sql::new();
        s.push("UPDATE ");
        s.ident(meta.table);
        s.push(" SET ");
        s.list(&self.changed, |s, (i, v, _)| {
            s.ident(meta.columns[*i].name);
            s.push(" = ");
            s.param(v.clone());
        });
        s.push(" WHERE ");
        s.expr(&cond(BinOp::Eq, QuerySet::<M>::pk_expr(), Expr::Param(Arc::new(key))).0);
        Box::new(Query::values(s.text, s.params).affected())
    }
}

/// A query set that loads the key and some columns (see [`QuerySet::only`]).
pub struct Only<M: Model> {
    qs: QuerySet<M>,
    columns: Vec<Expr>,
}

impl<M: Model> Only<M> {
    pub(crate) fn new(qs: QuerySet<M>, cols: impl Columns<M>) -> Self {
        let names = cols.names();
        let meta = M::META;
        let mut columns = Vec::new();
        // The key always, then the named columns in the model's order.
        for (i, c) in meta.columns.iter().enumerate() {
            if meta.key.contains(&i) || names.contains(&c.name) {
                columns.push(Expr::Column {
                    table: meta.table,
                    name: c.name,
                });
            }
        }
        Only { qs, columns }
    }

    /// The SQL `all` sends.
    pub fn to_sql(&self) -> Sql {
        self.qs.select(self.columns.clone()).to_sql()
    }

    /// Every matching row, decoded as rows arrive.
    pub fn all(self) -> CollectOp<Partial<M>> {
        let sql = self.to_sql();
        Query::values(sql.text, sql.params).collect(Partial::<M>::from_row)
    }

    /// Exactly one row: [`Error::NotFound`] if none matches,
    /// [`Error::MultipleFound`] if several do.
    pub fn get(mut self) -> impl Operation<Output = Partial<M>> + Send + 'static {
        self.qs = self.qs.limited_for_get();
        self.all().map(|mut found: Vec<Partial<M>>| match found.len() {
            1 => Ok(found.pop().expect("one")),
            0 => Err(Error::NotFound(M::META.name.into())),
            n => Err(Error::MultipleFound(M::META.name.into(), n)),
        })
    }
}
