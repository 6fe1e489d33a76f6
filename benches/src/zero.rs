//! zero-postgres, the nearest peer: a sans-I/O engine like duet's, with a
//! blocking (`zero-postgres`) and a tokio (`zero-postgres tokio`) front-end
//! and explicit pipelines. It speaks protocol 3.2 only, so it runs against
//! PostgreSQL 17+ (`--server 18`). Written for the workloads it is compared
//! on (see `crate::supports`); statements are prepared once, as for every
//! other contender. Rows are decoded into tuples of owned values, its
//! documented way (its zero-copy `RefFromRow` takes NOT NULL columns only,
//! and `hair_color` is nullable).

use std::collections::HashMap;

use zero_postgres::{Opts, PreparedStatement, SslMode};

use crate::workload::{self as w, Workload};
use crate::{BenchError, Contender, Target};

/// Where to connect, TLS off; no silent switch from loopback TCP to the
/// Unix socket (its default), so TCP figures are TCP's.
fn opts(t: &Target) -> Opts {
    let mut o = Opts::default();
    match &t.unix_dir {
        Some(dir) => o.socket = Some(format!("{dir}/.s.PGSQL.{}", t.port)),
        None => o.host = t.host.clone(),
    }
    o.port = t.port;
    o.user = t.user.clone();
    o.database = Some(t.dbname.clone());
    o.password = t.password.clone();
    o.ssl_mode = SslMode::Disable;
    o.upgrade_to_unix_socket = false;
    o
}

type UserRow = (i32, String, Option<String>);

fn user_sum(r: &UserRow) -> u64 {
    w::user_sum(r.0, &r.1, r.2.as_deref())
}

/// The (name, hair_color) parameters of `users`, flattened for one INSERT.
fn insert_params(users: &[(String, Option<String>)]) -> Vec<Option<&str>> {
    users
        .iter()
        .flat_map(|(n, h)| [Some(n.as_str()), h.as_deref()])
        .collect()
}

fn unsupported(work: Workload) -> BenchError {
    format!("{work} is not written for zero-postgres").into()
}

pub struct ZeroSync {
    conn: zero_postgres::sync::Conn,
    stmts: HashMap<String, PreparedStatement>,
    opts: Opts,
}

impl ZeroSync {
    pub fn connect(t: &Target) -> Result<Self, BenchError> {
        let opts = opts(t);
        Ok(ZeroSync {
            conn: zero_postgres::sync::Conn::new(opts.clone())?,
            stmts: HashMap::new(),
            opts,
        })
    }
}

/// Prepares `sql` on first use.
fn stmt_sync<'a>(
    conn: &mut zero_postgres::sync::Conn,
    stmts: &'a mut HashMap<String, PreparedStatement>,
    sql: &str,
) -> Result<&'a PreparedStatement, BenchError> {
    if !stmts.contains_key(sql) {
        let s = conn.prepare(sql)?;
        stmts.insert(sql.to_string(), s);
    }
    Ok(&stmts[sql])
}

impl Contender for ZeroSync {
    fn run(&mut self, work: Workload, iters: u64, from: u64) -> Result<u64, BenchError> {
        let (c, stmts) = (&mut self.conn, &mut self.stmts);
        let mut sum = 0u64;
        match work {
            Workload::Connect(_) => {
                for _ in 0..iters {
                    zero_postgres::sync::Conn::new(self.opts.clone())?.close()?;
                }
                sum = iters;
            }
            Workload::Point(_) => {
                let s = stmt_sync(c, stmts, w::POINT_SQL)?;
                for i in from..from + iters {
                    let r: UserRow = c.exec_first(s, (w::point_id(i),))?.ok_or("no row")?;
                    sum += user_sum(&r);
                }
            }
            Workload::Pipeline100(_) => {
                let s = stmt_sync(c, stmts, w::POINT_SQL)?;
                for b in from..from + iters {
                    sum += c.pipeline(|p| {
                        let tickets = (b * 100..b * 100 + 100)
                            .map(|i| p.exec(s, (w::point_id(i),)))
                            .collect::<Result<Vec<_>, _>>()?;
                        p.sync()?;
                        let mut sum = 0;
                        for t in tickets {
                            let r: Option<UserRow> = p.claim_one(t)?;
                            sum += r.as_ref().map_or(0, user_sum);
                        }
                        Ok(sum)
                    })?;
                }
            }
            Workload::Fetch10k => {
                let s = stmt_sync(c, stmts, w::FETCH_SQL)?;
                for _ in 0..iters {
                    let rows: Vec<(i32, i64, String, f64)> = c.exec_collect(s, ())?;
                    sum += rows.iter().map(|(a, b, s, f)| w::row4_sum(*a, *b, s, *f)).sum::<u64>();
                }
            }
            Workload::InsertEach1000 => {
                let s = stmt_sync(c, stmts, w::INSERT_RETURNING_SQL)?;
                for _ in 0..iters {
                    sum += c.transaction(|c, _tx| {
                        let mut sum = 0;
                        for (name, hair) in w::new_users(1000) {
                            let id: Option<(i32,)> = c.exec_first(s, (name.as_str(), hair.as_deref()))?;
                            if id.is_none_or(|(id,)| id <= 0) {
                                return Err(zero_postgres::Error::InvalidUsage("insert returned no id".into()));
                            }
                            sum += w::inserted_sum(std::iter::once(name.len()));
                        }
                        Ok(sum)
                    })?;
                }
            }
            Workload::InsertBulk1000 | Workload::Insert(_) => {
                let (n, returning) = match work {
                    Workload::Insert(n) => (n, false),
                    _ => (1000, true),
                };
                let s = stmt_sync(c, stmts, &crate::insert_sql(n, returning))?;
                let users = w::new_users(n);
                for _ in 0..iters {
                    let params = insert_params(&users);
                    if returning {
                        let ids: Vec<(i32,)> = c.exec_collect(s, params)?;
                        if ids.len() != users.len() || ids.iter().any(|(id,)| *id <= 0) {
                            return Err("insert returned the wrong ids".into());
                        }
                    } else {
                        c.exec_drop(s, params)?;
                    }
                    sum += w::inserted_sum(users.iter().map(|(n, _)| n.len()));
                }
            }
            _ => return Err(unsupported(work)),
        }
        Ok(sum)
    }
}

