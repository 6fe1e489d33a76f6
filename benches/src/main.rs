//! duet measured side by side with the clients a user would pick instead,
//! on the same server in the same run, reported as ratios.
//!
//! ```text
//! cargo run -p duet-benches --release --features anchors -- [workload…] [--reps N] [--quick] [--json PATH] [--server 15|18]
//! ```
//!
//! Starts its own throwaway PostgreSQL unless `DATABASE_URL` is set (the
//! tables are then created in a database `duet_bench` on that server),
//! loads the data, runs every contender on every workload — a warm-up
//! batch, then `--reps` timed batches with the contenders interleaved — and
//! prints one table per workload. Without `--features anchors` only duet,
//! the floor and pgbench run.

mod duet;
mod floor;
mod harness;
mod pgbench;
mod placement;
mod workload;

#[cfg(feature = "anchors")]
mod anchors;
#[cfg(feature = "anchors")]
mod zero;

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Instant;

use duet_conformance::server::TestServer;
use harness::{Outcome, Sample};
use workload::{assoc, Transport, Workload};

pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// A client under test. `run` performs `iters` operations of `work`,
/// numbered from `from` (which point ids to select), and returns a checksum
/// of what it decoded: equal for every contender, or one of them cheated.
pub trait Contender {
    fn run(&mut self, work: Workload, iters: u64, from: u64) -> Result<u64, BenchError>;
}

/// Where the contenders connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    /// Connect over the Unix socket in this directory instead of TCP.
    pub unix_dir: Option<String>,
    /// TLS, verified against the CA certificate in this PEM file for the
    /// name in `host` (libpq's `sslmode=verify-full`); `None`: plaintext,
    /// and every contender is told not to try TLS (`sslmode=disable`), so
    /// none spends a round trip on an SSLRequest the others skip.
    pub tls_ca: Option<String>,
}

impl Target {
    /// A libpq-style `key=value` string (duet, postgres, tokio-postgres),
    /// without the TLS words: each client spells those its own way.
    pub fn key_value(&self) -> String {
        let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let host = self.unix_dir.as_deref().unwrap_or(&self.host);
        let mut s = format!(
            "host={} port={} user={} dbname={}",
            q(host),
            self.port,
            q(&self.user),
            q(&self.dbname)
        );
        if let Some(p) = &self.password {
            s.push_str(&format!(" password={}", q(p)));
        }
        s
    }
}

/// `INSERT INTO users_ins (name, hair_color) VALUES ($1, $2), … [RETURNING id]`.
pub fn insert_sql(rows: i32, returning: bool) -> String {
    let mut s = String::from("INSERT INTO users_ins (name, hair_color) VALUES ");
    for i in 0..rows {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&format!("(${}, ${})", 2 * i + 1, 2 * i + 2));
    }
    if returning {
        s.push_str(" RETURNING id");
    }
    s
}

/// Every contender, in table order. The first is the floor.
pub const CONTENDERS: [&str; 11] = [
    "floor",
    "duet-sync",
    "duet-sync orm",
    "duet-async",
    "duet-async orm",
    "postgres",
    "tokio-postgres",
    "sqlx",
    "zero-postgres",
    "zero-postgres tokio",
    "pgbench",
];

/// The contenders built only with `--features anchors`.
const ANCHOR_BUILT: [&str; 5] = [
    "postgres",
    "tokio-postgres",
    "sqlx",
    "zero-postgres",
    "zero-postgres tokio",
];

/// zero-postgres speaks protocol 3.2 only: PostgreSQL 17 and later.
const ZERO: [&str; 2] = ["zero-postgres", "zero-postgres tokio"];

/// Whether contender `name` has a row for `work`. A contender without one
/// is left out of that table rather than shown failing: the floor speaks
/// no TLS; the ORM level opens sessions as the raw level does; zero-postgres
/// is written for the workloads it is compared on (point select, pipelined
/// selects, fetch, inserts, connect) and its TLS is native-tls (OpenSSL),
/// not rustls, so it sits out the TLS rows.
pub fn supports(name: &str, work: Workload) -> bool {
    let tls = work.transport() == Transport::Tls;
    match name {
        "floor" => !tls,
        "duet-sync orm" | "duet-async orm" => !matches!(work, Workload::Connect(_)),
        "zero-postgres" | "zero-postgres tokio" => {
            !tls && matches!(
                work,
                Workload::Point(_)
                    | Workload::Pipeline100(_)
                    | Workload::Fetch10k
                    | Workload::InsertEach1000
                    | Workload::InsertBulk1000
                    | Workload::Insert(_)
                    | Workload::Connect(_)
            )
        }
        "pgbench" => pgbench::supports(work),
        _ => true,
    }
}

