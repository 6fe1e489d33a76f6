//! The SQL tree the query builder produces, and the typed handles that build
//! it. Values never become SQL text: every one is a [`Expr::Param`], rendered
//! as `$n` and bound. Identifiers come from the model's derive and are always
//! quoted.

use std::marker::PhantomData;
use std::ops;
use std::sync::Arc;

use postgres_types::{FromSql, ToSql};

use crate::{Error, Row};

/// A value bound to a statement, owned so query sets can be cloned, stored
/// and sent between threads.
pub type Value = Arc<dyn ToSql + Send + Sync>;

/// A node of the SQL tree. Every compound node is parenthesized when
/// rendered, so precedence never depends on how the tree was built.
#[derive(Clone, Debug)]
pub enum Expr {
    Column {
        table: &'static str,
        name: &'static str,
    },
    Param(Value),
    /// `left op right`, `op` one of a fixed set of operator keywords.
    Binary {
        op: BinOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    Not(Box<Expr>),
    /// `(cond) IS NOT TRUE`: false or NULL.
    NotTrue(Box<Expr>),
    Neg(Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    /// `expr = ANY($n)`, the whole list bound as one array parameter.
    Any {
        expr: Box<Expr>,
        array: Value,
    },
    /// `expr IN (SELECT …)`.
    InSelect {
        expr: Box<Expr>,
        select: Box<super::render::Select>,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
    },
    /// A function call; `cast` wraps the call (`CAST(SUM(x) AS int8)`), so
    /// an aggregate's SQL type is fixed whatever the column's.
    Func {
        name: Func,
        args: Vec<Expr>,
        cast: Option<&'static str>,
    },
    /// `*`, inside `COUNT(*)`.
    Star,
    /// `(a, b)`: a composite key's columns, compared as one.
    Row(Vec<Expr>),
}

/// The operators the builder can emit; never text from a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Add,
    Sub,
    Mul,
    Div,
    Like,
    ILike,
}

impl BinOp {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            BinOp::Eq => "=",
            BinOp::Ne => "<>",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "AND",
            BinOp::Or => "OR",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Like => "LIKE",
            BinOp::ILike => "ILIKE",
        }
    }
}

/// The functions the builder can emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    Lower,
    Upper,
    Length,
    Coalesce,
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

impl Func {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            Func::Lower => "lower",
            Func::Upper => "upper",
            Func::Length => "length",
            Func::Coalesce => "COALESCE",
            Func::Count => "COUNT",
            Func::Sum => "SUM",
            Func::Avg => "AVG",
            Func::Min => "MIN",
            Func::Max => "MAX",
        }
    }
}

fn binary(op: BinOp, left: Expr, right: Expr) -> Expr {
    Expr::Binary {
        op,
        left: Box::new(left),
        right: Box::new(right),
    }
}

// ---- Rust types that map to SQL types ----

/// A Rust type that is a SQL column type: what `create_table` declares and
/// what a comparison accepts as a bound value. Implemented for the types
/// `postgres-types` encodes; implement it for your own `ToSql` types to use
/// them in models and filters.
pub trait SqlType: ToSql + Send + Sync + 'static {
    /// The type's name in `CREATE TABLE`.
    const SQL: &'static str;
    /// True for `Option<T>`: the column may be NULL.
    const NULLABLE: bool = false;
    /// The type without `Option` (`i32` for `Option<i32>`).
    type Base: SqlType;
    /// The statement that creates the type, for a type of the application's
    /// (`CREATE TYPE mood AS ENUM (…)`, written by `#[derive(PgEnum)]`):
    /// `create_table` runs it first when the type is not there yet.
    const CREATE: Option<&'static str> = None;
}

macro_rules! sql_types {
    ($($t:ty => $sql:expr),* $(,)?) => {
        $(impl SqlType for $t {
            const SQL: &'static str = $sql;
            type Base = $t;
        })*
    };
}

sql_types!(
    bool => "boolean",
    i8 => "\"char\"",
    i16 => "smallint",
    i32 => "integer",
    i64 => "bigint",
    u32 => "oid",
    f32 => "real",
    f64 => "double precision",
    String => "text",
    Vec<u8> => "bytea",
    Vec<i16> => "smallint[]",
    Vec<i32> => "integer[]",
    Vec<i64> => "bigint[]",
    Vec<f64> => "double precision[]",
    Vec<bool> => "boolean[]",
    Vec<String> => "text[]",
    chrono::NaiveDate => "date",
    chrono::NaiveTime => "time",
    chrono::NaiveDateTime => "timestamp",
    chrono::DateTime<chrono::Utc> => "timestamptz",
    chrono::DateTime<chrono::FixedOffset> => "timestamptz",
    uuid::Uuid => "uuid",
    serde_json::Value => "jsonb",
);

