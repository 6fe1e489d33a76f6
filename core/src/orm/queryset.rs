//! Query sets: lazy, cloneable descriptions of a set of rows. Nothing is
//! sent until one of the finishing methods (`all`, `get`, `count`, …)
//! returns an [`Operation`] and a driver runs it.

use std::marker::PhantomData;
use std::sync::Arc;

use super::expr::{BinOp, Cond, Expr, GroupKey, IntoExpr, Order, Selection, Value};
use super::model::{Model, Positions};
use super::render::{Join, Lock, Select, Sql};
use crate::connection::QueryResult;
use crate::ops::{Operation, Query};
use crate::{Error, Row};

/// Rows of model `M` matching filters, in an order. Build with
/// [`Model::objects`].
///
/// ```
/// use duet_core::orm::prelude::*;
/// # #[derive(Model)] struct User { #[duet(primary_key, auto)] id: i32, name: String, logins: i32 }
/// let active = User::objects()
///     .filter(User::LOGINS.ge(10))
///     .exclude(User::NAME.starts_with("test_"))
///     .order_by(User::NAME.asc())
///     .limit(20);
/// let sql = active.to_sql();
/// assert_eq!(
///     sql.text,
///     r#"SELECT "users"."id", "users"."name", "users"."logins" FROM "users" WHERE (("users"."logins" >= $1) AND (("users"."name" LIKE $2 ESCAPE E'\\') IS NOT TRUE)) ORDER BY "users"."name" LIMIT $3"#
/// );
/// ```
pub struct QuerySet<M> {
    pub(crate) filter: Option<Expr>,
    pub(crate) order: Vec<Order>,
    pub(crate) limit: Option<i64>,
    pub(crate) offset: Option<i64>,
    pub(crate) distinct: bool,
    pub(crate) joins: Vec<Join>,
    pub(crate) group_by: Vec<Expr>,
    pub(crate) having: Option<Expr>,
    pub(crate) lock: Option<Lock>,
    _model: PhantomData<fn() -> M>,
}

impl<M> Clone for QuerySet<M> {
    fn clone(&self) -> Self {
        QuerySet {
            filter: self.filter.clone(),
            order: self.order.clone(),
            limit: self.limit,
            offset: self.offset,
            distinct: self.distinct,
            joins: self.joins.clone(),
            group_by: self.group_by.clone(),
            having: self.having.clone(),
            lock: self.lock,
            _model: PhantomData,
        }
    }
}

impl<M> std::fmt::Debug for QuerySet<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuerySet")
            .field("filter", &self.filter)
            .field("order", &self.order)
            .field("limit", &self.limit)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl<M: Model> Default for QuerySet<M> {
    fn default() -> Self {
        Self::new()
    }
}

/// Rows a `get` fetches at most: enough to say "several", not all of them.
const GET_LIMIT: i64 = 21;

pub(crate) fn decode_models<M: Model>(r: QueryResult) -> Result<Vec<M>, Error> {
    r.rows.iter().map(|row| M::from_row(row, Positions::From(0))).collect()
}

fn exactly_one<M: Model>(mut models: Vec<M>) -> Result<M, Error> {
    match models.len() {
        1 => Ok(models.pop().expect("one model")),
        0 => Err(Error::NotFound(M::META.name.into())),
        n => Err(Error::MultipleFound(M::META.name.into(), n)),
    }
}

fn at_most_one<M: Model>(mut models: Vec<M>) -> Result<Option<M>, Error> {
    match models.len() {
        0 | 1 => Ok(models.pop()),
        n => Err(Error::MultipleFound(M::META.name.into(), n)),
    }
}

impl<M: Model> QuerySet<M> {
    pub fn new() -> Self {
        QuerySet {
            filter: None,
            order: Vec::new(),
            limit: None,
            offset: None,
            distinct: false,
            joins: Vec::new(),
            group_by: Vec::new(),
            having: None,
            lock: None,
            _model: PhantomData,
        }
    }

    /// Keeps the rows matching `cond` (AND-ed with earlier filters).
    pub fn filter(mut self, cond: Cond) -> Self {
        self.filter = Some(match self.filter.take() {
            None => cond.0,
            Some(f) => Cond(f).and(cond).0,
        });
        self
    }

