//! Migrations: SQL files applied in order, once, recorded with a checksum,
//! under an advisory lock — written once as operations, so both drivers
//! run them the same way.
//!
//! A folder holds `<version>_<name>.up.sql` (or `<version>_<name>.sql`) and
//! optionally `<version>_<name>.down.sql`; `<version>` is a number, applied
//! in numeric order. A migration runs in a transaction with its record in
//! the version table, so it is applied whole or not at all; one whose first
//! line is `-- duet:no-transaction` (for `CREATE INDEX CONCURRENTLY`) runs
//! statement by statement outside one, and is marked unfinished until its
//! last statement succeeded. The `migrations!("folder")` macro embeds a
//! folder in the binary at compile time; [`Migrations::from_dir`] reads one
//! at run time (the `duet` command line).

mod diff;
pub mod schema;

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::ops::{simple_query_owned, BoxOp, Operation, Query, Step};
use crate::{Connection, Error};
pub use diff::{changes, draft, render, Change, Draft, Rename};
use schema::literal;
pub use schema::{inspect, live_and_models, of_models, Schema};

/// The first line that makes a migration run outside a transaction.
pub const NO_TRANSACTION: &str = "-- duet:no-transaction";

/// The default name of the table that records applied migrations.
pub const VERSION_TABLE: &str = "duet_migrations";

/// A row of the version table: version, checksum, finished.
type Recorded = (i64, Vec<u8>, bool);

/// One migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub up: String,
    pub down: Option<String>,
    /// Runs statement by statement, outside a transaction.
    pub no_transaction: bool,
    /// SHA-256 of `up`: an applied migration whose file changed is refused.
    pub checksum: Vec<u8>,
}

/// An ordered set of migrations with distinct versions.
#[derive(Debug, Clone, Default)]
pub struct Migrations {
    list: Vec<Migration>,
    table: String,
}

/// Where a migration stands against a database (see [`Migrations::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Applied,
    Pending,
    /// Applied from a file that has changed since.
    Changed,
    /// A no-transaction migration that failed part way.
    Unfinished,
    /// Recorded as applied, but no file has this version.
    Missing,
}

impl Migrations {
    /// From file names and contents (what `migrations!` embeds).
    pub fn from_files<N: AsRef<str>, C: AsRef<str>>(files: impl IntoIterator<Item = (N, C)>) -> Result<Self, Error> {
        let mut by_version: BTreeMap<i64, (Option<Migration>, Option<String>, String)> = BTreeMap::new();
        for (file, text) in files {
            let file = file.as_ref();
            let base = file.rsplit('/').next().unwrap_or(file);
            let Some(stem) = base.strip_suffix(".sql") else {
                continue;
            };
            let (stem, down) = match stem.strip_suffix(".down") {
                Some(s) => (s, true),
                None => (stem.strip_suffix(".up").unwrap_or(stem), false),
            };
            let digits = stem.bytes().take_while(u8::is_ascii_digit).count();
            let version: i64 = stem[..digits]
                .parse()
                .map_err(|_| Error::invalid(format!("migration file {file:?} does not start with a version number")))?;
            let name = stem[digits..].trim_start_matches(['_', '-']).to_string();
            let entry = by_version.entry(version).or_insert((None, None, name.clone()));
            if entry.2 != name {
                return Err(Error::invalid(format!(
                    "migrations {:?} and {name:?} share version {version}",
                    entry.2
                )));
            }
            let text = text.as_ref().to_string();
            if down {
                if entry.1.replace(text).is_some() {
                    return Err(Error::invalid(format!("two down files for migration {version}")));
                }
            } else {
                let no_transaction = text.lines().next().is_some_and(|l| l.trim() == NO_TRANSACTION);
                let m = Migration {
                    version,
                    name,
                    checksum: Sha256::digest(text.as_bytes()).to_vec(),
                    up: text,
                    down: None,
                    no_transaction,
                };
                if entry.0.replace(m).is_some() {
                    return Err(Error::invalid(format!("two up files for migration {version}")));
                }
            }
        }
        let mut list = Vec::new();
        for (version, (up, down, _)) in by_version {
            let Some(mut m) = up else {
                return Err(Error::invalid(format!(
                    "migration {version} has a down file but no up file"
                )));
            };
            m.down = down;
            list.push(m);
        }
        Ok(Migrations {
            list,
            table: VERSION_TABLE.into(),
        })
    }

