//! Test-only scaffolding shared by the server-less test files: an encoder of
//! PostgreSQL backend messages (protocol 3.0: tag byte, `i32` length that
//! counts itself, body), a parser of the frontend messages the core sends,
//! a small fake server that answers them the way PostgreSQL would, and
//! helpers to compare results.
//!
//! postgres-protocol only *parses* backend messages, so the encoder is
//! written here. It is deliberately dumb — it writes exactly the bytes it is
//! told to — so tests can also build malformed frames.
//!
//! Every test binary compiles this module separately and uses a different
//! part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Instant;

use duet_core::{Config, Connection, Error, Response};

// ---------------------------------------------------------------------------
// Backend message encoder
// ---------------------------------------------------------------------------

/// One `RowDescription` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub table_oid: u32,
    pub column_id: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    pub format: i16,
}

pub const INT4: u32 = 23;
pub const TEXT: u32 = 25;

impl Field {
    /// A computed (table-less) column of the given type, binary format.
    pub fn new(name: &str, type_oid: u32) -> Field {
        Field {
            name: name.to_string(),
            table_oid: 0,
            column_id: 0,
            type_oid,
            type_size: -1,
            type_modifier: -1,
            format: 1,
        }
    }
    pub fn int4(name: &str) -> Field {
        Field {
            type_size: 4,
            ..Field::new(name, INT4)
        }
    }
    /// A text column in text format (what the simple protocol sends).
    pub fn text(name: &str) -> Field {
        Field {
            format: 0,
            ..Field::new(name, TEXT)
        }
    }
}

/// Builds a stream of backend messages. Each method appends one message.
#[derive(Debug, Default, Clone)]
pub struct Backend {
    buf: Vec<u8>,
}

impl Backend {
    pub fn new() -> Backend {
        Backend::default()
    }

    pub fn build(self) -> Vec<u8> {
        self.buf
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Any message: `tag`, a length computed from `body`, `body`.
    pub fn raw(mut self, tag: u8, body: &[u8]) -> Backend {
        self.buf.push(tag);
        self.buf.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        self.buf.extend_from_slice(body);
        self
    }

    /// Appends already-encoded bytes verbatim.
    pub fn extend(mut self, bytes: &[u8]) -> Backend {
        self.buf.extend_from_slice(bytes);
        self
    }

    fn auth(self, code: i32, rest: &[u8]) -> Backend {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(rest);
        self.raw(b'R', &body)
    }

    pub fn auth_ok(self) -> Backend {
        self.auth(0, &[])
    }
    pub fn auth_cleartext(self) -> Backend {
        self.auth(3, &[])
    }
    pub fn auth_md5(self, salt: [u8; 4]) -> Backend {
        self.auth(5, &salt)
    }
    pub fn auth_sasl(self, mechanisms: &[&str]) -> Backend {
        let mut body = Vec::new();
        for m in mechanisms {
            cstr(&mut body, m);
        }
        body.push(0);
        self.auth(10, &body)
    }
    pub fn auth_sasl_continue(self, data: &[u8]) -> Backend {
        self.auth(11, data)
    }
    pub fn auth_sasl_final(self, data: &[u8]) -> Backend {
        self.auth(12, data)
    }

    pub fn backend_key_data(self, process_id: i32, secret_key: i32) -> Backend {
        let mut body = process_id.to_be_bytes().to_vec();
        body.extend_from_slice(&secret_key.to_be_bytes());
        self.raw(b'K', &body)
    }

    pub fn parameter_status(self, name: &str, value: &str) -> Backend {
        let mut body = Vec::new();
        cstr(&mut body, name);
        cstr(&mut body, value);
        self.raw(b'S', &body)
    }

    /// `status`: `b'I'` idle, `b'T'` in a transaction, `b'E'` failed one.
    pub fn ready_for_query(self, status: u8) -> Backend {
        self.raw(b'Z', &[status])
    }

    pub fn parse_complete(self) -> Backend {
        self.raw(b'1', &[])
    }
    pub fn bind_complete(self) -> Backend {
        self.raw(b'2', &[])
    }
    pub fn close_complete(self) -> Backend {
        self.raw(b'3', &[])
    }
    pub fn no_data(self) -> Backend {
        self.raw(b'n', &[])
    }
    pub fn empty_query_response(self) -> Backend {
        self.raw(b'I', &[])
    }
    pub fn portal_suspended(self) -> Backend {
        self.raw(b's', &[])
    }

    pub fn parameter_description(self, oids: &[u32]) -> Backend {
        let mut body = (oids.len() as i16).to_be_bytes().to_vec();
        for o in oids {
            body.extend_from_slice(&o.to_be_bytes());
        }
        self.raw(b't', &body)
    }

    pub fn row_description(self, fields: &[Field]) -> Backend {
        let mut body = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            cstr(&mut body, &f.name);
            body.extend_from_slice(&f.table_oid.to_be_bytes());
            body.extend_from_slice(&f.column_id.to_be_bytes());
            body.extend_from_slice(&f.type_oid.to_be_bytes());
            body.extend_from_slice(&f.type_size.to_be_bytes());
            body.extend_from_slice(&f.type_modifier.to_be_bytes());
            body.extend_from_slice(&f.format.to_be_bytes());
        }
        self.raw(b'T', &body)
    }