fn connect(name: &str, t: &Target) -> Result<Box<dyn Contender>, BenchError> {
    use duet::{DuetAsync, DuetSync, Level};
    Ok(match name {
        "floor" => Box::new(floor::Floor::connect(t)?),
        "duet-sync" => Box::new(DuetSync::connect(t, Level::Raw)?),
        "duet-sync orm" => Box::new(DuetSync::connect(t, Level::Orm)?),
        "duet-async" => Box::new(DuetAsync::connect(t, Level::Raw)?),
        "duet-async orm" => Box::new(DuetAsync::connect(t, Level::Orm)?),
        #[cfg(feature = "anchors")]
        "postgres" => Box::new(anchors::Postgres::connect(t)?),
        #[cfg(feature = "anchors")]
        "tokio-postgres" => Box::new(anchors::TokioPostgres::connect(t)?),
        #[cfg(feature = "anchors")]
        "sqlx" => Box::new(anchors::Sqlx::connect(t)?),
        #[cfg(feature = "anchors")]
        "zero-postgres" => Box::new(zero::ZeroSync::connect(t)?),
        #[cfg(feature = "anchors")]
        "zero-postgres tokio" => Box::new(zero::ZeroTokio::connect(t)?),
        other => return Err(format!("{other} is not built in (run with --features anchors)").into()),
    })
}

fn anchors_built() -> bool {
    cfg!(feature = "anchors")
}

/// Creates the `duet_bench` database if needed and loads the schema.
fn load(server_url: &str) -> Result<Target, BenchError> {
    let cfg = duet_core::Config::parse(server_url)?;
    let endpoint = cfg.endpoints()?.remove(0);
    let host = match &endpoint.host {
        duet_core::Host::Tcp(h) => h.clone(),
        duet_core::Host::Unix(d) => d.clone(),
    };
    let mut admin = duet_sync::Client::connect_config(&cfg)?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = 'duet_bench'", &[])?
        .is_some();
    if !exists {
        admin.batch_execute("CREATE DATABASE duet_bench")?;
    }
    let target = Target {
        host,
        port: endpoint.port,
        user: cfg.user.clone(),
        password: cfg.password.clone(),
        dbname: "duet_bench".into(),
        unix_dir: None,
        tls_ca: None,
    };
    let mut c = duet_sync::Client::connect(&target.key_value())?;
    c.batch_execute(workload::SCHEMA)?;
    c.batch_execute(workload::VACUUM)?;
    Ok(target)
}

/// Loads the data and says where to connect: over TCP, over the Unix
/// socket when the harness started the server, and over TLS when it
/// started a TLS server (as `localhost`, the name its certificate bears;
/// `localhost` is 127.0.0.1 here, the address the TCP rows use).
fn targets(server: &TestServer) -> Result<HashMap<Transport, Target>, BenchError> {
    let tcp = load(&server.url())?;
    let mut targets = HashMap::from([(Transport::Tcp, tcp.clone())]);
    if let Some(dir) = server.socket_dir() {
        let unix_dir = Some(dir.to_string_lossy().into_owned());
        targets.insert(
            Transport::Unix,
            Target {
                unix_dir,
                ..tcp.clone()
            },
        );
    }
    if let Some(certs) = server.certs() {
        targets.insert(
            Transport::Tls,
            Target {
                host: "localhost".into(),
                tls_ca: Some(certs.ca_cert.to_string_lossy().into_owned()),
                ..tcp
            },
        );
    }
    Ok(targets)
}

struct Options {
    workloads: Vec<Workload>,
    reps: usize,
    scale: u64,
    json: Option<String>,
    only: Option<Vec<String>>,
    placement: placement::Placement,
    /// `--server 15|18`: the PostgreSQL major version the harness starts
    /// (its `DUET_PG`); `None`: whatever `DUET_PG` already says.
    server: Option<String>,
}

