//! The escape hatch: SQL written by hand, rows mapped onto a model. Values
//! are still bound, never spliced into the text.

use std::marker::PhantomData;
use std::sync::Arc;

use postgres_types::ToSql;

use super::expr::Value;
use super::model::{Model, Positions};
use crate::connection::QueryResult;
use crate::ops::{Operation, Query};
use crate::Error;

/// Raw SQL whose rows become models. Columns are matched by name once per
/// result (any order, extra columns ignored), then decoded by position.
///
/// ```
/// use duet_core::orm::prelude::*;
/// # #[derive(Model)] struct User { #[duet(primary_key, auto)] id: i32, name: String }
/// let op = User::raw("SELECT * FROM users WHERE name ILIKE $1 ORDER BY id")
///     .bind("a%")
///     .all();
/// # let _ = op;
/// ```
pub struct Raw<M> {
    sql: String,
    params: Vec<Value>,
    _model: PhantomData<fn() -> M>,
}

impl<M: Model> Raw<M> {
    pub fn new(sql: impl Into<String>) -> Self {
        Raw {
            sql: sql.into(),
            params: Vec::new(),
            _model: PhantomData,
        }
    }

    /// Binds the next `$n` parameter.
    pub fn bind<T: ToSql + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.params.push(Arc::new(value));
        self
    }

    /// Every row, as models.
    pub fn all(self) -> impl Operation<Output = Vec<M>> + Send {
        let op: super::queryset::FetchOp<Vec<M>> = Query::values(self.sql, self.params).map(decode_by_name::<M>);
        op
    }
}

fn decode_by_name<M: Model>(r: QueryResult) -> Result<Vec<M>, Error> {
    let meta = M::META;
    let mut at = Vec::with_capacity(meta.columns.len());
    for c in meta.columns {
        let i = r.columns.iter().position(|rc| rc.name == c.name).ok_or_else(|| {
            Error::decode(format!(
                "raw SQL for {} returned no column {:?} (it returned {})",
                meta.name,
                c.name,
                r.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?;
        at.push(i);
    }
    r.rows.iter().map(|row| M::from_row(row, Positions::Map(&at))).collect()
}