    /// `None` is SQL NULL (length -1).
    pub fn data_row(self, values: &[Option<&[u8]>]) -> Backend {
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
        self.raw(b'D', &body)
    }

    /// A one-column row holding a binary `int4`.
    pub fn int4_row(self, v: i32) -> Backend {
        self.data_row(&[Some(&v.to_be_bytes())])
    }

    pub fn command_complete(self, tag: &str) -> Backend {
        let mut body = Vec::new();
        cstr(&mut body, tag);
        self.raw(b'C', &body)
    }

    /// An `ErrorResponse` with arbitrary fields (type byte, value).
    pub fn error_fields(self, fields: &[(u8, &str)]) -> Backend {
        self.raw(b'E', &error_body(fields))
    }

    /// An `ErrorResponse` with severity (S and V), code (C) and message (M).
    pub fn error(self, severity: &str, code: &str, message: &str) -> Backend {
        self.error_fields(&[(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)])
    }

    pub fn notice_fields(self, fields: &[(u8, &str)]) -> Backend {
        self.raw(b'N', &error_body(fields))
    }

    /// A `NoticeResponse` with severity (S and V), code (C) and message (M).
    pub fn notice(self, severity: &str, code: &str, message: &str) -> Backend {
        self.notice_fields(&[(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)])
    }

    pub fn notification(self, process_id: i32, channel: &str, payload: &str) -> Backend {
        let mut body = process_id.to_be_bytes().to_vec();
        cstr(&mut body, channel);
        cstr(&mut body, payload);
        self.raw(b'A', &body)
    }

    /// The usual successful startup: AuthenticationOk, BackendKeyData,
    /// ParameterStatus, ReadyForQuery 'I'.
    pub fn startup(self, process_id: i32, secret_key: i32) -> Backend {
        self.auth_ok()
            .backend_key_data(process_id, secret_key)
            .parameter_status("server_version", "16.4")
            .parameter_status("client_encoding", "UTF8")
            .ready_for_query(b'I')
    }
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn error_body(fields: &[(u8, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in fields {
        body.push(*t);
        cstr(&mut body, v);
    }
    body.push(0);
    body
}

// ---------------------------------------------------------------------------
// Frontend message parser
// ---------------------------------------------------------------------------

/// One frontend message: tag and body (length already stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendMsg {
    pub tag: u8,
    pub body: Vec<u8>,
}

/// Splits tagged frontend messages. Panics on a truncated frame: the core
/// always emits whole messages, so a partial one is a test failure.
pub fn frontend_messages(bytes: &[u8]) -> Vec<FrontendMsg> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        assert!(rest.len() >= 5, "truncated frontend frame: {rest:?}");
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        assert!(rest.len() > len, "truncated frontend frame (tag {:?})", rest[0] as char);
        out.push(FrontendMsg {
            tag: rest[0],
            body: rest[5..1 + len].to_vec(),
        });
        rest = &rest[1 + len..];
    }
    out
}

