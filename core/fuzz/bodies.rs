//! The fuzz bodies of duet-core, shared by the cargo-fuzz targets
//! (`fuzz_targets/*.rs`, nightly, libFuzzer) and by the stable smoke test
//! `core/tests/fuzz_smoke.rs`, which runs them on deterministic
//! pseudo-random inputs and on every file under `regressions/<target>/`.
//!
//! Each body takes plain bytes and uses only duet-core's public API (and
//! the types duet-core decodes into), so it compiles without libfuzzer or
//! `arbitrary`. The property every body checks: no panic, no unbounded
//! memory (libFuzzer's `-rss_limit_mb` / `-malloc_limit_mb` catch that),
//! every failure is an [`Error`] that formats; plus the few invariants
//! asserted below (a failed `handle_input` closes the connection, every
//! ticket has a result once the server hung up, …).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use duet_core::ops::{atomic, pipeline, prepare, query, simple_query};
use duet_core::{Config, Connection, Error, Operation, Param, Request, Response, Row, Statement, Step, Ticket, Type};

// ---------------------------------------------------------------------------
// Reading the input
// ---------------------------------------------------------------------------

/// The fuzz input, read front to back; past its end every read is zero or
/// empty, so a body never fails for a short input.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

// ---------------------------------------------------------------------------
// Backend messages, encoded by hand (postgres-protocol only parses them)
// ---------------------------------------------------------------------------

/// Appends one backend message: tag, `i32` length counting itself, body.
pub fn msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// AuthenticationOk, BackendKeyData, ReadyForQuery('I'): a valid session start.
pub fn handshake() -> Vec<u8> {
    let mut out = Vec::new();
    msg(&mut out, b'R', &0i32.to_be_bytes());
    let mut key = 4242i32.to_be_bytes().to_vec();
    key.extend_from_slice(&0x5eed_i32.to_be_bytes());
    msg(&mut out, b'K', &key);
    ready_for_query(&mut out, b'I');
    out
}

pub fn ready_for_query(out: &mut Vec<u8>, status: u8) {
    msg(out, b'Z', &[status]);
}

/// A RowDescription of binary columns named `c0`, `c1`, … of these types.
pub fn row_description(out: &mut Vec<u8>, types: &[u32]) {
    let mut body = (types.len() as i16).to_be_bytes().to_vec();
    for (i, oid) in types.iter().enumerate() {
        cstr(&mut body, &format!("c{i}"));
        body.extend_from_slice(&0u32.to_be_bytes()); // table oid
        body.extend_from_slice(&0i16.to_be_bytes()); // column id
        body.extend_from_slice(&oid.to_be_bytes());
        body.extend_from_slice(&(-1i16).to_be_bytes()); // type size
        body.extend_from_slice(&(-1i32).to_be_bytes()); // type modifier
        body.extend_from_slice(&1i16.to_be_bytes()); // binary
    }
    msg(out, b'T', &body);
}

/// A DataRow of these values (`None`: NULL).
pub fn data_row(out: &mut Vec<u8>, values: &[Option<&[u8]>]) {
    let mut body = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        match v {
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v);
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    msg(out, b'D', &body);
}

pub fn command_complete(out: &mut Vec<u8>, tag: &str) {
    let mut body = Vec::new();
    cstr(&mut body, tag);
    msg(out, b'C', &body);
}

/// An ErrorResponse (or, with tag `N`, a NoticeResponse).
pub fn error_response(out: &mut Vec<u8>, tag: u8, severity: &str, code: &str, message: &str) {
    let mut body = Vec::new();
    for (field, value) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)] {
        body.push(field);
        cstr(&mut body, value);
    }
    body.push(0);
    msg(out, tag, &body);
}

