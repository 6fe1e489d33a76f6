//! The workloads, their SQL, the data they read, and the checksum every
//! contender computes from what it decoded — equal checksums are how the
//! harness knows each contender really fetched and decoded the same rows.

use std::fmt;

/// Users in the `users` table (the diesel suite's table, 10,000 rows).
pub const USERS: i32 = 10_000;
/// Users with posts (diesel's "loading associations": 100 users × 10
/// posts × 10 comments, as loaded by `SCHEMA`).
pub const ASSOC_USERS: i32 = 100;
/// Rows streamed by the memory workload.
pub const STREAM_ROWS: i64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Unix,
    /// TCP with TLS, verified against the harness's CA for `localhost`
    /// (libpq's `sslmode=verify-full`), the same check for every contender.
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// 1. One prepared point select by primary key.
    Point(Transport),
    /// 2. 100 independent point selects on one connection.
    Pipeline100(Transport),
    /// 3. 10,000 rows of four columns.
    Fetch10k,
    /// 4. 1,000 INSERT … RETURNING one by one in one transaction.
    InsertEach1000,
    /// 4. The same 1,000 rows as one INSERT … RETURNING.
    InsertBulk1000,
    /// 5. diesel: all users of a table of `n` (here: `id <= n`).
    Trivial(i32),
    /// 5. diesel: users LEFT JOIN posts WHERE hair_color = 'black' ORDER BY name DESC.
    MediumComplex,
    /// 5. diesel: one INSERT of `n` users.
    Insert(i32),
    /// 5. diesel: 100 users, their posts, their comments, assembled.
    ///
    /// The duet ORM sends every level in one round trip (`OneTrip`) or one
    /// query per level; the other contenders run the same code for both.
    Associations(Trips),
    /// 6. 1,000,000 rows streamed; peak RSS growth is the figure.
    Stream1M,
    /// 7. Open a session and close it (over `Tls`: with the handshake).
    Connect(Transport),
}

/// How the duet ORM loads associations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trips {
    /// Every level in one pipeline (`PrefetchMode::OneTrip`).
    One,
    /// One query per level (`PrefetchMode::TwoStep`).
    PerLevel,
}

impl Workload {
    pub const ALL: [Workload; 20] = [
        Workload::Point(Transport::Tcp),
        Workload::Point(Transport::Unix),
        Workload::Point(Transport::Tls),
        Workload::Pipeline100(Transport::Tcp),
        Workload::Pipeline100(Transport::Unix),
        Workload::Fetch10k,
        Workload::InsertEach1000,
        Workload::InsertBulk1000,
        Workload::Trivial(1),
        Workload::Trivial(100),
        Workload::Trivial(10_000),
        Workload::MediumComplex,
        Workload::Insert(1),
        Workload::Insert(100),
        Workload::Insert(1000),
        Workload::Associations(Trips::One),
        Workload::Associations(Trips::PerLevel),
        Workload::Stream1M,
        Workload::Connect(Transport::Tcp),
        Workload::Connect(Transport::Tls),
    ];

    /// Every workload, in the order a full run takes them.
    pub fn all() -> Vec<Workload> {
        Workload::ALL.to_vec()
    }

    pub fn name(self) -> String {
        let t = |t: Transport| match t {
            Transport::Tcp => "",
            Transport::Unix => "_unix",
            Transport::Tls => "_tls",
        };
        match self {
            Workload::Point(tr) => format!("point{}", t(tr)),
            Workload::Pipeline100(tr) => format!("pipeline100{}", t(tr)),
            Workload::Fetch10k => "fetch10k".into(),
            Workload::InsertEach1000 => "insert_each1000".into(),
            Workload::InsertBulk1000 => "insert_bulk1000".into(),
            Workload::Trivial(n) => format!("trivial_{n}"),
            Workload::MediumComplex => "medium_complex".into(),
            Workload::Insert(n) => format!("insert_{n}"),
            Workload::Associations(Trips::One) => "associations".into(),
            Workload::Associations(Trips::PerLevel) => "associations_per_level".into(),
            Workload::Stream1M => "stream1m".into(),
            Workload::Connect(tr) => format!("connect{}", t(tr)),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Workload::Point(_) => "1. point select by primary key, prepared (per select)",
            Workload::Pipeline100(_) => "2. 100 independent point selects on one connection (per batch of 100)",
            Workload::Fetch10k => "3. fetch 10,000 rows of int4, int8, text, float8 (per fetch)",
            Workload::InsertEach1000 => "4. 1,000 INSERT … RETURNING one by one in one transaction (per 1,000)",
            Workload::InsertBulk1000 => "4. 1,000 rows in one INSERT … RETURNING (per 1,000)",
            Workload::Trivial(_) => "5. diesel trivial query: users with id <= n (per query)",
            Workload::MediumComplex => {
                "5. diesel medium complex: users LEFT JOIN posts, black hair, by name desc (per query)"
            }
            Workload::Insert(_) => "5. diesel insert: n users in one INSERT (per insert)",
            Workload::Associations(Trips::One) => {
                "5. diesel loading associations: 100 users × 10 posts × 10 comments; duet ORM: one round trip (per load)"
            }
            Workload::Associations(Trips::PerLevel) => {
                "5. the same; duet ORM: one query per level, as every other contender (per load)"
            }
            Workload::Stream1M => "6. stream 1,000,000 rows (int8, text); figure: peak RSS growth",
            Workload::Connect(Transport::Tls) => {
                "7. open a session over TLS (verify-full, one CA) and close it (per session)"
            }
            Workload::Connect(_) => "7. open a session and close it (per session)",
        }
    }