    /// Reads the `.sql` files of a folder.
    pub fn from_dir(dir: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let mut files = Vec::new();
        let entries =
            std::fs::read_dir(dir).map_err(|e| Error::invalid(format!("migrations folder {}: {e}", dir.display())))?;
        for entry in entries {
            let path = entry
                .map_err(|e| Error::invalid(format!("{}: {e}", dir.display())))?
                .path();
            if path.extension().is_some_and(|e| e == "sql") {
                let text =
                    std::fs::read_to_string(&path).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
                files.push((path.to_string_lossy().into_owned(), text));
            }
        }
        Migrations::from_files(files)
    }

    /// Records applied migrations in `table` (in the `search_path`'s first
    /// schema) instead of `duet_migrations`.
    pub fn table(mut self, table: &str) -> Self {
        self.table = table.to_string();
        self
    }

    pub fn list(&self) -> &[Migration] {
        &self.list
    }

    /// Applies every pending migration, in order; outputs the versions
    /// applied. Refuses to start when an applied migration's file changed,
    /// is missing, or failed part way.
    pub fn run(&self) -> BoxOp<'static, Vec<i64>> {
        self.locked(Plan::Run(usize::MAX))
    }

    /// Applies the next `n` pending migrations (for a caller that reports
    /// progress between them); outputs the versions applied.
    pub fn run_next(&self, n: usize) -> BoxOp<'static, Vec<i64>> {
        self.locked(Plan::Run(n))
    }

    /// Reverts the last `steps` applied migrations with their down files,
    /// newest first; outputs the versions reverted.
    pub fn revert(&self, steps: usize) -> BoxOp<'static, Vec<i64>> {
        self.locked(Plan::Revert(steps))
    }

    /// Every migration known to the files or the database, with its state.
    pub fn status(&self) -> BoxOp<'static, Vec<(i64, String, State)>> {
        let me = self.clone();
        Box::new(crate::ops::then(me.applied(), move |applied| {
            Ok(crate::ops::ready(Ok(me.states(&applied))))
        }))
    }

    fn states(&self, applied: &[Recorded]) -> Vec<(i64, String, State)> {
        let mut out: BTreeMap<i64, (String, State)> = BTreeMap::new();
        for m in &self.list {
            out.insert(m.version, (m.name.clone(), State::Pending));
        }
        for (version, checksum, finished) in applied {
            let state = match self.list.iter().find(|m| m.version == *version) {
                None => State::Missing,
                Some(_) if !finished => State::Unfinished,
                Some(m) if m.checksum != *checksum => State::Changed,
                Some(_) => State::Applied,
            };
            let name = out.get(version).map(|(n, _)| n.clone()).unwrap_or_default();
            out.insert(*version, (name, state));
        }
        out.into_iter().map(|(v, (n, s))| (v, n, s)).collect()
    }

    fn quoted_table(&self) -> String {
        format!("\"{}\"", self.table.replace('"', "\"\""))
    }

    /// The version table's rows: version, checksum, finished.
    fn applied(&self) -> impl Operation<Output = Vec<Recorded>> + Send + 'static {
        let table = self.quoted_table();
        let ensure = format!(
            "CREATE TABLE IF NOT EXISTS {table} (version int8 PRIMARY KEY, name text NOT NULL, \
             checksum bytea NOT NULL, finished bool NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        );
        crate::ops::then(Query::owned(ensure, Vec::new()), move |_| {
            Ok(Query::owned(
                format!("SELECT version, checksum, finished FROM {table} ORDER BY version"),
                Vec::new(),
            )
            .rows_as::<Recorded>())
        })
    }

    /// Takes the lock, reads what is applied, plans, runs the steps, and
    /// always gives the lock back.
    fn locked(&self, plan: Plan) -> BoxOp<'static, Vec<i64>> {
        let me = self.clone();
        // One lock per database and version table: two processes starting
        // at once apply each migration once.
        let key = format!(
            "hashtextextended('duet migrations ' || current_database() || ' ' || current_schema() || ' ' || {}, 0)",
            literal(&self.table)
        );
        let lock = format!("SELECT pg_advisory_lock({key})");
        let unlock = format!("SELECT pg_advisory_unlock({key})");
        let start = crate::ops::then(Query::owned(lock, Vec::new()), move |_| Ok(me.applied()));
        Box::new(Steps {
            start: Some(Box::new(start)),
            plan: Some((self.clone(), plan)),
            steps: VecDeque::new(),
            current: None,
            done: Vec::new(),
            failed: None,
            unlock,
            cleanup: None,
        })
    }

    /// The steps `plan` takes from `applied`, each with the version it
    /// applies or reverts.
    fn steps(&self, plan: Plan, applied: &[Recorded]) -> Result<VecDeque<(i64, BoxOp<'static, ()>)>, Error> {
        for (version, state) in self.states(applied).into_iter().map(|(v, _, s)| (v, s)) {
            match state {
                State::Changed => {
                    return Err(Error::invalid(format!(
                        "migration {version} was applied, and its file has changed since: \
                         restore the file (write a new migration for the new change)"
                    )))
                }
                State::Missing if matches!(plan, Plan::Run(_)) => {
                    return Err(Error::invalid(format!(
                        "migration {version} is applied but has no file here: is this the right folder?"
                    )))
                }
                State::Unfinished => {
                    return Err(Error::invalid(format!(
                        "migration {version} runs outside a transaction and failed part way: finish or undo \
                         it by hand, then delete its row from {}",
                        self.table
                    )))
                }
                _ => {}
            }
        }
        let table = self.quoted_table();
        let mut out = VecDeque::new();
        match plan {
            Plan::Run(n) => {
                let pending = self
                    .list
                    .iter()
                    .filter(|m| !applied.iter().any(|(v, _, _)| *v == m.version));
                for m in pending.take(n) {
                    out.push_back((m.version, apply(m, &table)));
                }
            }
            Plan::Revert(n) => {
                for (version, _, _) in applied.iter().rev().take(n) {
                    let m = self
                        .list
                        .iter()
                        .find(|m| m.version == *version)
                        .ok_or_else(|| Error::invalid(format!("migration {version} has no file to revert with")))?;
                    let down = m
                        .down
                        .as_ref()
                        .ok_or_else(|| Error::invalid(format!("migration {version} has no down file")))?;
                    out.push_back((m.version, revert(m, down, &table)));
                }
            }
        }
        Ok(out)
    }
}