/// The tags of the frontend messages in `bytes`, e.g. `"PBDES"`.
pub fn tags(bytes: &[u8]) -> String {
    frontend_messages(bytes).iter().map(|m| m.tag as char).collect()
}

/// Takes everything the connection wants to send.
pub fn drain(conn: &mut Connection) -> Vec<u8> {
    let v = conn.poll_transmit().to_vec();
    conn.advance_transmit(v.len());
    v
}

/// Splits a StartupMessage (untagged) off the front of `bytes`; returns its
/// parameters and the rest.
pub fn split_startup(bytes: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let len = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let version = i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    assert!(
        matches!(version, 196608 | 196610),
        "protocol 3.0 or 3.2, not {version:#x}"
    );
    let mut r = Reader::new(&bytes[8..len]);
    let mut params = Vec::new();
    loop {
        let k = r.cstr();
        if k.is_empty() {
            break;
        }
        let v = r.cstr();
        params.push((k, v));
    }
    (params, &bytes[len..])
}

/// Cursor over a message body.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    pub fn cstr(&mut self) -> String {
        let end = self.buf.iter().position(|b| *b == 0).expect("NUL-terminated string");
        let s = String::from_utf8(self.buf[..end].to_vec()).expect("UTF-8");
        self.buf = &self.buf[end + 1..];
        s
    }
    pub fn u8(&mut self) -> u8 {
        let v = self.buf[0];
        self.buf = &self.buf[1..];
        v
    }
    pub fn i16(&mut self) -> i16 {
        let v = i16::from_be_bytes([self.buf[0], self.buf[1]]);
        self.buf = &self.buf[2..];
        v
    }
    pub fn i32(&mut self) -> i32 {
        let v = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        self.buf = &self.buf[4..];
        v
    }
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        a
    }
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

/// A decoded `Parse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMsg {
    pub name: String,
    pub sql: String,
    pub oids: Vec<u32>,
}

pub fn parse_parse(body: &[u8]) -> ParseMsg {
    let mut r = Reader::new(body);
    let name = r.cstr();
    let sql = r.cstr();
    let n = r.i16();
    let oids = (0..n).map(|_| r.i32() as u32).collect();
    ParseMsg { name, sql, oids }
}

/// A decoded `Bind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMsg {
    pub portal: String,
    pub statement: String,
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<Vec<u8>>>,
    pub result_formats: Vec<i16>,
}

pub fn parse_bind(body: &[u8]) -> BindMsg {
    let mut r = Reader::new(body);
    let portal = r.cstr();
    let statement = r.cstr();
    let nf = r.i16();
    let param_formats = (0..nf).map(|_| r.i16()).collect();
    let np = r.i16();
    let params = (0..np)
        .map(|_| {
            let len = r.i32();
            (len >= 0).then(|| r.bytes(len as usize).to_vec())
        })
        .collect();
    let nr = r.i16();
    let result_formats = (0..nr).map(|_| r.i16()).collect();
    BindMsg {
        portal,
        statement,
        param_formats,
        params,
        result_formats,
    }
}

// ---------------------------------------------------------------------------
// A fake server
// ---------------------------------------------------------------------------

/// What the server did with one `Execute` (one extended-protocol statement),
/// in the order the statements arrived: the oracle tests compare tickets to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executed {
    /// Ran; the value of its single row.
    Row(Option<Vec<u8>>),
    /// Ran a statement without rows (BEGIN, COMMIT, …); its tag.
    Tag(String),
    /// Failed with this SQLSTATE.
    Failed(String),
    /// Skipped because an earlier message of its sync group failed.
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tx {
    Idle,
    Block,
    Failed,
}