    pub fn parse(name: &str) -> Option<Vec<Workload>> {
        let all = Workload::all();
        let exact: Vec<Workload> = all.iter().copied().filter(|w| w.name() == name).collect();
        if !exact.is_empty() {
            return Some(exact);
        }
        // A prefix picks a family: `point`, `trivial`, `insert`.
        let family: Vec<Workload> = all.into_iter().filter(|w| w.name().starts_with(name)).collect();
        (!family.is_empty()).then_some(family)
    }

    /// Operations per timed repetition: ~20–60 ms on these machines, so
    /// many interleaved repetitions fit in a short run; divided by `scale`
    /// for quick runs.
    pub fn batch(self, scale: u64) -> u64 {
        let n: u64 = match self {
            Workload::Point(_) => 500,
            Workload::Pipeline100(_) => 50,
            Workload::Fetch10k => 15,
            Workload::InsertEach1000 => 1,
            Workload::InsertBulk1000 => 10,
            Workload::Trivial(1) => 500,
            Workload::Trivial(100) => 200,
            Workload::Trivial(_) => 10,
            Workload::MediumComplex => 5,
            Workload::Insert(1) => 300,
            Workload::Insert(100) => 100,
            Workload::Insert(_) => 15,
            Workload::Associations(_) => 20,
            Workload::Stream1M => 1,
            Workload::Connect(_) => 10,
        };
        (n / scale.max(1)).max(1)
    }

