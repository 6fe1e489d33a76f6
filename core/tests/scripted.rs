//! Transcript tests of the protocol core, with no server: each test feeds a
//! `Connection` scripted backend bytes and checks what it sends back, the
//! results it hands out and the events it reports.
//!
//! They exist because the core's contract (DESIGN.md, "The core contract")
//! is about exact message sequences — one round trip for a first execution,
//! `Bind`/`Execute`/`Sync` only for a cached statement, errors recovering at
//! `Sync`, deadlines turning into a cancel and a grace period — and those are
//! cheapest to pin down byte by byte, deterministically, without PostgreSQL.
//! The conformance suite checks the same behaviour against a real server.

mod support;

use std::time::{Duration, Instant};

use duet_core::ops::{self, Operation, Step};
use duet_core::{
    CancelRequest, Config, Connection, Error, Event, Param, Request, Response, SimpleMessage, TransactionStatus,
    TxOutcome, Type,
};
use support::*;

fn t0() -> Instant {
    Instant::now()
}

/// Polls once and expects `Pending`.
fn pending<O: Operation>(op: &mut O, conn: &mut Connection, now: Instant) {
    match op.poll(conn, now) {
        Step::Pending => {}
        Step::Ready(_) => panic!("operation finished too early"),
    }
}

fn ready<O: Operation>(op: &mut O, conn: &mut Connection, now: Instant) -> Result<O::Output, Error> {
    match op.poll(conn, now) {
        Step::Ready(r) => r,
        Step::Pending => panic!("operation still pending"),
    }
}

fn rows_of(r: Result<Response, Error>) -> Vec<Vec<Option<Vec<u8>>>> {
    match outcome(r) {
        Outcome::Rows { rows, .. } => rows,
        other => panic!("expected rows, got {other:?}"),
    }
}

fn db_code(e: &Error) -> &str {
    e.code().unwrap_or_else(|| panic!("expected a server error, got {e:?}"))
}

/// The response to a first execution of `SELECT $1::int4`-like statement.
/// A transaction-control statement's answer (unnamed Parse, no Describe).
fn control(tag: &str) -> Backend {
    Backend::new().parse_complete().bind_complete().command_complete(tag)
}

/// The answer to the transaction-id probe, its first time on a connection.
fn probe(xid: Option<i64>) -> Backend {
    Backend::new().parse_complete().extend(&probe_again(xid).build())
}

/// The answer to the probe once its statement is cached.
fn probe_again(xid: Option<i64>) -> Backend {
    let bytes = xid.map(|x| x.to_be_bytes());
    Backend::new()
        .bind_complete()
        .row_description(&[Field::new("txid_current_if_assigned", 20)])
        .data_row(&[bytes.as_ref().map(|b| &b[..])])
        .command_complete("SELECT 1")
}

fn first_run(v: i32) -> Backend {
    Backend::new()
        .parse_complete()
        .bind_complete()
        .row_description(&[Field::int4("v")])
        .int4_row(v)
        .command_complete("SELECT 1")
}

// ---------------------------------------------------------------------------
// The test encoder itself
// ---------------------------------------------------------------------------

/// The encoder is the oracle of every other test: check it against
/// postgres-protocol's parser, field by field.
#[test]
fn encoder_output_parses_with_postgres_protocol() {
    use fallible_iterator::FallibleIterator;
    use postgres_protocol::message::backend::Message;

    let mut field = Field::int4("col");
    field.table_oid = 16384;
    field.column_id = 3;
    field.type_modifier = 7;
    let stream = Backend::new()
        .auth_ok()
        .auth_cleartext()
        .auth_md5([1, 2, 3, 4])
        .auth_sasl(&["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"])
        .auth_sasl_continue(b"r=abc")
        .auth_sasl_final(b"v=xyz")
        .backend_key_data(12, -34)
        .parameter_status("TimeZone", "UTC")
        .ready_for_query(b'T')
        .parse_complete()
        .bind_complete()
        .close_complete()
        .no_data()
        .parameter_description(&[INT4, TEXT])
        .row_description(&[field, Field::text("t")])
        .data_row(&[Some(b"ab"), None, Some(b"")])
        .command_complete("INSERT 0 5")
        .empty_query_response()
        .error("ERROR", "23505", "duplicate key")
        .notice("NOTICE", "00000", "note")
        .notification(9, "chan", "payload")
        .portal_suspended()
        .build();
    let mut buf = bytes::BytesMut::from(&stream[..]);
    let mut next = || Message::parse(&mut buf).unwrap().expect("a whole message");
    assert!(matches!(next(), Message::AuthenticationOk));
    assert!(matches!(next(), Message::AuthenticationCleartextPassword));
    match next() {
        Message::AuthenticationMd5Password(b) => assert_eq!(b.salt(), [1, 2, 3, 4]),
        _ => panic!("md5"),
    }
    match next() {
        Message::AuthenticationSasl(b) => {
            assert_eq!(
                b.mechanisms().collect::<Vec<_>>().unwrap(),
                vec!["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]
            )
        }
        _ => panic!("sasl"),
    }
    match next() {
        Message::AuthenticationSaslContinue(b) => assert_eq!(b.data(), b"r=abc"),
        _ => panic!("sasl continue"),
    }
    match next() {
        Message::AuthenticationSaslFinal(b) => assert_eq!(b.data(), b"v=xyz"),
        _ => panic!("sasl final"),
    }
    match next() {
        Message::BackendKeyData(b) => assert_eq!((b.process_id(), b.secret_key()), (12, -34)),
        _ => panic!("key data"),
    }
    match next() {
        Message::ParameterStatus(b) => assert_eq!((b.name().unwrap(), b.value().unwrap()), ("TimeZone", "UTC")),
        _ => panic!("parameter status"),
    }
    match next() {
        Message::ReadyForQuery(b) => assert_eq!(b.status(), b'T'),
        _ => panic!("ready"),
    }
    assert!(matches!(next(), Message::ParseComplete));
    assert!(matches!(next(), Message::BindComplete));
    assert!(matches!(next(), Message::CloseComplete));
    assert!(matches!(next(), Message::NoData));
    match next() {
        Message::ParameterDescription(b) => assert_eq!(b.parameters().collect::<Vec<_>>().unwrap(), vec![INT4, TEXT]),
        _ => panic!("parameter description"),
    }
    match next() {
        Message::RowDescription(b) => {
            let fields = b.fields().collect::<Vec<_>>().unwrap();
            assert_eq!(fields.len(), 2);
            let f = &fields[0];
            assert_eq!(
                (
                    f.name(),
                    f.table_oid(),
                    f.column_id(),
                    f.type_oid(),
                    f.type_size(),
                    f.type_modifier(),
                    f.format()
                ),
                ("col", 16384, 3, INT4, 4, 7, 1)
            );
            assert_eq!(
                (fields[1].name(), fields[1].type_oid(), fields[1].format()),
                ("t", TEXT, 0)
            );
        }
        _ => panic!("row description"),
    }
    match next() {
        Message::DataRow(b) => {
            let values: Vec<Option<Vec<u8>>> = b
                .ranges()
                .map(|r| Ok(r.map(|r| b.buffer()[r].to_vec())))
                .collect()
                .unwrap();
            assert_eq!(values, vec![Some(b"ab".to_vec()), None, Some(vec![])]);
        }
        _ => panic!("data row"),
    }
    match next() {
        Message::CommandComplete(b) => assert_eq!(b.tag().unwrap(), "INSERT 0 5"),
        _ => panic!("command complete"),
    }
    assert!(matches!(next(), Message::EmptyQueryResponse));
    match next() {
        Message::ErrorResponse(b) => {
            let fields: Vec<(u8, Vec<u8>)> = b
                .fields()
                .map(|f| Ok((f.type_(), f.value_bytes().to_vec())))
                .collect()
                .unwrap();
            assert_eq!(
                fields,
                vec![
                    (b'S', b"ERROR".to_vec()),
                    (b'V', b"ERROR".to_vec()),
                    (b'C', b"23505".to_vec()),
                    (b'M', b"duplicate key".to_vec())
                ]
            );
        }
        _ => panic!("error"),
    }
    assert!(matches!(next(), Message::NoticeResponse(_)));
    match next() {
        Message::NotificationResponse(b) => {
            assert_eq!(
                (b.process_id(), b.channel().unwrap(), b.message().unwrap()),
                (9, "chan", "payload")
            )
        }
        _ => panic!("notification"),
    }
    assert!(matches!(next(), Message::PortalSuspended));
    assert!(buf.is_empty());
}

// ---------------------------------------------------------------------------
// Startup and authentication
// ---------------------------------------------------------------------------

#[test]
fn startup_message_and_trust_startup() {
    let now = t0();
    let mut conn = Connection::new(&config(), now);
    let sent = drain(&mut conn);
    let (params, rest) = split_startup(&sent);
    assert!(rest.is_empty());
    assert_eq!(
        params,
        vec![
            ("user".to_string(), "u".to_string()),
            ("client_encoding".into(), "UTF8".into()),
            ("database".into(), "db".into()),
        ]
    );
    assert!(conn.wants_input());
    assert!(!conn.is_ready());

    let startup = Backend::new()
        .auth_ok()
        .backend_key_data(77, -5)
        .parameter_status("server_version", "16.4")
        .parameter_status("TimeZone", "UTC")
        .ready_for_query(b'I')
        .build();
    conn.handle_input(&startup, now).unwrap();
    assert!(conn.is_ready());
    assert!(conn.is_idle());
    assert!(!conn.wants_input(), "nothing in flight");
    assert!(conn.poll_transmit().is_empty(), "trust authentication sends nothing");
    assert_eq!(
        conn.cancel_token(),
        Some(CancelRequest {
            process_id: 77,
            secret_key: (-5).into()
        })
    );
    assert_eq!(conn.parameter("server_version"), Some("16.4"));
    assert_eq!(conn.parameter("TimeZone"), Some("UTC"));
    // Startup parameters are state, not events.
    assert_eq!(conn.poll_event(), None);
    assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
    assert!(matches!(ops::startup().poll(&mut conn, now), Step::Ready(Ok(()))));
}

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

fn conn_with(words: &str, now: Instant) -> Connection {
    Connection::new(&Config::parse(&format!("postgres://u:pw@h/db?{words}")).unwrap(), now)
}

#[test]
fn sslrequest_declined_under_prefer_continues_in_plaintext() {
    let now = t0();
    let mut conn = conn_with("sslmode=prefer", now);
    assert_eq!(
        drain(&mut conn),
        SSL_REQUEST,
        "nothing but the SSLRequest before the answer"
    );
    assert!(
        conn.poll_transmit().is_empty(),
        "the StartupMessage waits for the answer"
    );
    conn.handle_input(b"N", now).unwrap();
    let sent = drain(&mut conn);
    let (params, rest) = split_startup(&sent);
    assert!(rest.is_empty() && params[0] == ("user".into(), "u".into()));
    conn.handle_input(&Backend::new().startup(1, 2).build(), now).unwrap();
    assert!(conn.is_ready() && !conn.is_tls());
}

#[test]
fn sslrequest_declined_under_require_is_refused() {
    let now = t0();
    let mut conn = conn_with("sslmode=require", now);
    drain(&mut conn);
    let e = conn.handle_input(b"N", now).unwrap_err();
    assert!(
        matches!(e, Error::Rejected(_)) && e.to_string().contains("sslmode=require"),
        "{e:?}"
    );
    assert!(
        conn.poll_transmit().is_empty(),
        "the StartupMessage never goes out in plaintext"
    );
}

#[test]
fn bytes_after_the_servers_tls_answer_are_refused() {
    let now = t0();
    // CVE-2021-23222: plaintext injected right after 'S' must not be read as
    // if it came through TLS.
    let mut conn = conn_with("sslmode=require", now);
    drain(&mut conn);
    let injected = [b"S".as_slice(), &Backend::new().auth_ok().build()].concat();
    let e = conn.handle_input(&injected, now).unwrap_err();
    assert!(
        e.to_string().contains("unencrypted bytes right after agreeing to TLS"),
        "{e}"
    );
    // The same after 'N'.
    let mut conn = conn_with("sslmode=prefer", now);
    drain(&mut conn);
    let e = conn.handle_input(b"NR", now).unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
}

#[test]
fn tls_accepted_starts_a_handshake_before_the_startup_message() {
    let now = t0();
    let mut conn = conn_with("sslmode=require", now);
    drain(&mut conn);
    conn.handle_input(b"S", now).unwrap();
    let hello = drain(&mut conn);
    // A TLS record of type handshake (22), version 3.x: a ClientHello, not
    // the StartupMessage in the clear.
    assert_eq!((hello[0], hello[1]), (22, 3), "{hello:?}");
    assert!(
        !hello.windows(2).any(|w| w == b"u\0"),
        "no startup parameter in the clear"
    );
    assert!(conn.is_tls());
    // A server that answers a ClientHello with plaintext is refused.
    let e = conn.handle_input(&Backend::new().auth_ok().build(), now).unwrap_err();
    assert!(matches!(e, Error::Tls(_)), "{e:?}");
    // Nothing more can go out on a failed TLS session, not even Terminate:
    // the driver is not asked to wait for a writable socket in vain.
    conn.close();
    assert!(conn.poll_transmit().is_empty());
    assert!(conn.interest(false).is_err(), "closed, not waiting to write");
}

#[test]
fn a_server_error_instead_of_the_tls_answer_is_reported() {
    let now = t0();
    let mut conn = conn_with("sslmode=prefer", now);
    drain(&mut conn);
    let e = conn
        .handle_input(
            &Backend::new()
                .error("FATAL", "53300", "sorry, too many clients already")
                .build(),
            now,
        )
        .unwrap_err();
    assert_eq!(e.code(), Some("53300"), "{e}");
}

#[test]
fn unix_sockets_never_ask_for_tls() {
    let now = t0();
    let mut conn = Connection::new(&Config::parse("host=/tmp user=u sslmode=require").unwrap(), now);
    let sent = drain(&mut conn);
    let (params, _) = split_startup(&sent);
    assert_eq!(params[0], ("user".into(), "u".into()));
}

#[test]
fn protocol_32_is_asked_for_and_negotiated_down() {
    let now = t0();
    let mut conn = Connection::new(&config(), now);
    let sent = drain(&mut conn);
    assert_eq!(&sent[4..8], &196610i32.to_be_bytes(), "3.2 asked for by default");
    // PostgreSQL before 18: NegotiateProtocolVersion 3.0, no options refused.
    let mut v = 196608i32.to_be_bytes().to_vec();
    v.extend_from_slice(&0i32.to_be_bytes());
    conn.handle_input(&Backend::new().raw(b'v', &v).build(), now).unwrap();
    conn.handle_input(&Backend::new().startup(7, 9).build(), now).unwrap();
    assert!(conn.is_ready());
    assert_eq!(conn.protocol_version(), duet_core::ProtocolVersion::V3_0);
    // A floor above what the server speaks is refused.
    let mut conn = conn_with("sslmode=disable&min_protocol_version=3.2", now);
    drain(&mut conn);
    let e = conn
        .handle_input(&Backend::new().raw(b'v', &v).build(), now)
        .unwrap_err();
    assert!(e.to_string().contains("min_protocol_version 3.2"), "{e}");
    // max_protocol_version=3.0 asks for 3.0.
    let mut conn = conn_with("sslmode=disable&max_protocol_version=3.0", now);
    assert_eq!(&drain(&mut conn)[4..8], &196608i32.to_be_bytes());
}

#[test]
fn protocol_32_cancel_keys_are_long() {
    let now = t0();
    let mut conn = Connection::new(&config(), now);
    drain(&mut conn);
    let key: Vec<u8> = (0..32).collect();
    let mut body = 4242i32.to_be_bytes().to_vec();
    body.extend_from_slice(&key);
    let startup = Backend::new().auth_ok().raw(b'K', &body).ready_for_query(b'I').build();
    conn.handle_input(&startup, now).unwrap();
    let cancel = conn.cancel_token().unwrap();
    assert_eq!(cancel.secret_key.as_bytes(), key.as_slice());
    let encoded = cancel.encode();
    assert_eq!(&encoded[..4], &(12 + 32i32).to_be_bytes());
    assert_eq!(&encoded[4..8], &80877102i32.to_be_bytes());
    assert_eq!(&encoded[12..], key.as_slice());
    assert!(!format!("{cancel:?}").contains("31"), "the key is never shown");
    // A key longer than 256 bytes is a protocol error, not a panic.
    let mut conn = Connection::new(&config(), now);
    drain(&mut conn);
    let mut body = 1i32.to_be_bytes().to_vec();
    body.extend_from_slice(&[7; 300]);
    let e = conn
        .handle_input(&Backend::new().auth_ok().raw(b'K', &body).build(), now)
        .unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
}

#[test]
fn channel_binding_required_refuses_unbound_authentication() {
    let now = t0();
    // A Unix socket has no TLS, so nothing can bind.
    let cfg = Config::parse("host=/tmp user=u password=pw channel_binding=require").unwrap();
    for (what, server) in [
        ("trust", Backend::new().auth_ok().build()),
        ("MD5", Backend::new().auth_md5([1, 2, 3, 4]).build()),
        ("cleartext", Backend::new().auth_cleartext().build()),
        ("not TLS", Backend::new().auth_sasl(&["SCRAM-SHA-256"]).build()),
    ] {
        let mut conn = Connection::new(&cfg, now);
        drain(&mut conn);
        let e = conn.handle_input(&server, now).unwrap_err();
        assert!(matches!(e, Error::Rejected(_)), "{what}: {e:?}");
        assert!(e.to_string().contains(what), "{what}: {e}");
        assert!(drain(&mut conn).is_empty(), "{what}: no password leaves");
    }
}

#[test]
fn cleartext_password() {
    let now = t0();
    let mut conn = Connection::new(&config(), now);
    drain(&mut conn);
    conn.handle_input(&Backend::new().auth_cleartext().build(), now)
        .unwrap();
    let sent = drain(&mut conn);
    let msgs = frontend_messages(&sent);
    assert_eq!(
        msgs,
        vec![FrontendMsg {
            tag: b'p',
            body: b"pw\0".to_vec()
        }]
    );
    assert_eq!(sent, b"p\0\0\0\x07pw\0");
    conn.handle_input(&Backend::new().startup(1, 2).build(), now).unwrap();
    assert!(conn.is_ready());
}

#[test]
fn md5_password() {
    let now = t0();
    let salt = [0x2a, 0x3d, 0x8f, 0xe0];
    let mut conn = Connection::new(&config(), now);
    drain(&mut conn);
    // The salt arrives split across two reads.
    let auth = Backend::new().auth_md5(salt).build();
    conn.handle_input(&auth[..7], now).unwrap();
    assert!(conn.poll_transmit().is_empty());
    conn.handle_input(&auth[7..], now).unwrap();
    let sent = drain(&mut conn);
    let msgs = frontend_messages(&sent);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].tag, b'p');
    let expected = postgres_protocol::authentication::md5_hash(b"u", b"pw", salt);
    assert_eq!(msgs[0].body, format!("{expected}\0").into_bytes());
    // Spelled out: "md5" + md5(md5(password + user) + salt), lower-case hex.
    assert!(expected.starts_with("md5") && expected.len() == 35);
    conn.handle_input(&Backend::new().startup(1, 2).build(), now).unwrap();
    assert!(conn.is_ready());
}