    /// Drops the rows matching `cond`, and only those: a row for which
    /// `cond` is NULL (a comparison with a NULL column) stays, as in
    /// Django, where `filter(not(cond))` would drop it too (SQL's `NOT`).
    pub fn exclude(self, cond: Cond) -> Self {
        self.filter(Cond(Expr::NotTrue(Box::new(cond.0))))
    }

    /// Adds an ordering term: a column (ascending) or `col.desc()`,
    /// `col.asc().nulls_last()`, ….
    pub fn order_by(mut self, order: impl Into<Order>) -> Self {
        self.order.push(order.into());
        self
    }

    pub fn limit(mut self, n: i64) -> Self {
        self.limit = Some(n);
        self
    }

    pub fn offset(mut self, n: i64) -> Self {
        self.offset = Some(n);
        self
    }

    /// `SELECT DISTINCT`.
    pub fn distinct(mut self) -> Self {
        self.distinct = true;
        self
    }

    /// `FOR UPDATE`: locks the rows until the transaction ends.
    pub fn for_update(mut self) -> Self {
        self.lock = Some(Lock::ForUpdate);
        self
    }

    /// `GROUP BY`, for [`values`](Self::values) with aggregates.
    pub fn group_by(mut self, key: impl GroupKey) -> Self {
        key.group_exprs(&mut self.group_by);
        self
    }

    /// `HAVING cond`, with `group_by`.
    pub fn having(mut self, cond: Cond) -> Self {
        self.having = Some(match self.having.take() {
            None => cond.0,
            Some(h) => Cond(h).and(cond).0,
        });
        self
    }

    pub(crate) fn join(mut self, join: Join) -> Self {
        self.joins.push(join);
        self
    }

    /// The `SELECT` with these columns.
    pub fn select(&self, columns: Vec<Expr>) -> Select {
        Select {
            distinct: self.distinct,
            columns,
            from: M::META.table,
            joins: self.joins.clone(),
            filter: self.filter.clone(),
            group_by: self.group_by.clone(),
            having: self.having.clone(),
            order: self.order.clone(),
            limit: self.limit,
            offset: self.offset,
            lock: self.lock,
        }
    }

    pub(crate) fn model_columns() -> Vec<Expr> {
        let meta = M::META;
        meta.columns
            .iter()
            .map(|c| Expr::Column {
                table: meta.table,
                name: c.name,
            })
            .collect()
    }

    pub(crate) fn pk_expr() -> Expr {
        Expr::Column {
            table: M::META.table,
            name: M::META.pk_column().name,
        }
    }

    /// Each primary key column.
    fn key_exprs() -> Vec<Expr> {
        M::META
            .key_columns()
            .map(|c| Expr::Column {
                table: M::META.table,
                name: c.name,
            })
            .collect()
    }

    /// The key as one value: its column, or `(a, b)` for a composite key.
    fn key_expr() -> Expr {
        let mut cols = Self::key_exprs();
        if cols.len() == 1 {
            cols.pop().expect("one column")
        } else {
            Expr::Row(cols)
        }
    }

    /// `SELECT pk FROM … WHERE …`: the keys of the same rows, for a
    /// subquery, with the order and limit that choose them. DISTINCT is
    /// dropped: rows that include the primary key are distinct already, and
    /// under DISTINCT an ORDER BY on anything but the key is refused (42P10).
    pub(crate) fn pk_select(&self) -> Select {
        let mut sel = self.select(Self::key_exprs());
        sel.distinct = false;
        sel
    }

    /// The SQL `all` would send.
    pub fn to_sql(&self) -> Sql {
        self.select(Self::model_columns()).to_sql()
    }