/// A handful of well-formed backend messages: the stable smoke test splices
/// them into its random inputs so they get past the framing.
pub fn sample_messages() -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    let mut one = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut m = Vec::new();
        f(&mut m);
        all.push(m);
    };
    one(&|m| msg(m, b'1', &[])); // ParseComplete
    one(&|m| msg(m, b'2', &[])); // BindComplete
    one(&|m| msg(m, b'3', &[])); // CloseComplete
    one(&|m| msg(m, b'n', &[])); // NoData
    one(&|m| msg(m, b'I', &[])); // EmptyQueryResponse
    one(&|m| msg(m, b's', &[])); // PortalSuspended
    one(&|m| msg(m, b't', &[0, 1, 0, 0, 0, 23])); // ParameterDescription(int4)
    one(&|m| msg(m, b't', &[0, 0])); // ParameterDescription()
    one(&|m| row_description(m, &[23]));
    one(&|m| row_description(m, &[25, 1007]));
    one(&|m| row_description(m, &[]));
    one(&|m| data_row(m, &[Some(&7i32.to_be_bytes())]));
    one(&|m| data_row(m, &[Some(b"x"), None]));
    one(&|m| data_row(m, &[]));
    one(&|m| command_complete(m, "SELECT 1"));
    one(&|m| command_complete(m, "BEGIN"));
    one(&|m| command_complete(m, "COMMIT"));
    one(&|m| command_complete(m, "ROLLBACK"));
    one(&|m| ready_for_query(m, b'I'));
    one(&|m| ready_for_query(m, b'T'));
    one(&|m| ready_for_query(m, b'E'));
    one(&|m| error_response(m, b'E', "ERROR", "42601", "syntax error"));
    one(&|m| error_response(m, b'E', "ERROR", "0A000", "cached plan must not change result type"));
    one(&|m| error_response(m, b'E', "ERROR", "57014", "canceling statement due to user request"));
    one(&|m| error_response(m, b'E', "FATAL", "57P01", "terminating connection"));
    one(&|m| error_response(m, b'N', "NOTICE", "00000", "hello"));
    one(&|m| {
        let mut b = Vec::new();
        cstr(&mut b, "TimeZone");
        cstr(&mut b, "UTC");
        msg(m, b'S', &b)
    });
    one(&|m| {
        let mut b = 99i32.to_be_bytes().to_vec();
        cstr(&mut b, "chan");
        cstr(&mut b, "payload");
        msg(m, b'A', &b)
    });
    one(&|m| msg(m, b'H', &[0, 0, 1, 0, 0])); // CopyOutResponse
    one(&|m| msg(m, b'G', &[0, 0, 1, 0, 0])); // CopyInResponse
    one(&|m| msg(m, b'd', b"row\n")); // CopyData
    one(&|m| msg(m, b'c', &[])); // CopyDone
    one(&|m| msg(m, b'R', &0i32.to_be_bytes())); // AuthenticationOk
    one(&|m| msg(m, b'R', &3i32.to_be_bytes())); // cleartext password
    one(&|m| msg(m, b'R', &[0, 0, 0, 5, 1, 2, 3, 4])); // MD5 password
    one(&|m| {
        let mut b = 10i32.to_be_bytes().to_vec();
        cstr(&mut b, "SCRAM-SHA-256");
        b.push(0);
        msg(m, b'R', &b) // SASL
    });
    one(&|m| msg(m, b'R', &[0, 0, 0, 11, b'r', b'=', b'x'])); // SASLContinue
    one(&|m| msg(m, b'R', &[0, 0, 0, 12, b'v', b'=', b'x'])); // SASLFinal
    one(&|m| msg(m, b'K', &[0, 0, 0, 1, 0, 0, 0, 2])); // BackendKeyData
    all
}

// ---------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------

/// Every failure is an `Error` whose accessors and formatting work.
fn check_error(e: &Error) {
    let shown = e.to_string();
    let _ = format!("{e:?}");
    let _ = (e.code(), e.is_fatal(), e.as_db_error());
    assert!(!shown.is_empty(), "an error with an empty message: {e:?}");
}

