//! Renders the SQL tree to text with `$n` placeholders. The only strings
//! that reach the SQL text are quoted identifiers and the builder's own
//! keywords; every value becomes a placeholder and a bound parameter.

use super::expr::{Expr, Order, Value};

/// SQL text being written and the values bound to its placeholders.
#[derive(Default, Debug)]
pub struct Sql {
    pub text: String,
    pub params: Vec<Value>,
    /// Placeholders written so far; more than `params` when the values are
    /// bound elsewhere (see [`placeholder`](Self::placeholder)).
    placeholders: usize,
}

impl Sql {
    pub fn new() -> Sql {
        // Most statements fit: growing a String from empty reallocates
        // several times per statement.
        Sql {
            text: String::with_capacity(256),
            ..Sql::default()
        }
    }

    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    /// A quoted identifier: `"name"`, with embedded quotes doubled.
    pub fn ident(&mut self, name: &str) {
        self.text.push('"');
        if name.bytes().any(|b| b == b'"') {
            self.text.push_str(&name.replace('"', "\"\""));
        } else {
            self.text.push_str(name);
        }
        self.text.push('"');
    }

    /// `"table"."column"`.
    pub fn column(&mut self, table: &str, name: &str) {
        self.ident(table);
        self.text.push('.');
        self.ident(name);
    }

    /// A bound value: writes `$n`.
    pub fn param(&mut self, v: Value) {
        self.params.push(v);
        self.placeholder();
    }

    /// Writes the next `$n` only: its value is bound by whoever runs the
    /// statement (a bulk insert lends its models' fields).
    pub fn placeholder(&mut self) {
        self.placeholders += 1;
        self.text.push('$');
        self.text.push_str(itoa::Buffer::new().format(self.placeholders));
    }

    /// Comma-separated items.
    pub fn list<T>(&mut self, items: impl IntoIterator<Item = T>, mut each: impl FnMut(&mut Sql, T)) {
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            each(self, item);
        }
    }

    pub fn expr(&mut self, e: &Expr) {
        match e {
            Expr::Column { table, name } => self.column(table, name),
            Expr::Param(v) => self.param(v.clone()),
            Expr::Binary { op, left, right } => {
                self.push("(");
                self.expr(left);
                self.push(" ");
                self.push(op.sql());
                self.push(" ");
                self.expr(right);
                if matches!(op, super::expr::BinOp::Like | super::expr::BinOp::ILike) {
                    // Explicit, so `escape_like`'s backslashes hold whatever
                    // the server's settings; E'' reads the same either way.
                    self.push(" ESCAPE E'\\\\'");
                }
                self.push(")");
            }
            Expr::Not(e) => {
                self.push("(NOT ");
                self.expr(e);
                self.push(")");
            }
            Expr::NotTrue(e) => {
                self.push("(");
                self.expr(e);
                self.push(" IS NOT TRUE)");
            }
            Expr::Neg(e) => {
                self.push("(- ");
                self.expr(e);
                self.push(")");
            }
            Expr::IsNull { expr, negated } => {
                self.push("(");
                self.expr(expr);
                self.push(if *negated { " IS NOT NULL)" } else { " IS NULL)" });
            }
            Expr::Any { expr, array } => {
                self.push("(");
                self.expr(expr);
                self.push(" = ANY(");
                self.param(array.clone());
                self.push("))");
            }
            Expr::InSelect { expr, select } => {
                self.push("(");
                self.expr(expr);
                self.push(" IN (");
                select.render(self);
                self.push("))");
            }
            Expr::Between { expr, low, high } => {
                self.push("(");
                self.expr(expr);
                self.push(" BETWEEN ");
                self.expr(low);
                self.push(" AND ");
                self.expr(high);
                self.push(")");
            }
            Expr::Func { name, args, cast } => {
                if cast.is_some() {
                    self.push("CAST(");
                }
                self.push(name.sql());
                self.push("(");
                self.list(args, |s, a| s.expr(a));
                self.push(")");
                if let Some(ty) = cast {
                    self.push(" AS ");
                    self.push(ty);
                    self.push(")");
                }
            }
            Expr::Star => self.push("*"),
            Expr::Row(items) => {
                self.push("(");
                self.list(items, |s, e| s.expr(e));
                self.push(")");
            }
        }
    }

    fn order(&mut self, o: &Order) {
        self.expr(&o.expr);
        if o.desc {
            self.push(" DESC");
        }
        match o.nulls_first {
            Some(true) => self.push(" NULLS FIRST"),
            Some(false) => self.push(" NULLS LAST"),
            None => {}
        }
    }
}