    /// True when running the query twice returns the same set of rows (no
    /// `LIMIT`/`OFFSET`, or one under an order that ends in the primary
    /// key): what a subquery needs to stand in for this query set.
    pub fn is_deterministic(&self) -> bool {
        if self.limit.is_none() && self.offset.is_none() {
            return true;
        }
        // The order ends in the key's columns, in the key's order.
        let key = M::META.key;
        self.order.len() >= key.len()
            && self.order[self.order.len() - key.len()..]
                .iter()
                .zip(key)
                .all(|(o, &i)| matches!(o.expr, Expr::Column { table, name } if table == M::META.table && name == M::META.columns[i].name))
    }

    fn run<T: Send + 'static>(select: Select, decode: fn(QueryResult) -> Result<T, Error>) -> FetchOp<T> {
        let sql = select.to_sql();
        Query::values(sql.text, sql.params).map(decode)
    }

    // ---- finishing methods ----

    /// Every matching row.
    pub fn all(self) -> CollectOp<M> {
        let sql = self.select(Self::model_columns()).to_sql();
        Query::values(sql.text, sql.params).collect(|row| M::from_row(row, Positions::From(0)))
    }

    /// Loads the key and these columns only (one column or a tuple): the
    /// rows come as [`Partial`](super::partial::Partial) models, read and
    /// changed through the model's column handles.
    pub fn only(self, columns: impl super::write::Columns<M>) -> super::partial::Only<M> {
        super::partial::Only::new(self, columns)
    }

    /// Every matching row as a `T` made by column name from the model's
    /// columns (a `#[derive(FromRow)]` struct naming some of them: a
    /// partial view of the model).
    pub fn all_as<T: crate::FromRow + Send + 'static>(self) -> CollectOp<T> {
        let sql = self.select(Self::model_columns()).to_sql();
        Query::values(sql.text, sql.params).rows_as::<T>()
    }

    /// Hands each matching model to `f` as its row arrives, without
    /// collecting them: memory stays bounded however many rows match (see
    /// [`Query::for_each`]). Outputs the number of models.
    ///
    /// ```
    /// use duet_core::orm::prelude::*;
    /// # #[derive(Model)] struct User { #[duet(primary_key, auto)] id: i32, name: String, logins: i32 }
    /// let mut logins = 0i64;
    /// let op = User::objects().for_each(|u: User| {
    ///     logins += i64::from(u.logins);
    ///     Ok(())
    /// });
    /// # let _ = op;
    /// ```
    pub fn for_each<F>(self, mut f: F) -> crate::ops::ForEach<'static, impl FnMut(Row) -> Result<(), Error>>
    where
        F: FnMut(M) -> Result<(), Error>,
    {
        let sql = self.select(Self::model_columns()).to_sql();
        Query::values(sql.text, sql.params).for_each(move |row| f(M::from_row(&row, Positions::From(0))?))
    }

    /// At most enough rows to tell one from several (and say how many, up
    /// to 20), within the query set's own limit.
    pub(crate) fn limited_for_get(mut self) -> Self {
        self.limit = Some(self.limit.map_or(GET_LIMIT, |l| l.min(GET_LIMIT)));
        self
    }

    /// Exactly one row: [`Error::NotFound`] if none matches,
    /// [`Error::MultipleFound`] if several do.
    pub fn get(self) -> FetchOp<M> {
        Self::run(self.limited_for_get().select(Self::model_columns()), |r| {
            exactly_one(decode_models::<M>(r)?)
        })
    }

    /// At most one row: `None` if none matches, [`Error::MultipleFound`] if
    /// several do.
    pub fn get_opt(self) -> FetchOp<Option<M>> {
        Self::run(self.limited_for_get().select(Self::model_columns()), |r| {
            at_most_one(decode_models::<M>(r)?)
        })
    }

    /// The first row in the query set's order (by primary key if it has
    /// none), or `None`.
    pub fn first(mut self) -> FetchOp<Option<M>> {
        if self.order.is_empty() {
            self.order.extend(Self::key_exprs().into_iter().map(|expr| Order {
                expr,
                desc: false,
                nulls_first: None,
            }));
        }
        self.limit = Some(1);
        Self::run(self.select(Self::model_columns()), |r| Ok(decode_models::<M>(r)?.pop()))
    }

    /// `COUNT(*)` of the matching rows (of the limited, distinct set if the
    /// query set has a limit or `distinct`; the number of groups with
    /// [`group_by`](Self::group_by)).
    pub fn count(self) -> FetchOp<i64> {
        let mut s = Sql::new();
        let limited = self.limit.is_some() || self.offset.is_some();
        if limited || self.distinct || !self.group_by.is_empty() {
            // Grouped, the outer COUNT counts groups: the subquery selects
            // the group keys (model columns would not be grouped).
            let cols = if self.group_by.is_empty() {
                Self::model_columns()
            } else {
                self.group_by.clone()
            };
            let mut sel = self.select(cols);
            if !limited {
                // Without a limit the order cannot change the count: skip
                // the sort.
                sel.order.clear();
            }
            sel.lock = None;
            s.push("SELECT COUNT(*) FROM (");
            sel.render(&mut s);
            s.push(") AS \"duet_counted\"");
        } else {
            let mut sel = self.select(vec![Expr::Func {
                name: super::expr::Func::Count,
                args: vec![Expr::Star],
                cast: None,
            }]);
            sel.order.clear();
            sel.lock = None;
            sel.render(&mut s);
        }
        Query::values(s.text, s.params).map(|r| one_row(r)?.try_get(0))
    }

    /// Whether any row matches.
    pub fn exists(self) -> FetchOp<bool> {
        let mut s = Sql::new();
        s.push("SELECT EXISTS (");
        // Grouped, `*` would name ungrouped columns: select the group keys.
        let cols = if self.group_by.is_empty() {
            vec![Expr::Star]
        } else {
            self.group_by.clone()
        };
        let mut sel = self.select(cols);
        sel.order.clear();
        sel.render(&mut s);
        s.push(")");
        Query::values(s.text, s.params).map(|r| one_row(r)?.try_get(0))
    }

    /// Some columns or expressions of every matching row, as tuples:
    /// `values((User::ID, User::NAME))` gives `Vec<(i32, String)>`. With
    /// [`group_by`](Self::group_by), one tuple per group.
    pub fn values<S: Selection>(self, selection: S) -> FetchOp<Vec<S::Out>> {
        let mut cols = Vec::new();
        selection.exprs(&mut cols);
        Self::run(self.select(cols), |r| {
            r.rows.iter().map(|row| S::decode(row, 0)).collect()
        })
    }

    /// Aggregates over the whole query set, one row:
    /// `aggregate((count(), sum(User::LOGINS)))`. For one row per group use
    /// [`values`](Self::values) with [`group_by`](Self::group_by).
    pub fn aggregate<S: Selection>(self, selection: S) -> FetchOp<S::Out> {
        let mut cols = Vec::new();
        selection.exprs(&mut cols);
        if self.limit.is_some() || self.offset.is_some() {
            // LIMIT applies to the rows aggregated, not to the one result
            // row: aggregate over the limited set, aliased as the table so
            // the column references still resolve.
            let mut inner = self.select(Self::model_columns());
            inner.lock = None;
            let mut s = Sql::new();
            s.push("SELECT ");
            s.list(&cols, |s, c| s.expr(c));
            s.push(" FROM (");
            inner.render(&mut s);
            s.push(") AS ");
            s.ident(M::META.table);
            return Query::values(s.text, s.params).map(|r| S::decode(&one_row(r)?, 0));
        }
        let mut sel = self.select(cols);
        sel.order.clear();
        // FOR UPDATE is not allowed with aggregates.
        sel.lock = None;
        Self::run(sel, |r| S::decode(&one_row(r)?, 0))
    }

    /// `UPDATE` of every matching row; add assignments with
    /// [`Update::set`].
    pub fn update(self) -> Update<M> {
        Update {
            qs: self,
            sets: Vec::new(),
            op: Default::default(),
        }
    }

    /// `DELETE` of every matching row; the number deleted. Model hooks do
    /// not run (no model is loaded).
    pub fn delete(self) -> FetchOp<u64> {
        let mut s = Sql::new();
        s.push("DELETE FROM ");
        s.ident(M::META.table);
        self.render_where(&mut s);
        Query::values(s.text, s.params).affected()
    }

    /// ` WHERE …` for an UPDATE or DELETE: the filter itself, or (when the
    /// set is limited, ordered, joined or distinct, which UPDATE cannot say)
    /// the primary key in a subquery that selects the set.
    fn render_where(&self, s: &mut Sql) {
        let simple = self.limit.is_none()
            && self.offset.is_none()
            && self.joins.is_empty()
            && !self.distinct
            && self.group_by.is_empty();
        if simple {
            if let Some(f) = &self.filter {
                s.push(" WHERE ");
                s.expr(f);
            }
        } else {
            s.push(" WHERE ");
            s.expr(&Expr::InSelect {
                expr: Box::new(Self::key_expr()),
                select: Box::new(self.pk_select()),
            });
        }
    }
}