    pub fn transport(self) -> Transport {
        match self {
            Workload::Point(t) | Workload::Pipeline100(t) | Workload::Connect(t) => t,
            _ => Transport::Tcp,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

// ---- SQL, the same text for every contender ----

pub const POINT_SQL: &str = "SELECT id, name, hair_color FROM users WHERE id = $1";
pub const FETCH_SQL: &str = "SELECT id, n, s, f FROM rows4";
pub const INSERT_RETURNING_SQL: &str = "INSERT INTO users_ins (name, hair_color) VALUES ($1, $2) RETURNING id";
pub const TRIVIAL_SQL: &str = "SELECT id, name, hair_color FROM users WHERE id <= $1";
pub const MEDIUM_SQL: &str = "SELECT users.id, users.name, users.hair_color, \
     posts.id, posts.user_id, posts.title, posts.body \
     FROM users LEFT JOIN posts ON posts.user_id = users.id \
     WHERE users.hair_color = $1 ORDER BY users.name DESC";
pub const ASSOC_USERS_SQL: &str = "SELECT id, name, hair_color FROM users WHERE id <= $1 ORDER BY id";
pub const ASSOC_POSTS_SQL: &str = "SELECT id, user_id, title, body FROM posts WHERE user_id = ANY($1) ORDER BY id";
pub const ASSOC_COMMENTS_SQL: &str = "SELECT id, post_id, text FROM comments WHERE post_id = ANY($1) ORDER BY id";
pub const STREAM_SQL: &str = "SELECT i::int8, 'row number ' || i FROM generate_series(1, $1::int8) i";
// The ORM level streams the same rows from the view `series` (see SCHEMA).

/// The id of the `i`-th point select: spread over the table, the same
/// sequence for every contender.
pub fn point_id(i: u64) -> i32 {
    ((i * 7919) % USERS as u64) as i32 + 1
}

/// The rows one INSERT of `n` users writes (`name`, `hair_color`).
pub fn new_users(n: i32) -> Vec<(String, Option<String>)> {
    (0..n)
        .map(|i| (format!("User {i}"), Some("hair_color".to_string())))
        .collect()
}

/// Checksum of one user row as decoded.
pub fn user_sum(id: i32, name: &str, hair: Option<&str>) -> u64 {
    id as u64 + name.len() as u64 + hair.map_or(7, |h| h.len() as u64)
}

pub fn post_sum(id: i32, user_id: i32, title: &str, body: Option<&str>) -> u64 {
    id as u64 * 3 + user_id as u64 + title.len() as u64 + body.map_or(11, |b| b.len() as u64)
}

pub fn comment_sum(id: i32, post_id: i32, text: &str) -> u64 {
    id as u64 * 5 + post_id as u64 + text.len() as u64
}

pub fn row4_sum(id: i32, n: i64, s: &str, f: f64) -> u64 {
    id as u64 + n as u64 + s.len() as u64 + f.to_bits() % 1024
}

/// Inserted rows: the checksum counts them and their names' lengths (the
/// keys differ from contender to contender).
pub fn inserted_sum(names: impl Iterator<Item = usize>) -> u64 {
    names.map(|n| 1_000_000 + n as u64).sum()
}

/// The schema and data, loaded once per run. Tables are created in the
/// database the run connects to; `DATABASE_URL` should name a scratch one.
pub const SCHEMA: &str = "
DROP TABLE IF EXISTS comments, posts, users, users_ins, rows4 CASCADE;
DROP VIEW IF EXISTS series;
CREATE VIEW series AS SELECT i::int8 AS id, 'row number ' || i AS label FROM generate_series(1, 1000000) i;
CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, hair_color text);
CREATE TABLE posts (id serial PRIMARY KEY, user_id int4 NOT NULL REFERENCES users (id),
                    title text NOT NULL, body text);
CREATE INDEX posts_user_id ON posts (user_id);
CREATE TABLE comments (id serial PRIMARY KEY, post_id int4 NOT NULL REFERENCES posts (id), text text NOT NULL);
CREATE INDEX comments_post_id ON comments (post_id);
CREATE TABLE users_ins (id serial PRIMARY KEY, name text NOT NULL, hair_color text);
CREATE TABLE rows4 (id int4 PRIMARY KEY, n int8 NOT NULL, s text NOT NULL, f float8 NOT NULL);
INSERT INTO users (name, hair_color)
    SELECT 'User ' || i, CASE WHEN i % 2 = 0 THEN 'black' ELSE 'brown' END FROM generate_series(0, 9999) i;
INSERT INTO posts (user_id, title, body)
    SELECT u, 'Post ' || p || ' by user ' || u, CASE WHEN p % 2 = 0 THEN NULL ELSE 'body ' || p END
    FROM generate_series(1, 100) u, generate_series(0, 9) p ORDER BY u, p;
INSERT INTO comments (post_id, text)
    SELECT p, 'Comment ' || c || ' on post ' || p FROM generate_series(1, 1000) p, generate_series(0, 9) c
    ORDER BY p, c;
INSERT INTO rows4 SELECT i, i::int8 * 1000003, md5(i::text), i / 7.0 FROM generate_series(1, 10000) i;
";

/// Run on its own: VACUUM refuses a multi-statement query string.
pub const VACUUM: &str = "VACUUM ANALYZE";

/// Plain structs for the diesel suite's rows, for contenders without an
/// ORM, and the checksums of what every contender assembles.
pub mod assoc {
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    pub struct User {
        pub id: i32,
        pub name: String,
        pub hair_color: Option<String>,
    }

    #[derive(Debug, Clone)]
    pub struct Post {
        pub id: i32,
        pub user_id: i32,
        pub title: String,
        pub body: Option<String>,
    }

    #[derive(Debug, Clone)]
    pub struct Comment {
        pub id: i32,
        pub post_id: i32,
        pub text: String,
    }

    impl User {
        pub fn sum(&self) -> u64 {
            super::user_sum(self.id, &self.name, self.hair_color.as_deref())
        }
    }
    impl Post {
        pub fn sum(&self) -> u64 {
            super::post_sum(self.id, self.user_id, &self.title, self.body.as_deref())
        }
    }
    impl Comment {
        pub fn sum(&self) -> u64 {
            super::comment_sum(self.id, self.post_id, &self.text)
        }
    }

    pub type Tree = Vec<(User, Vec<(Post, Vec<Comment>)>)>;

    /// Groups children under their parents, keeping each level's order.
    pub fn assemble(users: Vec<User>, posts: Vec<Post>, comments: Vec<Comment>) -> Tree {
        let mut by_post: HashMap<i32, Vec<Comment>> = HashMap::new();
        for c in comments {
            by_post.entry(c.post_id).or_default().push(c);
        }
        let mut by_user: HashMap<i32, Vec<(Post, Vec<Comment>)>> = HashMap::new();
        for p in posts {
            let cs = by_post.remove(&p.id).unwrap_or_default();
            by_user.entry(p.user_id).or_default().push((p, cs));
        }
        users
            .into_iter()
            .map(|u| {
                let ps = by_user.remove(&u.id).unwrap_or_default();
                (u, ps)
            })
            .collect()
    }

    /// Position-weighted, so a tree with children under the wrong parent
    /// does not add up to the same number.
    pub fn tree_sum(tree: &Tree) -> u64 {
        let mut s = 0u64;
        for (i, (u, posts)) in tree.iter().enumerate() {
            s += u.sum() * (i as u64 + 1);
            for (j, (p, comments)) in posts.iter().enumerate() {
                s += (p.sum() ^ u.id as u64) * (j as u64 + 1);
                for (k, c) in comments.iter().enumerate() {
                    s += (c.sum() ^ p.id as u64) * (k as u64 + 1);
                }
            }
        }
        s
    }

    /// Order-insensitive: users with several posts tie on the sort key,
    /// so their rows may come in any order.
    pub fn medium_sum(rows: &[(User, Option<Post>)]) -> u64 {
        rows.iter()
            .map(|(u, p)| u.sum() * 31 + p.as_ref().map_or(13, |p| p.sum() ^ u.id as u64))
            .sum()
    }
}
