//! COPY side by side, on one throwaway server, contenders interleaved
//! round by round, each round starting with another (medians of the
//! rounds' wall time and client CPU time):
//!
//! - **binary rows**: 100,000 typed rows (int8, text, float8, timestamptz)
//!   by duet's `write_row` (both drivers) against tokio-postgres's
//!   `BinaryCopyInWriter`;
//! - **csv bytes**: the same rows as 6.6 MB of csv by duet's `write`
//!   against sqlx's `copy_in_raw` and tokio-postgres's `copy_in` sink;
//! - **ORM bulk insert**: 100,000 models by `bulk_insert(..).execute()`
//!   (binary COPY) against diesel-style multi-row `INSERT`s (65,535
//!   parameters per statement, prepared, through `postgres`) and duet's
//!   own `INSERT` path;
//! - **threshold**: `execute()` by COPY and by INSERT at 100 to 10,000
//!   models, which is where `COPY_THRESHOLD` comes from;
//! - **memory**: peak resident memory while 1 GiB goes in and 1 GiB comes
//!   out through each duet driver (`--gib N` to change the amount).
//!
//! ```sh
//! cargo run -p duet-benches --release --features anchors --bin copy_bench -- [rounds] [--gib N]
//! ```

use std::time::{Duration, Instant, SystemTime};

use duet_conformance::server::TestServer;
use duet_core::orm::prelude::*;
use duet_core::Type;
use futures_util::SinkExt;
use sqlx::Connection as _;

const ROWS: usize = 100_000;

#[derive(Model, Clone)]
#[duet(table = "copy_bench_models")]
struct Reading {
    #[duet(primary_key, auto)]
    id: i64,
    sensor: i64,
    label: String,
    value: f64,
    #[duet(sql_type = "timestamptz")]
    at: SystemTime,
}

fn readings(n: usize) -> Vec<Reading> {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    (0..n)
        .map(|i| Reading {
            id: 0,
            sensor: i as i64,
            label: format!("sensor-{i}"),
            value: i as f64 * 0.5,
            at: at + Duration::from_millis(i as u64),
        })
        .collect()
}

fn csv(rows: &[Reading]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        let ms = r.at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis();
        out.extend_from_slice(
            format!(
                "{},{},{},{}.{:03}+00\n",
                r.sensor,
                r.label,
                r.value,
                chrono_like(ms / 1000),
                ms % 1000
            )
            .as_bytes(),
        );
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time, without a date crate.
fn chrono_like(secs: u128) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

const COPY_SQL: &str = "COPY copy_bench (sensor, label, value, at) FROM STDIN (FORMAT binary)";
const CSV_SQL: &str = "COPY copy_bench (sensor, label, value, at) FROM STDIN (FORMAT csv)";
const TYPES: [Type; 4] = [Type::INT8, Type::TEXT, Type::FLOAT8, Type::TIMESTAMPTZ];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Wall time and this thread's CPU time (user + system) of `f`, in ms.
/// Every contender's client work runs on this thread (the tokio runtime is
/// a current-thread one), so the CPU time is the client's cost.
fn timed(f: impl FnOnce()) -> (f64, f64) {
    let cpu = thread_cpu_ms();
    let start = Instant::now();
    f();
    (start.elapsed().as_secs_f64() * 1e3, thread_cpu_ms() - cpu)
}

fn thread_cpu_ms() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid rusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// Peak resident memory of this process so far, in MiB.
fn peak_rss_mib() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid rusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as f64 / 1024.0
}