#[test]
fn missing_password_is_an_auth_error() {
    let now = t0();
    for request in [
        Backend::new().auth_cleartext(),
        Backend::new().auth_md5([1, 2, 3, 4]),
        Backend::new().auth_sasl(&["SCRAM-SHA-256"]),
    ] {
        let mut conn = Connection::new(&Config::parse("postgres://u@h/db?sslmode=disable").unwrap(), now);
        drain(&mut conn);
        let err = conn.handle_input(&request.build(), now).unwrap_err();
        assert!(matches!(err, Error::Auth(_)), "{err:?}");
        assert!(err.to_string().contains("\"u\""), "names the user: {err}");
        assert!(err.is_fatal());
        assert!(matches!(conn.closed_reason(), Some(Error::Auth(_))));
        assert!(conn.poll_transmit().is_empty(), "no password message was sent");
        assert!(!conn.wants_input());
        assert!(matches!(
            ops::startup().poll(&mut conn, now),
            Step::Ready(Err(Error::Auth(_)))
        ));
    }
}

#[test]
fn unsupported_sasl_mechanism_is_named() {
    let now = t0();
    let mut conn = Connection::new(&config(), now);
    drain(&mut conn);
    let err = conn
        .handle_input(
            &Backend::new().auth_sasl(&["SCRAM-SHA-256-PLUS", "OAUTHBEARER"]).build(),
            now,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("OAUTHBEARER") && text.contains("SCRAM-SHA-256-PLUS"),
        "{text}"
    );
    assert!(conn.closed_reason().is_some());
}

#[test]
fn other_unsupported_methods_are_auth_errors() {
    let now = t0();
    for (code, name) in [(2i32, "Kerberos"), (7, "GSSAPI"), (9, "SSPI"), (6, "SCM")] {
        let mut conn = Connection::new(&config(), now);
        drain(&mut conn);
        let err = conn
            .handle_input(&Backend::new().raw(b'R', &code.to_be_bytes()).build(), now)
            .unwrap_err();
        assert!(matches!(err, Error::Auth(_)), "{err:?}");
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn scram_start_and_bad_server_messages() {
    let now = t0();
    // The client-first message goes out with the mechanism's name.
    let mut conn = Connection::new(&config(), now);
    drain(&mut conn);
    conn.handle_input(
        &Backend::new()
            .auth_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
            .build(),
        now,
    )
    .unwrap();
    let msgs = frontend_messages(&drain(&mut conn));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].tag, b'p');
    let mut r = Reader::new(&msgs[0].body);
    assert_eq!(r.cstr(), "SCRAM-SHA-256");
    let len = r.i32() as usize;
    let first = std::str::from_utf8(r.bytes(len)).unwrap();
    assert!(first.starts_with("n,,n=,r="), "{first}");
    assert!(r.rest().is_empty());

    // A server-first message whose nonce does not extend ours.
    let err = conn
        .handle_input(
            &Backend::new()
                .auth_sasl_continue(b"r=someone-else,s=c2FsdA==,i=4096")
                .build(),
            now,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");

    // AuthenticationOk in the middle of SCRAM (no SASLFinal) is refused.
    let mut conn = Connection::new(&config(), now);
    drain(&mut conn);
    conn.handle_input(&Backend::new().auth_sasl(&["SCRAM-SHA-256"]).build(), now)
        .unwrap();
    let err = conn.handle_input(&Backend::new().auth_ok().build(), now).unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");

    // SASLContinue / SASLFinal without a SASL exchange.
    for msg in [
        Backend::new().auth_sasl_continue(b"r=x"),
        Backend::new().auth_sasl_final(b"v=x"),
    ] {
        let mut conn = Connection::new(&config(), now);
        drain(&mut conn);
        let err = conn.handle_input(&msg.build(), now).unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    }
}

#[test]
fn startup_error_response_and_out_of_order_messages() {
    let now = t0();
    let mut conn = Connection::new(&config(), now);
    drain(&mut conn);
    let err = conn
        .handle_input(
            &Backend::new()
                .error("FATAL", "28P01", "password authentication failed")
                .build(),
            now,
        )
        .unwrap_err();
    assert_eq!(db_code(&err), "28P01");
    assert!(err.is_fatal());

    // ReadyForQuery before AuthenticationOk.
    let mut conn = Connection::new(&config(), now);
    let err = conn
        .handle_input(&Backend::new().ready_for_query(b'I').build(), now)
        .unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");

    // A query response during startup.
    let mut conn = Connection::new(&config(), now);
    let err = conn
        .handle_input(&Backend::new().auth_ok().bind_complete().build(), now)
        .unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
}

#[test]
fn requests_submitted_before_ready_are_held_until_ready() {
    let now = t0();
    let mut conn = Connection::new(&config(), now);
    let startup_len = conn.poll_transmit().len();
    let p: [Param; 1] = [&5i32];
    let t = conn.submit(Request::query("SELECT $1::int4", &p), now).unwrap();
    assert_eq!(
        conn.poll_transmit().len(),
        startup_len,
        "held, not queued behind the StartupMessage"
    );
    drain(&mut conn);
    conn.handle_input(&Backend::new().auth_ok().build(), now).unwrap();
    assert!(conn.poll_transmit().is_empty());
    conn.handle_input(&Backend::new().ready_for_query(b'I').build(), now)
        .unwrap();
    assert_eq!(tags(&drain(&mut conn)), "PBDES");
    conn.handle_input(&first_run(5).ready_for_query(b'I').build(), now)
        .unwrap();
    assert_eq!(
        rows_of(conn.take_result(t).unwrap()),
        vec![vec![Some(5i32.to_be_bytes().to_vec())]]
    );
}

#[test]
fn connect_timeout_closes_a_session_that_never_gets_ready() {
    let now = t0();
    let mut cfg = config();
    cfg.connect_timeout = Some(Duration::from_secs(3));
    let mut conn = Connection::new(&cfg, now);
    assert_eq!(conn.poll_timeout(), Some(now + Duration::from_secs(3)));
    conn.handle_timeout(now + Duration::from_secs(2));
    assert!(conn.closed_reason().is_none());
    conn.handle_timeout(now + Duration::from_secs(3));
    assert!(matches!(conn.closed_reason(), Some(Error::Closed(_))));

    // Once ready, the connect timeout no longer applies.
    let mut conn = Connection::new(&cfg, now);
    conn.handle_input(&Backend::new().startup(1, 2).build(), now).unwrap();
    assert_eq!(conn.poll_timeout(), None);
    conn.handle_timeout(now + Duration::from_secs(10));
    assert!(conn.closed_reason().is_none());
}

// ---------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------

#[test]
fn query_round_trip_then_statement_cache_hit() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);

    let mut op = ops::query("SELECT $1::int4", &[&1i32]).one();
    pending(&mut op, &mut conn, now);
    let sent = drain(&mut conn);
    assert_eq!(tags(&sent), "PBDES");
    let msgs = frontend_messages(&sent);
    let parse = parse_parse(&msgs[0].body);
    assert_eq!(
        parse,
        ParseMsg {
            name: "duet_s1".into(),
            sql: "SELECT $1::int4".into(),
            oids: vec![INT4]
        }
    );
    let bind = parse_bind(&msgs[1].body);
    assert_eq!(bind.statement, "duet_s1");
    assert_eq!(bind.params, vec![Some(1i32.to_be_bytes().to_vec())]);
    assert_eq!(bind.param_formats, vec![1]);
    assert_eq!(bind.result_formats, vec![1], "binary results");
    assert_eq!(msgs[2].body, b"P\0", "Describe portal");
    assert!(conn.wants_input());
    assert_eq!(conn.in_flight(), 2, "the statement and its Sync");

    // Nothing is ready until the whole sync group is answered.
    conn.handle_input(&first_run(1).build(), now).unwrap();
    pending(&mut op, &mut conn, now);
    conn.handle_input(&Backend::new().ready_for_query(b'I').build(), now)
        .unwrap();
    let row = ready(&mut op, &mut conn, now).unwrap();
    assert_eq!(row.get::<i32>(0), 1);
    assert_eq!(row.get::<i32>("v"), 1);
    assert_eq!(row.columns()[0].type_, Type::INT4);
    assert!(conn.is_idle());
    assert_eq!(conn.cached_statements(), 1);

    // Second run: the cached statement, its columns known: no Parse, no Describe.
    let mut op = ops::query("SELECT $1::int4", &[&2i32]).one();
    pending(&mut op, &mut conn, now);
    let sent = drain(&mut conn);
    assert_eq!(tags(&sent), "BES");
    assert_eq!(parse_bind(&frontend_messages(&sent)[0].body).statement, "duet_s1");
    let reply = Backend::new()
        .bind_complete()
        .int4_row(2)
        .command_complete("SELECT 1")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert_eq!(ready(&mut op, &mut conn, now).unwrap().get::<i32>(0), 2);

    // Polling a finished operation is misuse, not a panic.
    assert!(matches!(op.poll(&mut conn, now), Step::Ready(Err(Error::Misuse(_)))));
}