/// Answers what the core sends the way PostgreSQL would, for a tiny SQL
/// dialect chosen by keywords in the statement text:
///
/// - `BEGIN`, `COMMIT`, `ROLLBACK`, `SAVEPOINT x`, `RELEASE SAVEPOINT x`,
///   `ROLLBACK TO SAVEPOINT x`: transaction control, no rows;
/// - text containing `badsql`: fails at `Parse` with 42601;
/// - text containing `fail`: fails at `Execute` with 22012;
/// - anything else: one `int4` column `v`, one row holding the first
///   parameter's bytes (or 0 without parameters); text containing `notice`
///   also sends a NoticeResponse, `notify` a NotificationResponse, `param`
///   a ParameterStatus, all in the middle of the response.
///
/// An error makes it skip everything up to the next `Sync`, and fails a
/// transaction block it happens in, exactly as the server does.
pub struct FakeServer {
    pub process_id: i32,
    pub secret_key: i32,
    input: Vec<u8>,
    started: bool,
    statements: HashMap<String, String>,
    portal: Option<(String, Vec<Option<Vec<u8>>>)>,
    skipping: bool,
    /// The error of the statement being processed, reported at its Execute.
    pending: Option<String>,
    tx: Tx,
    out: Vec<u8>,
    pub executed: Vec<Executed>,
    /// Every frontend message tag received, in order.
    pub received: String,
}

impl Default for FakeServer {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeServer {
    pub fn new() -> FakeServer {
        FakeServer {
            process_id: 4242,
            secret_key: 0x5EC2E7,
            input: Vec::new(),
            started: false,
            statements: HashMap::new(),
            portal: None,
            skipping: false,
            pending: None,
            tx: Tx::Idle,
            out: Vec::new(),
            executed: Vec::new(),
            received: String::new(),
        }
    }

    /// Bytes the server has produced and nobody has taken yet.
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// Takes up to `n` bytes of the server's output.
    pub fn take_output(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.out.len());
        self.out.drain(..n).collect()
    }

    pub fn take_all_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Statements currently prepared on the server (named ones).
    pub fn named_statements(&self) -> usize {
        self.statements.keys().filter(|k| !k.is_empty()).count()
    }