impl<T: SqlType> SqlType for Option<T> {
    const SQL: &'static str = T::SQL;
    const NULLABLE: bool = true;
    type Base = T::Base;
    const CREATE: Option<&'static str> = T::CREATE;
}

/// Types that `+ - * /` apply to.
pub trait Numeric {}
impl Numeric for i16 {}
impl Numeric for i32 {}
impl Numeric for i64 {}
impl Numeric for f32 {}
impl Numeric for f64 {}
impl<T: Numeric> Numeric for Option<T> {}

/// Types that `like`, `lower` and friends apply to.
pub trait Textual {}
impl Textual for String {}
impl<T: Textual> Textual for Option<T> {}

/// Types `sum` applies to, and the type of their sum (`SUM(int4)` is
/// `int8` in PostgreSQL; the result is cast so it always decodes).
pub trait Summable {
    type Sum: SqlType;
    const CAST: &'static str;
}
impl Summable for i16 {
    type Sum = i64;
    const CAST: &'static str = "int8";
}
impl Summable for i32 {
    type Sum = i64;
    const CAST: &'static str = "int8";
}
impl Summable for i64 {
    type Sum = i64;
    const CAST: &'static str = "int8";
}
impl Summable for f32 {
    type Sum = f64;
    const CAST: &'static str = "float8";
}
impl Summable for f64 {
    type Sum = f64;
    const CAST: &'static str = "float8";
}

// ---- typed handles ----

/// Something usable where an expression of type `T` is expected: a value
/// (bound as a parameter), a column of type `T`, or a typed expression.
/// This is what makes comparing a text column with a number a compile
/// error:
///
/// ```compile_fail
/// use duet_core::orm::prelude::*;
/// #[derive(Model)]
/// struct User { #[duet(primary_key, auto)] id: i32, name: String }
/// let q = User::objects().filter(User::NAME.eq(5)); // i32 is not a String
/// ```
///
/// while the same comparison with a string, or between columns of one
/// type, compiles:
///
/// ```
/// use duet_core::orm::prelude::*;
/// #[derive(Model)]
/// struct User { #[duet(primary_key, auto)] id: i32, name: String, nick: Option<String> }
/// let q = User::objects().filter(User::NAME.eq("ada") | User::NICK.eq(User::NICK));
/// # let _ = q;
/// ```
pub trait IntoExpr<T> {
    fn into_expr(self) -> Expr;
}

/// Any value that encodes as a parameter: the library's types, and a
/// field's own type (`rust_decimal::Decimal`, `std::net::IpAddr`, an
/// application enum) whatever implements `SqlType`.
impl<T: ToSql + Send + Sync + 'static> IntoExpr<T> for T {
    fn into_expr(self) -> Expr {
        Expr::Param(Arc::new(self))
    }
}

/// A nullable column compares with a plain value.
impl<T: ToSql + Send + Sync + 'static> IntoExpr<Option<T>> for T {
    fn into_expr(self) -> Expr {
        Expr::Param(Arc::new(self))
    }
}

impl IntoExpr<String> for &str {
    fn into_expr(self) -> Expr {
        Expr::Param(Arc::new(self.to_owned()))
    }
}

impl IntoExpr<Option<String>> for &str {
    fn into_expr(self) -> Expr {
        Expr::Param(Arc::new(self.to_owned()))
    }
}

/// A column of model `M` holding Rust type `T`: `User::NAME`. Generated by
/// `#[derive(Model)]` as associated constants.
pub struct Col<M, T> {
    pub table: &'static str,
    pub name: &'static str,
    /// The column's position among the model's columns.
    pub index: usize,
    _types: PhantomData<fn() -> (M, T)>,
}

impl<M, T> Clone for Col<M, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M, T> Copy for Col<M, T> {}

impl<M, T> std::fmt::Debug for Col<M, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.table, self.name)
    }
}

impl<M, T> Col<M, T> {
    #[doc(hidden)]
    pub const fn new(table: &'static str, name: &'static str, index: usize) -> Self {
        Col {
            table,
            name,
            index,
            _types: PhantomData,
        }
    }

    pub fn expr(&self) -> Expr {
        Expr::Column {
            table: self.table,
            name: self.name,
        }
    }
}