#[test]
fn same_sql_twice_in_one_round_trip_describes_both() {
    // The second request hits the cache before the first RowDescription
    // arrived, so it must still ask for one.
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let (a, b): ([Param; 1], [Param; 1]) = ([&1i32], [&2i32]);
    let ta = conn.submit(Request::query("SELECT $1::int4", &a), now).unwrap();
    let tb = conn.submit(Request::query("SELECT $1::int4", &b), now).unwrap();
    assert_eq!(tags(&drain(&mut conn)), "PBDESBDES");
    let reply = first_run(1)
        .ready_for_query(b'I')
        .bind_complete()
        .row_description(&[Field::int4("v")])
        .int4_row(2)
        .command_complete("SELECT 1")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert_eq!(
        rows_of(conn.take_result(ta).unwrap()),
        vec![vec![Some(1i32.to_be_bytes().to_vec())]]
    );
    assert_eq!(
        rows_of(conn.take_result(tb).unwrap()),
        vec![vec![Some(2i32.to_be_bytes().to_vec())]]
    );
    assert_eq!(conn.take_result(ta).map(outcome), None, "a result is taken once");
}

#[test]
fn rows_nulls_and_command_tags() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::query("SELECT a, b FROM t", &[]).rows();
    pending(&mut op, &mut conn, now);
    assert_eq!(tags(&drain(&mut conn)), "PBDES");
    let mut table_col = Field::int4("a");
    table_col.table_oid = 16384;
    table_col.column_id = 1;
    let reply = Backend::new()
        .parse_complete()
        .bind_complete()
        .row_description(&[table_col, Field::new("b", TEXT)])
        .data_row(&[Some(&7i32.to_be_bytes()), Some(b"x")])
        .data_row(&[None, None])
        .data_row(&[Some(&9i32.to_be_bytes()), Some(b"")])
        .command_complete("SELECT 3")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    let rows = ready(&mut op, &mut conn, now).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].columns()[0].table_oid, 16384);
    assert_eq!(rows[0].columns()[0].column_id, 1);
    assert_eq!(rows[0].get::<i32>("a"), 7);
    assert_eq!(rows[0].get::<String>("b"), "x");
    assert_eq!(rows[1].get::<Option<i32>>(0), None);
    assert_eq!(rows[1].get::<Option<String>>(1), None);
    assert!(matches!(rows[1].try_get::<i32>(0), Err(Error::Decode(_))));
    assert!(matches!(rows[0].try_get::<String>(0), Err(Error::Decode(_))));
    assert!(matches!(rows[0].try_get::<i32>("nope"), Err(Error::Decode(_))));
    assert_eq!(rows[2].get::<&str>(1), "");

    // `affected` reads the tag; `one` wants exactly one row.
    let mut op = ops::query("UPDATE t SET a = 1", &[]).affected();
    pending(&mut op, &mut conn, now);
    assert_eq!(tags(&drain(&mut conn)), "PBDES");
    let reply = Backend::new()
        .parse_complete()
        .bind_complete()
        .no_data()
        .command_complete("UPDATE 42")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert_eq!(ready(&mut op, &mut conn, now).unwrap(), 42);

    let mut op = ops::query("SELECT a, b FROM t", &[]).one();
    pending(&mut op, &mut conn, now);
    assert_eq!(tags(&drain(&mut conn)), "BES", "columns cached from the first run");
    let reply = Backend::new()
        .bind_complete()
        .command_complete("SELECT 0")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert!(matches!(ready(&mut op, &mut conn, now), Err(Error::NoRows)));
}

#[test]
fn empty_query_and_portal_suspended_complete_without_tag() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let t1 = conn.submit(Request::query("", &[]), now).unwrap();
    let t2 = conn.submit(Request::query("SELECT 1", &[]), now).unwrap();
    drain(&mut conn);
    let reply = Backend::new()
        .parse_complete()
        .bind_complete()
        .no_data()
        .empty_query_response()
        .ready_for_query(b'I')
        .parse_complete()
        .bind_complete()
        .row_description(&[Field::int4("v")])
        .int4_row(1)
        .portal_suspended()
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert_eq!(
        outcome(conn.take_result(t1).unwrap()),
        Outcome::Rows {
            columns: vec![],
            rows: vec![],
            tag: None
        }
    );
    match outcome(conn.take_result(t2).unwrap()) {
        Outcome::Rows { rows, tag, .. } => {
            assert_eq!(rows.len(), 1);
            assert_eq!(tag, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn simple_query_messages() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::simple_query("SELECT 'a' AS x; UPDATE t SET a = 1; ", None);
    pending(&mut op, &mut conn, now);
    let sent = drain(&mut conn);
    let sql = "SELECT 'a' AS x; UPDATE t SET a = 1; ";
    let mut expected = vec![b'Q'];
    expected.extend_from_slice(&(4 + sql.len() as i32 + 1).to_be_bytes());
    expected.extend_from_slice(sql.as_bytes());
    expected.push(0);
    assert_eq!(sent, expected);
    let reply = Backend::new()
        .row_description(&[Field::text("x")])
        .data_row(&[Some(b"a")])
        .data_row(&[None])
        .command_complete("SELECT 2")
        .command_complete("UPDATE 3")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    let msgs = ready(&mut op, &mut conn, now).unwrap();
    assert_eq!(msgs.len(), 4);
    match &msgs[0] {
        SimpleMessage::Row(r) => {
            assert_eq!(&*r.columns, &["x".to_string()]);
            assert_eq!(r.get(0), Some("a"));
        }
        other => panic!("{other:?}"),
    }
    match &msgs[1] {
        SimpleMessage::Row(r) => assert_eq!(r.get(0), None),
        other => panic!("{other:?}"),
    }
    assert_eq!(msgs[2], SimpleMessage::CommandComplete("SELECT 2".into()));
    assert_eq!(msgs[3], SimpleMessage::CommandComplete("UPDATE 3".into()));

    // An empty string, and an error in the second statement.
    let t1 = conn.submit(Request::simple(""), now).unwrap();
    let t2 = conn
        .submit(Request::simple("SELECT 1; SELECT 1/0; SELECT 3"), now)
        .unwrap();
    assert_eq!(tags(&drain(&mut conn)), "QQ");
    let reply = Backend::new()
        .empty_query_response()
        .ready_for_query(b'I')
        .row_description(&[Field::text("?column?")])
        .data_row(&[Some(b"1")])
        .command_complete("SELECT 1")
        .error("ERROR", "22012", "division by zero")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert_eq!(
        outcome(conn.take_result(t1).unwrap()),
        Outcome::Simple(vec![SimpleMessage::Empty])
    );
    let e = conn.take_result(t2).unwrap().unwrap_err();
    assert_eq!(db_code(&e), "22012");
    assert!(conn.is_idle());
}

#[test]
fn prepare_execute_and_close_on_drop() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::prepare("SELECT $1::int4 AS v", &[]);
    pending(&mut op, &mut conn, now);
    let sent = drain(&mut conn);
    assert_eq!(tags(&sent), "PDS");
    let msgs = frontend_messages(&sent);
    let parse = parse_parse(&msgs[0].body);
    assert_eq!(parse.name, "duet_p1");
    assert!(parse.oids.is_empty(), "types left to the server");
    assert_eq!(msgs[1].body, b"Sduet_p1\0", "Describe statement");
    let reply = Backend::new()
        .parse_complete()
        .parameter_description(&[INT4])
        .row_description(&[Field::int4("v")])
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    let stmt = ready(&mut op, &mut conn, now).unwrap();
    assert_eq!(stmt.name(), "duet_p1");
    assert_eq!(stmt.params(), &[Type::INT4]);
    assert_eq!(stmt.columns()[0].name, "v");

    let p: [Param; 1] = [&9i32];
    let mut exec = ops::execute(&stmt, &p, None);
    pending(&mut exec, &mut conn, now);
    let sent = drain(&mut conn);
    assert_eq!(tags(&sent), "BES", "columns known from the prepare: no Describe");
    assert_eq!(parse_bind(&frontend_messages(&sent)[0].body).statement, "duet_p1");
    let reply = Backend::new()
        .bind_complete()
        .int4_row(9)
        .command_complete("SELECT 1")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    let r = ready(&mut exec, &mut conn, now).unwrap();
    assert_eq!(r.rows[0].get::<i32>(0), 9);
    drop(exec);

    // Wrong parameter count: misuse, nothing sent.
    let mut wrong = ops::execute(&stmt, &[], None);
    assert!(matches!(wrong.poll(&mut conn, now), Step::Ready(Err(Error::Misuse(_)))));
    assert!(conn.poll_transmit().is_empty());
    assert_eq!(conn.in_flight(), 0);
    drop(wrong);

    // Dropping the last handle closes it with the next request.
    drop(stmt);
    assert!(conn.poll_transmit().is_empty());
    let t = conn.submit(Request::simple("SELECT 1"), now).unwrap();
    let sent = drain(&mut conn);
    assert_eq!(tags(&sent), "CQ");
    assert_eq!(frontend_messages(&sent)[0].body, b"Sduet_p1\0");
    let reply = Backend::new()
        .close_complete()
        .row_description(&[Field::text("?column?")])
        .data_row(&[Some(b"1")])
        .command_complete("SELECT 1")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert!(matches!(conn.take_result(t), Some(Ok(Response::Simple(_)))));
    assert!(conn.is_idle());
}

#[test]
fn untyped_parameter_describes_first() {
    // A value no candidate type accepts: the statement is prepared first.
    #[derive(Debug)]
    struct Opaque;
    impl duet_core::ToSql for Opaque {
        fn to_sql(
            &self,
            _: &Type,
            out: &mut bytes::BytesMut,
        ) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            out.extend_from_slice(b"opaque");
            Ok(postgres_types::IsNull::No)
        }
        fn accepts(ty: &Type) -> bool {
            ty.oid() == 90001
        }
        postgres_types::to_sql_checked!();
    }
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let v = Opaque;
    let p: [Param; 1] = [&v];
    let mut op = ops::query("SELECT $1", &p).rows();
    pending(&mut op, &mut conn, now);
    assert_eq!(tags(&drain(&mut conn)), "PDS");
    let reply = Backend::new()
        .parse_complete()
        .parameter_description(&[90001])
        .row_description(&[Field::new("mood", 90001)])
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    // OID 90001 is not built in: the session looks it up before the
    // statement is executed with it.
    pending(&mut op, &mut conn, now);
    let lookup = drain(&mut conn);
    assert_eq!(tags(&lookup), "PBDES", "the type lookup, and nothing else yet");
    assert!(String::from_utf8_lossy(&frontend_messages(&lookup)[0].body).contains("pg_catalog.pg_type"));
    conn.handle_input(&type_lookup_reply(90001, "mood", &["sad", "happy"]).build(), now)
        .unwrap();
    pending(&mut op, &mut conn, now);
    let sent = drain(&mut conn);
    assert_eq!(tags(&sent), "BES");
    let bind = parse_bind(&frontend_messages(&sent)[0].body);
    assert_eq!(bind.statement, "duet_p1");
    assert_eq!(bind.params, vec![Some(b"opaque".to_vec())]);
    let reply = Backend::new()
        .bind_complete()
        .data_row(&[Some(b"happy")])
        .command_complete("SELECT 1");
    conn.handle_input(&reply.ready_for_query(b'I').build(), now).unwrap();
    let rows = ready(&mut op, &mut conn, now).unwrap();
    assert_eq!(rows[0].raw(0), Some(&b"happy"[..]));
    let ty = &rows[0].columns()[0].type_;
    assert_eq!((ty.oid(), ty.name()), (90001, "mood"));
    assert_eq!(
        ty.kind(),
        &postgres_types::Kind::Enum(vec!["sad".into(), "happy".into()])
    );

    // Learnt: the next statement with such a value goes out in one round
    // trip, typed, without describing first.
    let mut op = ops::query("SELECT $1 AS again", &p).rows();
    pending(&mut op, &mut conn, now);
    let sent = frontend_messages(&drain(&mut conn));
    // (C: the Close of the statement described before, now dropped.)
    assert_eq!(sent.iter().map(|m| m.tag as char).collect::<String>(), "CPBDES");
    assert!(
        sent[1].body.windows(4).any(|w| w == 90001u32.to_be_bytes()),
        "typed by the learnt OID"
    );
}

/// The answer to the session's type lookup: one enum type.
fn type_lookup_reply(oid: u32, name: &str, labels: &[&str]) -> Backend {
    use duet_core::ToSql;
    let bin = |v: &dyn ToSql, ty: Type| {
        let mut b = bytes::BytesMut::new();
        v.to_sql_checked(&ty, &mut b).unwrap();
        b.to_vec()
    };
    let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    let none: Vec<String> = Vec::new();
    let no_oids: Vec<u32> = Vec::new();
    let values = [
        Some(oid.to_be_bytes().to_vec()),
        Some(name.as_bytes().to_vec()),
        Some(b"public".to_vec()),
        Some(b"e".to_vec()),
        Some(vec![0]),
        Some(0u32.to_be_bytes().to_vec()),
        Some(0u32.to_be_bytes().to_vec()),
        None,
        Some(bin(&labels, Type::TEXT_ARRAY)),
        Some(bin(&none, Type::TEXT_ARRAY)),
        Some(bin(&no_oids, Type::OID_ARRAY)),
    ];
    let fields: Vec<Field> = [26, 25, 25, 25, 16, 26, 26, 26, 1009, 1009, 1028]
        .iter()
        .enumerate()
        .map(|(i, t)| Field::new(&format!("c{i}"), *t))
        .collect();
    let values: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
    Backend::new()
        .parse_complete()
        .bind_complete()
        .row_description(&fields)
        .data_row(&values)
        .command_complete("SELECT 1")
        .ready_for_query(b'I')
}

// ---------------------------------------------------------------------------
// Errors and pipelines
// ---------------------------------------------------------------------------

