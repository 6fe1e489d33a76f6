//! What `#[derive(Model)]` implements, and the hooks a model may override.

use std::hash::Hash;

use postgres_types::{FromSql, ToSql};

use super::expr::Value;
use super::queryset::QuerySet;
use super::raw::Raw;
use super::render::Sql;
use super::write::BulkInsert;
use crate::ops::{BoxOp, Operation, Query};
use crate::{Error, Row};

/// How one column is declared, as the derive read it from the struct.
#[derive(Debug, Clone, Copy)]
pub struct ColumnDef {
    /// The column's name in the table.
    pub name: &'static str,
    /// The Rust field it maps to.
    pub field: &'static str,
    /// Its type in `CREATE TABLE` (from [`SqlType`](super::SqlType) or `sql_type = "…"`).
    pub sql_type: &'static str,
    pub nullable: bool,
    pub primary_key: bool,
    /// The database assigns it (identity/serial): left out of an `INSERT`
    /// while the model has no key yet.
    pub auto: bool,
    /// Left out of every `INSERT` (`default = "…"` or `skip_insert`): the
    /// database default applies and `RETURNING` brings the value back.
    pub skip_insert: bool,
    /// A generated column: never written.
    pub generated: Option<&'static str>,
    /// SQL of the column's default, for `create_table`.
    pub default: Option<&'static str>,
    pub unique: bool,
    /// An index of its own (`#[duet(index)]`).
    pub index: bool,
    /// `REFERENCES table (column)` and its `ON DELETE` action.
    pub references: Option<(&'static str, &'static str)>,
    pub on_delete: Option<&'static str>,
    /// The statement creating the column's type, when the application
    /// defines it (see [`SqlType::CREATE`](super::SqlType::CREATE)).
    pub create_type: Option<&'static str>,
}

impl ColumnDef {
    /// Written by an `INSERT` of a model without a key (`auto` excluded)
    /// or with one.
    pub fn inserted(&self, has_key: bool) -> bool {
        (has_key || !self.auto) && !self.skip_insert && self.generated.is_none()
    }
    /// Written by an `UPDATE` by primary key.
    pub fn updated(&self) -> bool {
        self.generated.is_none() && !self.primary_key
    }
}

/// A model's table and columns.
#[derive(Debug)]
pub struct ModelMeta {
    pub table: &'static str,
    /// The model's name in Rust, for error messages.
    pub name: &'static str,
    pub columns: &'static [ColumnDef],
    /// Index of the primary key in `columns` (its first column, for a
    /// composite key).
    pub pk: usize,
    /// Indexes of every primary key column, in the key's order (one for
    /// most models).
    pub key: &'static [usize],
}