fn one_row(r: QueryResult) -> Result<Row, Error> {
    r.rows
        .into_iter()
        .next()
        .ok_or_else(|| Error::protocol("an aggregate returned no row"))
}

/// The operation a query set's finishing method returns: one statement and
/// how to decode its rows.
pub type FetchOp<T> = crate::ops::Map<Query<'static>, fn(QueryResult) -> Result<T, Error>>;

/// A query set's rows decoded as they arrive (see [`Query::collect`]).
pub type CollectOp<T> = crate::ops::Collect<'static, T>;

/// `UPDATE … SET …` on a query set. It is itself the operation (the number
/// of rows updated).
///
/// ```
/// use duet_core::orm::prelude::*;
/// # #[derive(Model)] struct User { #[duet(primary_key, auto)] id: i32, name: String, logins: i32 }
/// let bump = User::objects()
///     .filter(User::NAME.eq("ada"))
///     .update()
///     .set(User::LOGINS, User::LOGINS + 1);
/// assert_eq!(
///     bump.to_sql().text,
///     r#"UPDATE "users" SET "logins" = ("users"."logins" + $1) WHERE ("users"."name" = $2)"#
/// );
/// ```
pub struct Update<M> {
    qs: QuerySet<M>,
    sets: Vec<(&'static str, Expr)>,
    op: crate::ops::Deferred<FetchOp<u64>>,
}

impl<M: Model> Update<M> {
    /// `column = value` (a value, another column or an expression of the
    /// column's type).
    pub fn set<T>(mut self, col: super::expr::Col<M, T>, value: impl IntoExpr<T>) -> Self {
        self.sets.push((col.name, value.into_expr()));
        self
    }