#[derive(Clone, Copy)]
enum Plan {
    Run(usize),
    Revert(usize),
}

fn bytea(b: &[u8]) -> String {
    let mut s = String::from("'\\x");
    for byte in b {
        s.push_str(&format!("{byte:02x}"));
    }
    s.push('\'');
    s
}

/// Runs `sql` (any number of statements) with the simple protocol.
fn script(sql: String) -> BoxOp<'static, ()> {
    Box::new(simple_query_owned(sql).map(|_| Ok(())))
}

/// One migration applied: in a transaction with its record, or statement
/// by statement with its record marked unfinished until the end.
fn apply(m: &Migration, table: &str) -> BoxOp<'static, ()> {
    let record = format!(
        "INSERT INTO {table} (version, name, checksum, finished) VALUES ({}, {}, {}, {})",
        m.version,
        literal(&m.name),
        bytea(&m.checksum),
        !m.no_transaction
    );
    if !m.no_transaction {
        return script(format!("BEGIN;\n{}\n;\n{record};\nCOMMIT", m.up));
    }
    let mut steps: Vec<BoxOp<'static, ()>> = vec![script(record)];
    for statement in split_statements(&m.up) {
        steps.push(script(statement));
    }
    steps.push(script(format!(
        "UPDATE {table} SET finished = true WHERE version = {}",
        m.version
    )));
    Box::new(Sequence(steps.into()))
}

fn revert(m: &Migration, down: &str, table: &str) -> BoxOp<'static, ()> {
    let forget = format!("DELETE FROM {table} WHERE version = {}", m.version);
    let no_tx = down.lines().next().is_some_and(|l| l.trim() == NO_TRANSACTION);
    if !no_tx {
        return script(format!("BEGIN;\n{down}\n;\n{forget};\nCOMMIT"));
    }
    let mut steps: Vec<BoxOp<'static, ()>> = split_statements(down).into_iter().map(script).collect();
    steps.push(script(forget));
    Box::new(Sequence(steps.into()))
}