    /// Receives bytes from the client, in any split.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        loop {
            if !self.started {
                if self.input.len() < 4 {
                    return;
                }
                let len = i32::from_be_bytes([self.input[0], self.input[1], self.input[2], self.input[3]]) as usize;
                if self.input.len() < len {
                    return;
                }
                self.input.drain(..len);
                self.started = true;
                self.out
                    .extend(Backend::new().startup(self.process_id, self.secret_key).build());
                continue;
            }
            if self.input.len() < 5 {
                return;
            }
            let len = i32::from_be_bytes([self.input[1], self.input[2], self.input[3], self.input[4]]) as usize;
            if self.input.len() < 1 + len {
                return;
            }
            let tag = self.input[0];
            let body: Vec<u8> = self.input[5..1 + len].to_vec();
            self.input.drain(..1 + len);
            self.received.push(tag as char);
            self.message(tag, &body);
        }
    }

    fn emit(&mut self, b: Backend) {
        self.out.extend(b.build());
    }

    fn error(&mut self, code: &str, message: &str) {
        self.emit(Backend::new().error("ERROR", code, message));
        self.skipping = true;
        if self.tx == Tx::Block {
            self.tx = Tx::Failed;
        }
    }

    fn status(&self) -> u8 {
        match self.tx {
            Tx::Idle => b'I',
            Tx::Block => b'T',
            Tx::Failed => b'E',
        }
    }

    fn message(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'S' => {
                self.skipping = false;
                self.pending = None;
                self.portal = None;
                let s = self.status();
                self.emit(Backend::new().ready_for_query(s));
            }
            b'Q' => {
                let sql = Reader::new(body).cstr();
                self.simple_query(&sql);
                self.skipping = false;
                let s = self.status();
                self.emit(Backend::new().ready_for_query(s));
            }
            b'X' | b'f' | b'H' => {}
            _ if self.skipping => {
                if tag == b'E' {
                    let e = match self.pending.take() {
                        Some(code) => Executed::Failed(code),
                        None => Executed::Skipped,
                    };
                    self.executed.push(e);
                }
            }
            b'P' => {
                let p = parse_parse(body);
                if p.sql.contains("badsql") || p.sql.ends_with(" FROM") {
                    self.pending = Some("42601".into());
                    return self.error("42601", "syntax error at or near \"badsql\"");
                }
                if self.tx == Tx::Failed && !is_tx_exit(&p.sql) {
                    self.pending = Some("25P02".into());
                    return self.error("25P02", "current transaction is aborted");
                }
                if !p.name.is_empty() && self.statements.contains_key(&p.name) {
                    self.pending = Some("42P05".into());
                    return self.error("42P05", "prepared statement already exists");
                }
                self.statements.insert(p.name, p.sql);
                self.emit(Backend::new().parse_complete());
            }
            b'B' => {
                let b = parse_bind(body);
                match self.statements.get(&b.statement) {
                    Some(sql) => {
                        self.portal = Some((sql.clone(), b.params));
                        self.emit(Backend::new().bind_complete());
                    }
                    None => {
                        self.pending = Some("26000".into());
                        self.error("26000", "prepared statement does not exist");
                    }
                }
            }
            b'D' => {
                let mut r = Reader::new(body);
                let kind = r.u8();
                let name = r.cstr();
                let sql = if kind == b'S' {
                    self.statements.get(&name).cloned()
                } else {
                    self.portal.as_ref().map(|p| p.0.clone())
                };
                let Some(sql) = sql else {
                    self.pending = Some("26000".into());
                    return self.error("26000", "nothing to describe");
                };
                if kind == b'S' {
                    let n = sql.matches('$').count();
                    self.emit(Backend::new().parameter_description(&vec![INT4; n]));
                }
                if is_tx_control(&sql) {
                    self.emit(Backend::new().no_data());
                } else {
                    self.emit(Backend::new().row_description(&[Field::int4("v")]));
                }
            }
            b'E' => {
                let Some((sql, params)) = self.portal.clone() else {
                    self.pending = Some("34000".into());
                    return self.error("34000", "portal does not exist");
                };
                if self.tx == Tx::Failed && !is_tx_exit(&sql) {
                    self.executed.push(Executed::Failed("25P02".into()));
                    return self.error("25P02", "current transaction is aborted");
                }
                match tx_control(&sql, &mut self.tx) {
                    Some(Ok(tag)) => {
                        self.emit(Backend::new().command_complete(&tag));
                        self.executed.push(Executed::Tag(tag));
                        return;
                    }
                    Some(Err((code, message))) => {
                        self.executed.push(Executed::Failed(code.into()));
                        return self.error(code, message);
                    }
                    None => {}
                }
                if self.tx == Tx::Failed {
                    self.executed.push(Executed::Failed("25P02".into()));
                    return self.error("25P02", "current transaction is aborted");
                }
                if sql.contains("fail") {
                    self.executed.push(Executed::Failed("22012".into()));
                    return self.error("22012", "division by zero");
                }
                let value = match params.first() {
                    Some(v) => v.clone(),
                    None => Some(0i32.to_be_bytes().to_vec()),
                };
                let mut b = Backend::new();
                if sql.contains("notice") {
                    b = b.notice("NOTICE", "00000", &format!("notice from {sql}"));
                }
                b = b.data_row(&[value.as_deref()]);
                if sql.contains("param") {
                    b = b.parameter_status("application_name", &sql);
                }
                if sql.contains("notify") {
                    b = b.notification(self.process_id, "chan", &sql);
                }
                self.emit(b.command_complete("SELECT 1"));
                self.executed.push(Executed::Row(value));
            }
            b'C' => {
                let mut r = Reader::new(body);
                if r.u8() == b'S' {
                    self.statements.remove(&r.cstr());
                }
                self.emit(Backend::new().close_complete());
            }
            other => panic!("fake server: unexpected frontend message {:?}", other as char),
        }
    }

    fn simple_query(&mut self, sql: &str) {
        let stmts: Vec<&str> = sql.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
        if stmts.is_empty() {
            return self.emit(Backend::new().empty_query_response());
        }
        for s in stmts {
            if self.tx == Tx::Failed && !is_tx_exit(s) {
                return self.error("25P02", "current transaction is aborted");
            }
            match tx_control(s, &mut self.tx) {
                Some(Ok(tag)) => {
                    self.emit(Backend::new().command_complete(&tag));
                    continue;
                }
                Some(Err((code, message))) => return self.error(code, message),
                None => {}
            }
            if self.tx == Tx::Failed {
                return self.error("25P02", "current transaction is aborted");
            }
            if s.contains("fail") || s.contains("badsql") {
                return self.error("22012", "division by zero");
            }
            self.emit(
                Backend::new()
                    .row_description(&[Field::text("v")])
                    .data_row(&[Some(s.as_bytes())])
                    .command_complete("SELECT 1"),
            );
        }
    }
}