fn parse_args() -> Result<Options, BenchError> {
    let mut o = Options {
        workloads: Vec::new(),
        reps: 15,
        scale: 1,
        json: None,
        only: None,
        placement: placement::Placement::default_for_machine(),
        server: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => o.reps = args.next().ok_or("--reps N")?.parse()?,
            "--scale" => o.scale = args.next().ok_or("--scale N")?.parse()?,
            "--quick" => {
                o.reps = 3;
                o.scale = 10;
            }
            "--json" => o.json = Some(args.next().ok_or("--json PATH")?),
            "--server" => {
                let v = args.next().ok_or("--server 15|18")?;
                if !matches!(v.as_str(), "15" | "18") {
                    return Err(format!("--server {v}: the harness starts 15 or 18").into());
                }
                o.server = Some(v);
            }
            "--cpus" => {
                let p = args.next().ok_or("--cpus split|shared|free")?;
                o.placement = placement::Placement::parse(&p).ok_or("--cpus split|shared|free")?;
            }
            "--only" => {
                o.only = Some(
                    args.next()
                        .ok_or("--only a,b")?
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .collect(),
                )
            }
            "--help" | "-h" => {
                println!(
                    "usage: duet-benches [workload…] [--reps N] [--scale N] [--quick] [--json PATH] [--only c1,c2] [--cpus split|shared|free] [--server 15|18]\n\
                     workloads: {}\ncontenders: {}",
                    Workload::all().iter().map(|w| w.name()).collect::<Vec<_>>().join(" "),
                    CONTENDERS.join(", ")
                );
                std::process::exit(0);
            }
            "--stream-child" => {
                let name = args.next().ok_or("--stream-child NAME")?;
                stream_child(&name)?;
                std::process::exit(0);
            }
            name => o
                .workloads
                .extend(Workload::parse(name).ok_or_else(|| format!("unknown workload {name} (see --help)"))?),
        }
    }
    if o.workloads.is_empty() {
        o.workloads = Workload::all();
    }
    o.reps = o.reps.max(1);
    Ok(o)
}

/// The memory workload runs in a child process per contender, so the peak
/// RSS it reports belongs to that contender alone.
fn stream_child(name: &str) -> Result<(), BenchError> {
    let t: Target = decode_target(&std::env::var("DUET_BENCH_TARGET")?)?;
    let mut c = connect(name, &t)?;
    let base = harness::current_rss();
    let (s, sum) = harness::measure(1, || c.run(Workload::Stream1M, 1, 0))?;
    let peak = harness::peak_rss();
    println!(
        "{} {} {} {}",
        peak.saturating_sub(base),
        s.wall.as_secs_f64(),
        s.cpu.as_secs_f64(),
        sum
    );
    Ok(())
}

fn encode_target(t: &Target) -> String {
    serde_json::json!([t.host, t.port, t.user, t.password, t.dbname, t.unix_dir, t.tls_ca]).to_string()
}

fn decode_target(s: &str) -> Result<Target, BenchError> {
    type Fields = (
        String,
        u16,
        String,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
    );
    let (host, port, user, password, dbname, unix_dir, tls_ca): Fields = serde_json::from_str(s)?;
    Ok(Target {
        host,
        port,
        user,
        password,
        dbname,
        unix_dir,
        tls_ca,
    })
}

fn stream_in_child(name: &str, t: &Target) -> Result<(Sample, u64, u64), BenchError> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--stream-child", name])
        .env("DUET_BENCH_TARGET", encode_target(t))
        .output()?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string().into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    let [growth, wall, cpu, sum] = f[..] else {
        return Err(format!("unexpected child output: {text}").into());
    };
    let sample = Sample {
        wall: std::time::Duration::from_secs_f64(wall.parse()?),
        cpu: std::time::Duration::from_secs_f64(cpu.parse()?),
        ops: 1,
        faults: None,
    };
    Ok((sample, growth.parse()?, sum.parse()?))
}

fn progress(msg: &str) {
    use std::io::IsTerminal as _;
    let mut e = std::io::stderr();
    if !e.is_terminal() {
        return;
    }
    let _ = write!(e, "\r\x1b[2K{msg}");
    let _ = e.flush();
}