/// Operations run one after another.
struct Sequence(VecDeque<BoxOp<'static, ()>>);

impl Operation for Sequence {
    type Output = ();
    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<()> {
        while let Some(op) = self.0.front_mut() {
            match op.poll(conn, now) {
                Step::Pending => return Step::Pending,
                Step::Ready(Err(e)) => return Step::Ready(Err(e)),
                Step::Ready(Ok(())) => {
                    self.0.pop_front();
                }
            }
        }
        Step::Ready(Ok(()))
    }
    fn abandon(&mut self, conn: &mut Connection) {
        if let Some(op) = self.0.front_mut() {
            op.abandon(conn);
        }
        self.0.clear();
    }
}

/// The runner: the lock and the reading, then each step, then (whatever
/// happened) a ROLLBACK of anything left open and the unlock.
struct Steps {
    start: Option<BoxOp<'static, Vec<Recorded>>>,
    plan: Option<(Migrations, Plan)>,
    steps: VecDeque<(i64, BoxOp<'static, ()>)>,
    current: Option<(i64, BoxOp<'static, ()>)>,
    done: Vec<i64>,
    failed: Option<Error>,
    unlock: String,
    cleanup: Option<BoxOp<'static, ()>>,
}

impl Steps {
    fn fail(&mut self, e: Error) {
        self.failed.get_or_insert(e);
        self.steps.clear();
        self.current = None;
        let unlock = std::mem::take(&mut self.unlock);
        // A failed migration may leave its transaction open and failed.
        self.cleanup = Some(Box::new(Sequence(
            vec![script("ROLLBACK".into()), script(unlock)].into(),
        )));
    }
}

impl Operation for Steps {
    type Output = Vec<i64>;

    fn poll(&mut self, conn: &mut Connection, now: Instant) -> Step<Vec<i64>> {
        if let Some(start) = &mut self.start {
            match start.poll(conn, now) {
                Step::Pending => return Step::Pending,
                Step::Ready(Err(e)) => {
                    self.start = None;
                    self.fail(e);
                }
                Step::Ready(Ok(applied)) => {
                    self.start = None;
                    let (me, plan) = self.plan.take().expect("planned once");
                    match me.steps(plan, &applied) {
                        Ok(steps) => self.steps = steps,
                        Err(e) => self.fail(e),
                    }
                }
            }
        }
        while self.cleanup.is_none() {
            if self.current.is_none() {
                match self.steps.pop_front() {
                    Some(s) => self.current = Some(s),
                    None => {
                        let unlock = std::mem::take(&mut self.unlock);
                        self.cleanup = Some(script(unlock));
                        break;
                    }
                }
            }
            let (version, op) = self.current.as_mut().expect("a current step");
            let version = *version;
            match op.poll(conn, now) {
                Step::Pending => return Step::Pending,
                Step::Ready(Ok(())) => {
                    self.done.push(version);
                    self.current = None;
                }
                Step::Ready(Err(e)) => {
                    let e = Error::invalid(format!("migration {version} failed: {e}"));
                    self.fail(e);
                }
            }
        }
        let cleanup = self.cleanup.as_mut().expect("cleaning up");
        match cleanup.poll(conn, now) {
            Step::Pending => Step::Pending,
            Step::Ready(r) => match (self.failed.take(), r) {
                (Some(e), _) => Step::Ready(Err(e)),
                (None, Err(e)) => Step::Ready(Err(e)),
                (None, Ok(())) => Step::Ready(Ok(std::mem::take(&mut self.done))),
            },
        }
    }

    fn abandon(&mut self, conn: &mut Connection) {
        if let Some(op) = &mut self.start {
            op.abandon(conn);
        }
        if let Some((_, op)) = &mut self.current {
            op.abandon(conn);
        }
        if let Some(op) = &mut self.cleanup {
            op.abandon(conn);
        }
        // The session keeps the lock until it ends: give it back.
        conn.submit_detached("ROLLBACK");
        if !self.unlock.is_empty() {
            conn.submit_detached(&self.unlock);
        }
    }
}

/// Splits a script into statements at semicolons outside quotes,
/// dollar-quoted bodies and comments (for no-transaction migrations, whose
/// statements must each run alone).
pub fn split_statements(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 1;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    i += 1;
                }
            }
            b'$' => {
                // $tag$ … $tag$ (tag: letters, digits, underscores).
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map(|p| i + 1 + p);
                if let Some(e) = tag_end.filter(|e| b[*e] == b'$') {
                    let tag = &sql[i..=e];
                    match sql[e + 1..].find(tag) {
                        Some(p) => i = e + 1 + p + tag.len() - 1,
                        None => i = b.len(),
                    }
                }
            }
            b';' => {
                out.push(sql[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(sql[start..].to_string());
    out.into_iter()
        .filter(|s| {
            // Nothing but comments and blanks is not a statement.
            s.lines()
                .map(|l| l.split("--").next().unwrap_or("").trim())
                .any(|l| !l.is_empty())
        })
        .map(|s| s.trim().to_string())
        .collect()
}