/// Prints contenders' median wall and client CPU times, each as a ratio
/// to the first's.
fn report(title: &str, results: &[(&str, Vec<(f64, f64)>)]) {
    println!("\n{title}");
    println!(
        "  {:<36} {:>9} {:>7}   {:>9} {:>7}",
        "", "wall ms", "÷ duet", "CPU ms", "÷ duet"
    );
    let wall = |v: &Vec<(f64, f64)>| median(v.iter().map(|t| t.0).collect());
    let cpu = |v: &Vec<(f64, f64)>| median(v.iter().map(|t| t.1).collect());
    let (w0, c0) = (wall(&results[0].1), cpu(&results[0].1));
    for (name, times) in results {
        let (w, c) = (wall(times), cpu(times));
        println!("  {name:<36} {w:>9.1} {:>6.2}×   {c:>9.1} {:>6.2}×", w / w0, c / c0);
    }
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let mut rounds = 5usize;
    let mut gib = 1.0f64;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--gib" => gib = args.next().and_then(|v| v.parse().ok()).expect("--gib N"),
            n => rounds = n.parse().expect("rounds"),
        }
    }
    let server = TestServer::start().expect("PostgreSQL");
    let kv = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
        server.port()
    );
    println!("PostgreSQL {} on 127.0.0.1, {rounds} rounds", server.version());
    let duet_url = format!("{kv} local_socket=disable");
    let mut sync = duet_sync::Client::connect(&duet_url).expect("connect");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut async_client = rt.block_on(duet_async::Client::connect(&duet_url)).expect("connect");
    let mut pg = postgres::Client::connect(&kv, postgres::NoTls).expect("postgres");
    let (tpg, tpg_conn) = rt
        .block_on(tokio_postgres::connect(&kv, tokio_postgres::NoTls))
        .expect("tokio-postgres");
    rt.spawn(tpg_conn);
    let mut sqlx_conn = rt
        .block_on(sqlx::PgConnection::connect(&format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            server.port()
        )))
        .expect("sqlx");
    sync.batch_execute(
        "DROP TABLE IF EXISTS copy_bench, copy_bench_models;
         CREATE UNLOGGED TABLE copy_bench (id bigserial PRIMARY KEY, sensor int8, label text, value float8, at timestamptz);
         CREATE UNLOGGED TABLE copy_bench_models (id bigserial PRIMARY KEY, sensor int8, label text, value float8, at timestamptz);",
    )
    .unwrap();
    let rows = readings(ROWS);
    let csv_data = csv(&rows);
    let truncate = |table: &str| sync_truncate(&duet_url, table);

    // ---- binary rows ----
    let (mut d_sync, mut d_async, mut tp) = (Vec::new(), Vec::new(), Vec::new());
    // Each round starts with a different contender, so none always runs
    // right after the same neighbour.
    for round in 0..rounds {
        for k in 0..3 {
            truncate("copy_bench");
            match (round + k) % 3 {
                0 => d_sync.push(timed(|| {
                    let mut copy = sync.copy_in_binary(COPY_SQL, &TYPES).unwrap();
                    for r in &rows {
                        copy.write_row(&[&r.sensor, &r.label, &r.value, &r.at]).unwrap();
                    }
                    assert_eq!(copy.finish().unwrap(), ROWS as u64);
                })),
                1 => d_async.push(timed(|| {
                    rt.block_on(async {
                        let mut copy = async_client.copy_in_binary(COPY_SQL, &TYPES).await.unwrap();
                        for r in &rows {
                            copy.write_row(&[&r.sensor, &r.label, &r.value, &r.at]).await.unwrap();
                        }
                        assert_eq!(copy.finish().await.unwrap(), ROWS as u64);
                    })
                })),
                _ => tp.push(timed(|| {
                    rt.block_on(async {
                        let sink = tpg.copy_in::<_, bytes::Bytes>(COPY_SQL).await.unwrap();
                        let writer = tokio_postgres::binary_copy::BinaryCopyInWriter::new(sink, &TYPES);
                        let mut writer = std::pin::pin!(writer);
                        for r in &rows {
                            writer
                                .as_mut()
                                .write(&[&r.sensor, &r.label, &r.value, &r.at])
                                .await
                                .unwrap();
                        }
                        assert_eq!(writer.finish().await.unwrap(), ROWS as u64);
                    })
                })),
            }
        }
    }
    report(
        &format!("COPY {ROWS} typed rows, binary (write_row)"),
        &[
            ("duet-sync copy_in_binary", d_sync),
            ("duet-async copy_in_binary", d_async),
            ("tokio-postgres BinaryCopyInWriter", tp),
        ],
    );

    // ---- csv bytes ----
    let (mut d_sync, mut d_async, mut sq, mut tp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let chunks: Vec<&[u8]> = csv_data.chunks(64 * 1024).collect();
    for round in 0..rounds {
        for k in 0..4 {
            truncate("copy_bench");
            match (round + k) % 4 {
                0 => d_sync.push(timed(|| {
                    let mut copy = sync.copy_in(CSV_SQL).unwrap();
                    for c in &chunks {
                        copy.write(c).unwrap();
                    }
                    assert_eq!(copy.finish().unwrap(), ROWS as u64);
                })),
                1 => d_async.push(timed(|| {
                    rt.block_on(async {
                        let mut copy = async_client.copy_in(CSV_SQL).await.unwrap();
                        for c in &chunks {
                            copy.write(c).await.unwrap();
                        }
                        assert_eq!(copy.finish().await.unwrap(), ROWS as u64);
                    })
                })),
                2 => sq.push(timed(|| {
                    rt.block_on(async {
                        let mut copy = sqlx_conn.copy_in_raw(CSV_SQL).await.unwrap();
                        for c in &chunks {
                            copy.send(*c).await.unwrap();
                        }
                        assert_eq!(copy.finish().await.unwrap(), ROWS as u64);
                    })
                })),
                _ => tp.push(timed(|| {
                    rt.block_on(async {
                        let sink = tpg.copy_in::<_, bytes::Bytes>(CSV_SQL).await.unwrap();
                        let mut sink = std::pin::pin!(sink);
                        for c in &chunks {
                            sink.send(bytes::Bytes::copy_from_slice(c)).await.unwrap();
                        }
                        assert_eq!(sink.finish().await.unwrap(), ROWS as u64);
                    })
                })),
            }
        }
    }
    report(
        &format!(
            "COPY {ROWS} rows as {:.1} MB of csv (raw bytes)",
            csv_data.len() as f64 / 1e6
        ),
        &[
            ("duet-sync copy_in", d_sync),
            ("duet-async copy_in", d_async),
            ("sqlx copy_in_raw", sq),
            ("tokio-postgres copy_in sink", tp),
        ],
    );

    // ---- ORM bulk insert ----
    let (mut d_copy, mut d_insert, mut diesel_like) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        for k in 0..3 {
            truncate("copy_bench_models");
            let models = readings(ROWS);
            match (round + k) % 3 {
                0 => d_copy.push(timed(|| {
                    assert_eq!(sync.run(Reading::bulk_insert(models).execute()).unwrap(), ROWS as u64);
                })),
                1 => d_insert.push(timed(|| {
                    let op = Reading::bulk_insert(models).copy_from(usize::MAX).execute();
                    assert_eq!(sync.run(op).unwrap(), ROWS as u64);
                })),
                _ => diesel_like.push(timed(|| assert_eq!(multi_row_insert(&mut pg, &models), ROWS as u64))),
            }
        }
    }
    report(
        &format!("ORM bulk insert of {ROWS} models"),
        &[
            ("duet bulk_insert().execute() (COPY)", d_copy),
            ("duet, multi-row INSERT path", d_insert),
            ("diesel-style multi-row INSERT", diesel_like),
        ],
    );

    // ---- threshold ----
    println!("\nexecute() by COPY ÷ by INSERT, by number of models (median of {rounds})");
    for n in [100, 300, 1_000, 3_000, 10_000] {
        let (mut by_copy, mut by_insert) = (Vec::new(), Vec::new());
        for _ in 0..rounds.max(5) {
            truncate("copy_bench_models");
            let models = readings(n);
            by_copy.push(timed(|| {
                sync.run(Reading::bulk_insert(models).copy_from(0).execute()).unwrap();
            }));
            truncate("copy_bench_models");
            let models = readings(n);
            by_insert.push(timed(|| {
                sync.run(Reading::bulk_insert(models).copy_from(usize::MAX).execute())
                    .unwrap();
            }));
        }
        let wall = |v: Vec<(f64, f64)>| median(v.into_iter().map(|t| t.0).collect());
        let (c, i) = (wall(by_copy), wall(by_insert));
        println!(
            "  {n:>6} models: COPY {c:>8.2} ms, INSERT {i:>8.2} ms, COPY ÷ INSERT {:.2}",
            c / i
        );
    }

    // ---- memory ----
    let bytes = (gib * (1u64 << 30) as f64) as u64;
    println!("\npeak resident memory while {gib} GiB passes (MiB, process peak before → after)");
    sync.batch_execute("DROP TABLE IF EXISTS copy_bench_big; CREATE UNLOGGED TABLE copy_bench_big (line text)")
        .unwrap();
    let line = {
        let mut l = vec![b'x'; 1023];
        l.push(b'\n');
        l
    };
    let lines = bytes / 1024;
    let block: Vec<u8> = line.repeat(64);
    let before = peak_rss_mib();
    {
        let mut copy = sync.copy_in("COPY copy_bench_big FROM STDIN").unwrap();
        for _ in 0..lines / 64 {
            copy.write(&block).unwrap();
        }
        copy.finish().unwrap();
    }
    println!("  duet-sync  copy_in : {before:.0} → {:.0}", peak_rss_mib());
    let before = peak_rss_mib();
    let mut total = 0u64;
    {
        let mut copy = sync.copy_out("COPY copy_bench_big TO STDOUT").unwrap();
        while let Some(c) = copy.chunk().unwrap() {
            total += c.len() as u64;
        }
    }
    assert_eq!(total, lines / 64 * 64 * 1024);
    println!("  duet-sync  copy_out: {before:.0} → {:.0}", peak_rss_mib());
    sync.batch_execute("TRUNCATE copy_bench_big").unwrap();
    let before = peak_rss_mib();
    rt.block_on(async {
        let mut copy = async_client.copy_in("COPY copy_bench_big FROM STDIN").await.unwrap();
        for _ in 0..lines / 64 {
            copy.write(&block).await.unwrap();
        }
        copy.finish().await.unwrap();
    });
    println!("  duet-async copy_in : {before:.0} → {:.0}", peak_rss_mib());
    let before = peak_rss_mib();
    let total = rt.block_on(async {
        let mut total = 0u64;
        let mut copy = async_client.copy_out("COPY copy_bench_big TO STDOUT").await.unwrap();
        while let Some(c) = copy.chunk().await.unwrap() {
            total += c.len() as u64;
        }
        total
    });
    assert_eq!(total, lines / 64 * 64 * 1024);
    println!("  duet-async copy_out: {before:.0} → {:.0}", peak_rss_mib());
    sync.batch_execute("DROP TABLE copy_bench_big").unwrap();
}

fn sync_truncate(url: &str, table: &str) {
    let mut c = duet_sync::Client::connect(url).expect("connect");
    c.batch_execute(&format!("TRUNCATE {table}")).expect("truncate");
}

/// What diesel's `insert_into(t).values(&rows)` sends, chunked under the
/// protocol's parameter limit as diesel users must: one prepared multi-row
/// INSERT per chunk.
fn multi_row_insert(pg: &mut postgres::Client, rows: &[Reading]) -> u64 {
    let per = 65_535 / 4;
    let mut n = 0;
    for chunk in rows.chunks(per) {
        let mut sql = String::from("INSERT INTO copy_bench_models (sensor, label, value, at) VALUES ");
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = Vec::with_capacity(chunk.len() * 4);
        for (i, r) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            let b = i * 4;
            sql.push_str(&format!("(${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4));
            params.push(&r.sensor);
            params.push(&r.label);
            params.push(&r.value);
            params.push(&r.at);
        }
        n += pg.execute(sql.as_str(), &params).unwrap();
    }
    n
}