/// Runs one workload on every contender and returns their outcomes.
fn run_workload(
    work: Workload,
    targets: &HashMap<Transport, Target>,
    clients: &mut HashMap<(String, Transport), Box<dyn Contender>>,
    opts: &Options,
    names: &[&str],
) -> Vec<Outcome> {
    let Some(target) = targets.get(&work.transport()) else {
        let why = match work.transport() {
            Transport::Tls => "no TLS server (DATABASE_URL set, or these PostgreSQL binaries have no OpenSSL)",
            _ => "no Unix socket to connect to (DATABASE_URL set)",
        };
        return vec![Outcome::failed("(all)", why.into())];
    };
    let pgbench_bin = pgbench::find();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut live: Vec<&str> = Vec::new();
    for &name in names {
        if !supports(name, work) {
            continue;
        }
        if name == "pgbench" {
            if pgbench_bin.is_none() {
                outcomes.push(Outcome::failed(name, "pgbench not found".into()));
                continue;
            }
        } else if work == Workload::Stream1M {
            // Run in a child process below.
        } else {
            let key = (name.to_string(), work.transport());
            if let std::collections::hash_map::Entry::Vacant(e) = clients.entry(key) {
                match connect(name, target) {
                    Ok(c) => {
                        e.insert(c);
                    }
                    Err(err) => {
                        outcomes.push(Outcome::failed(name, format!("cannot run: {err}")));
                        continue;
                    }
                }
            }
        }
        live.push(name);
    }

    if work == Workload::Stream1M {
        let mut sums: Vec<(String, u64)> = Vec::new();
        for name in live {
            progress(&format!("{work}: {name}"));
            match stream_in_child(name, target) {
                Ok((sample, growth, sum)) => {
                    let mut o = Outcome::from_samples(name, vec![sample]);
                    o.rss_growth = Some(growth);
                    outcomes.push(o);
                    sums.push((name.to_string(), sum));
                }
                Err(e) => outcomes.push(Outcome::failed(name, format!("failed: {e}"))),
            }
        }
        check_sums(&mut outcomes, &sums);
        return outcomes;
    }

    let batch = work.batch(opts.scale);
    let mut samples: HashMap<&str, Vec<Sample>> = HashMap::new();
    let mut failed: HashMap<&str, String> = HashMap::new();
    // Warm-up (prepares statements, fills caches), then interleaved timed
    // repetitions, rotating who goes first.
    for rep in 0..=opts.reps {
        let mut order = live.clone();
        order.rotate_left(rep % live.len().max(1));
        let mut sums: Vec<(String, u64)> = Vec::new();
        for name in order {
            if failed.contains_key(name) {
                continue;
            }
            progress(&format!(
                "{work}: {} {name}",
                if rep == 0 {
                    "warm-up".to_string()
                } else {
                    format!("rep {rep}/{}", opts.reps)
                }
            ));
            let from = rep as u64 * batch;
            let r = if name == "pgbench" {
                let bin = pgbench_bin.as_ref().expect("checked above");
                pgbench::run(bin, target, work, batch).map(|s| (s, None))
            } else {
                let c = clients
                    .get_mut(&(name.to_string(), work.transport()))
                    .expect("connected above");
                harness::measure(batch, || c.run(work, batch, from)).map(|(s, sum)| (s, Some(sum)))
            };
            match r {
                Ok((s, sum)) => {
                    if rep > 0 {
                        samples.entry(name).or_default().push(s);
                    }
                    if let Some(sum) = sum {
                        sums.push((name.to_string(), sum));
                    }
                }
                Err(e) => {
                    failed.insert(name, format!("failed: {e}"));
                }
            }
        }
        let mut check: Vec<Outcome> = Vec::new();
        check_sums(&mut check, &sums);
        for o in check {
            if let Some(why) = o.failed {
                let name = live.iter().find(|n| **n == o.contender).copied().unwrap_or("?");
                failed.entry(name).or_insert(why);
            }
        }
    }
    for name in names {
        if let Some(why) = failed.remove(name) {
            outcomes.push(Outcome::failed(name, why));
        } else if let Some(s) = samples.remove(name) {
            outcomes.push(Outcome::from_samples(name, s));
        }
    }
    outcomes.sort_by_key(|o| names.iter().position(|n| *n == o.contender).unwrap_or(usize::MAX));
    outcomes
}

