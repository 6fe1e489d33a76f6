//! libpq, through PostgreSQL's own `pgbench`, for the workloads its script
//! language can express: the point select and 100 pipelined point selects
//! (`\startpipeline`). Wall time per operation is pgbench's own "latency
//! average" (connection set-up excluded); client CPU is pgbench's, from
//! getrusage of the finished child, divided by the operations it ran.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::{cpu_time, Sample};
use crate::workload::{Workload, POINT_SQL, USERS};
use crate::{BenchError, Target};

pub fn find() -> Option<PathBuf> {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("pgbench"));
    let candidates = from_pg_config.into_iter().chain(
        std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin/pgbench")),
    );
    candidates.into_iter().find(|p| p.is_file())
}

pub fn supports(w: Workload) -> bool {
    matches!(w, Workload::Point(_) | Workload::Pipeline100(_))
}

fn script(w: Workload) -> String {
    let select = POINT_SQL.replace("$1", ":id");
    match w {
        Workload::Pipeline100(_) => {
            let mut s = String::new();
            for i in 0..100 {
                s.push_str(&format!("\\set id{i} random(1, {USERS})\n"));
            }
            s.push_str("\\startpipeline\n");
            for i in 0..100 {
                s.push_str(&select.replace(":id", &format!(":id{i}")));
                s.push_str(";\n");
            }
            s.push_str("\\endpipeline\n");
            s
        }
        _ => format!("\\set id random(1, {USERS})\n{select};\n"),
    }
}

/// Runs `transactions` pgbench transactions of workload `w`.
pub fn run(bin: &PathBuf, t: &Target, w: Workload, transactions: u64) -> Result<Sample, BenchError> {
    let dir = std::env::temp_dir().join(format!("duet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("{}.sql", w.name()));
    std::fs::write(&file, script(w))?;
    let host = t.unix_dir.clone().unwrap_or_else(|| t.host.clone());
    let mut cmd = Command::new(bin);
    cmd.args(["-n", "-M", "prepared", "-c", "1", "-j", "1"])
        .arg("-t")
        .arg(transactions.to_string())
        .arg("-f")
        .arg(&file)
        .args(["-h", &host, "-p", &t.port.to_string(), "-U", &t.user, &t.dbname]);
    if let Some(p) = &t.password {
        cmd.env("PGPASSWORD", p);
    }
    // The same TLS as every contender's: verify-full against the run's CA.
    match &t.tls_ca {
        Some(ca) => cmd.env("PGSSLMODE", "verify-full").env("PGSSLROOTCERT", ca),
        None => cmd.env("PGSSLMODE", "disable"),
    };
    let cpu0 = cpu_time(true);
    let out = cmd.output()?;
    let cpu = cpu_time(true).saturating_sub(cpu0);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("pgbench failed: {}{}", text, String::from_utf8_lossy(&out.stderr)).into());
    }
    let ms: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("latency average = "))
        .and_then(|v| v.trim_end_matches(" ms").trim().parse().ok())
        .ok_or_else(|| format!("no latency average in pgbench's output: {text}"))?;
    let ops = transactions;
    Ok(Sample {
        wall: std::time::Duration::from_secs_f64(ms / 1000.0 * ops as f64),
        cpu,
        ops,
        faults: None,
    })
}