const A: &str = "SELECT $1::int4 AS a";
const B: &str = "SELECT 1 / ($1::int4 - 2) AS b";
const C: &str = "SELECT $1::int4 AS c";

/// The answer to three statements in one sync group where the second fails
/// at execution: the server skips the third and says so at Sync.
fn middle_fails() -> Vec<u8> {
    Backend::new()
        .extend(&first_run(1).build())
        .parse_complete()
        .bind_complete()
        .row_description(&[Field::int4("b")])
        .error_fields(&[
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "22012"),
            (b'M', "division by zero"),
            (b'D', "some detail"),
            (b'H', "some hint"),
            (b'P', "12"),
            (b'F', "int.c"),
            (b'L', "841"),
            (b'R', "int4div"),
        ])
        .ready_for_query(b'I')
        .build()
}

#[test]
fn error_mid_pipeline_fails_that_statement_and_skips_the_rest() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::pipeline((
        ops::query(A, &[&1i32]).one(),
        ops::query(B, &[&2i32]).one(),
        ops::query(C, &[&3i32]).one(),
    ));
    pending(&mut op, &mut conn, now);
    assert_eq!(tags(&drain(&mut conn)), "PBDEPBDEPBDES", "one batch, one Sync");
    conn.handle_input(&middle_fails(), now).unwrap();
    let err = ready(&mut op, &mut conn, now).unwrap_err();
    let db = err.as_db_error().expect("the failing statement's error, not Skipped");
    assert_eq!(db.code, "22012");
    assert_eq!(db.severity, "ERROR");
    assert_eq!(db.message, "division by zero");
    assert_eq!(db.detail.as_deref(), Some("some detail"));
    assert_eq!(db.hint.as_deref(), Some("some hint"));
    assert_eq!(db.position, Some(12));
    assert_eq!(db.line, Some(841));
    assert_eq!(db.routine.as_deref(), Some("int4div"));
    assert!(!err.is_fatal());
    assert!(conn.is_idle(), "usable after ReadyForQuery");
}

#[test]
fn error_mid_batch_low_level_results() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let (pa, pb, pc): ([Param; 1], [Param; 1], [Param; 1]) = ([&1i32], [&2i32], [&3i32]);
    conn.begin_batch();
    let a = conn.submit(Request::query(A, &pa), now).unwrap();
    let b = conn.submit(Request::query(B, &pb), now).unwrap();
    let c = conn.submit(Request::query(C, &pc), now).unwrap();
    assert_eq!(tags(conn.poll_transmit()), "PBDEPBDEPBDE", "no Sync inside a batch");
    conn.end_batch();
    assert_eq!(tags(&drain(&mut conn)), "PBDEPBDEPBDES");
    assert_eq!(conn.cached_statements(), 3);

    let stream = middle_fails();
    // Everything but the final ReadyForQuery: results wait for the group.
    conn.handle_input(&stream[..stream.len() - 6], now).unwrap();
    assert!(conn.take_result(a).is_none());
    assert!(conn.take_result(b).is_none());
    assert!(conn.take_result(c).is_none());
    conn.handle_input(&stream[stream.len() - 6..], now).unwrap();

    assert_eq!(
        rows_of(conn.take_result(a).unwrap()),
        vec![vec![Some(1i32.to_be_bytes().to_vec())]]
    );
    let eb = conn.take_result(b).unwrap().unwrap_err();
    assert_eq!(db_code(&eb), "22012");
    assert!(matches!(conn.take_result(c), Some(Err(Error::Skipped))));
    assert_eq!(conn.in_flight(), 0);

    // C's Parse was skipped, so C is no longer cached and is parsed again;
    // A and B were parsed and stay cached.
    assert_eq!(conn.cached_statements(), 2);
    let pc2: [Param; 1] = [&4i32];
    let t = conn.submit(Request::query(C, &pc2), now).unwrap();
    let sent = drain(&mut conn);
    assert_eq!(tags(&sent), "PBDES");
    assert_eq!(
        parse_parse(&frontend_messages(&sent)[0].body).name,
        "duet_s4",
        "a fresh name"
    );
    conn.handle_input(&first_run(4).ready_for_query(b'I').build(), now)
        .unwrap();
    assert_eq!(
        rows_of(conn.take_result(t).unwrap()),
        vec![vec![Some(4i32.to_be_bytes().to_vec())]]
    );
    let pa2: [Param; 1] = [&5i32];
    conn.submit(Request::query(A, &pa2), now).unwrap();
    assert_eq!(tags(&drain(&mut conn)), "BES");
}

#[test]
fn error_at_sync_fails_the_whole_group() {
    // A deferred constraint fails at the implicit COMMIT: the ErrorResponse
    // comes after every CommandComplete, just before ReadyForQuery.
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::pipeline((ops::query(A, &[&1i32]).one(), ops::query(C, &[&3i32]).one()));
    pending(&mut op, &mut conn, now);
    drain(&mut conn);
    let reply = first_run(1)
        .extend(&first_run(3).build())
        .error("ERROR", "23503", "deferred foreign key violated")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    let err = ready(&mut op, &mut conn, now).unwrap_err();
    assert_eq!(db_code(&err), "23503");
    assert!(conn.is_idle());
}

#[test]
fn separate_sync_groups_fail_independently() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let (pa, pb, pc): ([Param; 1], [Param; 1], [Param; 1]) = ([&1i32], [&2i32], [&3i32]);
    let a = conn.submit(Request::query(A, &pa), now).unwrap();
    let b = conn.submit(Request::query(B, &pb), now).unwrap();
    let c = conn.submit(Request::query(C, &pc), now).unwrap();
    assert_eq!(tags(&drain(&mut conn)), "PBDESPBDESPBDES");
    let reply = first_run(1)
        .ready_for_query(b'I')
        .parse_complete()
        .bind_complete()
        .row_description(&[Field::int4("b")])
        .error("ERROR", "22012", "division by zero")
        .ready_for_query(b'I')
        .extend(&first_run(3).build())
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert!(conn.take_result(a).unwrap().is_ok());
    assert_eq!(db_code(&conn.take_result(b).unwrap().unwrap_err()), "22012");
    assert!(
        conn.take_result(c).unwrap().is_ok(),
        "another sync group is not skipped"
    );
}

#[test]
fn fatal_error_closes_the_connection() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let p: [Param; 1] = [&1i32];
    let t1 = conn.submit(Request::query(A, &p), now).unwrap();
    let t2 = conn.submit(Request::query(C, &p), now).unwrap();
    drain(&mut conn);
    let err = conn
        .handle_input(
            &Backend::new().error("FATAL", "57P01", "terminating connection").build(),
            now,
        )
        .unwrap_err();
    assert_eq!(db_code(&err), "57P01");
    assert!(err.is_fatal());
    assert!(conn.closed_reason().is_some());
    assert_eq!(db_code(&conn.take_result(t1).unwrap().unwrap_err()), "57P01");
    assert!(conn.take_result(t2).unwrap().unwrap_err().is_fatal());
    assert!(conn.submit(Request::query(A, &p), now).is_err());
}

#[test]
fn unexpected_messages_are_protocol_errors() {
    let now = t0();
    let cases: Vec<(&str, Backend)> = vec![
        ("BindComplete with nothing in flight", Backend::new().bind_complete()),
        (
            "ReadyForQuery with nothing in flight",
            Backend::new().ready_for_query(b'I'),
        ),
        ("unknown tag", Backend::new().raw(b'!', b"")),
        ("bad transaction status", Backend::new().ready_for_query(b'X')),
        ("length below 4", Backend::new().extend(&[b'Z', 0, 0, 0, 3, b'I'])),
    ];
    for (what, input) in cases {
        let mut conn = ready_connection(&config(), now);
        if what == "bad transaction status" {
            conn.submit(Request::simple(""), now).unwrap();
            conn.handle_input(&Backend::new().empty_query_response().build(), now)
                .unwrap();
        }
        let err = conn.handle_input(input.bytes(), now).unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{what}: {err:?}");
        assert!(conn.closed_reason().is_some(), "{what}");
        assert!(conn.handle_input(&[], now).is_err(), "{what}: stays closed");
    }

    // DataRow before RowDescription; DataRow wider than RowDescription.
    let mut conn = ready_connection(&config(), now);
    let p: [Param; 1] = [&1i32];
    let t = conn.submit(Request::query(A, &p), now).unwrap();
    let err = conn
        .handle_input(
            &Backend::new().parse_complete().bind_complete().int4_row(1).build(),
            now,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    assert!(matches!(conn.take_result(t), Some(Err(Error::Protocol(_)))));

    let mut conn = ready_connection(&config(), now);
    let t = conn.submit(Request::query(A, &p), now).unwrap();
    let reply = Backend::new()
        .parse_complete()
        .bind_complete()
        .row_description(&[Field::int4("v")])
        .data_row(&[Some(b"1234"), Some(b"5678")]);
    let err = conn.handle_input(&reply.build(), now).unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    assert!(matches!(conn.take_result(t), Some(Err(Error::Protocol(_)))));
}

// ---------------------------------------------------------------------------
// Asynchronous messages
// ---------------------------------------------------------------------------

#[test]
fn notices_notifications_and_parameters_between_responses() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let (pa, pc): ([Param; 1], [Param; 1]) = ([&1i32], [&3i32]);
    let a = conn.submit(Request::query(A, &pa), now).unwrap();
    let c = conn.submit(Request::query(C, &pc), now).unwrap();
    drain(&mut conn);
    let reply = Backend::new()
        .notice("WARNING", "01000", "before anything")
        .parse_complete()
        .notification(99, "jobs", "{\"id\":1}")
        .bind_complete()
        .row_description(&[Field::int4("v")])
        .parameter_status("TimeZone", "Europe/Paris")
        .int4_row(1)
        .notice_fields(&[(b'S', "NOTICE"), (b'C', "00000"), (b'M', "localized severity only")])
        .command_complete("SELECT 1")
        .notification(99, "jobs", "")
        .ready_for_query(b'I')
        .extend(&first_run(3).build())
        .parameter_status("is_superuser", "off")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert_eq!(
        rows_of(conn.take_result(a).unwrap()),
        vec![vec![Some(1i32.to_be_bytes().to_vec())]]
    );
    assert_eq!(
        rows_of(conn.take_result(c).unwrap()),
        vec![vec![Some(3i32.to_be_bytes().to_vec())]]
    );

    let events: Vec<Event> = std::iter::from_fn(|| conn.poll_event()).collect();
    assert_eq!(events.len(), 6, "{events:?}");
    match &events[0] {
        Event::Notice(n) => {
            assert_eq!(
                (n.severity.as_str(), n.code.as_str(), n.message.as_str()),
                ("WARNING", "01000", "before anything")
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        events[1],
        Event::Notification {
            process_id: 99,
            channel: "jobs".into(),
            payload: "{\"id\":1}".into()
        }
    );
    assert_eq!(
        events[2],
        Event::ParameterStatus {
            name: "TimeZone".into(),
            value: "Europe/Paris".into()
        }
    );
    match &events[3] {
        Event::Notice(n) => assert_eq!(n.severity, "NOTICE", "falls back to the S field"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        events[4],
        Event::Notification {
            process_id: 99,
            channel: "jobs".into(),
            payload: String::new()
        }
    );
    assert_eq!(
        events[5],
        Event::ParameterStatus {
            name: "is_superuser".into(),
            value: "off".into()
        }
    );
    assert_eq!(conn.parameter("TimeZone"), Some("Europe/Paris"));
    assert!(conn.is_idle());
    assert_eq!(conn.events_dropped(), 0);
}

#[test]
fn event_queue_is_bounded() {
    let now = t0();
    let mut cfg = config();
    cfg.event_capacity = 2;
    let mut conn = ready_connection(&cfg, now);
    let t = conn.submit(Request::simple(""), now).unwrap();
    let mut reply = Backend::new();
    for i in 0..5 {
        reply = reply.notification(1, "c", &i.to_string());
    }
    conn.handle_input(&reply.empty_query_response().ready_for_query(b'I').build(), now)
        .unwrap();
    assert!(conn.take_result(t).unwrap().is_ok());
    assert_eq!(conn.events_dropped(), 3);
    let payloads: Vec<String> = std::iter::from_fn(|| conn.poll_event())
        .map(|e| match e {
            Event::Notification { payload, .. } => payload,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(payloads, vec!["3", "4"], "the newest are kept");
}

#[test]
fn notification_while_idle_is_an_event() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    conn.handle_input(&Backend::new().notification(5, "c", "p").build(), now)
        .unwrap();
    assert_eq!(
        conn.poll_event(),
        Some(Event::Notification {
            process_id: 5,
            channel: "c".into(),
            payload: "p".into()
        })
    );
    assert!(conn.is_idle());
}

// ---------------------------------------------------------------------------
// Abandoning
// ---------------------------------------------------------------------------

#[test]
fn abandoned_ticket_responses_are_discarded() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let (pa, pc): ([Param; 1], [Param; 1]) = ([&1i32], [&2i32]);
    let t1 = conn.submit(Request::query(A, &pa), now).unwrap();
    let t2 = conn.submit(Request::query(C, &pc), now).unwrap();
    drain(&mut conn);
    conn.abandon(t1);
    assert_eq!(conn.in_flight(), 4, "the responses are still expected");
    assert!(conn.wants_input());
    let reply = first_run(1)
        .ready_for_query(b'I')
        .extend(&first_run(2).build())
        .ready_for_query(b'I');
    // Byte by byte, for good measure.
    for b in reply.build() {
        conn.handle_input(&[b], now).unwrap();
        assert!(conn.take_result(t1).is_none());
    }
    assert_eq!(
        rows_of(conn.take_result(t2).unwrap()),
        vec![vec![Some(2i32.to_be_bytes().to_vec())]]
    );
    assert!(conn.take_result(t1).is_none());
    assert_eq!(conn.in_flight(), 0);
    assert!(conn.is_idle());
}

#[test]
fn abandon_after_completion_and_of_an_operation() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let p: [Param; 1] = [&1i32];
    let t = conn.submit(Request::query(A, &p), now).unwrap();
    drain(&mut conn);
    conn.handle_input(&first_run(1).ready_for_query(b'I').build(), now)
        .unwrap();
    conn.abandon(t);
    assert!(
        conn.take_result(t).is_none(),
        "a finished but untaken result is dropped"
    );

    // An operation abandoned mid-flight: its ticket's result never shows up
    // and the next operation gets its own.
    let mut op = ops::query(C, &[&7i32]).one();
    pending(&mut op, &mut conn, now);
    op.abandon(&mut conn);
    let mut op2 = ops::query(C, &[&8i32]).one();
    pending(&mut op2, &mut conn, now);
    assert_eq!(tags(&drain(&mut conn)), "PBDESBDES");
    let reply = first_run(7)
        .ready_for_query(b'I')
        .bind_complete()
        .row_description(&[Field::int4("v")])
        .int4_row(8)
        .command_complete("SELECT 1")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert_eq!(ready(&mut op2, &mut conn, now).unwrap().get::<i32>(0), 8);
    assert!(conn.is_idle());
}

#[test]
fn abandoning_a_transaction_rolls_it_back() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::atomic(ops::query(A, &[&1i32]).rows());
    pending(&mut op, &mut conn, now);
    // BEGIN, the work with the id probe behind it, the probe again and
    // COMMIT in one batch, all sent.
    assert_eq!(tags(&drain(&mut conn)), "PBEPBDEPBDEBDEPBES");
    op.abandon(&mut conn);
    let sent = drain(&mut conn);
    assert_eq!(
        frontend_messages(&sent),
        vec![FrontendMsg {
            tag: b'Q',
            body: b"ROLLBACK\0".to_vec()
        }]
    );
    let reply = control("BEGIN")
        .extend(&first_run(1).build())
        .extend(&probe(None).build())
        .extend(&probe_again(None).build())
        .extend(&control("COMMIT").build())
        .ready_for_query(b'I')
        .notice("WARNING", "25P01", "there is no transaction in progress")
        .command_complete("ROLLBACK")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert!(conn.is_idle());
    assert_eq!(conn.in_flight(), 0);
}

// ---------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------

#[test]
fn transaction_status_follows_ready_for_query() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let simple = |conn: &mut Connection, sql: &str, reply: Backend| {
        let t = conn.submit(Request::simple(sql), now).unwrap();
        drain(conn);
        conn.handle_input(&reply.build(), now).unwrap();
        conn.take_result(t).unwrap()
    };
    simple(
        &mut conn,
        "BEGIN",
        Backend::new().command_complete("BEGIN").ready_for_query(b'T'),
    )
    .unwrap();
    assert_eq!(conn.transaction_status(), TransactionStatus::InTransaction);
    assert!(!conn.is_idle(), "a pool must not hand this connection out");
    let e = simple(
        &mut conn,
        "SELECT 1/0",
        Backend::new()
            .error("ERROR", "22012", "division by zero")
            .ready_for_query(b'E'),
    )
    .unwrap_err();
    assert_eq!(db_code(&e), "22012");
    assert_eq!(conn.transaction_status(), TransactionStatus::Failed);
    assert!(!conn.is_idle());
    let e = simple(
        &mut conn,
        "SELECT 1",
        Backend::new()
            .error("ERROR", "25P02", "current transaction is aborted")
            .ready_for_query(b'E'),
    )
    .unwrap_err();
    assert_eq!(db_code(&e), "25P02");
    simple(
        &mut conn,
        "ROLLBACK",
        Backend::new().command_complete("ROLLBACK").ready_for_query(b'I'),
    )
    .unwrap();
    assert_eq!(conn.transaction_status(), TransactionStatus::Idle);
    assert!(conn.is_idle());
}

