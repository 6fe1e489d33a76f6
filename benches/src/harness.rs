//! Timing, CPU accounting, statistics and reporting. Nothing here knows a
//! database client: contenders are closures that run a batch of operations.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

fn rusage(who: libc::c_int) -> Option<libc::rusage> {
    // SAFETY: getrusage writes into the struct we own; it has no other effect.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    (unsafe { libc::getrusage(who, &mut u) } == 0).then_some(u)
}

/// Client CPU time (user + system) of this process so far, or of the
/// children it has waited for (pgbench).
pub fn cpu_time(children: bool) -> Duration {
    let who = if children {
        libc::RUSAGE_CHILDREN
    } else {
        libc::RUSAGE_SELF
    };
    let Some(u) = rusage(who) else {
        return Duration::ZERO;
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Page faults this process took so far (minor: a fresh page of memory).
pub fn page_faults() -> u64 {
    rusage(libc::RUSAGE_SELF).map_or(0, |u| u.ru_minflt as u64 + u.ru_majflt as u64)
}

/// Fixes glibc's allocator policy for the whole run. By default glibc
/// serves blocks above a threshold with fresh `mmap`s and returns heap
/// tops above another to the kernel, and moves both thresholds with what
/// the process frees: whether a contender's megabyte-sized result reuses
/// memory or faults in fresh pages then depends on what ran before it, and
/// page faults (dear in a VM) moved a contender's CPU figure by half
/// between runs. With both thresholds fixed at 32 MiB every contender
/// reuses its memory.
pub fn fix_allocator_policy() {
    const LIMIT: libc::c_int = 32 << 20;
    // SAFETY: mallopt only changes allocator parameters; called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LIMIT);
        libc::mallopt(libc::M_TRIM_THRESHOLD, LIMIT);
    }
}

/// Peak resident set size of this process, in bytes.
pub fn peak_rss() -> u64 {
    rusage(libc::RUSAGE_SELF).map_or(0, |u| u.ru_maxrss as u64 * 1024)
}

/// Current resident set size of this process, in bytes (from /proc).
pub fn current_rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no side effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}

/// One timed batch: `ops` operations took `wall` and `cpu`.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub wall: Duration,
    pub cpu: Duration,
    pub ops: u64,
    /// Page faults the batch took in this process (a sign of memory not
    /// being reused); `None` when it ran elsewhere (pgbench, a child).
    pub faults: Option<u64>,
}

impl Sample {
    pub fn wall_per_op(&self) -> f64 {
        self.wall.as_secs_f64() / self.ops.max(1) as f64
    }
    pub fn cpu_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() / self.ops.max(1) as f64
    }
}

/// Times `f`, which runs a batch of `ops` operations in this process.
pub fn measure<E>(ops: u64, f: impl FnOnce() -> Result<u64, E>) -> Result<(Sample, u64), E> {
    let faults0 = page_faults();
    let cpu0 = cpu_time(false);
    let t0 = Instant::now();
    let check = f()?;
    let wall = t0.elapsed();
    let cpu = cpu_time(false).saturating_sub(cpu0);
    let faults = Some(page_faults().saturating_sub(faults0));
    Ok((Sample { wall, cpu, ops, faults }, check))
}

/// Median and spread of per-operation figures over repetitions.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub median: f64,
    /// Interquartile range / median over the repetitions: how noisy the
    /// figure is (robust to the odd stalled repetition on a shared machine).
    pub spread: f64,
}

pub fn stats(values: &[f64]) -> Stats {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Stats {
            median: f64::NAN,
            spread: f64::NAN,
        };
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let q = |p: f64| {
        let x = p * (n - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
    };
    let median = q(0.5);
    let spread = if median > 0.0 {
        (q(0.75) - q(0.25)) / median
    } else {
        0.0
    };
    Stats { median, spread }
}

/// The figures of one contender on one workload.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub contender: String,
    pub wall: Stats,
    pub cpu: Stats,
    pub faults: Stats,
    pub samples: Vec<Sample>,
    /// For memory workloads: peak RSS growth in bytes.
    pub rss_growth: Option<u64>,
    /// Why there is no figure (an error, or the workload is not expressible).
    pub failed: Option<String>,
}

impl Outcome {
    pub fn from_samples(contender: &str, samples: Vec<Sample>) -> Outcome {
        let wall: Vec<f64> = samples.iter().map(Sample::wall_per_op).collect();
        let cpu: Vec<f64> = samples.iter().map(Sample::cpu_per_op).collect();
        let faults: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.faults.map(|f| f as f64 / s.ops.max(1) as f64))
            .collect();
        Outcome {
            contender: contender.to_string(),
            wall: stats(&wall),
            cpu: stats(&cpu),
            faults: stats(&faults),
            samples,
            rss_growth: None,
            failed: None,
        }
    }

    pub fn failed(contender: &str, why: String) -> Outcome {
        let mut o = Outcome::from_samples(contender, Vec::new());
        o.failed = Some(why);
        o
    }
}