impl ModelMeta {
    pub fn pk_column(&self) -> &'static ColumnDef {
        &self.columns[self.pk]
    }

    /// The primary key's columns.
    pub fn key_columns(&self) -> impl Iterator<Item = &'static ColumnDef> + '_ {
        self.key.iter().map(|&i| &self.columns[i])
    }

    /// `"table"."a" = $n AND "table"."b" = $m`, bound from the model's
    /// key fields: how one row is found by its key.
    pub fn render_key_match(&self, s: &mut Sql, value: impl Fn(usize) -> super::expr::Value) {
        for (n, &i) in self.key.iter().enumerate() {
            if n > 0 {
                s.push(" AND ");
            }
            s.ident(self.columns[i].name);
            s.push(" = ");
            s.param(value(i));
        }
    }

    /// `"table"."a", "table"."b", …` for every column.
    pub fn render_columns(&self, s: &mut Sql) {
        s.list(self.columns, |s, c| s.column(self.table, c.name));
    }

    /// [`create_table_sql`](Self::create_table_sql), preceded by the types
    /// the columns need (`CREATE TYPE`, skipped when the type exists) and
    /// followed by their indexes (`#[duet(index)]`), in one statement (a
    /// `DO` block) when there are any.
    pub fn create_types_and_table_sql(&self) -> String {
        let mut types: Vec<&str> = Vec::new();
        for c in self.columns {
            if let Some(t) = c.create_type {
                if !types.contains(&t) {
                    types.push(t);
                }
            }
        }
        let indexed: Vec<&ColumnDef> = self.columns.iter().filter(|c| c.index).collect();
        if types.is_empty() && indexed.is_empty() {
            return self.create_table_sql();
        }
        let mut s = String::from("DO $duet$ BEGIN ");
        for t in types {
            s.push_str("BEGIN ");
            s.push_str(t);
            s.push_str("; EXCEPTION WHEN duplicate_object THEN NULL; END; ");
        }
        s.push_str(&self.create_table_sql());
        s.push_str("; ");
        for c in indexed {
            let mut i = Sql::new();
            i.push("CREATE INDEX IF NOT EXISTS ");
            i.ident(&crate::migrate::schema::index_name(self.table, c.name));
            i.push(" ON ");
            i.ident(self.table);
            i.push(" (");
            i.ident(c.name);
            i.push("); ");
            s.push_str(&i.text);
        }
        s.push_str("END $duet$");
        s
    }

    pub fn create_table_sql(&self) -> String {
        let mut s = Sql::new();
        s.push("CREATE TABLE IF NOT EXISTS ");
        s.ident(self.table);
        s.push(" (");
        s.list(self.columns, |s, c| {
            s.ident(c.name);
            s.push(" ");
            s.push(c.sql_type);
            if let Some(g) = c.generated {
                s.push(" GENERATED ALWAYS AS (");
                s.push(g);
                s.push(") STORED");
            }
            if c.auto {
                s.push(" GENERATED BY DEFAULT AS IDENTITY");
            }
            if c.primary_key && self.key.len() == 1 {
                s.push(" PRIMARY KEY");
            } else if !c.nullable || c.primary_key {
                s.push(" NOT NULL");
            }
            if c.unique {
                s.push(" UNIQUE");
            }
            if let Some(d) = c.default {
                s.push(" DEFAULT ");
                s.push(d);
            }
            if let Some((table, col)) = c.references {
                s.push(" REFERENCES ");
                s.ident(table);
                s.push(" (");
                s.ident(col);
                s.push(")");
                if let Some(action) = c.on_delete {
                    s.push(" ON DELETE ");
                    s.push(action);
                }
            }
        });
        if self.key.len() > 1 {
            s.push(", PRIMARY KEY (");
            s.list(self.key, |s, &i| s.ident(self.columns[i].name));
            s.push(")");
        }
        s.push(")");
        s.text
    }

    /// `DROP TABLE IF EXISTS … CASCADE`.
    pub fn drop_table_sql(&self) -> String {
        let mut s = Sql::new();
        s.push("DROP TABLE IF EXISTS ");
        s.ident(self.table);
        s.push(" CASCADE");
        s.text
    }
}

/// A primary key value: bound as a parameter, decoded from rows, and used
/// to group related rows in memory.
pub trait Key: ToSql + for<'a> FromSql<'a> + Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static {}
impl<T: ToSql + for<'a> FromSql<'a> + Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static> Key for T {}

/// What a model's key is: one column's value ([`Key`]), or a tuple of
/// them for a composite key. Only a one-column key can be bound as one
/// parameter, so only such keys are targets of foreign keys and prefetches.
pub trait KeyValue: Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static {}
impl<T: Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static> KeyValue for T {}

/// How a primary key field says whether the row exists yet. A database
/// assigned (`auto`) key is unset while it is `None`, or `0` for a plain
/// integer field (identity columns start at 1).
pub trait KeyField {
    type Key: Key;
    fn key(&self, auto: bool) -> Option<Self::Key>;
}

macro_rules! int_keys {
    ($($t:ty),*) => {$(
        impl KeyField for $t {
            type Key = $t;
            fn key(&self, auto: bool) -> Option<$t> {
                (!auto || *self != 0).then_some(*self)
            }
        }
    )*};
}
int_keys!(i16, i32, i64);

impl<K: Key> KeyField for Option<K> {
    type Key = K;
    fn key(&self, _auto: bool) -> Option<K> {
        self.clone()
    }
}

macro_rules! given_keys {
    ($($t:ty),*) => {$(
        impl KeyField for $t {
            type Key = $t;
            fn key(&self, _auto: bool) -> Option<$t> {
                Some(self.clone())
            }
        }
    )*};
}
given_keys!(String, uuid::Uuid);