#[test]
fn atomic_sends_begin_work_commit_together() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::atomic(ops::pipeline((
        ops::query(A, &[&1i32]).rows(),
        ops::query(C, &[&2i32]).rows(),
    )));
    pending(&mut op, &mut conn, now);
    let sent = drain(&mut conn);
    assert_eq!(tags(&sent), "PBEPBDEPBDEPBDEBDEPBES");
    let sqls: Vec<String> = frontend_messages(&sent)
        .iter()
        .filter(|m| m.tag == b'P')
        .map(|m| parse_parse(&m.body).sql)
        .collect();
    assert_eq!(
        sqls,
        vec!["BEGIN", A, "SELECT pg_catalog.txid_current_if_assigned()", C, "COMMIT"]
    );
    let reply = control("BEGIN")
        .extend(&first_run(1).build())
        .extend(&probe(Some(1234)).build())
        .extend(&first_run(2).build())
        .extend(&probe_again(Some(1234)).build())
        .extend(&control("COMMIT").build())
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    let (a, c) = ready(&mut op, &mut conn, now).unwrap();
    assert_eq!((a[0].get::<i32>(0), c[0].get::<i32>(0)), (1, 2));
    assert!(conn.is_idle());
    assert_eq!(conn.atomic_depth(), 0);
}

#[test]
fn atomic_rolls_back_when_the_work_fails() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::atomic(ops::query(B, &[&2i32]).one());
    pending(&mut op, &mut conn, now);
    // `.one()` is checked before COMMIT: it waits for the row (the id probe
    // rides behind the statement).
    assert_eq!(tags(&drain(&mut conn)), "PBEPBDEPBDES");
    let reply = control("BEGIN")
        .parse_complete()
        .bind_complete()
        .row_description(&[Field::int4("b")])
        .error("ERROR", "22012", "division by zero")
        .ready_for_query(b'E');
    conn.handle_input(&reply.build(), now).unwrap();
    assert_eq!(conn.transaction_status(), TransactionStatus::Failed);
    pending(&mut op, &mut conn, now);
    assert_eq!(
        frontend_messages(&drain(&mut conn)),
        vec![FrontendMsg {
            tag: b'Q',
            body: b"ROLLBACK\0".to_vec()
        }]
    );
    conn.handle_input(
        &Backend::new()
            .command_complete("ROLLBACK")
            .ready_for_query(b'I')
            .build(),
        now,
    )
    .unwrap();
    let err = ready(&mut op, &mut conn, now).unwrap_err();
    assert_eq!(db_code(&err), "22012");
    assert!(conn.is_idle());
}

// ---------------------------------------------------------------------------
// Deadlines, cancel, grace period
// ---------------------------------------------------------------------------

#[test]
fn deadline_asks_for_cancel_once_then_57014_is_a_timeout() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let deadline = now + Duration::from_millis(500);
    let p: [Param; 1] = [&1i32];
    let t = conn
        .submit(
            Request::query("SELECT pg_sleep($1::int4)", &p).deadline(Some(deadline)),
            now,
        )
        .unwrap();
    drain(&mut conn);
    assert_eq!(conn.poll_timeout(), Some(deadline));

    // Spurious or early timeouts do nothing.
    conn.handle_timeout(now);
    conn.handle_timeout(deadline - Duration::from_millis(1));
    assert_eq!(conn.poll_cancel(), None);
    assert_eq!(conn.poll_timeout(), Some(deadline));

    conn.handle_timeout(deadline);
    let cancel = conn.poll_cancel().expect("a cancel is wanted");
    assert_eq!(
        cancel,
        CancelRequest {
            process_id: 4242,
            secret_key: 0x5EC2E7.into()
        }
    );
    let mut expected = Vec::new();
    expected.extend_from_slice(&16i32.to_be_bytes());
    expected.extend_from_slice(&80877102i32.to_be_bytes());
    expected.extend_from_slice(&4242i32.to_be_bytes());
    expected.extend_from_slice(&0x5EC2E7i32.to_be_bytes());
    assert_eq!(cancel.encode(), expected);
    assert_eq!(conn.poll_cancel(), None, "once");
    conn.handle_timeout(deadline + Duration::from_millis(1));
    assert_eq!(conn.poll_cancel(), None, "still once");
    let grace = conn.config().cancel_grace;
    assert_eq!(conn.poll_timeout(), Some(deadline + grace));
    assert!(conn.take_result(t).is_none());

    let reply = Backend::new()
        .parse_complete()
        .bind_complete()
        .row_description(&[Field::new("pg_sleep", 2278)])
        .error("ERROR", "57014", "canceling statement due to user request")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert!(matches!(conn.take_result(t), Some(Err(Error::Timeout))));
    assert_eq!(conn.poll_timeout(), None, "grace period over");
    conn.handle_timeout(deadline + grace);
    assert!(conn.closed_reason().is_none(), "the server answered in time");
    assert!(conn.is_idle());

    // The connection is still usable.
    let t = conn.submit(Request::query(A, &p), now).unwrap();
    drain(&mut conn);
    conn.handle_input(&first_run(1).ready_for_query(b'I').build(), now)
        .unwrap();
    assert!(conn.take_result(t).unwrap().is_ok());
}

#[test]
fn query_canceled_without_a_deadline_stays_a_db_error() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let t = conn.submit(Request::simple("SELECT pg_sleep(10)"), now).unwrap();
    drain(&mut conn);
    let reply = Backend::new()
        .error("ERROR", "57014", "canceling statement due to user request")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert_eq!(db_code(&conn.take_result(t).unwrap().unwrap_err()), "57014");
}

#[test]
fn deadline_met_clears_the_timer() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let deadline = now + Duration::from_secs(1);
    let p: [Param; 1] = [&1i32];
    let t = conn
        .submit(Request::query(A, &p).deadline(Some(deadline)), now)
        .unwrap();
    drain(&mut conn);
    conn.handle_input(&first_run(1).ready_for_query(b'I').build(), now)
        .unwrap();
    assert!(conn.take_result(t).unwrap().is_ok());
    assert_eq!(conn.poll_timeout(), None);
    conn.handle_timeout(deadline);
    assert_eq!(conn.poll_cancel(), None);

    // Abandoning a ticket drops its deadline too.
    let t = conn
        .submit(Request::query(A, &p).deadline(Some(deadline)), now)
        .unwrap();
    assert_eq!(conn.poll_timeout(), Some(deadline));
    conn.abandon(t);
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn request_finishing_after_its_deadline_keeps_its_result() {
    // The cancel arrives too late to stop anything: the result stands and
    // the grace period ends with the response.
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let deadline = now + Duration::from_millis(100);
    let p: [Param; 1] = [&1i32];
    let t = conn
        .submit(Request::query(A, &p).deadline(Some(deadline)), now)
        .unwrap();
    drain(&mut conn);
    conn.handle_timeout(deadline);
    assert!(conn.poll_cancel().is_some());
    conn.handle_input(&first_run(1).ready_for_query(b'I').build(), deadline)
        .unwrap();
    assert!(conn.take_result(t).unwrap().is_ok());
    assert_eq!(conn.poll_timeout(), None);
    conn.handle_timeout(deadline + conn.config().cancel_grace);
    assert!(conn.closed_reason().is_none());
}

#[test]
fn pipeline_past_its_deadline_fails_with_timeout() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let deadline = now + Duration::from_secs(1);
    conn.set_default_deadline(Some(deadline));
    let mut op = ops::pipeline((ops::query(A, &[&1i32]).one(), ops::query(C, &[&2i32]).one()));
    pending(&mut op, &mut conn, now);
    conn.set_default_deadline(None);
    drain(&mut conn);
    conn.handle_timeout(deadline);
    assert!(conn.poll_cancel().is_some());
    let reply = Backend::new()
        .parse_complete()
        .bind_complete()
        .row_description(&[Field::int4("a")])
        .error("ERROR", "57014", "canceling statement due to user request")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), deadline).unwrap();
    assert!(matches!(ready(&mut op, &mut conn, now), Err(Error::Timeout)));
    assert!(conn.is_idle());
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn default_deadline_applies_to_requests_without_one() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let d = now + Duration::from_secs(2);
    conn.set_default_deadline(Some(d));
    let mut op = ops::query(A, &[&1i32]).one();
    pending(&mut op, &mut conn, now);
    assert_eq!(conn.poll_timeout(), Some(d));
    conn.set_default_deadline(None);
    let d2 = now + Duration::from_secs(1);
    conn.submit(Request::simple("SELECT 1").deadline(Some(d2)), now)
        .unwrap();
    assert_eq!(conn.poll_timeout(), Some(d2), "the earliest deadline in flight");
    conn.submit(Request::simple("SELECT 2"), now).unwrap();
    assert_eq!(conn.poll_timeout(), Some(d2), "no default any more");
}

#[test]
fn no_answer_within_the_grace_period_closes_the_connection() {
    let now = t0();
    let mut cfg = config();
    cfg.cancel_grace = Duration::from_secs(2);
    let mut conn = ready_connection(&cfg, now);
    let deadline = now + Duration::from_secs(1);
    let mut op = ops::query("SELECT pg_sleep($1::int4)", &[&100i32])
        .deadline(Some(deadline))
        .rows();
    pending(&mut op, &mut conn, now);
    drain(&mut conn);
    conn.handle_timeout(deadline);
    assert!(conn.poll_cancel().is_some());
    let until = deadline + Duration::from_secs(2);
    assert_eq!(conn.poll_timeout(), Some(until));
    // Part of the answer arrives, but not the end of it.
    conn.handle_input(&Backend::new().parse_complete().bind_complete().build(), now)
        .unwrap();
    conn.handle_timeout(until - Duration::from_millis(1));
    assert!(conn.closed_reason().is_none());
    conn.handle_timeout(until);
    assert!(matches!(conn.closed_reason(), Some(Error::Closed(_))));
    // The request itself ends as what it is: timed out.
    assert!(matches!(ready(&mut op, &mut conn, now), Err(Error::Timeout)));
    assert!(!conn.wants_input());
    assert_eq!(conn.poll_timeout(), None);
    assert!(conn
        .handle_input(&Backend::new().ready_for_query(b'I').build(), now)
        .is_err());
    let p: [Param; 1] = [&1i32];
    assert!(matches!(conn.submit(Request::query(A, &p), now), Err(Error::Closed(_))));
}

// ---------------------------------------------------------------------------
// Frame limits and end of stream
// ---------------------------------------------------------------------------

