//! What duet's `tracing` callsites cost when no subscriber listens: the
//! benches built normally against the same benches built with every
//! callsite compiled out (`--features tracing-off`), run in alternating
//! rounds on one server, printed as ratios (target: within 1.02×).
//!
//! ```text
//! scripts/bench-tracing [--rounds N] [workload…]
//! ```
//!
//! (The script builds both binaries and passes them here:
//! `tracing_cost ON_BINARY OFF_BINARY [--rounds N] [--reps N] [workload…]`.)

use std::collections::BTreeMap;
use std::process::Command;

type Error = Box<dyn std::error::Error>;

/// (workload, contender) → per-round medians of wall and CPU per op.
type Figures = BTreeMap<(String, String), (Vec<f64>, Vec<f64>)>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let on = args
        .next()
        .ok_or("usage: tracing_cost ON_BINARY OFF_BINARY [--rounds N] [--reps N] [workload…]")?;
    let off = args.next().ok_or("usage: tracing_cost ON_BINARY OFF_BINARY …")?;
    let (mut rounds, mut reps, mut workloads) = (5usize, 20usize, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().ok_or("--rounds N")?.parse()?,
            "--reps" => reps = args.next().ok_or("--reps N")?.parse()?,
            w => workloads.push(w.to_string()),
        }
    }
    if rounds == 0 {
        return Ok(());
    }
    if workloads.is_empty() {
        workloads = ["point", "pipeline100", "fetch10k", "insert_each1000"]
            .map(String::from)
            .to_vec();
    }
    let dir = std::env::temp_dir().join(format!("duet-tracing-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (mut with, mut without) = (Figures::new(), Figures::new());
    for round in 0..rounds {
        // Alternating which goes first, so drift in the machine's load
        // falls on both alike.
        let order = if round % 2 == 0 {
            [(&on, true), (&off, false)]
        } else {
            [(&off, false), (&on, true)]
        };
        for (binary, traced) in order {
            let json = dir.join(format!("{round}-{traced}.json"));
            let status = Command::new(binary)
                .args(&workloads)
                .args([
                    "--reps",
                    &reps.to_string(),
                    "--only",
                    "duet-sync,duet-async,duet-sync orm,duet-async orm",
                ])
                .args(["--cpus", "shared", "--json"])
                .arg(&json)
                .stdout(std::process::Stdio::null())
                .status()?;
            if !status.success() {
                return Err(format!("{binary} failed: {status}").into());
            }
            collect(&json, if traced { &mut with } else { &mut without })?;
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("tracing callsites with no subscriber ÷ compiled out ({rounds} alternating rounds of {reps} repetitions; median of round medians)");
    println!(
        "  {:<16} {:<16} {:>10} {:>10}",
        "workload", "contender", "wall on/off", "cpu on/off"
    );
    for (key, (wall_on, cpu_on)) in &with {
        let Some((wall_off, cpu_off)) = without.get(key) else {
            continue;
        };
        println!(
            "  {:<16} {:<16} {:>10.3} {:>10.3}",
            key.0,
            key.1,
            median(wall_on) / median(wall_off),
            median(cpu_on) / median(cpu_off)
        );
    }
    Ok(())
}

fn collect(path: &std::path::Path, into: &mut Figures) -> Result<(), Error> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    for w in v["workloads"].as_array().ok_or("no workloads in the JSON")? {
        let workload = w["workload"].as_str().unwrap_or("?").to_string();
        for r in w["results"].as_array().ok_or("no results in the JSON")? {
            let (Some(wall), Some(cpu)) = (r["wall_per_op_s"].as_f64(), r["cpu_per_op_s"].as_f64()) else {
                continue;
            };
            let contender = r["contender"].as_str().unwrap_or("?").to_string();
            let e = into.entry((workload.clone(), contender)).or_default();
            e.0.push(wall);
            e.1.push(cpu);
        }
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