    pub fn to_sql(&self) -> Sql {
        render_update(&self.qs, &self.sets)
    }
}

fn render_update<M: Model>(qs: &QuerySet<M>, sets: &[(&'static str, Expr)]) -> Sql {
    let mut s = Sql::new();
    s.push("UPDATE ");
    s.ident(M::META.table);
    s.push(" SET ");
    s.list(sets, |s, (name, e)| {
        s.ident(name);
        s.push(" = ");
        s.expr(e);
    });
    qs.render_where(&mut s);
    s
}

impl<M: Model> Operation for Update<M> {
    type Output = u64;
    fn poll(&mut self, conn: &mut crate::Connection, now: std::time::Instant) -> crate::Step<u64> {
        let Update { qs, sets, op } = self;
        op.poll_with(conn, now, || {
            if sets.is_empty() {
                return Err(crate::Step::Ready(Err(Error::misuse("update() without any set()"))));
            }
            let s = render_update(qs, sets);
            Ok(Query::values(s.text, s.params).affected())
        })
    }
    fn submitted_all(&self) -> bool {
        self.op.submitted_all()
    }
    fn abandon(&mut self, conn: &mut crate::Connection) {
        self.op.abandon(conn)
    }
}

/// Binds a value: `col.eq(v)` does this for you; raw SQL and `Update::set`
/// with a computed value may need it.
pub fn value<T: postgres_types::ToSql + Send + Sync + 'static>(v: T) -> Value {
    Arc::new(v)
}

pub(crate) fn cond(op: BinOp, left: Expr, right: Expr) -> Cond {
    Cond(Expr::Binary {
        op,
        left: Box::new(left),
        right: Box::new(right),
    })
}