/// What PostgreSQL still accepts in a failed transaction block.
fn is_tx_exit(sql: &str) -> bool {
    let s = sql.trim().to_ascii_uppercase();
    s.starts_with("COMMIT") || s.starts_with("ROLLBACK")
}

fn is_tx_control(sql: &str) -> bool {
    let s = sql.trim().to_ascii_uppercase();
    ["BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"]
        .iter()
        .any(|k| s.starts_with(k))
}

/// Applies a transaction-control statement: `None` if `sql` is not one,
/// else its command tag or (SQLSTATE, message).
fn tx_control(sql: &str, tx: &mut Tx) -> Option<Result<String, (&'static str, &'static str)>> {
    let s = sql.trim().to_ascii_uppercase();
    let outside_block = Err(("25P01", "can only be used in transaction blocks"));
    let r = if s.starts_with("BEGIN") {
        if *tx == Tx::Idle {
            *tx = Tx::Block;
        }
        Ok("BEGIN")
    } else if s.starts_with("COMMIT") {
        let failed = *tx == Tx::Failed;
        *tx = Tx::Idle;
        Ok(if failed { "ROLLBACK" } else { "COMMIT" })
    } else if s.starts_with("ROLLBACK TO") {
        if *tx == Tx::Idle {
            outside_block
        } else {
            *tx = Tx::Block;
            Ok("ROLLBACK")
        }
    } else if s.starts_with("ROLLBACK") {
        *tx = Tx::Idle;
        Ok("ROLLBACK")
    } else if s.starts_with("SAVEPOINT") || s.starts_with("RELEASE") {
        if *tx == Tx::Idle {
            outside_block
        } else {
            Ok(if s.starts_with("SAVEPOINT") {
                "SAVEPOINT"
            } else {
                "RELEASE"
            })
        }
    } else {
        return None;
    };
    Some(r.map(str::to_string))
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The configuration most tests use: user `u`, password `pw`, database `db`.
pub fn config() -> Config {
    Config::parse("postgres://u:pw@h/db?sslmode=disable").expect("valid URL")
}

/// A connection that has completed the usual scripted startup.
pub fn ready_connection(config: &Config, now: Instant) -> Connection {
    let mut conn = Connection::new(config, now);
    let startup = drain(&mut conn);
    assert!(!startup.is_empty(), "StartupMessage queued");
    conn.handle_input(&Backend::new().startup(4242, 0x5EC2E7).build(), now)
        .expect("scripted startup is accepted");
    assert!(conn.is_ready());
    conn
}

/// Moves bytes both ways between a connection and a fake server until
/// neither has anything more to say.
/// A connection started against a fresh [`FakeServer`].
pub fn fake_session(config: &Config, now: Instant) -> (Connection, FakeServer) {
    let mut conn = Connection::new(config, now);
    let mut server = FakeServer::new();
    run(&mut duet_core::ops::startup(), &mut conn, &mut server, now).expect("scripted startup succeeds");
    (conn, server)
}

pub fn pump(conn: &mut Connection, server: &mut FakeServer, now: Instant) -> Result<(), Error> {
    loop {
        let out = drain(conn);
        server.receive(&out);
        let input = server.take_all_output();
        if out.is_empty() && input.is_empty() {
            return Ok(());
        }
        conn.handle_input(&input, now)?;
    }
}

/// Drives an operation to completion against a fake server.
pub fn run<O: duet_core::Operation>(
    op: &mut O,
    conn: &mut Connection,
    server: &mut FakeServer,
    now: Instant,
) -> Result<O::Output, Error> {
    for _ in 0..1000 {
        if let duet_core::Step::Ready(r) = op.poll(conn, now) {
            return r;
        }
        pump(conn, server, now)?;
    }
    panic!("operation did not finish after 1000 polls");
}

/// A comparable summary of a request's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Rows {
        columns: Vec<(String, u32)>,
        rows: Vec<Vec<Option<Vec<u8>>>>,
        tag: Option<String>,
    },
    Prepared {
        name: String,
        params: Vec<u32>,
        columns: Vec<(String, u32)>,
    },
    Simple(Vec<duet_core::SimpleMessage>),
    /// An error: its Debug text (which holds every DbError field).
    Err(String),
}