impl<M, T> IntoExpr<T> for Col<M, T> {
    fn into_expr(self) -> Expr {
        self.expr()
    }
}

/// An expression of Rust type `T`: `User::LOGINS + 1`, `lower(User::NAME)`,
/// `sum(Post::VIEWS)`.
pub struct Typed<T> {
    expr: Expr,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Typed<T> {
    fn clone(&self) -> Self {
        Typed::new(self.expr.clone())
    }
}

impl<T> std::fmt::Debug for Typed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.expr.fmt(f)
    }
}

impl<T> Typed<T> {
    fn new(expr: Expr) -> Self {
        Typed {
            expr,
            _type: PhantomData,
        }
    }
}

impl<T> IntoExpr<T> for Typed<T> {
    fn into_expr(self) -> Expr {
        self.expr
    }
}

/// A boolean condition: what `filter` and `exclude` take. Combine with
/// `&`, `|` and `!` (or [`Cond::and`], [`Cond::or`], [`not`]).
#[derive(Clone, Debug)]
pub struct Cond(pub(crate) Expr);

impl Cond {
    pub fn and(self, other: Cond) -> Cond {
        Cond(binary(BinOp::And, self.0, other.0))
    }
    pub fn or(self, other: Cond) -> Cond {
        Cond(binary(BinOp::Or, self.0, other.0))
    }
    pub fn expr(&self) -> &Expr {
        &self.0
    }
}

/// `NOT cond`.
pub fn not(c: Cond) -> Cond {
    Cond(Expr::Not(Box::new(c.0)))
}

impl ops::BitAnd for Cond {
    type Output = Cond;
    fn bitand(self, rhs: Cond) -> Cond {
        self.and(rhs)
    }
}
impl ops::BitOr for Cond {
    type Output = Cond;
    fn bitor(self, rhs: Cond) -> Cond {
        self.or(rhs)
    }
}
impl ops::Not for Cond {
    type Output = Cond;
    fn not(self) -> Cond {
        not(self)
    }
}