#[test]
fn oversized_frame_header_is_a_protocol_error() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let p: [Param; 1] = [&1i32];
    let t = conn.submit(Request::query(A, &p), now).unwrap();
    drain(&mut conn);
    conn.handle_input(
        &Backend::new()
            .parse_complete()
            .bind_complete()
            .row_description(&[Field::int4("v")])
            .build(),
        now,
    )
    .unwrap();
    // A DataRow header claiming 2 GiB; only the header is sent.
    let err = conn.handle_input(&[b'D', 0x7f, 0xff, 0xff, 0xff], now).unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    assert!(err.to_string().contains("max_message_size"), "{err}");
    assert!(matches!(conn.take_result(t), Some(Err(Error::Protocol(_)))));

    // The header split over two reads is caught as soon as it is complete.
    let mut conn = ready_connection(&config(), now);
    conn.handle_input(&[b'D', 0x40], now).unwrap();
    assert!(conn.handle_input(&[0, 0, 0], now).is_err());
}

#[test]
fn frame_size_limit_is_inclusive() {
    let now = t0();
    let mut cfg = config();
    cfg.max_message_size = 64;
    // A notice of exactly 64 bytes (tag included) passes, 65 does not.
    let notice = |total: usize| {
        let body_len = total - 5;
        // Fields: 'M' + text + NUL, then the terminating NUL.
        let text = "x".repeat(body_len - 3);
        Backend::new().notice_fields(&[(b'M', &text)]).build()
    };
    assert_eq!(notice(64).len(), 64);
    let mut conn = ready_connection(&cfg, now);
    conn.handle_input(&notice(64), now).unwrap();
    assert!(matches!(conn.poll_event(), Some(Event::Notice(_))));
    let err = conn.handle_input(&notice(65), now).unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
}

#[test]
fn server_eof_fails_requests_in_flight() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let (pa, pc): ([Param; 1], [Param; 1]) = ([&1i32], [&2i32]);
    let a = conn.submit(Request::query(A, &pa), now).unwrap();
    let c = conn.submit(Request::query(C, &pc), now).unwrap();
    drain(&mut conn);
    // A has completed but its group's ReadyForQuery never comes.
    conn.handle_input(&first_run(1).build(), now).unwrap();
    conn.handle_eof(now);
    assert!(matches!(conn.closed_reason(), Some(Error::Closed(_))));
    assert!(matches!(conn.take_result(a), Some(Err(Error::Closed(_)))));
    assert!(matches!(conn.take_result(c), Some(Err(Error::Closed(_)))));
    assert!(!conn.wants_input());
    assert!(!conn.is_idle());
    conn.handle_eof(now);
    conn.handle_timeout(now);

    // EOF during startup.
    let mut conn = Connection::new(&config(), now);
    conn.handle_eof(now);
    assert!(matches!(
        ops::startup().poll(&mut conn, now),
        Step::Ready(Err(Error::Closed(_)))
    ));
}

#[test]
fn client_close_sends_terminate() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let p: [Param; 1] = [&1i32];
    let t = conn.submit(Request::query(A, &p), now).unwrap();
    drain(&mut conn);
    conn.close();
    assert_eq!(drain(&mut conn), b"X\0\0\0\x04");
    assert!(matches!(conn.take_result(t), Some(Err(Error::Closed(_)))));
    conn.close();
    assert!(conn.poll_transmit().is_empty(), "only one Terminate");
}

#[test]
fn partial_writes_are_finished_by_later_calls() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let (pa, pc): ([Param; 1], [Param; 1]) = ([&1i32], [&2i32]);
    let a = conn.submit(Request::query(A, &pa), now).unwrap();
    let whole_a = conn.poll_transmit().to_vec();
    conn.advance_transmit(3);
    let c = conn.submit(Request::query(C, &pc), now).unwrap();
    let rest = conn.poll_transmit().to_vec();
    assert_eq!(&rest[..whole_a.len() - 3], &whole_a[3..]);
    let mut all = whole_a[..3].to_vec();
    all.extend_from_slice(&rest);
    assert_eq!(tags(&all), "PBDESPBDES");
    conn.advance_transmit(usize::MAX);
    assert!(conn.poll_transmit().is_empty());
    let reply = first_run(1)
        .ready_for_query(b'I')
        .extend(&first_run(2).build())
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert!(conn.take_result(a).unwrap().is_ok());
    assert!(conn.take_result(c).unwrap().is_ok());
}

#[test]
fn statement_cache_evicts_and_closes() {
    let now = t0();
    let mut cfg = config();
    cfg.statement_cache_capacity = 1;
    let mut conn = ready_connection(&cfg, now);
    let p: [Param; 1] = [&1i32];
    let a = conn.submit(Request::query(A, &p), now).unwrap();
    drain(&mut conn);
    conn.handle_input(&first_run(1).ready_for_query(b'I').build(), now)
        .unwrap();
    assert!(conn.take_result(a).unwrap().is_ok());
    let c = conn.submit(Request::query(C, &p), now).unwrap();
    let sent = drain(&mut conn);
    assert_eq!(tags(&sent), "CPBDES");
    assert_eq!(frontend_messages(&sent)[0].body, b"Sduet_s1\0");
    let reply = Backend::new()
        .close_complete()
        .extend(&first_run(1).build())
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert!(conn.take_result(c).unwrap().is_ok());
    assert_eq!(conn.cached_statements(), 1);

    // Capacity 0: the unnamed statement, parsed every time.
    let mut cfg = config();
    cfg.statement_cache_capacity = 0;
    let mut conn = ready_connection(&cfg, now);
    for _ in 0..2 {
        let t = conn.submit(Request::query(A, &p), now).unwrap();
        let sent = drain(&mut conn);
        assert_eq!(tags(&sent), "PBDES");
        assert_eq!(parse_parse(&frontend_messages(&sent)[0].body).name, "");
        conn.handle_input(&first_run(1).ready_for_query(b'I').build(), now)
            .unwrap();
        assert!(conn.take_result(t).unwrap().is_ok());
    }
    assert_eq!(conn.cached_statements(), 0);
}

#[test]
fn stale_cached_statement_is_reprepared_once() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::query(A, &[&1i32]).one();
    pending(&mut op, &mut conn, now);
    drain(&mut conn);
    conn.handle_input(&first_run(1).ready_for_query(b'I').build(), now)
        .unwrap();
    ready(&mut op, &mut conn, now).unwrap();

    // The table changed: the server refuses the cached plan.
    let mut op = ops::query(A, &[&2i32]).one();
    pending(&mut op, &mut conn, now);
    assert_eq!(tags(&drain(&mut conn)), "BES");
    let reply = Backend::new()
        .error("ERROR", "0A000", "cached plan must not change result type")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    pending(&mut op, &mut conn, now);
    let sent = drain(&mut conn);
    assert_eq!(tags(&sent), "CSPBDES", "close the stale statement, then parse afresh");
    let reply = Backend::new()
        .close_complete()
        .ready_for_query(b'I')
        .extend(&first_run(2).build())
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert_eq!(ready(&mut op, &mut conn, now).unwrap().get::<i32>(0), 2);
    assert!(conn.is_idle());
}

#[test]
fn fake_server_round_trip_through_ops() {
    // The fake server used by the property tests agrees with the scripted
    // transcripts above.
    let now = t0();
    let (mut conn, mut server) = fake_session(&config(), now);
    let mut op = ops::pipeline((
        ops::query("SELECT $1::int4", &[&1i32]).one(),
        ops::query("SELECT $1::int4 notice", &[&2i32]).one(),
    ));
    let (a, b) = run(&mut op, &mut conn, &mut server, now).unwrap();
    assert_eq!((a.get::<i32>(0), b.get::<i32>(0)), (1, 2));
    let mut op = ops::query("SELECT fail($1::int4)", &[&3i32]).one();
    assert_eq!(
        db_code(&run(&mut op, &mut conn, &mut server, now).unwrap_err()),
        "22012"
    );
    let mut op = ops::atomic(ops::query("SELECT $1::int4", &[&4i32]).one());
    assert_eq!(run(&mut op, &mut conn, &mut server, now).unwrap().get::<i32>(0), 4);
    // BEGIN (unnamed, so an unsent one can be taken back) travels with the
    // cached statement and the transaction-id probe behind it; `.one()`
    // must be checked before COMMIT, which then goes out behind the probe
    // again (the first one saw no id: a SELECT writes nothing).
    assert_eq!(server.received, "PBDEPBDESPBDESPBEBEPBDESBEPBES");
    assert!(matches!(conn.poll_event(), Some(Event::Notice(_))));
    assert!(conn.is_idle());
}

#[test]
fn failed_submits_send_nothing() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let params: Vec<Param> = (0..65536).map(|_| &1i32 as Param).collect();
    let err = conn.submit(Request::query("SELECT 1", &params), now).unwrap_err();
    assert!(matches!(err, Error::Misuse(_)), "{err:?}");
    let p: [Param; 1] = [&1i32];
    assert!(matches!(
        conn.submit(Request::query("SELECT \0", &p), now),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        conn.submit(Request::simple("SELECT \0"), now),
        Err(Error::Invalid(_))
    ));
    conn.begin_batch();
    conn.submit(Request::query(A, &p), now).unwrap();
    let before = conn.poll_transmit().to_vec();
    assert!(matches!(
        conn.submit(Request::prepare("SELECT \0", &[]), now),
        Err(Error::Invalid(_))
    ));
    assert_eq!(
        conn.poll_transmit(),
        &before[..],
        "a failed submit inside a batch leaves the batch as it was"
    );
    conn.end_batch();
    assert_eq!(tags(conn.poll_transmit()), "PBDES");
    assert_eq!(conn.in_flight(), 2);
    assert_eq!(conn.cached_statements(), 1, "failed statements are not cached");
    // 40 000 parameters are fine (the protocol's count is unsigned).
    let many: Vec<Param> = (0..40000).map(|_| &1i32 as Param).collect();
    conn.submit(Request::query("SELECT many", &many), now).unwrap();
}

// ---------------------------------------------------------------------------
// Known bugs (ignored until fixed in core/src)
// ---------------------------------------------------------------------------

#[test]
fn failed_submit_keeps_pending_statement_closes() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::prepare("SELECT 1", &[]);
    pending(&mut op, &mut conn, now);
    drain(&mut conn);
    let reply = Backend::new()
        .parse_complete()
        .parameter_description(&[])
        .no_data()
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    let stmt = ready(&mut op, &mut conn, now).unwrap();
    assert_eq!(stmt.name(), "duet_p1");
    drop(stmt);

    // Fails to encode (NUL in the text): nothing is sent, as promised...
    let err = conn.submit(Request::simple("SELECT 1\0"), now).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(conn.poll_transmit().is_empty());
    assert_eq!(conn.in_flight(), 0);
    // ...but the Close of duet_p1 must still go out with the next request.
    conn.submit(Request::simple("SELECT 1"), now).unwrap();
    assert_eq!(tags(&drain(&mut conn)), "CQ", "Close 'duet_p1' was lost");
}

#[test]
fn failed_submit_keeps_eviction_closes() {
    let now = t0();
    let mut cfg = config();
    cfg.statement_cache_capacity = 1;
    let (mut conn, mut server) = fake_session(&cfg, now);
    run(
        &mut ops::query("SELECT $1::int4 AS a", &[&1i32]).one(),
        &mut conn,
        &mut server,
        now,
    )
    .unwrap();
    assert_eq!(server.named_statements(), 1);
    // A miss evicts duet_s1, then the Parse fails to encode (NUL in the SQL).
    let err = run(
        &mut ops::query("SELECT $1::int4 \0", &[&2i32]).one(),
        &mut conn,
        &mut server,
        now,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    run(
        &mut ops::query("SELECT $1::int4 AS b", &[&3i32]).one(),
        &mut conn,
        &mut server,
        now,
    )
    .unwrap();
    assert_eq!(conn.cached_statements(), 1);
    assert_eq!(
        server.named_statements(),
        1,
        "duet_s1 was never closed: {}",
        server.received
    );
}

#[test]
#[ignore = "limit: Close messages skipped by the server after an error in their sync group are not re-sent"]
fn closes_skipped_after_an_error_are_resent() {
    let now = t0();
    let mut cfg = config();
    cfg.statement_cache_capacity = 1;
    let (mut conn, mut server) = fake_session(&cfg, now);
    run(
        &mut ops::query("SELECT $1::int4 AS a", &[&1i32]).one(),
        &mut conn,
        &mut server,
        now,
    )
    .unwrap();
    // One batch: a failing statement, then a miss whose eviction Close the
    // server skips along with everything else up to Sync.
    let mut op = ops::pipeline((
        ops::query("SELECT $1::int4 AS a, fail", &[&1i32]).one(),
        ops::query("SELECT $1::int4 AS b", &[&2i32]).one(),
    ));
    let err = run(&mut op, &mut conn, &mut server, now).unwrap_err();
    assert_eq!(db_code(&err), "22012");
    run(
        &mut ops::query("SELECT $1::int4 AS c", &[&3i32]).one(),
        &mut conn,
        &mut server,
        now,
    )
    .unwrap();
    assert!(conn.cached_statements() <= 1);
    assert!(
        server.named_statements() <= 1,
        "{} statements prepared on the server with statement_cache_capacity = 1; sent: {}",
        server.named_statements(),
        server.received
    );
}

#[test]
fn deadline_cancels_every_timed_out_group() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let deadline = now + Duration::from_secs(1);
    let p: [Param; 1] = [&100i32];
    let t1 = conn
        .submit(
            Request::query("SELECT pg_sleep($1::int4)", &p).deadline(Some(deadline)),
            now,
        )
        .unwrap();
    let t2 = conn
        .submit(
            Request::query("SELECT pg_sleep($1::int4)", &p).deadline(Some(deadline)),
            now,
        )
        .unwrap();
    drain(&mut conn);
    conn.handle_timeout(deadline);
    assert!(conn.poll_cancel().is_some());
    // The cancel stops the first statement, promptly.
    let reply = Backend::new()
        .parse_complete()
        .bind_complete()
        .row_description(&[Field::new("pg_sleep", 2278)])
        .error("ERROR", "57014", "canceling statement due to user request")
        .ready_for_query(b'I');
    let later = deadline + Duration::from_millis(10);
    conn.handle_input(&reply.build(), later).unwrap();
    assert!(matches!(conn.take_result(t1), Some(Err(Error::Timeout))));
    // The server now runs the second one, also past its deadline: it must
    // be cancelled too, or it runs to the end of its sleep.
    conn.handle_timeout(later);
    assert!(
        conn.poll_cancel().is_some(),
        "no cancel for the second timed-out statement"
    );
    let _ = t2;
}

