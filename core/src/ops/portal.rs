//! Portals: a query bound once inside a transaction, whose rows are
//! fetched a few at a time with other statements in between (a cursor at
//! the protocol level, without `DECLARE`).

use super::query::expect_rows;
use super::single::Single;
use super::Operation;
use crate::connection::{Portal, Response};
use crate::params::{self, Param};
use crate::row::Row;
use crate::Error;

/// Rows fetched from a portal.
#[derive(Debug)]
pub struct Fetched {
    pub rows: Vec<Row>,
    /// The portal has no more rows.
    pub done: bool,
}

/// Binds `sql` to a new portal of the open transaction, not running it
/// yet: [`fetch`] takes its rows. Refused outside a transaction (a portal
/// ends with its transaction). A parameter whose type cannot be inferred
/// from its value needs a cast in the SQL (`$1::int4`).
///
/// ```
/// use duet_core::ops::{atomic, fetch, portal, then};
/// use duet_core::Operation;
/// # fn f() {
/// let first_ten = atomic(then(portal("SELECT id FROM events ORDER BY id", &[]), |p| {
///     Ok(fetch(&p, 10).map(|f| Ok(f.rows)))
/// }));
/// # }
/// ```
///
/// In a driver's interactive transaction: `let p = tx.portal(sql, &[])?;`
/// then `tx.fetch(&p, 100)?` as often as needed, other statements between.
pub fn portal<'a>(sql: &'a str, params: &'a [Param<'a>]) -> Single<'a, Portal> {
    Single {
        request: Some(Box::new(move |c, now| {
            let enc = params::encode_inferred(params, c.param_hint(sql), c.learned_types())?.ok_or_else(|| {
                Error::misuse("a portal's parameter type cannot be inferred from its value: cast it ($1::int4)")
            })?;
            c.submit_bind_portal(sql, enc, now)
        })),
        ticket: None,
        convert: |r| match r {
            Response::Portal(p) => Ok(p),
            _ => Err(Error::protocol("internal: binding a portal gave another response")),
        },
    }
}

/// The next `max_rows` rows of `portal` (0: all that are left); `done` once
/// the last has been fetched.
pub fn fetch(portal: &Portal, max_rows: u32) -> impl Operation<Output = Fetched> + Send + 'static {
    let portal = portal.clone();
    let run = Single {
        request: Some(Box::new(move |c, now| c.submit_fetch(&portal, max_rows, now))),
        ticket: None,
        convert: |r| expect_rows(Ok(r)),
    };
    run.map(move |q| {
        // A portal that stopped at `max_rows` ends without a command tag;
        // fewer rows than asked for (an empty query too) means no more.
        let done = q.tag.is_some() || max_rows == 0 || q.rows.len() < max_rows as usize;
        Ok(Fetched { rows: q.rows, done })
    })
    .infallible()
}