/// Escapes `%`, `_` and `\` so a string matches itself in a `LIKE` pattern.
pub fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The methods columns and typed expressions share, written once.
macro_rules! operand_methods {
    () => {
        fn cmp(self, op: BinOp, rhs: Expr) -> Cond {
            Cond(binary(op, self.into_expr(), rhs))
        }
        /// `self = rhs` (use [`is_null`](Self::is_null) for NULL).
        pub fn eq(self, rhs: impl IntoExpr<T>) -> Cond {
            self.cmp(BinOp::Eq, rhs.into_expr())
        }
        /// `self <> rhs`.
        pub fn ne(self, rhs: impl IntoExpr<T>) -> Cond {
            self.cmp(BinOp::Ne, rhs.into_expr())
        }
        pub fn lt(self, rhs: impl IntoExpr<T>) -> Cond {
            self.cmp(BinOp::Lt, rhs.into_expr())
        }
        pub fn le(self, rhs: impl IntoExpr<T>) -> Cond {
            self.cmp(BinOp::Le, rhs.into_expr())
        }
        pub fn gt(self, rhs: impl IntoExpr<T>) -> Cond {
            self.cmp(BinOp::Gt, rhs.into_expr())
        }
        pub fn ge(self, rhs: impl IntoExpr<T>) -> Cond {
            self.cmp(BinOp::Ge, rhs.into_expr())
        }
        /// `self BETWEEN low AND high`.
        pub fn between(self, low: impl IntoExpr<T>, high: impl IntoExpr<T>) -> Cond {
            Cond(Expr::Between {
                expr: Box::new(self.into_expr()),
                low: Box::new(low.into_expr()),
                high: Box::new(high.into_expr()),
            })
        }
        /// `self = ANY($1)`: the whole list is one array parameter, so the
        /// statement text is the same whatever the list's length.
        pub fn in_<V>(self, values: impl IntoIterator<Item = V>) -> Cond
        where
            V: Into<T::Base>,
            T: SqlType,
            Vec<T::Base>: ToSql + Send + Sync,
        {
            let array: Vec<T::Base> = values.into_iter().map(Into::into).collect();
            Cond(Expr::Any {
                expr: Box::new(self.into_expr()),
                array: Arc::new(array),
            })
        }
        pub fn is_null(self) -> Cond {
            Cond(Expr::IsNull {
                expr: Box::new(self.into_expr()),
                negated: false,
            })
        }
        pub fn is_not_null(self) -> Cond {
            Cond(Expr::IsNull {
                expr: Box::new(self.into_expr()),
                negated: true,
            })
        }
        /// `self LIKE pattern`, the pattern bound as a value (`%` and `_`
        /// are wildcards; see [`contains`](Self::contains) for literal text).
        pub fn like(self, pattern: impl Into<String>) -> Cond
        where
            T: Textual,
        {
            self.cmp(BinOp::Like, Expr::Param(Arc::new(pattern.into())))
        }
        /// Case-insensitive `like`.
        pub fn ilike(self, pattern: impl Into<String>) -> Cond
        where
            T: Textual,
        {
            self.cmp(BinOp::ILike, Expr::Param(Arc::new(pattern.into())))
        }
        /// Contains `text` literally (wildcards in it are escaped).
        pub fn contains(self, text: &str) -> Cond
        where
            T: Textual,
        {
            self.like(format!("%{}%", escape_like(text)))
        }
        /// Starts with `text` literally.
        pub fn starts_with(self, text: &str) -> Cond
        where
            T: Textual,
        {
            self.like(format!("{}%", escape_like(text)))
        }
        /// Ends with `text` literally.
        pub fn ends_with(self, text: &str) -> Cond
        where
            T: Textual,
        {
            self.like(format!("%{}", escape_like(text)))
        }
        /// `lower(self)`.
        pub fn lower(self) -> Typed<T>
        where
            T: Textual,
        {
            Typed::new(Expr::Func {
                name: Func::Lower,
                args: vec![self.into_expr()],
                cast: None,
            })
        }
        /// `upper(self)`.
        pub fn upper(self) -> Typed<T>
        where
            T: Textual,
        {
            Typed::new(Expr::Func {
                name: Func::Upper,
                args: vec![self.into_expr()],
                cast: None,
            })
        }
        /// `COALESCE(self, fallback)`: the value, or `fallback` where NULL.
        pub fn or_else(self, fallback: impl IntoExpr<T>) -> Typed<T> {
            Typed::new(Expr::Func {
                name: Func::Coalesce,
                args: vec![self.into_expr(), fallback.into_expr()],
                cast: None,
            })
        }
        /// Ascending order, for `order_by`.
        pub fn asc(self) -> Order {
            Order::new(self.into_expr(), false)
        }
        /// Descending order, for `order_by`.
        pub fn desc(self) -> Order {
            Order::new(self.into_expr(), true)
        }
    };
}

impl<M, T> Col<M, T> {
    operand_methods!();
}

impl<T> Typed<T> {
    operand_methods!();
}

macro_rules! arithmetic {
    ($($trait:ident $method:ident $op:ident),*) => {$(
        impl<M, T: Numeric, R: IntoExpr<T>> ops::$trait<R> for Col<M, T> {
            type Output = Typed<T>;
            fn $method(self, rhs: R) -> Typed<T> {
                Typed::new(binary(BinOp::$op, self.into_expr(), rhs.into_expr()))
            }
        }
        impl<T: Numeric, R: IntoExpr<T>> ops::$trait<R> for Typed<T> {
            type Output = Typed<T>;
            fn $method(self, rhs: R) -> Typed<T> {
                Typed::new(binary(BinOp::$op, self.into_expr(), rhs.into_expr()))
            }
        }
    )*};
}

arithmetic!(Add add Add, Sub sub Sub, Mul mul Mul, Div div Div);

impl<M, T: Numeric> ops::Neg for Col<M, T> {
    type Output = Typed<T>;
    fn neg(self) -> Typed<T> {
        Typed::new(Expr::Neg(Box::new(self.into_expr())))
    }
}

// ---- aggregates ----

fn aggregate<T>(name: Func, arg: Expr, cast: Option<&'static str>) -> Typed<T> {
    Typed::new(Expr::Func {
        name,
        args: vec![arg],
        cast,
    })
}

/// `COUNT(*)`.
pub fn count() -> Typed<i64> {
    aggregate(Func::Count, Expr::Star, None)
}

/// `COUNT(expr)`: the rows where `expr` is not NULL.
pub fn count_of<T>(e: impl IntoExpr<T>) -> Typed<i64> {
    aggregate(Func::Count, e.into_expr(), None)
}

/// `SUM(expr)`, as `int8` for integers and `float8` for floats; NULL
/// (`None`) over no rows.
pub fn sum<T: SqlType>(e: impl IntoExpr<T>) -> Typed<Option<<T::Base as Summable>::Sum>>
where
    T::Base: Summable,
{
    aggregate(Func::Sum, e.into_expr(), Some(<T::Base as Summable>::CAST))
}