pub fn outcome(r: Result<Response, Error>) -> Outcome {
    let cols = |c: &[duet_core::Column]| c.iter().map(|c| (c.name.clone(), c.type_.oid())).collect::<Vec<_>>();
    match r {
        Ok(Response::Rows(q)) => Outcome::Rows {
            columns: cols(&q.columns),
            rows: q
                .rows
                .iter()
                .map(|row| (0..row.len()).map(|i| row.raw(i).map(<[u8]>::to_vec)).collect())
                .collect(),
            tag: q.tag,
        },
        Ok(Response::Prepared(s)) => Outcome::Prepared {
            name: s.name().to_string(),
            params: s.params().iter().map(|t| t.oid()).collect(),
            columns: cols(s.columns()),
        },
        Ok(Response::Simple(m)) => Outcome::Simple(m),
        Ok(Response::Portal(p)) => Outcome::Prepared {
            name: p.name().to_string(),
            params: Vec::new(),
            columns: cols(p.columns()),
        },
        Ok(Response::CopyOut { rest, tag }) => Outcome::Rows {
            columns: Vec::new(),
            rows: rest.iter().map(|c| vec![Some(c.to_vec())]).collect(),
            tag,
        },
        Err(e) => Outcome::Err(format!("{e:?}")),
    }
}

/// The outcome a ticket should have, given what the fake server did with it.
pub fn expected_outcome(e: &Executed) -> Outcome {
    match e {
        Executed::Row(v) => Outcome::Rows {
            columns: vec![("v".into(), INT4)],
            rows: vec![vec![v.clone()]],
            tag: Some("SELECT 1".into()),
        },
        Executed::Tag(t) => Outcome::Rows {
            columns: vec![],
            rows: vec![],
            tag: Some(t.clone()),
        },
        Executed::Failed(code) => Outcome::Err(format!("code {code}")),
        Executed::Skipped => Outcome::Err(format!("{:?}", Error::Skipped)),
    }
}

/// Like [`outcome`], but a server error is reduced to its SQLSTATE so it
/// can be compared with [`expected_outcome`].
pub fn coarse_outcome(r: Result<Response, Error>) -> Outcome {
    match r {
        Err(Error::Db(e)) => Outcome::Err(format!("code {}", e.code)),
        other => outcome(other),
    }
}