pub struct ZeroTokio {
    conn: zero_postgres::tokio::Conn,
    stmts: HashMap<String, PreparedStatement>,
    opts: Opts,
    rt: tokio::runtime::Runtime,
}

impl ZeroTokio {
    pub fn connect(t: &Target) -> Result<Self, BenchError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let opts = opts(t);
        let conn = rt.block_on(zero_postgres::tokio::Conn::new(opts.clone()))?;
        Ok(ZeroTokio {
            conn,
            stmts: HashMap::new(),
            opts,
            rt,
        })
    }
}

async fn stmt_tokio<'a>(
    conn: &mut zero_postgres::tokio::Conn,
    stmts: &'a mut HashMap<String, PreparedStatement>,
    sql: &str,
) -> Result<&'a PreparedStatement, BenchError> {
    if !stmts.contains_key(sql) {
        let s = conn.prepare(sql).await?;
        stmts.insert(sql.to_string(), s);
    }
    Ok(&stmts[sql])
}

impl Contender for ZeroTokio {
    fn run(&mut self, work: Workload, iters: u64, from: u64) -> Result<u64, BenchError> {
        let (c, stmts, opts) = (&mut self.conn, &mut self.stmts, &self.opts);
        self.rt.block_on(async move {
            let mut sum = 0u64;
            match work {
                Workload::Connect(_) => {
                    for _ in 0..iters {
                        zero_postgres::tokio::Conn::new(opts.clone()).await?.close().await?;
                    }
                    sum = iters;
                }
                Workload::Point(_) => {
                    let s = stmt_tokio(c, stmts, w::POINT_SQL).await?;
                    for i in from..from + iters {
                        let r: UserRow = c.exec_first(s, (w::point_id(i),)).await?.ok_or("no row")?;
                        sum += user_sum(&r);
                    }
                }
                Workload::Pipeline100(_) => {
                    let s = stmt_tokio(c, stmts, w::POINT_SQL).await?;
                    for b in from..from + iters {
                        sum += c
                            .pipeline(async |p| {
                                let tickets = (b * 100..b * 100 + 100)
                                    .map(|i| p.exec(s, (w::point_id(i),)))
                                    .collect::<Result<Vec<_>, _>>()?;
                                p.sync().await?;
                                let mut sum = 0;
                                for t in tickets {
                                    let r: Option<UserRow> = p.claim_one(t).await?;
                                    sum += r.as_ref().map_or(0, user_sum);
                                }
                                Ok(sum)
                            })
                            .await?;
                    }
                }
                Workload::Fetch10k => {
                    let s = stmt_tokio(c, stmts, w::FETCH_SQL).await?;
                    for _ in 0..iters {
                        let rows: Vec<(i32, i64, String, f64)> = c.exec_collect(s, ()).await?;
                        sum += rows.iter().map(|(a, b, s, f)| w::row4_sum(*a, *b, s, *f)).sum::<u64>();
                    }
                }
                Workload::InsertEach1000 => {
                    let s = stmt_tokio(c, stmts, w::INSERT_RETURNING_SQL).await?;
                    for _ in 0..iters {
                        sum += c
                            .transaction(async |c, _tx| {
                                let mut sum = 0;
                                for (name, hair) in w::new_users(1000) {
                                    let id: Option<(i32,)> = c.exec_first(s, (name.as_str(), hair.as_deref())).await?;
                                    if id.is_none_or(|(id,)| id <= 0) {
                                        return Err(zero_postgres::Error::InvalidUsage("insert returned no id".into()));
                                    }
                                    sum += w::inserted_sum(std::iter::once(name.len()));
                                }
                                Ok(sum)
                            })
                            .await?;
                    }
                }
                Workload::InsertBulk1000 | Workload::Insert(_) => {
                    let (n, returning) = match work {
                        Workload::Insert(n) => (n, false),
                        _ => (1000, true),
                    };
                    let s = stmt_tokio(c, stmts, &crate::insert_sql(n, returning)).await?;
                    let users = w::new_users(n);
                    for _ in 0..iters {
                        let params = insert_params(&users);
                        if returning {
                            let ids: Vec<(i32,)> = c.exec_collect(s, params).await?;
                            if ids.len() != users.len() || ids.iter().any(|(id,)| *id <= 0) {
                                return Err("insert returned the wrong ids".into());
                            }
                        } else {
                            c.exec_drop(s, params).await?;
                        }
                        sum += w::inserted_sum(users.iter().map(|(n, _)| n.len()));
                    }
                }
                _ => return Err(unsupported(work)),
            }
            Ok(sum)
        })
    }
}