/// Anchors every row is also compared with, when they ran.
pub const ANCHORS: [&str; 6] = [
    "floor",
    "postgres",
    "tokio-postgres",
    "sqlx",
    "zero-postgres",
    "pgbench",
];

/// The other clients, for "the fastest other".
const OTHERS: [&str; 6] = [
    "postgres",
    "tokio-postgres",
    "sqlx",
    "zero-postgres",
    "zero-postgres tokio",
    "pgbench",
];

/// Formats seconds per operation with a unit that keeps 3–4 digits.
pub fn time(s: f64) -> String {
    if !s.is_finite() {
        "-".into()
    } else if s >= 1.0 {
        format!("{s:.2}s")
    } else if s >= 1e-3 {
        format!("{:.2}ms", s * 1e3)
    } else {
        format!("{:.1}µs", s * 1e6)
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

/// The table of one workload: one row per contender, wall and CPU time
/// per operation, and wall-time ratios to each anchor that ran (a ratio
/// below 1 is faster than the anchor).
pub fn table(title: &str, outcomes: &[Outcome]) -> String {
    let find = |name: &str| outcomes.iter().find(|o| o.contender == name && o.failed.is_none());
    let anchors: Vec<&str> = ANCHORS.iter().copied().filter(|a| find(a).is_some()).collect();
    let mut out = String::new();
    let _ = writeln!(out, "\n{title}");
    let mut header = format!(
        "  {:<22} {:>9} {:>7} {:>9} {:>7}",
        "contender", "wall/op", "spread", "cpu/op", "cpu×fl"
    );
    for a in &anchors {
        let _ = write!(header, " {:>9}", format!("×{}", short(a)));
    }
    let _ = writeln!(out, "{header}");
    let floor_cpu = find("floor").map(|f| f.cpu.median).unwrap_or(f64::NAN);
    for o in outcomes {
        if let Some(why) = &o.failed {
            let _ = writeln!(out, "  {:<22} {why}", o.contender);
            continue;
        }
        if let Some(g) = o.rss_growth {
            let _ = writeln!(
                out,
                "  {:<22} {:>9} {:>6.0}% {:>9}   peak RSS growth {:.1} MiB",
                o.contender,
                time(o.wall.median),
                o.wall.spread * 100.0,
                time(o.cpu.median),
                g as f64 / (1024.0 * 1024.0)
            );
            continue;
        }
        let mut line = format!(
            "  {:<22} {:>9} {:>6.0}% {:>9} {:>7}",
            o.contender,
            time(o.wall.median),
            o.wall.spread * 100.0,
            time(o.cpu.median),
            ratio(o.cpu.median, floor_cpu)
        );
        for a in &anchors {
            let base = find(a).map(|f| f.wall.median).unwrap_or(f64::NAN);
            let _ = write!(line, " {:>9}", ratio(o.wall.median, base));
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

/// One line per workload with the figures the targets are stated in:
/// duet's wall and CPU time over the floor's, its wall time over the
/// fastest other client's, and its ORM level over its raw level.
pub fn summary(results: &[(String, Vec<Outcome>)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nsummary — duet's wall time (and client CPU) ÷ the floor's; ÷ the fastest other client's; ORM level ÷ raw level (wall)"
    );
    let _ = writeln!(
        out,
        "  {:<24} {:>15} {:>15} {:>22} {:>9} {:>9}",
        "workload", "sync ×floor", "async ×floor", "×fastest other", "orm sync", "orm async"
    );
    for (work, outcomes) in results {
        let find = |name: &str| outcomes.iter().find(|o| o.contender == name && o.failed.is_none());
        if outcomes.iter().any(|o| o.rss_growth.is_some()) {
            continue;
        }
        let median = |name: &str| find(name).map(|o| (o.wall.median, o.cpu.median));
        let floor = median("floor");
        let vs_floor = |name: &str| match (median(name), floor) {
            (Some((w, c)), Some((fw, fc))) => format!("{} ({})", ratio(w, fw), ratio(c, fc)),
            _ => "-".into(),
        };
        let fastest = OTHERS
            .iter()
            .filter_map(|a| median(a).map(|(w, _)| (*a, w)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let best_duet = ["duet-sync", "duet-async"]
            .iter()
            .filter_map(|d| median(d).map(|(w, _)| w))
            .min_by(|a, b| a.total_cmp(b));
        let vs_fastest = match (best_duet, fastest) {
            (Some(d), Some((name, w))) => format!("{} ({})", ratio(d, w), short(name)),
            _ => "-".into(),
        };
        let orm = |raw: &str, orm: &str| match (median(raw), median(orm)) {
            (Some((r, _)), Some((o, _))) => ratio(o, r),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "  {:<24} {:>15} {:>15} {:>22} {:>9} {:>9}",
            work,
            vs_floor("duet-sync"),
            vs_floor("duet-async"),
            vs_fastest,
            orm("duet-sync", "duet-sync orm"),
            orm("duet-async", "duet-async orm")
        );
    }
    out
}

/// The TLS rows in the terms of their targets: each duet driver's TLS
/// figure over its own plaintext TCP one (the point select's target:
/// ≤ 1.10), and over each other client's TLS figure, wall time and (in
/// parentheses) client CPU; below 1 = duet is ahead. Empty when no TLS
/// workload ran.
pub fn tls_summary(results: &[(String, Vec<Outcome>)]) -> String {
    let find = |work: &str, name: &str| {
        results
            .iter()
            .find(|(w, _)| w == work)
            .and_then(|(_, os)| os.iter().find(|o| o.contender == name && o.failed.is_none()))
            .map(|o| (o.wall.median, o.cpu.median))
    };
    let both = |a: Option<(f64, f64)>, b: Option<(f64, f64)>| match (a, b) {
        (Some((aw, ac)), Some((bw, bc))) => format!("{} ({})", ratio(aw, bw), ratio(ac, bc)),
        _ => "-".into(),
    };
    let others = ["tokio-postgres", "sqlx", "postgres", "pgbench"];
    let mut out = String::new();
    for (tls, plain) in [("point_tls", "point"), ("connect_tls", "connect")] {
        if !results.iter().any(|(w, _)| w == tls) {
            continue;
        }
        if out.is_empty() {
            let _ = writeln!(
                out,
                "\nTLS — duet's TLS figure ÷ its plaintext TCP one (point target ≤ 1.10) and ÷ each other client's TLS figure: wall (client CPU)"
            );
            let mut header = format!("  {:<13} {:<12} {:>15}", "workload", "contender", "×own plain");
            for o in others {
                let _ = write!(header, " {:>15}", format!("×{}", short(o)));
            }
            let _ = writeln!(out, "{header}");
        }
        for duet in ["duet-sync", "duet-async"] {
            let mine = find(tls, duet);
            let mut line = format!("  {:<13} {:<12} {:>15}", tls, duet, both(mine, find(plain, duet)));
            for o in others {
                let _ = write!(line, " {:>15}", both(mine, find(tls, o)));
            }
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

fn short(anchor: &str) -> &str {
    match anchor {
        "tokio-postgres" => "tokio-pg",
        "zero-postgres" => "zero-pg",
        "zero-postgres tokio" => "zero-pg tokio",
        other => other,
    }
}

/// All results as JSON, for comparing runs over time.
pub fn json(machine: &str, results: &[(String, Vec<Outcome>)]) -> serde_json::Value {
    use serde_json::json;
    let workloads: Vec<_> = results
        .iter()
        .map(|(w, outcomes)| {
            let rows: Vec<_> = outcomes
                .iter()
                .map(|o| {
                    json!({
                        "contender": o.contender,
                        "wall_per_op_s": finite(o.wall.median),
                        "wall_spread": finite(o.wall.spread),
                        "cpu_per_op_s": finite(o.cpu.median),
                        "cpu_spread": finite(o.cpu.spread),
                        "page_faults_per_op": finite(o.faults.median),
                        "repetitions": o.samples.len(),
                        "ops_per_repetition": o.samples.first().map(|s| s.ops),
                        "peak_rss_growth_bytes": o.rss_growth,
                        "failed": o.failed,
                    })
                })
                .collect();
            json!({ "workload": w, "results": rows })
        })
        .collect();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({ "unix_time": unix, "machine": machine, "workloads": workloads })
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// A one-line description of the machine the run was made on.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    // Not available_parallelism: that counts the CPUs this (pinned)
    // process may use.
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count().max(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<u64>().ok()))
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{model}, {cores} cores, {mem}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = stats(&[3.0, 1.0, 2.0]);
        assert_eq!(s.median, 2.0);
        assert_eq!(s.spread, 0.5);
        let s = stats(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.median, 2.5);
        assert!(stats(&[]).median.is_nan());
    }

    #[test]
    fn ratios_are_to_the_anchors_that_ran() {
        let o = |name: &str, wall: f64| {
            Outcome::from_samples(
                name,
                vec![Sample {
                    wall: Duration::from_secs_f64(wall),
                    cpu: Duration::from_secs_f64(wall / 2.0),
                    ops: 1,
                    faults: None,
                }],
            )
        };
        let t = table("t", &[o("floor", 1.0), o("duet-sync", 1.5), o("postgres", 3.0)]);
        assert!(t.contains("×floor"), "{t}");
        assert!(t.contains("×postgres"), "{t}");
        assert!(!t.contains("×sqlx"), "{t}");
        let duet = t.lines().find(|l| l.contains("duet-sync")).unwrap();
        assert!(duet.contains("1.50") && duet.contains("0.50"), "{duet}");

        // The summary: duet ÷ floor (wall, CPU), ÷ the fastest anchor, and
        // no ORM figure when the ORM did not run.
        let s = summary(&[(
            "w".into(),
            vec![o("floor", 1.0), o("duet-sync", 1.5), o("postgres", 3.0), o("sqlx", 2.0)],
        )]);
        let line = s.lines().find(|l| l.trim_start().starts_with("w ")).unwrap();
        assert!(line.contains("1.50 (1.50)"), "{line}");
        assert!(line.contains("0.75 (sqlx)"), "{line}");
        assert!(line.trim_end().ends_with("-         -"), "{line}");
    }
}