/// A table-backed struct. Implement it with `#[derive(Model)]`:
///
/// ```
/// use duet_core::orm::prelude::*;
///
/// #[derive(Model, Debug, Clone)]
/// struct User {
///     #[duet(primary_key, auto)]
///     id: i32,
///     #[duet(unique)]
///     email: String,
///     name: String,
///     #[duet(column = "login_count", default = "0")]
///     logins: i32,
///     bio: Option<String>,
/// }
///
/// assert_eq!(User::META.table, "users");
/// assert_eq!(User::LOGINS.name, "login_count");
/// let adults = User::objects().filter(User::NAME.ne("root") & User::LOGINS.gt(3));
/// # let _ = adults;
/// ```
///
/// Struct attributes: `table = "name"` (default: the snake_case plural of
/// the struct's name), `hooks` (the model implements [`Hooks`] itself;
/// otherwise the derive adds the no-op impl). Field attributes:
/// `primary_key`, `auto` (the database assigns it; integer keys only),
/// `column = "name"`,
/// `default = "SQL"` (left out of inserts, declared in `create_table`),
/// `skip_insert`, `generated = "SQL"` (never written), `unique`, `index`,
/// `sql_type = "varchar(40)"`, `references = OtherModel` with
/// `on_delete = "cascade"`.
///
/// ```compile_fail
/// use duet_core::orm::prelude::*;
/// #[derive(Model)]
/// struct Badge { #[duet(primary_key, auto)] code: String } // auto needs an integer key
/// ```
///
/// A composite key is several `primary_key` fields; the model's `Key` is
/// then a tuple, `save` upserts on the whole key and `delete` matches it.
/// Such a model cannot be the target of `references` (a foreign key binds
/// one column):
///
/// ```
/// use duet_core::orm::prelude::*;
/// #[derive(Model)]
/// struct Membership {
///     #[duet(primary_key)]
///     group_id: i32,
///     #[duet(primary_key)]
///     user_id: i32,
///     role: String,
/// }
/// let m = Membership { group_id: 1, user_id: 7, role: "owner".into() };
/// assert_eq!(m.key(), Some((1, 7)));
/// ```
///
/// ```compile_fail
/// use duet_core::orm::prelude::*;
/// #[derive(Model)]
/// struct Pair { #[duet(primary_key, auto)] a: i32, #[duet(primary_key)] b: i32 } // auto: one-column keys only
/// ```
///
/// ```compile_fail
/// use duet_core::orm::prelude::*;
/// #[derive(Model)]
/// struct Pair { #[duet(primary_key)] a: i32, #[duet(primary_key)] b: i32 }
/// #[derive(Model)]
/// struct Child { #[duet(primary_key, auto)] id: i32, #[duet(references = Pair)] a: i32 } // a composite target
/// ```
pub trait Model: Hooks + Sized + Send + Sync + 'static {
    /// The primary key's type (without `Option`); a tuple for a composite
    /// key.
    type Key: KeyValue;

    const META: &'static ModelMeta;

    /// False when the model uses the no-op [`Hooks`] (the derive without
    /// `#[duet(hooks)]`): nothing can follow a write, so a transaction
    /// around it can commit in the same round trip.
    const HAS_HOOKS: bool = true;

    /// Decodes the model's columns by position: column `i` of the model is
    /// read from `at.get(i)`.
    fn from_row(row: &Row, at: Positions<'_>) -> Result<Self, Error>;

    /// The value of column `i`, to be bound.
    fn value(&self, i: usize) -> Value;

    /// Column `i`'s field, lent as a parameter: what a write that owns
    /// its models binds, with nothing cloned.
    fn field(&self, i: usize) -> &(dyn ToSql + Sync);

    /// The primary key, or `None` while a database-assigned key is unset.
    fn key(&self) -> Option<Self::Key>;

    /// A query set over every row of the table.
    fn objects() -> QuerySet<Self> {
        QuerySet::new()
    }

    /// `CREATE TABLE IF NOT EXISTS` for this model (tests and quick starts;
    /// not a migration tool).
    fn create_table() -> impl Operation<Output = ()> + Send + 'static {
        Query::owned(Self::META.create_types_and_table_sql(), Vec::new())
            .map(|_| Ok(()))
            .infallible()
    }

    /// Saves the model (see [`save`](super::write::save)); the operation's
    /// output is the same `&mut` borrow, with the database's values in it.
    fn save(&mut self) -> BoxOp<'_, &mut Self> {
        super::write::save::<Self, &mut Self>(self)
    }

    /// Saves a model the operation owns, returning it: for work queued from
    /// a hook or kept beyond the caller's borrow.
    fn into_save(self) -> BoxOp<'static, Self> {
        super::write::save::<Self, Self>(self)
    }

    /// Deletes the model's row (see [`delete`](super::write::delete)).
    fn delete(&self) -> BoxOp<'_, u64> {
        super::write::delete::<Self, &Self>(self)
    }

    /// Deletes a model the operation owns.
    fn into_delete(self) -> BoxOp<'static, u64> {
        super::write::delete::<Self, Self>(self)
    }

    /// Inserts many models in as few statements as possible, one round
    /// trip (see [`BulkInsert`]).
    fn bulk_insert(models: impl IntoIterator<Item = Self>) -> BulkInsert<Self> {
        BulkInsert::new(models)
    }

    /// Rows of raw SQL mapped onto the model by column name (see [`Raw`]).
    fn raw(sql: impl Into<String>) -> Raw<Self> {
        Raw::new(sql)
    }

    /// `DROP TABLE IF EXISTS … CASCADE`.
    fn drop_table() -> impl Operation<Output = ()> + Send + 'static {
        Query::owned(Self::META.drop_table_sql(), Vec::new())
            .map(|_| Ok(()))
            .infallible()
    }
}