/// Marks every contender whose checksum differs from the majority's.
fn check_sums(outcomes: &mut Vec<Outcome>, sums: &[(String, u64)]) {
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for (_, s) in sums {
        *counts.entry(*s).or_default() += 1;
    }
    let Some((&majority, _)) = counts.iter().max_by_key(|(_, n)| **n) else {
        return;
    };
    for (name, s) in sums {
        if *s != majority {
            let why = format!("wrong result: checksum {s}, the others got {majority}");
            match outcomes.iter_mut().find(|o| &o.contender == name) {
                Some(o) => o.failed = Some(why),
                None => outcomes.push(Outcome::failed(name, why)),
            }
        }
    }
}

/// Starts the server the run needs: a TLS one (which serves plaintext
/// too) when a TLS workload is asked for and the binaries can serve TLS,
/// else a plaintext one. Returns a note for the report when TLS was asked
/// for and cannot be had.
fn start_server(opts: &Options) -> Result<(TestServer, Option<String>), BenchError> {
    if let Some(v) = &opts.server {
        // Read by the harness when it first looks up the server binaries,
        // below; no other thread exists yet.
        std::env::set_var(duet_conformance::server::PG_VERSION_ENV, v);
    }
    let wants_tls = opts.workloads.iter().any(|w| w.transport() == Transport::Tls);
    let external = std::env::var("DATABASE_URL").is_ok_and(|u| !u.trim().is_empty());
    let (tls, note) = match (wants_tls, external) {
        (false, _) => (false, None),
        (true, true) => (
            false,
            Some("DATABASE_URL is set: no TLS server, so no TLS rows".to_string()),
        ),
        (true, false) => match TestServer::tls_supported()? {
            true => (true, None),
            false => (
                false,
                Some("these PostgreSQL binaries were built without OpenSSL: no TLS rows".to_string()),
            ),
        },
    };
    let start = if tls { TestServer::start_tls } else { TestServer::start };
    Ok((opts.placement.apply(start)??, note))
}