/// `AVG(expr)` as `float8`.
pub fn avg<T: SqlType>(e: impl IntoExpr<T>) -> Typed<Option<f64>>
where
    T::Base: Numeric,
{
    aggregate(Func::Avg, e.into_expr(), Some("float8"))
}

/// `MIN(expr)`.
pub fn min<T: SqlType>(e: impl IntoExpr<T>) -> Typed<Option<T::Base>> {
    aggregate(Func::Min, e.into_expr(), None)
}

/// `MAX(expr)`.
pub fn max<T: SqlType>(e: impl IntoExpr<T>) -> Typed<Option<T::Base>> {
    aggregate(Func::Max, e.into_expr(), None)
}

/// `length(expr)`, in characters.
pub fn length<T: Textual>(e: impl IntoExpr<T>) -> Typed<Option<i32>> {
    aggregate(Func::Length, e.into_expr(), None)
}

// ---- ordering ----

/// One `ORDER BY` term.
#[derive(Clone, Debug)]
pub struct Order {
    pub(crate) expr: Expr,
    pub(crate) desc: bool,
    pub(crate) nulls_first: Option<bool>,
}

impl Order {
    fn new(expr: Expr, desc: bool) -> Order {
        Order {
            expr,
            desc,
            nulls_first: None,
        }
    }
    pub fn nulls_first(mut self) -> Order {
        self.nulls_first = Some(true);
        self
    }
    pub fn nulls_last(mut self) -> Order {
        self.nulls_first = Some(false);
        self
    }
}

impl<M, T> From<Col<M, T>> for Order {
    fn from(c: Col<M, T>) -> Order {
        Order::new(c.expr(), false)
    }
}

// ---- selections (`values`, `aggregate`) ----

/// What `values` and `aggregate` select: a column, a typed expression, or a
/// tuple of them (up to 8), decoded by position into the matching Rust
/// types.
pub trait Selection: Send + Sync + 'static {
    type Out: Send + 'static;
    fn exprs(&self, out: &mut Vec<Expr>);
    fn decode(row: &Row, offset: usize) -> Result<Self::Out, Error>;
    fn width() -> usize;
}

impl<M: 'static, T> Selection for Col<M, T>
where
    T: for<'a> FromSql<'a> + Send + 'static,
{
    type Out = T;
    fn exprs(&self, out: &mut Vec<Expr>) {
        out.push(self.expr());
    }
    fn decode(row: &Row, offset: usize) -> Result<T, Error> {
        row.try_get(offset)
    }
    fn width() -> usize {
        1
    }
}

impl<T> Selection for Typed<T>
where
    T: for<'a> FromSql<'a> + Send + 'static,
{
    type Out = T;
    fn exprs(&self, out: &mut Vec<Expr>) {
        out.push(self.expr.clone());
    }
    fn decode(row: &Row, offset: usize) -> Result<T, Error> {
        row.try_get(offset)
    }
    fn width() -> usize {
        1
    }
}

macro_rules! tuple_selection {
    ($($name:ident $idx:tt),+) => {
        impl<$($name: Selection),+> Selection for ($($name,)+) {
            type Out = ($($name::Out,)+);
            fn exprs(&self, out: &mut Vec<Expr>) {
                $( Selection::exprs(&self.$idx, out); )+
            }
            #[allow(unused_assignments)]
            fn decode(row: &Row, offset: usize) -> Result<Self::Out, Error> {
                let mut at = offset;
                Ok(($({
                    let v = $name::decode(row, at)?;
                    at += $name::width();
                    v
                },)+))
            }
            fn width() -> usize {
                0 $( + $name::width() )+
            }
        }
    };
}

tuple_selection!(A 0);
tuple_selection!(A 0, B 1);
tuple_selection!(A 0, B 1, C 2);
tuple_selection!(A 0, B 1, C 2, D 3);
tuple_selection!(A 0, B 1, C 2, D 3, E 4);
tuple_selection!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_selection!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_selection!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

/// Something `group_by` accepts: a column, an expression or a tuple of them.
pub trait GroupKey {
    fn group_exprs(self, out: &mut Vec<Expr>);
}

impl<S: Selection> GroupKey for S {
    fn group_exprs(self, out: &mut Vec<Expr>) {
        Selection::exprs(&self, out)
    }
}
