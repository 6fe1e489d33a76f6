//! The anchors: what a user would pick instead of duet. `postgres` and
//! `tokio-postgres` share one body (`postgres` wraps `tokio-postgres`, and
//! their APIs match); sqlx has its own. Every statement is prepared once
//! and reused, as the point-select workload asks.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt as _;
use sqlx::{Connection as _, Row as _};

use crate::workload::{self as w, assoc, Workload};
use crate::{BenchError, Contender, Target};

type PgParam<'a> = &'a (dyn postgres::types::ToSql + Sync);

macro_rules! pg_user {
    ($r:expr) => {
        assoc::User {
            id: $r.get(0),
            name: $r.get(1),
            hair_color: $r.get(2),
        }
    };
}

/// One workload on a `postgres` or `tokio-postgres` client; `$($aw)*` is
/// `.await` for the latter. `$pipelined` runs the 100 point selects with
/// `join_all` (tokio-postgres) or one after the other (postgres).
macro_rules! pg_workload {
    ($c:expr, $stmts:expr, $work:expr, $iters:expr, $from:expr, $pipelined:ident, $($aw:tt)*) => {{
        let (c, stmts) = ($c, $stmts);
        let (work, iters, from): (Workload, u64, u64) = ($work, $iters, $from);
        macro_rules! stmt {
            ($sql:expr) => {{
                let sql: &str = $sql;
                if !stmts.contains_key(sql) {
                    let s = c.prepare(sql)$($aw)*?;
                    stmts.insert(sql.to_string(), s);
                }
                stmts[sql].clone()
            }};
        }
        let mut sum = 0u64;
        match work {
            Workload::Point(_) => {
                let s = stmt!(w::POINT_SQL);
                for i in from..from + iters {
                    let r = c.query_one(&s, &[&w::point_id(i)])$($aw)*?;
                    sum += w::user_sum(r.get(0), r.get::<_, &str>(1), r.get::<_, Option<&str>>(2));
                }
            }
            Workload::Pipeline100(_) => {
                let s = stmt!(w::POINT_SQL);
                for b in from..from + iters {
                    let ids: Vec<i32> = (b * 100..b * 100 + 100).map(w::point_id).collect();
                    let rows = pg_workload!(@$pipelined c, s, ids, $($aw)*);
                    for r in rows {
                        sum += w::user_sum(r.get(0), r.get::<_, &str>(1), r.get::<_, Option<&str>>(2));
                    }
                }
            }
            Workload::Fetch10k => {
                let s = stmt!(w::FETCH_SQL);
                for _ in 0..iters {
                    let rows: Vec<(i32, i64, String, f64)> = c
                        .query(&s, &[])$($aw)*?
                        .iter()
                        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                        .collect();
                    sum += rows.iter().map(|(a, b, s, f)| w::row4_sum(*a, *b, s, *f)).sum::<u64>();
                }
            }
            Workload::InsertEach1000 => {
                let s = stmt!(w::INSERT_RETURNING_SQL);
                for _ in 0..iters {
                    #[allow(unused_mut)] // postgres needs it, tokio-postgres does not
                    let mut tx = c.transaction()$($aw)*?;
                    for (name, hair) in w::new_users(1000) {
                        let id: i32 = tx.query_one(&s, &[&name, &hair])$($aw)*?.get(0);
                        if id <= 0 {
                            return Err("insert returned no id".into());
                        }
                        sum += w::inserted_sum(std::iter::once(name.len()));
                    }
                    tx.commit()$($aw)*?;
                }
            }
            Workload::InsertBulk1000 | Workload::Insert(_) => {
                let (n, returning) = match work {
                    Workload::Insert(n) => (n, false),
                    _ => (1000, true),
                };
                let s = stmt!(&crate::insert_sql(n, returning));
                let users = w::new_users(n);
                for _ in 0..iters {
                    let params: Vec<PgParam> = users.iter().flat_map(|(n, h)| [n as PgParam, h as PgParam]).collect();
                    if returning {
                        let rows = c.query(&s, &params)$($aw)*?;
                        if rows.len() != users.len() || rows.iter().any(|r| r.get::<_, i32>(0) <= 0) {
                            return Err("insert returned the wrong ids".into());
                        }
                    } else {
                        c.execute(&s, &params)$($aw)*?;
                    }
                    sum += w::inserted_sum(users.iter().map(|(n, _)| n.len()));
                }
            }
            Workload::Trivial(n) => {
                let s = stmt!(w::TRIVIAL_SQL);
                for _ in 0..iters {
                    let users: Vec<assoc::User> = c.query(&s, &[&n])$($aw)*?.iter().map(|r| pg_user!(r)).collect();
                    sum += users.iter().map(assoc::User::sum).sum::<u64>();
                }
            }
            Workload::MediumComplex => {
                let s = stmt!(w::MEDIUM_SQL);
                for _ in 0..iters {
                    let rows: Vec<(assoc::User, Option<assoc::Post>)> = c
                        .query(&s, &[&"black"])$($aw)*?
                        .iter()
                        .map(|r| {
                            let post = r.get::<_, Option<i32>>(3).map(|id| assoc::Post {
                                id,
                                user_id: r.get(4),
                                title: r.get(5),
                                body: r.get(6),
                            });
                            (pg_user!(r), post)
                        })
                        .collect();
                    sum += assoc::medium_sum(&rows);
                }
            }
            Workload::Associations(_) => {
                let (su, sp, sc) = (stmt!(w::ASSOC_USERS_SQL), stmt!(w::ASSOC_POSTS_SQL), stmt!(w::ASSOC_COMMENTS_SQL));
                for _ in 0..iters {
                    let users: Vec<assoc::User> =
                        c.query(&su, &[&w::ASSOC_USERS])$($aw)*?.iter().map(|r| pg_user!(r)).collect();
                    let ids: Vec<i32> = users.iter().map(|u| u.id).collect();
                    let posts: Vec<assoc::Post> = c
                        .query(&sp, &[&ids])$($aw)*?
                        .iter()
                        .map(|r| assoc::Post { id: r.get(0), user_id: r.get(1), title: r.get(2), body: r.get(3) })
                        .collect();
                    let ids: Vec<i32> = posts.iter().map(|p| p.id).collect();
                    let comments: Vec<assoc::Comment> = c
                        .query(&sc, &[&ids])$($aw)*?
                        .iter()
                        .map(|r| assoc::Comment { id: r.get(0), post_id: r.get(1), text: r.get(2) })
                        .collect();
                    sum += assoc::tree_sum(&assoc::assemble(users, posts, comments));
                }
            }
            Workload::Connect(_) => return Err("connect runs outside pg_workload!".into()),
            Workload::Stream1M => {
                let s = stmt!(w::STREAM_SQL);
                for _ in 0..iters {
                    sum += pg_workload!(@stream $pipelined c, s, $($aw)*);
                }
            }
        }
        Ok::<u64, BenchError>(sum)
    }};
    (@sequential $c:ident, $s:ident, $ids:ident, ) => {{
        let mut rows = Vec::with_capacity($ids.len());
        for id in &$ids {
            rows.push($c.query_one(&$s, &[id])?);
        }
        rows
    }};
    (@join_all $c:ident, $s:ident, $ids:ident, .await) => {{
        let c: &tokio_postgres::Client = $c;
        let futs = $ids.iter().map(|id| {
            let s = &$s;
            async move { c.query_one(s, &[id]).await }
        });
        futures_util::future::join_all(futs).await.into_iter().collect::<Result<Vec<_>, _>>()?
    }};
    (@stream sequential $c:ident, $s:ident, ) => {{
        use postgres::fallible_iterator::FallibleIterator as _;
        let mut it = $c.query_raw(&$s, [&w::STREAM_ROWS])?;
        let mut sum = 0u64;
        while let Some(r) = it.next()? {
            sum += r.get::<_, i64>(0) as u64 + r.get::<_, &str>(1).len() as u64;
        }
        sum
    }};
    (@stream join_all $c:ident, $s:ident, .await) => {{
        let st = $c.query_raw(&$s, [&w::STREAM_ROWS]).await?;
        futures_util::pin_mut!(st);
        let mut sum = 0u64;
        while let Some(r) = st.next().await {
            let r = r?;
            sum += r.get::<_, i64>(0) as u64 + r.get::<_, &str>(1).len() as u64;
        }
        sum
    }};
}