#[test]
fn pipeline_child_encode_failure_voids_its_group() {
    #[derive(Debug)]
    struct Broken;
    impl duet_core::ToSql for Broken {
        fn to_sql(
            &self,
            _: &Type,
            _: &mut bytes::BytesMut,
        ) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            Err("cannot encode".into())
        }
        fn accepts(_: &Type) -> bool {
            true
        }
        postgres_types::to_sql_checked!();
    }
    let now = t0();
    let (mut conn, mut server) = fake_session(&config(), now);
    let b = Broken;
    let pb: [Param; 1] = [&b];
    let mut op = ops::pipeline((
        ops::query("SELECT $1::int4", &[&1i32]).one(),
        ops::query("SELECT $1::int4", &pb).one(),
        ops::query("SELECT $1::int4 AS c", &[&3i32]).one(),
    ));
    let err = run(&mut op, &mut conn, &mut server, now).unwrap_err();
    assert!(matches!(err, Error::Encode(_)), "{err:?}");
    // ops::pipeline's contract: "if one statement fails, ... the later ones
    // are skipped, the earlier ones of the group are rolled back". The
    // siblings were queued in the same poll, so the group is poisoned: a
    // statement that cannot parse ends it, and the server rolls the
    // implicit transaction back (the conformance test
    // `refused_statement_mid_pipeline` checks that on a real server).
    // The pipeline answers at once; the voided group still goes out.
    let sent = drain(&mut conn);
    server.receive(&sent);
    conn.handle_input(&server.take_all_output(), now).unwrap();
    assert_eq!(server.received, "PBDEPBDEPBES", "siblings, then the poison, one Sync");
    assert!(conn.is_idle());
    assert!(
        matches!(server.executed.last(), Some(Executed::Failed(code)) if code == "42601"),
        "{:?}",
        server.executed
    );
}

#[test]
fn cache_hit_learns_columns_from_its_own_describe() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let p: [Param; 1] = [&1i32];
    // First run: parsed, then Bind fails (e.g. a text parameter the type rejects).
    let t = conn.submit(Request::query(A, &p), now).unwrap();
    assert_eq!(tags(&drain(&mut conn)), "PBDES");
    let reply = Backend::new()
        .parse_complete()
        .error("ERROR", "22P02", "invalid input syntax for type integer")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert_eq!(db_code(&conn.take_result(t).unwrap().unwrap_err()), "22P02");
    assert_eq!(conn.cached_statements(), 1, "parsed, so still cached");
    // Second run: a hit without known columns, so it describes.
    let t = conn.submit(Request::query(A, &p), now).unwrap();
    assert_eq!(tags(&drain(&mut conn)), "BDES");
    let reply = Backend::new()
        .bind_complete()
        .row_description(&[Field::int4("a")])
        .int4_row(1)
        .command_complete("SELECT 1")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert!(conn.take_result(t).unwrap().is_ok());
    // Third run: the columns are known now.
    conn.submit(Request::query(A, &p), now).unwrap();
    assert_eq!(
        tags(&drain(&mut conn)),
        "BES",
        "the RowDescription of the second run was not remembered"
    );
}

#[test]
fn abandon_after_close_queues_nothing() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::atomic(ops::query(A, &[&1i32]).one());
    pending(&mut op, &mut conn, now);
    drain(&mut conn);
    conn.handle_eof(now);
    assert_eq!(conn.in_flight(), 0);
    // The driver drops the future after the connection died.
    op.abandon(&mut conn);
    assert!(conn.poll_transmit().is_empty());
    assert_eq!(
        conn.in_flight(),
        0,
        "a detached ROLLBACK was queued on a closed connection"
    );
}

#[test]
fn for_each_hands_rows_over_while_the_statement_runs() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let seen = std::cell::RefCell::new(Vec::new());
    let mut op = ops::query("SELECT $1::int4", &[&1i32]).for_each(|row| {
        seen.borrow_mut().push(row.get::<i32>(0));
        Ok(())
    });
    pending(&mut op, &mut conn, now);
    drain(&mut conn);
    conn.handle_input(
        &Backend::new()
            .parse_complete()
            .bind_complete()
            .row_description(&[Field::int4("v")])
            .int4_row(1)
            .int4_row(2)
            .build(),
        now,
    )
    .unwrap();
    pending(&mut op, &mut conn, now);
    assert_eq!(
        *seen.borrow(),
        [1, 2],
        "rows are handed over before the statement completes"
    );
    conn.handle_input(&Backend::new().int4_row(3).build(), now).unwrap();
    pending(&mut op, &mut conn, now);
    assert_eq!(*seen.borrow(), [1, 2, 3]);
    conn.handle_input(
        &Backend::new()
            .int4_row(4)
            .command_complete("SELECT 4")
            .ready_for_query(b'I')
            .build(),
        now,
    )
    .unwrap();
    assert_eq!(ready(&mut op, &mut conn, now).unwrap(), 4);
    assert_eq!(*seen.borrow(), [1, 2, 3, 4]);
    assert!(conn.is_idle());
}

#[test]
fn for_each_callback_error_drops_the_remaining_rows() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut calls = 0;
    let mut op = ops::query("SELECT $1::int4", &[&1i32]).for_each(|_| {
        calls += 1;
        Err(duet_core::Error::invalid("enough"))
    });
    pending(&mut op, &mut conn, now);
    drain(&mut conn);
    conn.handle_input(
        &Backend::new()
            .parse_complete()
            .bind_complete()
            .row_description(&[Field::int4("v")])
            .int4_row(1)
            .int4_row(2)
            .command_complete("SELECT 2")
            .ready_for_query(b'I')
            .build(),
        now,
    )
    .unwrap();
    let e = ready(&mut op, &mut conn, now).unwrap_err();
    assert!(matches!(e, duet_core::Error::Invalid(_)), "{e:?}");
    drop(op);
    assert_eq!(calls, 1);
    assert!(conn.is_idle());
}

// ---------------------------------------------------------------------------
// Commit truth and limits under faults
// ---------------------------------------------------------------------------

/// The statements a send buffer's Parse messages and simple queries carry.
fn statements(sent: &[u8]) -> Vec<String> {
    frontend_messages(sent)
        .iter()
        .filter_map(|m| match m.tag {
            b'P' => Some(parse_parse(&m.body).sql),
            b'Q' => Some(String::from_utf8_lossy(&m.body[..m.body.len() - 1]).into_owned()),
            _ => None,
        })
        .collect()
}

#[test]
fn abandoned_transaction_takes_back_its_unsent_commit() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::atomic(ops::query(A, &[&1i32]).rows());
    pending(&mut op, &mut conn, now);
    // Dropped before any byte left: COMMIT must never reach the server.
    op.abandon(&mut conn);
    let sent = statements(&drain(&mut conn));
    assert!(!sent.iter().any(|s| s == "COMMIT"), "{sent:?}");
    assert_eq!(sent.last().map(String::as_str), Some("ROLLBACK"), "{sent:?}");
    let reply = control("BEGIN")
        .extend(&first_run(1).build())
        .extend(&probe(Some(5)).build())
        .extend(&probe_again(Some(5)).build())
        .ready_for_query(b'T')
        .command_complete("ROLLBACK")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert!(conn.is_idle());
}

#[test]
fn commit_partly_sent_is_not_taken_back() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::atomic(ops::query(A, &[&1i32]).rows());
    pending(&mut op, &mut conn, now);
    let all = conn.poll_transmit().len();
    // All but the last byte of COMMIT's Execute and the Sync left.
    conn.advance_transmit(all - 6);
    op.abandon(&mut conn);
    let rest = conn.poll_transmit().to_vec();
    assert_eq!(&rest[..1], &[0u8], "the rest of COMMIT's Execute still goes");
}

/// Runs atomic(query(A).rows()) until its whole flight has left, feeds
/// `reply`, then loses the connection.
fn lose_after(reply: Backend) -> (Connection, impl Operation<Output = Vec<duet_core::Row>>) {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::atomic(ops::query(A, &[&1i32]).rows());
    pending(&mut op, &mut conn, now);
    drain(&mut conn);
    conn.handle_input(&reply.build(), now).unwrap();
    conn.handle_eof(now);
    (conn, op)
}

#[test]
fn lost_commit_is_looked_up_by_transaction_id() {
    let now = t0();
    let before_commit = || {
        control("BEGIN")
            .extend(&first_run(1).build())
            .extend(&probe(Some(77)).build())
            .extend(&probe_again(Some(77)).build())
    };
    for (outcome, committed) in [(TxOutcome::Committed, true), (TxOutcome::Aborted, false)] {
        let (mut conn, mut op) = lose_after(before_commit());
        pending(&mut op, &mut conn, now);
        assert_eq!(conn.poll_outcome_query(), Some(77));
        assert_eq!(conn.poll_outcome_query(), None, "asked once");
        pending(&mut op, &mut conn, now);
        conn.handle_outcome(Ok(outcome));
        let r = ready(&mut op, &mut conn, now);
        if committed {
            assert_eq!(r.unwrap()[0].get::<i32>(0), 1);
        } else {
            let e = r.unwrap_err();
            assert!(
                matches!(e, Error::Closed(_)) && e.to_string().contains("rolled transaction 77 back"),
                "{e}"
            );
        }
    }
    // The lookup could not tell: in doubt, with the id.
    let (mut conn, mut op) = lose_after(before_commit());
    pending(&mut op, &mut conn, now);
    conn.handle_outcome(Err(Error::Timeout));
    assert!(matches!(ready(&mut op, &mut conn, now), Err(Error::InDoubt(Some(77)))));
    // The id came behind the first statement, the rest was lost: the
    // lookup decides, and the work's output (all there) is the result.
    let (mut conn, mut op) = lose_after(
        control("BEGIN")
            .extend(&first_run(1).build())
            .extend(&probe(Some(78)).build()),
    );
    pending(&mut op, &mut conn, now);
    assert_eq!(conn.poll_outcome_query(), Some(78));
    conn.handle_outcome(Ok(TxOutcome::Committed));
    assert_eq!(ready(&mut op, &mut conn, now).unwrap()[0].get::<i32>(0), 1);
    // With a second statement whose result was lost: committed, but
    // without the work's output, and said so.
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::atomic(ops::pipeline((
        ops::query(A, &[&1i32]).rows(),
        ops::query(C, &[&2i32]).rows(),
    )));
    pending(&mut op, &mut conn, now);
    drain(&mut conn);
    let reply = control("BEGIN")
        .extend(&first_run(1).build())
        .extend(&probe(Some(79)).build());
    conn.handle_input(&reply.build(), now).unwrap();
    conn.handle_eof(now);
    pending(&mut op, &mut conn, now);
    assert_eq!(conn.poll_outcome_query(), Some(79));
    conn.handle_outcome(Ok(TxOutcome::Committed));
    assert!(matches!(
        ready(&mut op, &mut conn, now),
        Err(Error::CommittedWithoutResult(79))
    ));
    // Nothing was written: the results stand whatever became of COMMIT.
    let (mut conn, mut op) = lose_after(
        control("BEGIN")
            .extend(&first_run(1).build())
            .extend(&probe(None).build())
            .extend(&probe_again(None).build()),
    );
    assert_eq!(ready(&mut op, &mut conn, now).unwrap()[0].get::<i32>(0), 1);
    assert_eq!(conn.poll_outcome_query(), None);
    // The first statement wrote nothing and the rest was lost before the
    // second probe: in doubt, without an id.
    let (mut conn, mut op) = lose_after(
        control("BEGIN")
            .extend(&first_run(1).build())
            .extend(&probe(None).build()),
    );
    assert!(matches!(ready(&mut op, &mut conn, now), Err(Error::InDoubt(None))));
    // Lost before any id arrived: in doubt, without one.
    let (mut conn, mut op) = lose_after(control("BEGIN").extend(&first_run(1).build()));
    assert!(matches!(ready(&mut op, &mut conn, now), Err(Error::InDoubt(None))));
}

#[test]
fn lost_connection_before_commit_left_is_a_plain_error() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::atomic(ops::query(A, &[&1i32]).rows());
    pending(&mut op, &mut conn, now);
    conn.handle_eof(now);
    assert!(matches!(ready(&mut op, &mut conn, now), Err(Error::Closed(_))));
}

#[test]
fn deadlines_are_judged_while_input_keeps_coming() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let deadline = now + Duration::from_millis(100);
    let mut op = ops::query(A, &[&1i32]).deadline(Some(deadline)).rows();
    pending(&mut op, &mut conn, now);
    drain(&mut conn);
    // The socket never goes quiet, so the driver's wait never times out.
    let notice = Backend::new().notice("NOTICE", "00000", "flood").build();
    conn.handle_input(&notice, deadline).unwrap();
    assert!(
        conn.poll_cancel().is_some(),
        "past its deadline, the request is cancelled"
    );
    let grace_end = deadline + config().cancel_grace;
    assert!(conn.handle_input(&notice, grace_end).is_err());
    assert!(matches!(ready(&mut op, &mut conn, now), Err(Error::Timeout)));
}

#[test]
fn limits_of_any_size_are_accepted() {
    let now = t0();
    let mut cfg = config();
    cfg.connect_timeout = Some(Duration::MAX);
    cfg.cancel_grace = Duration::MAX;
    let conn = Connection::new(&cfg, now);
    assert_eq!(conn.poll_timeout(), None, "a limit past the end of the clock is none");
    let mut conn = ready_connection(&cfg, now);
    let mut op = ops::query(A, &[&1i32]).deadline(Some(now)).rows();
    pending(&mut op, &mut conn, now);
    conn.handle_timeout(now + Duration::from_secs(1));
    assert!(conn.poll_cancel().is_some());
    assert_eq!(duet_core::deadline_after(now, Duration::MAX), None);
}

