//! duet's contenders: `duet-sync` and `duet-async`, each at the raw-query
//! level and at the ORM level. The workload code is written once, in
//! `duet_workload!`, and expanded for the blocking client and (with
//! `.await`) for the tokio client, the way the drivers share `client_api!`.

use duet_core::ops::{pipeline, query};
use duet_core::orm::prelude::*;
use duet_core::Param;

use crate::workload::{self as w, assoc, Workload};
use crate::{BenchError, Contender, Target};

#[derive(Model, Debug, Clone)]
#[duet(table = "users")]
pub struct User {
    #[duet(primary_key, auto)]
    pub id: i32,
    pub name: String,
    pub hair_color: Option<String>,
}

#[derive(Model, Debug, Clone)]
#[duet(table = "posts")]
pub struct Post {
    #[duet(primary_key, auto)]
    pub id: i32,
    #[duet(references = User)]
    pub user_id: i32,
    pub title: String,
    pub body: Option<String>,
}

#[derive(Model, Debug, Clone)]
#[duet(table = "comments")]
pub struct Comment {
    #[duet(primary_key, auto)]
    pub id: i32,
    #[duet(references = Post)]
    pub post_id: i32,
    pub text: String,
}

#[derive(Model, Debug, Clone)]
#[duet(table = "users_ins")]
pub struct NewUser {
    #[duet(primary_key, auto)]
    pub id: i32,
    pub name: String,
    pub hair_color: Option<String>,
}

/// The view the ORM streams a million rows from.
#[derive(Model, Debug, Clone)]
#[duet(table = "series")]
pub struct Series {
    #[duet(primary_key)]
    pub id: i64,
    pub label: String,
}

#[derive(Model, Debug, Clone)]
#[duet(table = "rows4")]
pub struct Row4 {
    #[duet(primary_key)]
    pub id: i32,
    pub n: i64,
    pub s: String,
    pub f: f64,
}

impl User {
    fn sum(&self) -> u64 {
        w::user_sum(self.id, &self.name, self.hair_color.as_deref())
    }
    fn plain(self) -> assoc::User {
        assoc::User {
            id: self.id,
            name: self.name,
            hair_color: self.hair_color,
        }
    }
}

impl Post {
    fn plain(self) -> assoc::Post {
        assoc::Post {
            id: self.id,
            user_id: self.user_id,
            title: self.title,
            body: self.body,
        }
    }
}

fn user_row(r: &duet_core::Row) -> assoc::User {
    assoc::User {
        id: r.get(0),
        name: r.get(1),
        hair_color: r.get(2),
    }
}

fn new_users(n: i32) -> Vec<NewUser> {
    w::new_users(n)
        .into_iter()
        .map(|(name, hair_color)| NewUser {
            id: 0,
            name,
            hair_color,
        })
        .collect()
}

/// The level a duet contender works at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Raw,
    Orm,
}

