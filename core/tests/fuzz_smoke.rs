//! The fuzz bodies of `core/fuzz/` on stable: each runs on 20,000
//! deterministic pseudo-random inputs (shaped like what the body reads, so
//! most get past the framing) and on every input saved under
//! `core/fuzz/regressions/<target>/`. The real fuzzing is
//! `cargo +nightly fuzz run <target>` in `core/fuzz/` (see its README).

#[path = "../fuzz/bodies.rs"]
mod bodies;

use std::path::PathBuf;

const RUNS: usize = 20_000;

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Runs `body` on one input; if it panics, prints the input (hex) to save
/// under `core/fuzz/regressions/` before failing.
fn run(target: &str, body: fn(&[u8]), data: &[u8]) {
    if let Err(panic) = std::panic::catch_unwind(|| body(data)) {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        eprintln!("{target} failed on input {hex}");
        std::panic::resume_unwind(panic);
    }
}

/// Runs `body` on every file of `core/fuzz/regressions/<target>/`.
fn regressions(target: &str, body: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
    let mut files: Vec<PathBuf> = entries.map(|e| e.expect("readable directory").path()).collect();
    files.sort();
    let mut n = 0;
    for f in files
        .iter()
        .filter(|f| f.is_file() && f.extension().is_none_or(|e| e != "md"))
    {
        let data = std::fs::read(f).expect("readable regression input");
        eprintln!("regression {}", f.display());
        run(target, body, &data);
        n += 1;
    }
    n
}

/// A server stream in the command format of `bodies::server_bytes`: mostly
/// well-formed backend messages (some with a byte changed) fed in random
/// splits, with the driver's other calls and random bytes in between.
fn server_input(rng: &mut Rng, samples: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![rng.byte(), rng.byte()];
    for _ in 0..rng.below(28) {
        match rng.below(10) {
            0..=5 => {
                let mut m = samples[rng.below(samples.len())].clone();
                if rng.below(8) == 0 {
                    let i = rng.below(m.len());
                    m[i] = rng.byte();
                }
                let split = 1 + rng.below(m.len());
                for chunk in m.chunks(split) {
                    v.push(rng.below(8) as u8);
                    v.push((chunk.len() - 1) as u8);
                    v.extend_from_slice(chunk);
                }
            }
            6..=8 => {
                // Any command but the two that close the connection.
                v.push(8 + rng.below(7) as u8);
                v.push(rng.byte());
            }
            _ => {
                let n = rng.below(8);
                v.extend(rng.bytes(n));
            }
        }
    }
    v
}

/// Rows in the format of `bodies::row_decoding`, with values of the sizes
/// binary types have and array values with a plausible header.
fn row_input(rng: &mut Rng) -> Vec<u8> {
    let ncols = rng.byte();
    // Flag 0x40 (a value past 64 KiB) is slow in debug mode: seldom.
    let flags = if rng.below(64) == 0 {
        rng.byte()
    } else {
        rng.byte() & !0x40
    };
    let mut v = vec![ncols, flags];
    v.extend(rng.bytes(1 + ncols as usize % 12));
    for _ in 0..rng.below(4) * (1 + ncols as usize % 12) {
        match rng.below(6) {
            0 => v.push(0x80), // NULL
            1 => {
                // A one-dimensional array of 4-byte elements.
                let n = rng.below(4);
                let mut a = Vec::new();
                a.extend_from_slice(&1i32.to_be_bytes());
                a.extend_from_slice(&(rng.below(2) as i32).to_be_bytes());
                a.extend_from_slice(&[0, 0, 0, [23u8, 25, 16][rng.below(3)]]);
                a.extend_from_slice(&(n as i32).to_be_bytes());
                a.extend_from_slice(&1i32.to_be_bytes());
                for _ in 0..n {
                    a.extend_from_slice(&4i32.to_be_bytes());
                    a.extend(rng.bytes(4));
                }
                v.push(a.len() as u8);
                v.extend(a);
            }
            2..=4 => {
                let n = [1usize, 2, 4, 8, 16][rng.below(5)];
                v.push(n as u8);
                v.extend(rng.bytes(n));
            }
            _ => {
                let n = rng.below(40);
                v.push(n as u8);
                v.extend(rng.bytes(n));
            }
        }
    }
    v
}

/// Connection strings built from the pieces the parser looks for.
fn config_input(rng: &mut Rng) -> Vec<u8> {
    const PIECES: &[&str] = &[
        "postgres://",
        "postgresql://",
        "mysql://",
        "user",
        "password",
        "host",
        "port",
        "dbname",
        "options",
        "connect_timeout",
        "statement_cache_capacity",
        "max_message_size",
        "local_socket",
        "sslmode",
        "=",
        "'",
        "\\",
        "%",
        "%2F",
        "%4",
        "%ff",
        "@",
        ":",
        "/",
        "?",
        "&",
        "[",
        "]",
        "[::1]",
        " ",
        "\t",
        "secret-password",
        "localhost",
        "5432",
        "65536",
        "-1",
        "é",
        "\u{0}",
    ];
    let mut v = Vec::new();
    for _ in 0..rng.below(16) {
        match rng.below(8) {
            0 => v.push(rng.byte()),
            1 => v.push(b'a' + rng.below(26) as u8),
            _ => v.extend_from_slice(PIECES[rng.below(PIECES.len())].as_bytes()),
        }
    }
    v
}

#[test]
fn server_bytes() {
    let samples = bodies::sample_messages();
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..RUNS {
        run("server_bytes", bodies::server_bytes, &server_input(&mut rng, &samples));
    }
    regressions("server_bytes", bodies::server_bytes);
}

#[test]
fn row_decoding() {
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..RUNS {
        run("row_decoding", bodies::row_decoding, &row_input(&mut rng));
    }
    regressions("row_decoding", bodies::row_decoding);
}

#[test]
fn config_strings() {
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..RUNS {
        run("config_strings", bodies::config_strings, &config_input(&mut rng));
    }
    regressions("config_strings", bodies::config_strings);
}