fn main() -> Result<(), BenchError> {
    harness::fix_allocator_policy();
    let opts = parse_args()?;
    let started = Instant::now();
    progress("starting PostgreSQL and loading the data…");
    let (server, tls_note) = start_server(&opts)?;
    let targets = targets(&server)?;
    let tcp = targets[&Transport::Tcp].clone();
    let major = server_major(&tcp);
    let names: Vec<&str> = CONTENDERS
        .iter()
        .copied()
        .filter(|n| opts.only.as_ref().is_none_or(|o| o.iter().any(|x| x == n)))
        .filter(|n| anchors_built() || !ANCHOR_BUILT.contains(n))
        .filter(|n| major >= 17 || !ZERO.contains(n))
        .collect();
    let machine = format!(
        "{} ({})",
        harness::machine(),
        opts.placement.describe(std::env::var_os("DATABASE_URL").is_none())
    );
    let mut clients: HashMap<(String, Transport), Box<dyn Contender>> = HashMap::new();
    let mut results: Vec<(String, Vec<Outcome>)> = Vec::new();
    let mut report = format!(
        "duet-benches on {machine}; PostgreSQL {}; {} timed repetitions per figure (median; spread = interquartile range / median)\n\
         ratios are wall time per operation divided by the anchor's (below 1 = faster); cpu×fl = client CPU ÷ the floor's\n",
        server_version(&tcp),
        opts.reps
    );
    if !anchors_built() {
        report.push_str(
            "(built without --features anchors: postgres, tokio-postgres, sqlx and zero-postgres did not run)\n",
        );
    } else if major < 17 {
        report.push_str("(zero-postgres speaks protocol 3.2 only and needs PostgreSQL 17+: run with --server 18)\n");
    }
    if let Some(note) = &tls_note {
        report.push_str(&format!("({note})\n"));
    }
    print!("{report}");
    for &work in &opts.workloads {
        let outcomes = run_workload(work, &targets, &mut clients, &opts, &names);
        progress("");
        let t = harness::table(&format!("{} — {}", work.name(), work.describe()), &outcomes);
        print!("{t}");
        report.push_str(&t);
        results.push((work.name(), outcomes));
    }
    drop(clients);
    print!("{}", harness::summary(&results));
    print!("{}", harness::tls_summary(&results));
    let json = harness::json(&machine, &results);
    let path = opts.json.clone().unwrap_or_else(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/duet-benches");
        let _ = std::fs::create_dir_all(&dir);
        dir.join("latest.json").to_string_lossy().into_owned()
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("\nresults written to {path} ({:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// The server's major version (15, 18…), 0 if it cannot be read.
fn server_major(t: &Target) -> u32 {
    let v = server_version(t);
    let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

fn server_version(t: &Target) -> String {
    duet_sync::Client::connect(&t.key_value())
        .ok()
        .and_then(|c| c.parameter("server_version").map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_options() -> Options {
        Options {
            workloads: Vec::new(),
            reps: 1,
            scale: 1_000_000,
            json: None,
            only: None,
            placement: placement::Placement::Free,
            server: None,
        }
    }

    /// The contenders built without the anchors.
    fn own_contenders() -> Vec<&'static str> {
        CONTENDERS
            .iter()
            .copied()
            .filter(|n| !ANCHOR_BUILT.contains(n))
            .collect()
    }

    /// Every contender built without the anchors fetches and decodes the
    /// same rows on every workload (one small batch each): the checksums
    /// that guard the figures agree with the floor's, and pgbench runs.
    #[test]
    fn contenders_agree_on_every_workload() {
        let targets = targets(TestServer::shared()).expect("data loads");
        let opts = test_options();
        let names = own_contenders();
        let mut clients = HashMap::new();
        for work in Workload::all() {
            if work == Workload::Stream1M {
                continue; // a million rows per contender: the bench's job
            }
            if !targets.contains_key(&work.transport()) {
                continue;
            }
            let outcomes = run_workload(work, &targets, &mut clients, &opts, &names);
            for o in &outcomes {
                assert!(o.failed.is_none(), "{work} {}: {:?}", o.contender, o.failed);
            }
            let ran: Vec<&str> = outcomes.iter().map(|o| o.contender.as_str()).collect();
            let expected: Vec<&str> = names.iter().copied().filter(|n| supports(n, work)).collect();
            assert_eq!(ran, expected, "{work}");
            assert!(ran.contains(&"floor") && ran.contains(&"duet-async"), "{work}: {ran:?}");
        }
    }

    /// Over TLS (verify-full against the harness's CA), duet's drivers
    /// select and connect, the floor sits out, and pgbench (libpq) agrees.
    #[test]
    fn tls_rows_run_on_a_tls_server() {
        if !TestServer::tls_supported().expect("server binaries") {
            eprintln!("skipped: these PostgreSQL binaries have no OpenSSL");
            return;
        }
        let targets = targets(TestServer::shared_tls()).expect("data loads");
        assert_eq!(targets[&Transport::Tls].host, "localhost");
        let opts = test_options();
        let names = own_contenders();
        let mut clients = HashMap::new();
        for work in [Workload::Point(Transport::Tls), Workload::Connect(Transport::Tls)] {
            let outcomes = run_workload(work, &targets, &mut clients, &opts, &names);
            for o in &outcomes {
                assert!(o.failed.is_none(), "{work} {}: {:?}", o.contender, o.failed);
            }
            let ran: Vec<&str> = outcomes.iter().map(|o| o.contender.as_str()).collect();
            assert!(!ran.contains(&"floor"), "{work}: {ran:?}");
            assert!(
                ran.contains(&"duet-sync") && ran.contains(&"duet-async"),
                "{work}: {ran:?}"
            );
        }
    }

    #[test]
    fn insert_sql_numbers_every_parameter() {
        assert_eq!(
            insert_sql(2, true),
            "INSERT INTO users_ins (name, hair_color) VALUES ($1, $2), ($3, $4) RETURNING id"
        );
    }

    #[test]
    fn checksums_name_the_odd_one_out() {
        let mut o = Vec::new();
        check_sums(&mut o, &[("a".into(), 1), ("b".into(), 1), ("c".into(), 2)]);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].contender, "c");
    }

    #[test]
    fn every_workload_parses_by_name() {
        for w in Workload::all() {
            assert_eq!(Workload::parse(&w.name()), Some(vec![w]));
        }
        assert_eq!(Workload::parse("trivial").map(|v| v.len()), Some(3));
        assert_eq!(Workload::parse("point").map(|v| v.len()), Some(1));
        assert_eq!(Workload::parse("point_").map(|v| v.len()), Some(2));
        assert_eq!(Workload::parse("conn").map(|v| v.len()), Some(2));
        assert_eq!(Workload::parse("nope"), None);
        let _ = assoc::tree_sum(&Vec::new());
    }
}