/// One workload run `iters` times on client `$c`; `$($aw)*` is `.await`
/// for the tokio client and nothing for the blocking one, `$($asy)?` the
/// `async` of the transaction closure.
macro_rules! duet_workload {
    ($c:expr, $level:expr, $work:expr, $iters:expr, $from:expr, [$($asy:tt)?], $($aw:tt)*) => {{
        let c = $c;
        let (level, work, iters, from): (Level, Workload, u64, u64) = ($level, $work, $iters, $from);
        let mut sum = 0u64;
        match (work, level) {
            (Workload::Point(_), Level::Raw) => {
                for i in from..from + iters {
                    let row = c.query_one(w::POINT_SQL, &[&w::point_id(i)])$($aw)*?;
                    sum += w::user_sum(row.get(0), row.get::<&str>(1), row.get::<Option<&str>>(2));
                }
            }
            (Workload::Point(_), Level::Orm) => {
                for i in from..from + iters {
                    let u = c.run(User::objects().filter(User::ID.eq(w::point_id(i))).get())$($aw)*?;
                    sum += u.sum();
                }
            }
            (Workload::Pipeline100(_), Level::Raw) => {
                for b in from..from + iters {
                    let ids: Vec<i32> = (b * 100..b * 100 + 100).map(w::point_id).collect();
                    let params: Vec<[Param; 1]> = ids.iter().map(|id| [id as Param]).collect();
                    let ops: Vec<_> = params.iter().map(|p| query(w::POINT_SQL, p).one()).collect();
                    for row in c.run(pipeline(ops))$($aw)*? {
                        sum += w::user_sum(row.get(0), row.get::<&str>(1), row.get::<Option<&str>>(2));
                    }
                }
            }
            (Workload::Pipeline100(_), Level::Orm) => {
                for b in from..from + iters {
                    let ops: Vec<_> = (b * 100..b * 100 + 100)
                        .map(|i| User::objects().filter(User::ID.eq(w::point_id(i))).get())
                        .collect();
                    sum += c.run(pipeline(ops))$($aw)*?.iter().map(User::sum).sum::<u64>();
                }
            }
            (Workload::Fetch10k, Level::Raw) => {
                for _ in 0..iters {
                    // Decoded into tuples as the rows arrive.
                    let rows: Vec<(i32, i64, String, f64)> = c.query_as(w::FETCH_SQL, &[])$($aw)*?;
                    sum += rows.iter().map(|(a, b, s, f)| w::row4_sum(*a, *b, s, *f)).sum::<u64>();
                }
            }
            (Workload::Fetch10k, Level::Orm) => {
                for _ in 0..iters {
                    let rows = c.run(Row4::objects().all())$($aw)*?;
                    sum += rows.iter().map(|r| w::row4_sum(r.id, r.n, &r.s, r.f)).sum::<u64>();
                }
            }
            (Workload::InsertEach1000, Level::Raw) => {
                for _ in 0..iters {
                    sum += c.atomic($($asy)? |tx| {
                        let mut s = 0;
                        for (name, hair) in w::new_users(1000) {
                            let id: i32 = tx.query_one(w::INSERT_RETURNING_SQL, &[&name, &hair])$($aw)*?.get(0);
                            if id <= 0 {
                                return Err(duet_core::Error::invalid("insert returned no id"));
                            }
                            s += w::inserted_sum(std::iter::once(name.len()));
                        }
                        Ok(s)
                    })$($aw)*?;
                }
            }
            (Workload::InsertEach1000, Level::Orm) => {
                for _ in 0..iters {
                    sum += c.atomic($($asy)? |tx| {
                        let mut s = 0;
                        for u in new_users(1000) {
                            let u = tx.run(u.into_save())$($aw)*?;
                            if u.id <= 0 {
                                return Err(duet_core::Error::invalid("insert returned no id"));
                            }
                            s += w::inserted_sum(std::iter::once(u.name.len()));
                        }
                        Ok(s)
                    })$($aw)*?;
                }
            }
            (Workload::InsertBulk1000 | Workload::Insert(_), Level::Raw) => {
                let (n, returning) = match work {
                    Workload::Insert(n) => (n, false),
                    _ => (1000, true),
                };
                let sql = crate::insert_sql(n, returning);
                let users = w::new_users(n);
                for _ in 0..iters {
                    let params: Vec<Param> = users.iter().flat_map(|(n, h)| [n as Param, h as Param]).collect();
                    if returning {
                        let rows = c.query(&sql, &params)$($aw)*?;
                        if rows.len() != users.len() || rows.iter().any(|r| r.get::<i32>(0) <= 0) {
                            return Err("insert returned the wrong ids".into());
                        }
                    } else {
                        c.execute(&sql, &params)$($aw)*?;
                    }
                    sum += w::inserted_sum(users.iter().map(|(n, _)| n.len()));
                }
            }
            (Workload::InsertBulk1000 | Workload::Insert(_), Level::Orm) => {
                // The diesel inserts bring nothing back: `execute` (no
                // RETURNING); the bulk insert returns the stored models.
                let (n, returning) = match work {
                    Workload::Insert(n) => (n, false),
                    _ => (1000, true),
                };
                // Built once, as the raw level builds its parameters once:
                // what is measured is the insert, not the test data.
                let models = new_users(n);
                for _ in 0..iters {
                    if returning {
                        let stored = c.run(NewUser::bulk_insert(models.clone()))$($aw)*?;
                        if stored.len() != n as usize || stored.iter().any(|u| u.id <= 0) {
                            return Err("insert returned the wrong ids".into());
                        }
                    } else if c.run(NewUser::bulk_insert(models.clone()).execute())$($aw)*? != n as u64 {
                        return Err("insert wrote the wrong number of rows".into());
                    }
                    sum += w::inserted_sum(models.iter().map(|u| u.name.len()));
                }
            }
            (Workload::Trivial(n), Level::Raw) => {
                for _ in 0..iters {
                    let users: Vec<assoc::User> = c.query(w::TRIVIAL_SQL, &[&n])$($aw)*?.iter().map(user_row).collect();
                    sum += users.iter().map(assoc::User::sum).sum::<u64>();
                }
            }
            (Workload::Trivial(n), Level::Orm) => {
                for _ in 0..iters {
                    let users = c.run(User::objects().filter(User::ID.le(n)).all())$($aw)*?;
                    sum += users.iter().map(User::sum).sum::<u64>();
                }
            }
            (Workload::MediumComplex, Level::Raw) => {
                for _ in 0..iters {
                    let rows: Vec<(assoc::User, Option<assoc::Post>)> = c
                        .query(w::MEDIUM_SQL, &[&"black"])$($aw)*?
                        .iter()
                        .map(|r| {
                            let post = r.get::<Option<i32>>(3).map(|id| assoc::Post {
                                id,
                                user_id: r.get(4),
                                title: r.get(5),
                                body: r.get(6),
                            });
                            (user_row(r), post)
                        })
                        .collect();
                    sum += assoc::medium_sum(&rows);
                }
            }
            (Workload::MediumComplex, Level::Orm) => {
                for _ in 0..iters {
                    let rows = c
                        .run(
                            User::objects()
                                .left_join(Post::USER)
                                .filter(User::HAIR_COLOR.eq("black"))
                                .order_by(User::NAME.desc())
                                .all(),
                        )$($aw)*?;
                    let rows: Vec<_> = rows.into_iter().map(|(u, p)| (u.plain(), p.map(Post::plain))).collect();
                    sum += assoc::medium_sum(&rows);
                }
            }
            (Workload::Associations(_), Level::Raw) => {
                // What a raw client does: one query per level, each built
                // from the previous result.
                for _ in 0..iters {
                    let users: Vec<assoc::User> =
                        c.query(w::ASSOC_USERS_SQL, &[&w::ASSOC_USERS])$($aw)*?.iter().map(user_row).collect();
                    let ids: Vec<i32> = users.iter().map(|u| u.id).collect();
                    let posts: Vec<assoc::Post> = c
                        .query(w::ASSOC_POSTS_SQL, &[&ids])$($aw)*?
                        .iter()
                        .map(|r| assoc::Post {
                            id: r.get(0),
                            user_id: r.get(1),
                            title: r.get(2),
                            body: r.get(3),
                        })
                        .collect();
                    let ids: Vec<i32> = posts.iter().map(|p| p.id).collect();
                    let comments: Vec<assoc::Comment> = c
                        .query(w::ASSOC_COMMENTS_SQL, &[&ids])$($aw)*?
                        .iter()
                        .map(|r| assoc::Comment {
                            id: r.get(0),
                            post_id: r.get(1),
                            text: r.get(2),
                        })
                        .collect();
                    sum += assoc::tree_sum(&assoc::assemble(users, posts, comments));
                }
            }
            (Workload::Associations(trips), Level::Orm) => {
                let mode = match trips {
                    w::Trips::One => PrefetchMode::OneTrip,
                    w::Trips::PerLevel => PrefetchMode::TwoStep,
                };
                for _ in 0..iters {
                    let tree = c
                        .run(
                            User::objects()
                                .filter(User::ID.le(w::ASSOC_USERS))
                                .order_by(User::ID)
                                .prefetch(
                                    Post::USER,
                                    Post::objects()
                                        .order_by(Post::ID)
                                        .prefetch(Comment::POST, Comment::objects().order_by(Comment::ID))
                                        .mode(mode),
                                )
                                .mode(mode)
                                .all(),
                        )$($aw)*?;
                    let tree: assoc::Tree = tree
                        .into_iter()
                        .map(|(u, posts)| {
                            let posts = posts
                                .into_iter()
                                .map(|(p, cs)| {
                                    let cs = cs
                                        .into_iter()
                                        .map(|c| assoc::Comment {
                                            id: c.id,
                                            post_id: c.post_id,
                                            text: c.text,
                                        })
                                        .collect();
                                    (p.plain(), cs)
                                })
                                .collect();
                            (u.plain(), posts)
                        })
                        .collect();
                    sum += assoc::tree_sum(&tree);
                }
            }
            (Workload::Stream1M, Level::Raw) => {
                for _ in 0..iters {
                    c.query_for_each(w::STREAM_SQL, &[&w::STREAM_ROWS], |r| {
                        sum += r.get::<i64>(0) as u64 + r.get::<&str>(1).len() as u64;
                        Ok(())
                    })$($aw)*?;
                }
            }
            (Workload::Connect(_), _) => {
                // Run by the contender itself: it needs no session.
                return Err("connect runs outside duet_workload!".into());
            }
            (Workload::Stream1M, Level::Orm) => {
                for _ in 0..iters {
                    c.run(Series::objects().for_each(|s: Series| {
                        sum += s.id as u64 + s.label.len() as u64;
                        Ok(())
                    }))$($aw)*?;
                }
            }
        }
        Ok::<u64, BenchError>(sum)
    }};
}