/// A valid config with a password (so the auth paths have one to send) and
/// limits picked by `b`.
fn fuzz_config(b: u8) -> Config {
    let cache = [0, 1, 2, 256][(b & 3) as usize];
    let max = if b & 4 != 0 { 1 << 12 } else { 256 << 20 };
    let timeout = if b & 8 != 0 { 10 } else { 0 };
    // prefer: the server's first byte answers the SSLRequest ('S' starts
    // TLS over the fuzzer's bytes, 'N' goes on in plaintext).
    let ssl = if b & 16 != 0 { "prefer" } else { "disable" };
    let s = format!(
        "user=fuzz password=fuzz-password dbname=db application_name=fz statement_cache_capacity={cache} \
         max_message_size={max} connect_timeout={timeout} sslmode={ssl}"
    );
    Config::parse(&s).expect("the fuzz config parses")
}

/// Reads what the client would send, as a driver does.
fn drain_transmit(conn: &mut Connection, n: usize) {
    let len = conn.poll_transmit().len();
    conn.advance_transmit(n.min(len));
}

/// Touches every value of a result the way an application would.
fn consume_response(r: Result<Response, Error>, statements: &mut Vec<Statement>) {
    match r {
        Ok(Response::Rows(q)) => {
            let _ = q.rows_affected();
            for row in q.rows.iter().take(8) {
                touch_row(row);
            }
        }
        Ok(Response::Prepared(s)) => {
            let _ = (s.name().len(), s.params().len(), s.columns().len(), format!("{s:?}"));
            if statements.len() < 4 {
                statements.push(s);
            }
        }
        Ok(Response::CopyOut { rest, tag }) => {
            let _ = (rest.iter().map(|c| c.len()).sum::<usize>(), tag);
        }
        Ok(Response::Portal(p)) => {
            let _ = (p.name().len(), p.columns().len());
        }
        Ok(Response::Simple(msgs)) => {
            for m in msgs.iter().take(16) {
                if let duet_core::SimpleMessage::Row(r) = m {
                    for i in 0..=r.values.len().min(8) {
                        let _ = r.get(i);
                    }
                }
            }
        }
        Err(e) => check_error(&e),
    }
}

fn touch_row(row: &Row) {
    let _ = format!("{row:?}");
    for i in 0..=row.len().min(10) {
        let _ = row.raw(i);
        if let Err(e) = row.try_get::<i32>(i) {
            check_error(&e);
        }
        let _ = row.try_get::<Option<String>>(i);
        let _ = row.try_get::<Vec<u8>>(i);
        let _ = row.try_get::<Vec<Option<i32>>>(i);
    }
    let _ = row.try_get::<i64>("c0");
}

// ---------------------------------------------------------------------------
// 1. server_bytes
// ---------------------------------------------------------------------------