#[test]
fn a_server_that_is_not_postgres_is_named() {
    let now = t0();
    let mut conn = Connection::new(&config(), now);
    let e = conn
        .handle_input(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", now)
        .unwrap_err();
    assert!(e.to_string().contains("HTTP server"), "{e}");
    let mut conn = Connection::new(&config(), now);
    let e = conn.handle_input(b"SSH-2.0-OpenSSH_9.2\r\n", now).unwrap_err();
    assert!(e.to_string().contains("not PostgreSQL") || e.is_fatal(), "{e}");
    let mut conn = Connection::new(&config(), now);
    let e = conn.handle_input(b"+OK redis\r\n", now).unwrap_err();
    assert!(e.to_string().contains("not PostgreSQL's"), "{e}");
}

#[test]
fn nul_in_sql_is_named() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let e = conn.submit(Request::simple("SELECT 1\0--"), now).unwrap_err();
    assert!(e.to_string().contains("NUL byte at byte 8"), "{e}");
    assert!(!e.to_string().contains("parameter"), "{e}");
}

#[test]
fn an_answer_read_past_its_deadline_is_no_timeout() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let deadline = now + Duration::from_millis(10);
    let mut op = ops::query(A, &[&1i32]).deadline(Some(deadline)).rows();
    pending(&mut op, &mut conn, now);
    drain(&mut conn);
    // The whole answer arrives in a read made after the deadline.
    let reply = first_run(1).ready_for_query(b'I');
    conn.handle_input(&reply.build(), deadline + Duration::from_secs(1))
        .unwrap();
    assert_eq!(ready(&mut op, &mut conn, now).unwrap()[0].get::<i32>(0), 1);
    assert!(conn.poll_cancel().is_none(), "no cancel for a finished request");
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn nothing_queued_leaves_after_the_connection_is_given_up() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::atomic(ops::query(A, &[&1i32]).rows());
    pending(&mut op, &mut conn, now);
    // Given up before any byte left (a grace expiry, a protocol error).
    conn.handle_eof(now);
    assert!(matches!(ready(&mut op, &mut conn, now), Err(Error::Closed(_))));
    assert!(conn.poll_transmit().is_empty(), "the COMMIT must not leave later");
    conn.close();
    assert_eq!(tags(&drain(&mut conn)), "", "a closed connection sends nothing more");
    // Closing a live connection sends Terminate alone, not what was queued.
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::atomic(ops::query(A, &[&1i32]).rows());
    pending(&mut op, &mut conn, now);
    conn.close();
    assert_eq!(tags(&drain(&mut conn)), "X");
}

#[test]
fn the_early_probe_waits_for_a_statement_that_took_the_snapshot() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::atomic(ops::pipeline((
        ops::query("SET LOCAL lock_timeout = '1s'", &[]).rows(),
        ops::query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", &[]).rows(),
        ops::query(A, &[&1i32]).rows(),
    )));
    pending(&mut op, &mut conn, now);
    let sqls = statements(&drain(&mut conn));
    let probe = "SELECT pg_catalog.txid_current_if_assigned()";
    let first_probe = sqls.iter().position(|s| s == probe).expect("a probe");
    let work = sqls.iter().position(|s| s == A).expect("the query");
    assert_eq!(first_probe, work + 1, "{sqls:?}");
}

#[test]
fn a_pool_lends_again_only_what_the_core_finds_idle() {
    use duet_core::pool::Giveback;
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    assert_eq!(Giveback::of(&conn), Giveback::Lend);
    // Work in flight: reset first.
    let t = conn.submit(duet_core::Request::simple("SELECT 1"), now).unwrap();
    assert_eq!(Giveback::of(&conn), Giveback::Reset);
    conn.abandon(t);
    assert_eq!(
        Giveback::of(&conn),
        Giveback::Reset,
        "abandoned work still owes its answer"
    );
    conn.close();
    assert_eq!(Giveback::of(&conn), Giveback::Drop, "closed: dropped");
}

#[test]
fn a_pool_reset_cancels_abandoned_work_instead_of_waiting_it_out() {
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    // Nothing abandoned: the reset asks for no cancel.
    let mut reset = duet_core::pool::reset();
    pending(&mut reset, &mut conn, now);
    assert!(conn.poll_cancel().is_none());

    let mut conn = ready_connection(&config(), now);
    let t = conn
        .submit(duet_core::Request::simple("SELECT pg_sleep(60)"), now)
        .unwrap();
    conn.abandon(t);
    let mut reset = duet_core::pool::reset();
    pending(&mut reset, &mut conn, now);
    assert!(conn.poll_cancel().is_some(), "the abandoned statement is cancelled");
    assert!(conn.poll_cancel().is_none(), "once");
}

#[test]
fn copy_in_data_follow_the_statement_and_an_error_mid_copy_ends_it() {
    use duet_core::copy::CopyIn;
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut copy = CopyIn::start(&mut conn, "COPY t FROM STDIN", now).unwrap();
    // No Sync after Execute: the server would ignore it mid-copy, and the
    // data go out without waiting for CopyInResponse.
    copy.write(&mut conn, b"1\n2\n");
    let mut flush = copy.flush();
    ready(&mut flush, &mut conn, now).unwrap();
    let sent = drain(&mut conn);
    assert_eq!(tags(&sent), "PBEd");
    assert_eq!(frontend_messages(&sent)[3].body, b"1\n2\n");
    // Nothing else may go out while the copy takes data.
    let err = conn.submit(Request::simple("SELECT 1"), now).unwrap_err();
    assert!(err.to_string().contains("COPY FROM STDIN is in progress"), "{err}");
    assert!(conn.poll_transmit().is_empty());
    // The server gives up on the data: the copy is over, and the Sync it
    // now waits for goes out at once.
    let reply = Backend::new()
        .parse_complete()
        .bind_complete()
        .raw(b'G', &[0, 0, 1, 0, 0])
        .error("ERROR", "22P02", "invalid input syntax");
    conn.handle_input(&reply.build(), now).unwrap();
    assert!(!conn.copy_in_open(copy_ticket(&copy)));
    assert_eq!(tags(&drain(&mut conn)), "S");
    // Later writes are dropped; the flush reports the server's error.
    copy.write(&mut conn, b"3\n");
    assert!(conn.poll_transmit().is_empty());
    conn.handle_input(&Backend::new().ready_for_query(b'I').build(), now)
        .unwrap();
    let err = ready(&mut copy.flush(), &mut conn, now).unwrap_err();
    assert_eq!(err.code(), Some("22P02"));
    assert!(conn.is_idle());
    let err = ready(&mut copy.finish(), &mut conn, now).unwrap_err();
    assert_eq!(err.code(), Some("22P02"), "finish reports it again");
}

fn copy_ticket(copy: &duet_core::copy::CopyIn) -> duet_core::Ticket {
    copy.ticket()
}

#[test]
fn copy_in_finishes_with_copydone_and_an_abandoned_one_with_copyfail() {
    use duet_core::copy::CopyIn;
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut copy = CopyIn::start(&mut conn, "COPY t FROM STDIN (FORMAT binary)", now).unwrap();
    copy.binary(&[Type::INT4]);
    copy.write_row(&mut conn, &[&7i32]).unwrap();
    let mut finish = copy.finish();
    pending(&mut finish, &mut conn, now);
    let sent = drain(&mut conn);
    assert_eq!(tags(&sent), "PBEdcS", "one frame: header, row, trailer");
    let data = &frontend_messages(&sent)[3].body;
    assert!(data.starts_with(b"PGCOPY\n\xff\r\n\0"));
    assert!(data.ends_with(&[0, 1, 0, 0, 0, 4, 0, 0, 0, 7, 0xff, 0xff]));
    let reply = Backend::new()
        .parse_complete()
        .bind_complete()
        .raw(b'G', &[1, 0, 1, 0, 1])
        .command_complete("COPY 1")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert_eq!(ready(&mut finish, &mut conn, now).unwrap(), 1);

    // Dropped unfinished: CopyFail, then the Sync; its error is not kept.
    let mut copy = CopyIn::start(&mut conn, "COPY t FROM STDIN", now).unwrap();
    copy.write(&mut conn, b"1\n");
    copy.abandon(&mut conn);
    let sent = drain(&mut conn);
    assert_eq!(tags(&sent), "PBEfS", "what was not framed yet is not sent");
    let reply = Backend::new()
        .parse_complete()
        .bind_complete()
        .raw(b'G', &[0, 0, 1, 0, 0])
        .error("ERROR", "57014", "COPY from stdin failed: abandoned by the client")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    assert!(conn.is_idle());
    let mut q = ops::query("SELECT 1", &[]).rows();
    pending(&mut q, &mut conn, now);
    assert!(!drain(&mut conn).is_empty(), "the connection takes requests again");
}

#[test]
fn copy_out_chunks_arrive_before_the_end_and_binary_rows_may_straddle_them() {
    use duet_core::copy::CopyOut;
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut copy = CopyOut::start(&mut conn, "COPY t TO STDOUT (FORMAT binary)", now).unwrap();
    copy.binary(&[Type::INT4, Type::TEXT]);
    assert_eq!(tags(&drain(&mut conn)), "PBES");
    let mut stream = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
    for (id, name) in [(1i32, "one"), (2, "two")] {
        stream.extend_from_slice(&2i16.to_be_bytes());
        stream.extend_from_slice(&4i32.to_be_bytes());
        stream.extend_from_slice(&id.to_be_bytes());
        stream.extend_from_slice(&(name.len() as i32).to_be_bytes());
        stream.extend_from_slice(name.as_bytes());
    }
    stream.extend_from_slice(&(-1i16).to_be_bytes());
    // Cut anywhere: mid-header, mid-length, mid-value.
    let reply = Backend::new()
        .parse_complete()
        .bind_complete()
        .raw(b'H', &[1, 0, 2, 0, 1, 0, 1])
        .raw(b'd', &stream[..7])
        .raw(b'd', &stream[7..30])
        .raw(b'd', &stream[30..41]);
    conn.handle_input(&reply.build(), now).unwrap();
    let row = ready(&mut copy.next_row(), &mut conn, now).unwrap().unwrap();
    assert_eq!((row.get::<i32>(0), row.get::<&str>(1)), (1, "one"));
    // The second row is not whole yet: waiting, not failing.
    pending(&mut copy.next_row(), &mut conn, now);
    let reply = Backend::new()
        .raw(b'd', &stream[41..])
        .raw(b'c', &[])
        .command_complete("COPY 2")
        .ready_for_query(b'I');
    conn.handle_input(&reply.build(), now).unwrap();
    let row = ready(&mut copy.next_row(), &mut conn, now).unwrap().unwrap();
    assert_eq!((row.get::<i32>(0), row.get::<&str>(1)), (2, "two"));
    assert!(ready(&mut copy.next_row(), &mut conn, now).unwrap().is_none());
    assert_eq!(copy.rows(), Some(2));
    assert!(conn.is_idle());
}

#[test]
fn collected_rows_are_decoded_as_they_arrive() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static DECODED: AtomicUsize = AtomicUsize::new(0);
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut op = ops::query("SELECT v FROM t", &[]).collect(|row| {
        DECODED.fetch_add(1, Ordering::Relaxed);
        row.try_get::<i32>(0)
    });
    pending(&mut op, &mut conn, now);
    drain(&mut conn);
    let reply = Backend::new()
        .parse_complete()
        .bind_complete()
        .row_description(&[Field::int4("v")])
        .int4_row(1)
        .int4_row(2)
        .int4_row(3);
    conn.handle_input(&reply.build(), now).unwrap();
    // Three rows in, the statement still running: all three decoded.
    pending(&mut op, &mut conn, now);
    assert_eq!(DECODED.load(Ordering::Relaxed), 3);
    let rest = Backend::new()
        .int4_row(4)
        .command_complete("SELECT 4")
        .ready_for_query(b'I');
    conn.handle_input(&rest.build(), now).unwrap();
    assert_eq!(ready(&mut op, &mut conn, now).unwrap(), [1, 2, 3, 4]);
    assert_eq!(DECODED.load(Ordering::Relaxed), 4);
}

#[test]
fn a_copy_open_when_the_connection_dies_ends_with_it() {
    use duet_core::copy::CopyIn;
    // Found by fuzzing: abandoning a copy after the server hung up queued
    // a Sync on the closed connection, and results then waited forever.
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut copy = CopyIn::start(&mut conn, "COPY t FROM STDIN", now).unwrap();
    copy.write(&mut conn, b"1\n");
    conn.handle_eof(now);
    copy.abandon(&mut conn);
    assert!(conn.poll_transmit().is_empty());
    assert!(!conn.wants_input());
    let mut q = ops::query("SELECT 1", &[]).rows();
    assert!(ready(&mut q, &mut conn, now).is_err(), "closed, and says so");
}

#[test]
fn a_listener_keeps_what_a_lost_connection_heard_then_reports_the_gap() {
    use duet_core::listen::{Heard, Listen, Missed};
    // Found in review: moving what the old connection heard into the
    // pending list took it out of that same list again, forever.
    let now = t0();
    let mut conn = ready_connection(&config(), now);
    let mut l = Listen::new();
    let input = Backend::new()
        .notification(7, "jobs", "1")
        .notification(7, "jobs", "2")
        .error("FATAL", "57P01", "terminating connection due to administrator command");
    let _ = conn.handle_input(&input.build(), now);
    l.lost(&mut conn);
    l.reconnected();
    let heard: Vec<Heard> = std::iter::from_fn(|| l.take_pending()).collect();
    assert_eq!(heard.len(), 3, "{heard:?}");
    assert!(matches!(&heard[0], Heard::Notification(n) if n.payload == "1"));
    assert!(matches!(&heard[1], Heard::Notification(n) if n.payload == "2"));
    assert_eq!(
        heard[2],
        Heard::Missed(Missed {
            dropped: 0,
            reconnected: true
        })
    );
}