/// TCP figures must be TCP's: duet would otherwise take a local Unix
/// socket it finds (`local_socket`), which the other clients do not. TLS
/// in libpq's words: verify-full against the run's CA, or none at all.
fn duet_url(t: &Target) -> String {
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let tls = match &t.tls_ca {
        Some(ca) => format!("sslmode=verify-full sslrootcert={}", q(ca)),
        None => "sslmode=disable".to_string(),
    };
    format!("{} {tls} local_socket=disable", t.key_value())
}

pub struct DuetSync {
    client: duet_sync::Client,
    level: Level,
    url: String,
}

impl DuetSync {
    pub fn connect(t: &Target, level: Level) -> Result<Self, BenchError> {
        let url = duet_url(t);
        Ok(DuetSync {
            client: duet_sync::Client::connect(&url)?,
            level,
            url,
        })
    }
}

impl Contender for DuetSync {
    fn run(&mut self, work: Workload, iters: u64, from: u64) -> Result<u64, BenchError> {
        if let Workload::Connect(_) = work {
            for _ in 0..iters {
                duet_sync::Client::connect(&self.url)?.close()?;
            }
            return Ok(iters);
        }
        duet_workload!(&mut self.client, self.level, work, iters, from, [],)
    }
}

pub struct DuetAsync {
    client: duet_async::Client,
    level: Level,
    url: String,
    rt: tokio::runtime::Runtime,
}

impl DuetAsync {
    pub fn connect(t: &Target, level: Level) -> Result<Self, BenchError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let url = duet_url(t);
        let client = rt.block_on(duet_async::Client::connect(&url))?;
        Ok(DuetAsync { client, level, url, rt })
    }
}

impl Contender for DuetAsync {
    fn run(&mut self, work: Workload, iters: u64, from: u64) -> Result<u64, BenchError> {
        let (client, level, url) = (&mut self.client, self.level, &self.url);
        self.rt.block_on(async move {
            if let Workload::Connect(_) = work {
                for _ in 0..iters {
                    duet_async::Client::connect(url).await?.close().await?;
                }
                return Ok(iters);
            }
            duet_workload!(client, level, work, iters, from, [async], .await)
        })
    }
}