/// The operations phase (c) drives; `p` holds one `int4` parameter.
fn make_op<'a>(kind: u8, p: &'a [Param<'a>], now: Instant) -> Box<dyn Operation<Output = ()> + 'a> {
    fn done<T>(_: T) -> Result<(), Error> {
        Ok(())
    }
    match kind % 7 {
        0 => Box::new(atomic(pipeline((query("SELECT $1", p).rows(), query("SELECT 2", &[]).one()))).map(done)),
        1 => Box::new(pipeline((query("SELECT $1", p).opt(), simple_query("SELECT 1; SELECT 2", None))).map(done)),
        2 => Box::new(atomic(atomic(query("UPDATE t SET x = $1", p).affected())).map(done)),
        3 => Box::new(prepare("SELECT $1::int4", &[]).map(done)),
        4 => Box::new(
            query("SELECT $1", p)
                .deadline(Some(now + Duration::from_secs(1)))
                .for_each(|row| {
                    let _ = row.try_get::<i32>(0);
                    Ok(())
                })
                .map(done),
        ),
        5 => Box::new(pipeline(vec![query("SELECT 1", &[]).rows(), query("SELECT $1", p).rows()]).map(done)),
        _ => Box::new(
            atomic(duet_core::ops::then(duet_core::ops::portal("SELECT $1", p), |pt| {
                Ok(duet_core::ops::fetch(&pt, 1))
            }))
            .map(done),
        ),
    }
}

/// Submits one request of the kind `k` picks. Errors (a closed connection)
/// are checked and dropped.
fn submit_one(conn: &mut Connection, k: u8, statements: &[Statement], tickets: &mut Vec<Ticket>, now: Instant) {
    let one: [Param; 1] = [&1i32];
    let two: [Param; 2] = [&7i64, &"text"];
    let r = match k % 12 {
        0 => conn.submit(Request::query("SELECT $1", &one), now),
        1 => conn.submit(Request::simple("SELECT 1; SELECT 'a'"), now),
        2 => conn.submit(Request::prepare("SELECT $1::int4", &[]), now),
        3 => conn.submit(Request::query("SELECT $1, $2", &two), now),
        4 => conn.submit(
            Request::query("SELECT $1", &one).deadline(Some(now + Duration::from_millis(500))),
            now,
        ),
        5 => conn.submit(Request::prepare("SELECT $1", &[Type::INT8]), now),
        6 => match statements.get((k / 10) as usize % statements.len().max(1)) {
            Some(s) => conn.submit(Request::execute(s, &one), now),
            None => conn.submit(Request::simple(""), now),
        },
        7 => {
            conn.begin_batch();
            let a = conn.submit(Request::query("SELECT $1", &one), now);
            let b = conn.submit(Request::query("SELECT 2", &[]), now);
            conn.end_batch();
            if let Ok(t) = a {
                tickets.push(t);
            }
            b
        }
        8 => {
            // As a retrying `Query` does (on a closed connection too).
            conn.forget_statement("SELECT $1");
            conn.submit(Request::query("SELECT $1", &one), now)
        }
        9 => conn.submit_copy_out("COPY t TO STDOUT", now),
        10 => duet_core::copy::CopyIn::start(conn, "COPY t FROM STDIN", now).map(|mut copy| {
            copy.write(conn, b"1\tone\n");
            // Finished, abandoned, or left open (later submits are refused).
            match (k / 12) % 3 {
                0 => conn.copy_in_end(copy.ticket(), None),
                1 => conn.abandon(copy.ticket()),
                _ => {}
            }
            copy.ticket()
        }),
        _ => {
            conn.submit_detached("ROLLBACK");
            return;
        }
    };
    match r {
        Ok(t) => tickets.push(t),
        Err(e) => check_error(&e),
    }
}

/// Arbitrary bytes as the server's byte stream, fed in arbitrary splits at
/// each phase of a connection, with the driver's other calls in between as
/// the input says.
///
/// Input: `[setup, config, then commands…]`. `setup % 3` is the phase:
/// 0 right after `Connection::new`, 1 after a valid handshake with requests
/// submitted, 2 the same with an operation driven by `Operation::poll`.
/// Each command is one byte; `cmd % 16 < 8` feeds the next `len + 1` bytes
/// (`len` being the byte after the command) to `handle_input`.
pub fn server_bytes(data: &[u8]) {
    let mut input = Input::new(data);
    let setup = input.byte();
    let phase = setup % 3;
    let config_byte = input.byte();
    let config = fuzz_config(config_byte);
    let mut now = Instant::now();
    let mut conn = Connection::new(&config, now);
    let one: [Param; 1] = [&1i32];
    let mut tickets: Vec<Ticket> = Vec::new();
    let mut statements: Vec<Statement> = Vec::new();
    let mut op: Option<Box<dyn Operation<Output = ()> + '_>> = None;

    if phase >= 1 {
        if setup & 0x80 != 0 {
            // Submitted before the session is ready: held until it is.
            submit_one(&mut conn, setup >> 3, &statements, &mut tickets, now);
        }
        drain_transmit(&mut conn, usize::MAX);
        if config_byte & 16 != 0 {
            // Declines TLS; the StartupMessage goes out next.
            let r = conn.handle_input(b"N", now);
            assert!(r.is_ok(), "declining TLS failed: {r:?}");
            drain_transmit(&mut conn, usize::MAX);
        }
        let r = conn.handle_input(&handshake(), now);
        assert!(r.is_ok() && conn.is_ready(), "the scripted handshake failed: {r:?}");
        if phase == 1 {
            for k in [0, 1, 2] {
                submit_one(&mut conn, k, &statements, &mut tickets, now);
            }
        } else {
            op = Some(make_op(setup >> 2, &one, now));
        }
    }

    while !input.is_empty() {
        let cmd = input.byte();
        match cmd % 16 {
            0..=7 => {
                let n = input.byte() as usize + 1;
                let chunk = input.take(n);
                if let Err(e) = conn.handle_input(chunk, now) {
                    check_error(&e);
                    assert!(
                        conn.closed_reason().is_some(),
                        "handle_input failed but left the connection open"
                    );
                    assert!(
                        conn.handle_input(b"Z\0\0\0\x05I", now).is_err(),
                        "input accepted after a failure"
                    );
                }
            }
            8 => {
                now += Duration::from_millis(u64::from(input.byte()) * 40);
                conn.handle_timeout(now);
                if let Some(c) = conn.poll_cancel() {
                    assert_eq!(c.encode().len(), 16);
                }
            }
            9 => drain_transmit(&mut conn, input.byte() as usize * 8),
            10 => {
                for t in tickets.clone() {
                    if let Some(r) = conn.take_result(t) {
                        tickets.retain(|x| *x != t);
                        consume_response(r, &mut statements);
                    }
                }
            }
            11 => {
                for _ in 0..64 {
                    match conn.poll_event() {
                        Some(ev) => {
                            let _ = format!("{ev:?}");
                        }
                        None => break,
                    }
                }
                if let Err(e) = conn.next_event() {
                    check_error(&e);
                }
                let _ = (
                    conn.poll_timeout(),
                    conn.wants_input(),
                    conn.in_flight(),
                    conn.is_idle(),
                );
                let _ = (conn.transaction_status(), conn.transaction_open(), conn.cancel_token());
                let _ = (
                    conn.parameter("TimeZone"),
                    conn.events_dropped(),
                    conn.cached_statements(),
                );
                if let Err(e) = conn.interest(cmd & 0x10 != 0) {
                    check_error(&e);
                }
            }
            12 => submit_one(&mut conn, input.byte(), &statements, &mut tickets, now),
            13 => {
                if op.is_none() && phase == 2 {
                    op = Some(make_op(input.byte(), &one, now));
                }
            }
            14 => {
                if let Some(mut o) = op.take() {
                    o.abandon(&mut conn);
                } else if let Some(t) = tickets.pop() {
                    conn.abandon(t);
                }
            }
            _ => {
                if cmd & 0x10 != 0 {
                    conn.handle_eof(now);
                } else {
                    conn.close();
                }
            }
        }
        // A driver polls its operation after every step.
        if let Some(o) = op.as_mut() {
            if let Step::Ready(r) = o.poll(&mut conn, now) {
                if let Err(e) = r {
                    check_error(&e);
                }
                op = None;
            }
        }
    }

    // The server hangs up: nothing may wait forever.
    conn.handle_eof(now);
    drain_transmit(&mut conn, usize::MAX);
    if let Some(mut o) = op.take() {
        if let Step::Pending = o.poll(&mut conn, now) {
            drain_transmit(&mut conn, usize::MAX);
            assert!(
                conn.interest(false).is_err(),
                "an operation is pending on a closed connection that does not say so"
            );
            o.abandon(&mut conn);
        }
    }
    for t in tickets {
        match conn.take_result(t) {
            Some(r) => consume_response(r, &mut statements),
            None => panic!("ticket {t:?} has no result after the server closed the connection"),
        }
    }
}

// ---------------------------------------------------------------------------
// 2. row_decoding
// ---------------------------------------------------------------------------

/// Column types the rows are described with: everything postgres-types
/// (with duet's chrono, uuid and serde_json features) decodes, and a few it
/// does not (numeric, interval, an unknown OID) to check the refusals.
const COLUMN_TYPES: &[u32] = &[
    16,    // bool
    17,    // bytea
    18,    // "char"
    19,    // name
    20,    // int8
    21,    // int2
    23,    // int4
    25,    // text
    26,    // oid
    114,   // json
    3802,  // jsonb
    700,   // float4
    701,   // float8
    1043,  // varchar
    1042,  // bpchar
    1082,  // date
    1083,  // time
    1114,  // timestamp
    1184,  // timestamptz
    2950,  // uuid
    869,   // inet
    1000,  // bool[]
    1001,  // bytea[]
    1005,  // int2[]
    1007,  // int4[]
    1016,  // int8[]
    1009,  // text[]
    1015,  // varchar[]
    1021,  // float4[]
    1022,  // float8[]
    2951,  // uuid[]
    1115,  // timestamp[]
    1185,  // timestamptz[]
    1182,  // date[]
    199,   // json[]
    3807,  // jsonb[]
    1041,  // inet[]
    1700,  // numeric (no FromSql in duet's features)
    1186,  // interval (none either)
    705,   // unknown
    77777, // an OID no built-in type has
];

/// Decodes column `i` into every Rust type duet's `FromSql` impls cover.
fn decode_all(row: &Row, i: usize) {
    fn d<'a, T: duet_core::FromSql<'a> + std::fmt::Debug>(row: &'a Row, i: usize) {
        // A refused type takes one path whatever the bytes: tried for a
        // few types only (below), which keeps the debug-mode smoke fast.
        if row.columns().get(i).is_none_or(|c| !T::accepts(&c.type_)) {
            return;
        }
        match row.try_get::<T>(i) {
            Ok(v) => {
                let _ = format!("{v:?}");
            }
            Err(e) => check_error(&e),
        }
    }
    use chrono::{DateTime, FixedOffset, Local, NaiveDate, NaiveDateTime, NaiveTime, Utc};
    // Refusals: a type the column is not, NULL into a non-Option, a missing
    // column; each must be a Decode error, never a panic.
    for e in [
        row.try_get::<i32>(i).err(),
        row.try_get::<String>(i).err(),
        row.try_get::<Vec<i64>>(i).err(),
        row.try_get::<uuid::Uuid>(i).err(),
    ]
    .iter()
    .flatten()
    {
        check_error(e);
    }
    d::<bool>(row, i);
    d::<i8>(row, i);
    d::<i16>(row, i);
    d::<i32>(row, i);
    d::<i64>(row, i);
    d::<u32>(row, i);
    d::<f32>(row, i);
    d::<f64>(row, i);
    d::<String>(row, i);
    d::<&str>(row, i);
    d::<Box<str>>(row, i);
    d::<Vec<u8>>(row, i);
    d::<&[u8]>(row, i);
    d::<Option<i32>>(row, i);
    d::<Option<String>>(row, i);
    d::<Option<&[u8]>>(row, i);
    d::<NaiveDateTime>(row, i);
    d::<DateTime<Utc>>(row, i);
    d::<DateTime<FixedOffset>>(row, i);
    d::<DateTime<Local>>(row, i);
    d::<NaiveDate>(row, i);
    d::<NaiveTime>(row, i);
    d::<SystemTime>(row, i);
    d::<uuid::Uuid>(row, i);
    d::<serde_json::Value>(row, i);
    d::<duet_core::types::Json<serde_json::Value>>(row, i);
    d::<IpAddr>(row, i);
    d::<HashMap<String, Option<String>>>(row, i);
    d::<Vec<bool>>(row, i);
    d::<Vec<i16>>(row, i);
    d::<Vec<i32>>(row, i);
    d::<Vec<Option<i32>>>(row, i);
    d::<Vec<i64>>(row, i);
    d::<Vec<f32>>(row, i);
    d::<Vec<f64>>(row, i);
    d::<Vec<String>>(row, i);
    d::<Vec<Option<String>>>(row, i);
    d::<Vec<&str>>(row, i);
    d::<Vec<Vec<u8>>>(row, i);
    d::<Vec<uuid::Uuid>>(row, i);
    d::<Vec<NaiveDateTime>>(row, i);
    d::<Vec<DateTime<Utc>>>(row, i);
    d::<Vec<NaiveDate>>(row, i);
    d::<Vec<serde_json::Value>>(row, i);
    d::<Vec<IpAddr>>(row, i);
    d::<Box<[i32]>>(row, i);
}

/// Arbitrary bytes as DataRow values of columns of many types, decoded with
/// A session that met a type it does not know looks it up before handing
/// the result out: answered here as a server that has no such type.
fn answer_type_lookup(types: &[u32], feed: &mut dyn FnMut(&[u8])) {
    if !types.iter().any(|t| Type::from_oid(*t).is_none()) {
        return;
    }
    let mut s = Vec::new();
    msg(&mut s, b'1', &[]);
    msg(&mut s, b'2', &[]);
    // oid, name, schema, typtype, is_array, elem, base, range subtype,
    // labels, field names, field types
    row_description(&mut s, &[26, 25, 25, 25, 16, 26, 26, 26, 1009, 1009, 1028]);
    command_complete(&mut s, "SELECT 0");
    ready_for_query(&mut s, b'I');
    feed(&s);
}

/// `Row::try_get` into every Rust type that applies (and many that do not).
///
/// Input: `[ncols, flags, a type byte per column, then per value a header
/// byte (bit 7: NULL, else the value's length) and the value's bytes]`.
/// The server's messages are fed through a real `Connection` after a valid
/// handshake, in chunks whose size `flags` picks; `flags & 1` sends the
/// rows of an `execute` of a prepared statement instead of a `query`.
pub fn row_decoding(data: &[u8]) {
    let mut input = Input::new(data);
    let ncols = 1 + input.byte() as usize % 12;
    let flags = input.byte();
    let types: Vec<u32> = (0..ncols)
        .map(|_| COLUMN_TYPES[input.byte() as usize % COLUMN_TYPES.len()])
        .collect();
    let mut rows: Vec<Vec<Option<Vec<u8>>>> = Vec::new();
    while !input.is_empty() && rows.len() < 16 {
        let row = (0..ncols)
            .map(|_| {
                let h = input.byte();
                (h & 0x80 == 0).then(|| input.take(h as usize).to_vec())
            })
            .collect();
        rows.push(row);
    }
    if flags & 0x40 != 0 {
        // Values past 64 KiB into the row: positions the row cannot keep
        // inline, found by walking.
        if let Some(Some(v)) = rows.first_mut().map(|r| &mut r[0]) {
            let pattern = if v.is_empty() { vec![0] } else { v.clone() };
            *v = pattern.iter().copied().cycle().take(66_000).collect();
        }
    }

    let now = Instant::now();
    let mut conn = Connection::new(&fuzz_config(3), now);
    let feed = |conn: &mut Connection, bytes: &[u8]| {
        let chunk = 1 + (flags >> 1) as usize;
        for c in bytes.chunks(if flags & 0x80 != 0 { chunk } else { bytes.len().max(1) }) {
            conn.handle_input(c, now).expect("well-formed frames are accepted");
        }
        drain_transmit(conn, usize::MAX);
    };
    feed(&mut conn, &handshake());

    let stmt = if flags & 1 != 0 {
        let t = conn.submit(Request::prepare("SELECT fuzz", &[]), now).expect("prepare");
        let mut s = Vec::new();
        msg(&mut s, b'1', &[]);
        msg(&mut s, b't', &[0, 0]);
        row_description(&mut s, &types);
        ready_for_query(&mut s, b'I');
        feed(&mut conn, &s);
        answer_type_lookup(&types, &mut |b| feed(&mut conn, b));
        match conn.take_result(t) {
            Some(Ok(Response::Prepared(st))) => Some(st),
            other => panic!("prepare did not complete: {other:?}"),
        }
    } else {
        None
    };
    let t = match &stmt {
        Some(st) => conn.submit(Request::execute(st, &[]), now),
        None => conn.submit(Request::query("SELECT fuzz", &[]), now),
    }
    .expect("submit");

    let mut s = Vec::new();
    if stmt.is_none() {
        msg(&mut s, b'1', &[]);
    }
    msg(&mut s, b'2', &[]);
    if stmt.is_none() {
        row_description(&mut s, &types);
    }
    for r in &rows {
        data_row(&mut s, &r.iter().map(|v| v.as_deref()).collect::<Vec<_>>());
    }
    command_complete(&mut s, &format!("SELECT {}", rows.len()));
    ready_for_query(&mut s, b'I');
    feed(&mut conn, &s);
    if stmt.is_none() {
        answer_type_lookup(&types, &mut |b| feed(&mut conn, b));
    }

    let result = match conn.take_result(t) {
        Some(Ok(Response::Rows(q))) => q,
        other => panic!("the query did not complete: {other:?}"),
    };
    assert_eq!(result.rows.len(), rows.len());
    for (row, sent) in result.rows.iter().zip(&rows) {
        assert_eq!(row.len(), ncols);
        let _ = format!("{row:?}");
        for (i, v) in sent.iter().enumerate() {
            assert_eq!(row.raw(i), v.as_deref(), "column {i} does not hold the bytes sent");
            decode_all(row, i);
        }
        // Past the last column, and by name.
        decode_all(row, ncols);
        assert!(row.try_get::<Option<i32>>("nope").is_err());
        let _ = row.try_get::<Option<String>>(format!("c{}", flags as usize % (ncols + 1)).as_str());
    }
}

// ---------------------------------------------------------------------------
// 3. config_strings
// ---------------------------------------------------------------------------

/// Whether `config_strings` asserts that `{:?}` of a parsed config hides a
/// password of 6 characters or more. Set `DUET_FUZZ_SKIP_REDACTION=1` to
/// fuzz the parser alone while that check fails.
pub const CHECK_REDACTION: bool = true;

fn check_redaction() -> bool {
    static SKIP: OnceLock<bool> = OnceLock::new();
    CHECK_REDACTION && !*SKIP.get_or_init(|| std::env::var_os("DUET_FUZZ_SKIP_REDACTION").is_some())
}

/// How often `needle` (or its `{:?}`-escaped form) occurs in `hay`.
fn occurrences(hay: &str, needle: &str) -> usize {
    let escaped = format!("{needle:?}");
    let escaped = &escaped[1..escaped.len() - 1];
    let mut n = hay.matches(needle).count();
    if escaped != needle {
        n += hay.matches(escaped).count();
    }
    n
}

/// Arbitrary text (non-UTF-8 made lossy) to `Config::parse`: never a
/// panic; a parsed config's `Debug` never shows its password.
pub fn config_strings(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let config = match Config::parse(&text) {
        Ok(c) => c,
        Err(e) => {
            check_error(&e);
            return;
        }
    };
    let _ = (config.validate(), config.for_side_connection());
    for e in config.endpoints().expect("a parsed config has endpoints") {
        let _ = (e.to_string(), config.for_endpoint(&e));
    }
    // Files named in the text are not the fuzzer's to read.
    if config.ssl_root_cert.is_none() && config.ssl_cert.is_none() && config.ssl_key.is_none() {
        let _ = Connection::new(&config, Instant::now());
    }
    let Some(pw) = config.password.clone() else { return };
    if !check_redaction() || pw.chars().count() < 6 {
        return;
    }
    // The same config with another password of the same length: whatever
    // the redaction prints in its place, any extra occurrence is a leak
    // (and a password that also happens to be, say, the host name is not).
    let mut other = config.clone();
    other.password = Some("\u{1}".repeat(pw.chars().count()));
    let shown = format!("{config:?}");
    let baseline = format!("{other:?}");
    assert!(
        occurrences(&shown, &pw) <= occurrences(&baseline, &pw),
        "Debug of a Config shows its password {pw:?}: {shown}"
    );
}