/// tokio-postgres knows `sslmode` up to `require`; the hostname check of
/// verify-full is the rustls verifier's (see `Tls`).
fn pg_config(t: &Target) -> String {
    let mode = if t.tls_ca.is_some() { "require" } else { "disable" };
    format!("{} sslmode={mode}", t.key_value())
}

/// How postgres and tokio-postgres connect: without TLS, or with
/// tokio-postgres-rustls on a rustls configuration (ring, as duet's) that
/// trusts the run's CA alone and checks the server's name, i.e. libpq's
/// verify-full. Built once per contender, as an application would.
#[derive(Clone)]
enum Tls {
    None,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Tls {
    fn for_target(t: &Target) -> Result<Tls, BenchError> {
        use rustls::pki_types::{pem::PemObject as _, CertificateDer};
        let Some(ca) = &t.tls_ca else {
            return Ok(Tls::None);
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }
}

pub struct Postgres {
    client: postgres::Client,
    stmts: HashMap<String, postgres::Statement>,
    config: String,
    tls: Tls,
}

impl Postgres {
    pub fn connect(t: &Target) -> Result<Self, BenchError> {
        let (config, tls) = (pg_config(t), Tls::for_target(t)?);
        Ok(Postgres {
            client: Self::open(&config, &tls)?,
            stmts: HashMap::new(),
            config,
            tls,
        })
    }

    fn open(config: &str, tls: &Tls) -> Result<postgres::Client, BenchError> {
        Ok(match tls {
            Tls::None => postgres::Client::connect(config, postgres::NoTls)?,
            Tls::Rustls(m) => postgres::Client::connect(config, m.clone())?,
        })
    }
}

impl Contender for Postgres {
    fn run(&mut self, work: Workload, iters: u64, from: u64) -> Result<u64, BenchError> {
        if let Workload::Connect(_) = work {
            for _ in 0..iters {
                Self::open(&self.config, &self.tls)?.close()?;
            }
            return Ok(iters);
        }
        pg_workload!(&mut self.client, &mut self.stmts, work, iters, from, sequential,)
    }
}

pub struct TokioPostgres {
    client: tokio_postgres::Client,
    stmts: HashMap<String, tokio_postgres::Statement>,
    config: String,
    tls: Tls,
    rt: tokio::runtime::Runtime,
}

impl TokioPostgres {
    pub fn connect(t: &Target) -> Result<Self, BenchError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (config, tls) = (pg_config(t), Tls::for_target(t)?);
        let (client, conn) = rt.block_on(Self::open(&config, &tls))?;
        rt.spawn(conn);
        Ok(TokioPostgres {
            client,
            stmts: HashMap::new(),
            config,
            tls,
            rt,
        })
    }

    /// A client and its connection task (to spawn), the task boxed: its
    /// type differs with and without TLS.
    async fn open(
        config: &str,
        tls: &Tls,
    ) -> Result<
        (
            tokio_postgres::Client,
            std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send>>,
        ),
        BenchError,
    > {
        Ok(match tls {
            Tls::None => {
                let (c, conn) = tokio_postgres::connect(config, tokio_postgres::NoTls).await?;
                (c, Box::pin(conn))
            }
            Tls::Rustls(m) => {
                let (c, conn) = tokio_postgres::connect(config, m.clone()).await?;
                (c, Box::pin(conn))
            }
        })
    }
}

impl Contender for TokioPostgres {
    fn run(&mut self, work: Workload, iters: u64, from: u64) -> Result<u64, BenchError> {
        let (client, stmts) = (&mut self.client, &mut self.stmts);
        let (config, tls) = (&self.config, &self.tls);
        self.rt.block_on(async move {
            if let Workload::Connect(_) = work {
                for _ in 0..iters {
                    // Dropping the client makes the connection task send
                    // Terminate and finish: the session is closed when the
                    // task is.
                    let (c, conn) = Self::open(config, tls).await?;
                    let task = tokio::spawn(conn);
                    drop(c);
                    task.await??;
                }
                return Ok(iters);
            }
            pg_workload!(client, stmts, work, iters, from, join_all, .await)
        })
    }
}

pub struct Sqlx {
    conn: sqlx::PgConnection,
    options: sqlx::postgres::PgConnectOptions,
    rt: tokio::runtime::Runtime,
}

impl Sqlx {
    pub fn connect(t: &Target) -> Result<Self, BenchError> {
        use sqlx::postgres::PgSslMode;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut o = sqlx::postgres::PgConnectOptions::new()
            .port(t.port)
            .username(&t.user)
            .database(&t.dbname);
        o = match &t.unix_dir {
            Some(dir) => o.socket(dir),
            None => o.host(&t.host),
        };
        if let Some(p) = &t.password {
            o = o.password(p);
        }
        // sqlx's default is `prefer`, which now that it is built with TLS
        // would take TLS on a TLS server: plaintext rows say `disable`.
        o = match &t.tls_ca {
            Some(ca) => o.ssl_mode(PgSslMode::VerifyFull).ssl_root_cert(ca),
            None => o.ssl_mode(PgSslMode::Disable),
        };
        let conn = rt.block_on(sqlx::PgConnection::connect_with(&o))?;
        Ok(Sqlx { conn, options: o, rt })
    }
}

fn sqlx_user(r: &sqlx::postgres::PgRow) -> Result<assoc::User, sqlx::Error> {
    Ok(assoc::User {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        hair_color: r.try_get(2)?,
    })
}

impl Contender for Sqlx {
    fn run(&mut self, work: Workload, iters: u64, from: u64) -> Result<u64, BenchError> {
        let (c, options) = (&mut self.conn, &self.options);
        self.rt.block_on(async move {
            let mut sum = 0u64;
            match work {
                Workload::Connect(_) => {
                    for _ in 0..iters {
                        sqlx::PgConnection::connect_with(options).await?.close().await?;
                    }
                    sum = iters;
                }
                Workload::Point(_) | Workload::Pipeline100(_) => {
                    // sqlx has no pipelining: 100 selects are 100 round trips.
                    let per = if matches!(work, Workload::Point(_)) { 1 } else { 100 };
                    for i in from * per..(from + iters) * per {
                        let r = sqlx::query(w::POINT_SQL)
                            .bind(w::point_id(i))
                            .fetch_one(&mut *c)
                            .await?;
                        sum += sqlx_user(&r)?.sum();
                    }
                }
                Workload::Fetch10k => {
                    for _ in 0..iters {
                        let rows: Vec<(i32, i64, String, f64)> =
                            sqlx::query_as(w::FETCH_SQL).fetch_all(&mut *c).await?;
                        sum += rows.iter().map(|(a, b, s, f)| w::row4_sum(*a, *b, s, *f)).sum::<u64>();
                    }
                }
                Workload::InsertEach1000 => {
                    for _ in 0..iters {
                        let mut tx = c.begin().await?;
                        for (name, hair) in w::new_users(1000) {
                            let (id,): (i32,) = sqlx::query_as(w::INSERT_RETURNING_SQL)
                                .bind(&name)
                                .bind(&hair)
                                .fetch_one(&mut *tx)
                                .await?;
                            if id <= 0 {
                                return Err("insert returned no id".into());
                            }
                            sum += w::inserted_sum(std::iter::once(name.len()));
                        }
                        tx.commit().await?;
                    }
                }
                Workload::InsertBulk1000 | Workload::Insert(_) => {
                    let (n, returning) = match work {
                        Workload::Insert(n) => (n, false),
                        _ => (1000, true),
                    };
                    let sql = crate::insert_sql(n, returning);
                    let users = w::new_users(n);
                    for _ in 0..iters {
                        let mut q = sqlx::query(&sql);
                        for (name, hair) in &users {
                            q = q.bind(name).bind(hair);
                        }
                        if returning {
                            let rows = q.fetch_all(&mut *c).await?;
                            if rows.len() != users.len() {
                                return Err("insert returned the wrong ids".into());
                            }
                        } else {
                            q.execute(&mut *c).await?;
                        }
                        sum += w::inserted_sum(users.iter().map(|(n, _)| n.len()));
                    }
                }
                Workload::Trivial(n) => {
                    for _ in 0..iters {
                        let rows = sqlx::query(w::TRIVIAL_SQL).bind(n).fetch_all(&mut *c).await?;
                        for r in &rows {
                            sum += sqlx_user(r)?.sum();
                        }
                    }
                }
                Workload::MediumComplex => {
                    for _ in 0..iters {
                        let rows = sqlx::query(w::MEDIUM_SQL).bind("black").fetch_all(&mut *c).await?;
                        let mut out = Vec::with_capacity(rows.len());
                        for r in &rows {
                            let post = match r.try_get::<Option<i32>, _>(3)? {
                                Some(id) => Some(assoc::Post {
                                    id,
                                    user_id: r.try_get(4)?,
                                    title: r.try_get(5)?,
                                    body: r.try_get(6)?,
                                }),
                                None => None,
                            };
                            out.push((sqlx_user(r)?, post));
                        }
                        sum += assoc::medium_sum(&out);
                    }
                }
                Workload::Associations(_) => {
                    for _ in 0..iters {
                        let rows = sqlx::query(w::ASSOC_USERS_SQL)
                            .bind(w::ASSOC_USERS)
                            .fetch_all(&mut *c)
                            .await?;
                        let users = rows.iter().map(sqlx_user).collect::<Result<Vec<_>, _>>()?;
                        let ids: Vec<i32> = users.iter().map(|u| u.id).collect();
                        let posts: Vec<(i32, i32, String, Option<String>)> =
                            sqlx::query_as(w::ASSOC_POSTS_SQL).bind(&ids).fetch_all(&mut *c).await?;
                        let posts: Vec<assoc::Post> = posts
                            .into_iter()
                            .map(|(id, user_id, title, body)| assoc::Post {
                                id,
                                user_id,
                                title,
                                body,
                            })
                            .collect();
                        let ids: Vec<i32> = posts.iter().map(|p| p.id).collect();
                        let comments: Vec<(i32, i32, String)> = sqlx::query_as(w::ASSOC_COMMENTS_SQL)
                            .bind(&ids)
                            .fetch_all(&mut *c)
                            .await?;
                        let comments = comments
                            .into_iter()
                            .map(|(id, post_id, text)| assoc::Comment { id, post_id, text })
                            .collect();
                        sum += assoc::tree_sum(&assoc::assemble(users, posts, comments));
                    }
                }
                Workload::Stream1M => {
                    for _ in 0..iters {
                        let mut st = sqlx::query(w::STREAM_SQL).bind(w::STREAM_ROWS).fetch(&mut *c);
                        while let Some(r) = st.next().await {
                            let r = r?;
                            sum += r.try_get::<i64, _>(0)? as u64 + r.try_get::<&str, _>(1)?.len() as u64;
                        }
                    }
                }
            }
            Ok(sum)
        })
    }
}