/// A join in a `Select`.
#[derive(Clone, Debug)]
pub struct Join {
    pub left: bool,
    pub table: &'static str,
    /// `AS alias`: the table is in the query already (a model joined to
    /// itself), so this side goes by another name.
    pub alias: Option<&'static str>,
    pub on: Expr,
}

/// Row locking clause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    ForUpdate,
    ForShare,
}

/// A `SELECT` statement, the tree every query set reduces to.
#[derive(Clone, Debug, Default)]
pub struct Select {
    pub distinct: bool,
    pub columns: Vec<Expr>,
    pub from: &'static str,
    pub joins: Vec<Join>,
    pub filter: Option<Expr>,
    pub group_by: Vec<Expr>,
    pub having: Option<Expr>,
    pub order: Vec<Order>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    pub lock: Option<Lock>,
}

impl Select {
    pub fn render(&self, s: &mut Sql) {
        s.push("SELECT ");
        if self.distinct {
            s.push("DISTINCT ");
        }
        s.list(&self.columns, |s, c| s.expr(c));
        s.push(" FROM ");
        s.ident(self.from);
        for j in &self.joins {
            s.push(if j.left { " LEFT JOIN " } else { " JOIN " });
            s.ident(j.table);
            if let Some(alias) = j.alias {
                s.push(" AS ");
                s.ident(alias);
            }
            s.push(" ON ");
            s.expr(&j.on);
        }
        if let Some(f) = &self.filter {
            s.push(" WHERE ");
            s.expr(f);
        }
        if !self.group_by.is_empty() {
            s.push(" GROUP BY ");
            s.list(&self.group_by, |s, e| s.expr(e));
        }
        if let Some(h) = &self.having {
            s.push(" HAVING ");
            s.expr(h);
        }
        if !self.order.is_empty() {
            s.push(" ORDER BY ");
            s.list(&self.order, |s, o| s.order(o));
        }
        // Bound, so the statement text (and its cached plan) is the same
        // whatever the numbers.
        if let Some(n) = self.limit {
            s.push(" LIMIT ");
            s.param(std::sync::Arc::new(n));
        }
        if let Some(n) = self.offset {
            s.push(" OFFSET ");
            s.param(std::sync::Arc::new(n));
        }
        match self.lock {
            Some(Lock::ForUpdate) => s.push(" FOR UPDATE"),
            Some(Lock::ForShare) => s.push(" FOR SHARE"),
            None => {}
        }
    }

    pub fn to_sql(&self) -> Sql {
        let mut s = Sql::new();
        self.render(&mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::Sql;

    #[test]
    fn identifiers_double_every_quote_and_placeholders_count_on() {
        let mut s = Sql::new();
        for name in ["plain", "a\"b", "\"\"", "", "x\"", "; DROP --"] {
            s.ident(name);
            s.push(" ");
        }
        assert_eq!(s.text, r#""plain" "a""b" """""" "" "x""" "; DROP --" "#);

        let mut s = Sql::new();
        for _ in 0..12 {
            s.placeholder();
        }
        assert!(
            s.text.starts_with("$1$2$3") && s.text.ends_with("$9$10$11$12"),
            "{}",
            s.text
        );
        assert!(s.params.is_empty(), "placeholders bind nothing themselves");
    }
}