/// Where a model's columns sit in a row.
#[derive(Clone, Copy, Debug)]
pub enum Positions<'a> {
    /// Consecutive, starting at this column (a plain select, or after
    /// another model's columns in a join).
    From(usize),
    /// Anywhere: column `i` of the model is `map[i]` (raw SQL).
    Map(&'a [usize]),
}

impl Positions<'_> {
    #[inline]
    pub fn get(&self, i: usize) -> usize {
        match self {
            Positions::From(start) => start + i,
            Positions::Map(m) => m[i],
        }
    }
}

/// What a hook can do beyond changing its model: queue more work, which
/// runs with the write that called the hook. Work queued in a `before_*`
/// hook goes out in the same batch as the write (one round trip, one
/// implicit transaction); work queued in an `after_*` hook goes out as soon
/// as the write's result is back, inside the caller's transaction if there
/// is one.
#[derive(Default)]
pub struct HookCtx {
    pub(crate) queued: Vec<Box<dyn Operation<Output = ()> + Send>>,
    pub(crate) inserting: bool,
}

impl HookCtx {
    /// Queues an operation; its output is dropped, its error fails the write.
    pub fn queue<O>(&mut self, op: O)
    where
        O: Operation + Send + 'static,
    {
        self.queued.push(Box::new(op.map(|_| Ok(())).infallible()));
    }

    /// True when the write is a plain `INSERT` of a new row: a `save` of an
    /// auto-key model without a key, a `bulk_insert`. False for updates and
    /// deletes, and for upserts, where the row may already exist: a `save`
    /// of a model whose key the application gives, a `bulk_insert` with
    /// `on_conflict`.
    pub fn inserting(&self) -> bool {
        self.inserting
    }
}

/// Model hooks: plain functions, never `async`, so the same code runs under
/// the blocking and the tokio driver. They may change the model and queue
/// operations ([`HookCtx::queue`]); an error aborts the write. Every write
/// runs them: `save`, `delete` and `bulk_insert` (per model). Query-set
/// `update` and `delete` do not, as Django's don't: they touch rows, not
/// models.
///
/// ```
/// use duet_core::orm::prelude::*;
///
/// #[derive(Model, Debug)]
/// #[duet(hooks)]
/// struct Note {
///     #[duet(primary_key, auto)]
///     id: i64,
///     body: String,
///     edits: i32,
/// }
///
/// impl Hooks for Note {
///     fn before_save(&mut self, _ctx: &mut HookCtx) -> Result<(), Error> {
///         if self.body.is_empty() {
///             return Err(Error::invalid("a note needs a body"));
///         }
///         self.edits += 1;
///         Ok(())
///     }
/// }
/// ```
pub trait Hooks {
    fn before_save(&mut self, ctx: &mut HookCtx) -> Result<(), Error> {
        let _ = ctx;
        Ok(())
    }
    /// Runs once the row is written and the database's values (keys,
    /// defaults) are back in the model.
    fn after_save(&mut self, ctx: &mut HookCtx) -> Result<(), Error> {
        let _ = ctx;
        Ok(())
    }
    fn before_delete(&self, ctx: &mut HookCtx) -> Result<(), Error> {
        let _ = ctx;
        Ok(())
    }
    fn after_delete(&self, ctx: &mut HookCtx) -> Result<(), Error> {
        let _ = ctx;
        Ok(())
    }
}
