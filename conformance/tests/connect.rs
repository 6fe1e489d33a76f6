//! Connecting wherever libpq connects, in libpq's words: every `sslmode`
//! against a TLS server and a plaintext one, certificates and host names,
//! client certificates, channel binding, direct TLS, several hosts,
//! `target_session_attrs` across a real streaming replica and its
//! promotion, the password file, protocol negotiation.

use std::net::TcpListener;

use duet_conformance::server::TestServer;
use duet_conformance::tls::{self, Certs};
use duet_conformance::{assert_usable, conformance_tests, Driver};
use duet_core::{Error, ProtocolVersion};

fn plain() -> &'static TestServer {
    TestServer::shared()
}

/// The shared TLS server (always one the harness starts).
fn tls_server() -> &'static TestServer {
    TestServer::shared_tls()
}

fn certs() -> &'static Certs {
    Certs::get().expect("test certificates")
}

/// A `key=value` string for `server` as `user` over TCP to `host`, with
/// `extra` words.
fn words(server: &TestServer, host: &str, user: &str, extra: &str) -> String {
    format!(
        "host={host} port={} user={user} dbname=postgres local_socket=disable connect_timeout=10 {extra}",
        server.port()
    )
}

fn ca() -> String {
    format!("sslrootcert={}", certs().ca_cert.display())
}

/// Whether the session's own view (`pg_stat_ssl`) says it is encrypted,
/// checked against what the client believes.
fn session_ssl<D: Driver>(c: &mut D) -> bool {
    let on: bool = c
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    assert_eq!(on, c.connection().is_tls(), "the server and the client disagree on TLS");
    on
}

fn harness_started() -> bool {
    !matches!(std::env::var("DATABASE_URL"), Ok(u) if !u.trim().is_empty())
}

fn every_sslmode_against_a_tls_server<D: Driver>() {
    let s = tls_server();
    for (mode, encrypted) in [
        ("disable", false),
        ("allow", false),
        ("prefer", true),
        ("require", true),
        ("verify-ca", true),
        ("verify-full", true),
    ] {
        let url = words(s, "localhost", "postgres", &format!("sslmode={mode} {}", ca()));
        let mut c = D::connect(&url).unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(session_ssl(&mut c), encrypted, "sslmode={mode}");
        assert_usable(&mut c);
    }
}

fn every_sslmode_against_a_plaintext_server<D: Driver>() {
    let s = plain();
    for mode in ["disable", "allow", "prefer"] {
        let mut c = D::connect(&words(s, "localhost", "postgres", &format!("sslmode={mode}"))).unwrap();
        assert!(!session_ssl(&mut c), "sslmode={mode}");
    }
    // Never a silent downgrade.
    for mode in ["require", "verify-ca", "verify-full"] {
        let e = D::connect(&words(s, "localhost", "postgres", &format!("sslmode={mode} {}", ca())))
            .err()
            .unwrap_or_else(|| panic!("sslmode={mode} connected to a server without TLS"));
        assert!(matches!(e, Error::Rejected(_)), "{mode}: {e:?}");
        assert!(e.to_string().contains("does not accept TLS"), "{mode}: {e}");
    }
}

fn certificates_are_judged_as_sslmode_says<D: Driver>() {
    let s = tls_server();
    let connect = |host: &str, extra: &str| D::connect(&words(s, host, "postgres", extra));
    // The certificate names localhost and db.test, not 127.0.0.1.
    let e = connect("127.0.0.1", &format!("sslmode=verify-full {}", ca()))
        .err()
        .unwrap();
    assert!(matches!(e, Error::Tls(_)), "{e:?}");
    assert!(e.to_string().contains("not valid for host name \"127.0.0.1\""), "{e}");
    // verify-ca checks the chain only.
    let mut c = connect("127.0.0.1", &format!("sslmode=verify-ca {}", ca())).unwrap();
    assert!(session_ssl(&mut c));
    // hostaddr dials the address; the name verified is the host's.
    let mut c = connect("db.test", &format!("hostaddr=127.0.0.1 sslmode=verify-full {}", ca())).unwrap();
    assert!(session_ssl(&mut c));
    // The wrong CA: refused, whether asked for verify-ca or, with a root
    // certificate at hand, require (libpq's rule).
    let wrong = format!("sslrootcert={}", certs().other_ca_cert.display());
    for mode in ["verify-ca", "verify-full", "require"] {
        let e = connect("localhost", &format!("sslmode={mode} {wrong}")).err().unwrap();
        assert!(e.to_string().contains("not signed by a trusted root"), "{mode}: {e}");
    }
    // The platform's store does not hold the test CA: sslrootcert=system
    // (verify-full implied) reads it and refuses this server.
    let e = connect("localhost", "sslrootcert=system").err().unwrap();
    assert!(e.to_string().contains("not signed by a trusted root"), "{e}");
    // require without a root certificate encrypts without judging.
    let mut c = connect("127.0.0.1", "sslmode=require").unwrap();
    assert!(session_ssl(&mut c));
    // A root certificate that is not there is named before anything is sent.
    let e = connect("localhost", "sslmode=verify-full sslrootcert=/nonexistent/ca.pem")
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::Config(_)) && e.to_string().contains("/nonexistent/ca.pem"),
        "{e}"
    );
}

/// Built TLS settings are kept between connects, but a certificate file
/// that changed is read again: never a stale trust decision.
fn a_replaced_root_certificate_is_read_again<D: Driver>() {
    let s = tls_server();
    let dir = std::env::temp_dir().join(format!("duet-roots-{}-{}", D::NAME, std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let roots = dir.join("roots.pem");
    std::fs::copy(&certs().ca_cert, &roots).unwrap();
    let url = words(
        s,
        "localhost",
        "postgres",
        &format!("sslmode=verify-full sslrootcert={}", roots.display()),
    );
    for _ in 0..2 {
        assert_usable(&mut D::connect(&url).unwrap());
    }
    // Another CA in its place (other contents, size or time).
    std::fs::copy(&certs().other_ca_cert, &roots).unwrap();
    let e = D::connect(&url).err().expect("the new root does not sign the server");
    assert!(e.to_string().contains("not signed by a trusted root"), "{e}");
    std::fs::copy(&certs().ca_cert, &roots).unwrap();
    assert_usable(&mut D::connect(&url).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tls_only_and_plaintext_only_roles_fall_back_as_libpq<D: Driver>() {
    let s = tls_server();
    // allow: plaintext first; the server refuses it; TLS next.
    let mut c = D::connect(&words(s, "localhost", tls::SSL_ONLY, "sslmode=allow")).unwrap();
    assert!(session_ssl(&mut c));
    // prefer: TLS first; the server refuses it; plaintext next.
    let mut c = D::connect(&words(s, "localhost", tls::PLAIN_ONLY, "sslmode=prefer")).unwrap();
    assert!(!session_ssl(&mut c));
    // disable and require do not fall back; the server's refusal is the error.
    let e = D::connect(&words(s, "localhost", tls::SSL_ONLY, "sslmode=disable"))
        .err()
        .unwrap();
    assert_eq!(e.code(), Some("28000"), "{e}");
    let e = D::connect(&words(s, "localhost", tls::PLAIN_ONLY, "sslmode=require"))
        .err()
        .unwrap();
    assert_eq!(e.code(), Some("28000"), "{e}");
}

fn client_certificates_authenticate<D: Driver>() {
    let s = tls_server();
    let c = certs();
    let with = |cert: &std::path::Path, key: &std::path::Path| {
        D::connect(&words(
            s,
            "localhost",
            tls::CERT_USER,
            &format!(
                "sslmode=verify-full {} sslcert={} sslkey={}",
                ca(),
                cert.display(),
                key.display()
            ),
        ))
    };
    let mut conn = with(&c.client_cert, &c.client_key).unwrap();
    let who: String = conn.query_one("SELECT current_user::text", &[]).unwrap().get(0);
    assert_eq!(who, tls::CERT_USER);
    let e = with(&c.untrusted_client_cert, &c.untrusted_client_key).err().unwrap();
    assert!(e.is_fatal(), "{e}");
    let e = D::connect(&words(
        s,
        "localhost",
        tls::CERT_USER,
        &format!("sslmode=verify-full {}", ca()),
    ))
    .err()
    .unwrap();
    assert_eq!(e.code(), Some("28000"), "no certificate: {e}");
}

fn channel_binding_is_used_and_required<D: Driver>() {
    let s = tls_server();
    let scram = |extra: &str| {
        D::connect(&words(
            s,
            "localhost",
            tls::SCRAM_USER,
            &format!("password={} {extra}", tls::SCRAM_PASSWORD),
        ))
    };
    for (mode, bound) in [("require", true), ("prefer", true), ("disable", false)] {
        let mut c = scram(&format!("sslmode=require channel_binding={mode}")).unwrap();
        assert_eq!(c.connection().channel_bound(), bound, "channel_binding={mode}");
        assert_usable(&mut c);
    }
    // Methods without binding are refused under require.
    let e = D::connect(&words(
        s,
        "localhost",
        tls::MD5_USER,
        &format!("password={} sslmode=require channel_binding=require", tls::MD5_PASSWORD),
    ))
    .err()
    .unwrap();
    assert!(
        matches!(e, Error::Rejected(_)) && e.to_string().contains("MD5"),
        "{e:?}"
    );
    let e = D::connect(&words(
        s,
        "localhost",
        "postgres",
        "sslmode=require channel_binding=require",
    ))
    .err()
    .unwrap();
    assert!(
        matches!(e, Error::Rejected(_)) && e.to_string().contains("trust"),
        "{e:?}"
    );
    // And binding cannot happen without TLS.
    let e = D::connect(&words(plain(), "localhost", "postgres", "channel_binding=require"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("channel_binding=require"), "{e}");
}

fn direct_tls_needs_postgresql_17<D: Driver>() {
    let s = tls_server();
    let url = words(
        s,
        "localhost",
        "postgres",
        &format!("sslmode=verify-full sslnegotiation=direct {}", ca()),
    );
    if s.version() >= 17 {
        let mut c = D::connect(&url).unwrap();
        assert!(session_ssl(&mut c));
        assert_usable(&mut c);
    } else {
        let e = D::connect(&url).err().expect("direct TLS before PostgreSQL 17");
        assert!(
            e.to_string().contains("sslnegotiation=direct needs PostgreSQL 17"),
            "{e}"
        );
    }
    // Direct TLS with a mode that could fall back to plaintext is refused.
    let e = D::connect(&words(s, "localhost", "postgres", "sslnegotiation=direct"))
        .err()
        .unwrap();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn several_hosts_are_tried_in_order<D: Driver>() {
    let (s, dead) = (plain(), closed_port());
    let url = format!(
        "host=127.0.0.1,localhost port={dead},{} user=postgres dbname=postgres local_socket=disable",
        s.port()
    );
    let mut c = D::connect(&url).unwrap();
    let port: i32 = c.query_one("SELECT inet_server_port()", &[]).unwrap().get(0);
    assert_eq!(port, s.port() as i32);
    // The URL form of the same list.
    let url = format!(
        "postgres://postgres@127.0.0.1:{dead},127.0.0.1:{}/postgres?local_socket=disable",
        s.port()
    );
    assert_usable(&mut D::connect(&url).unwrap());
    // None answers: every one is named, with its reason.
    let dead2 = closed_port();
    let e = D::connect(&format!(
        "host=127.0.0.1,127.0.0.1 port={dead},{dead2} user=postgres sslmode=disable"
    ))
    .err()
    .unwrap();
    let Error::Unreachable(tried) = &e else { panic!("{e:?}") };
    assert_eq!(tried.len(), 2, "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{dead}")) && text.contains(&format!("127.0.0.1:{dead2}")),
        "{text}"
    );
}

fn random_load_balancing_reaches_every_host<D: Driver>() {
    let (a, b) = (plain(), tls_server());
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres local_socket=disable load_balance_hosts=random",
        a.port(),
        b.port()
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let mut c = D::connect(&url).unwrap();
        let port: i32 = c.query_one("SELECT inet_server_port()", &[]).unwrap().get(0);
        seen.insert(port);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "40 random connects all went to {seen:?}");
}

fn target_session_attrs_route_between_primary_and_standby<D: Driver>() {
    if !harness_started() {
        return;
    }
    let (primary, standby) = (plain(), TestServer::shared_replica());
    let in_recovery = |order: [&TestServer; 2], attrs: &str| -> bool {
        let url = format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres local_socket=disable target_session_attrs={attrs}",
            order[0].port(),
            order[1].port()
        );
        let mut c = D::connect(&url).unwrap_or_else(|e| panic!("{attrs}: {e}"));
        c.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0)
    };
    for order in [[primary, standby], [standby, primary]] {
        assert!(!in_recovery(order, "read-write"));
        assert!(!in_recovery(order, "primary"));
        assert!(in_recovery(order, "read-only"));
        assert!(in_recovery(order, "standby"));
        assert!(in_recovery(order, "prefer-standby"));
    }
    assert!(in_recovery([standby, primary], "any"));
    // prefer-standby with no standby: any will do.
    let url = format!(
        "host=127.0.0.1 port={} user=postgres local_socket=disable target_session_attrs=prefer-standby",
        primary.port()
    );
    assert_usable(&mut D::connect(&url).unwrap());
    // A standby alone cannot be read-write: said so.
    let url = format!(
        "host=127.0.0.1 port={} user=postgres local_socket=disable target_session_attrs=read-write",
        standby.port()
    );
    let e = D::connect(&url).err().unwrap();
    assert!(
        matches!(e, Error::Rejected(_)) && e.to_string().contains("hot standby"),
        "{e:?}"
    );
}

fn read_write_follows_a_promoted_standby<D: Driver>() {
    if !harness_started() {
        return;
    }
    let primary = TestServer::start().unwrap();
    let standby = primary.start_replica().unwrap();
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres local_socket=disable \
         connect_timeout=5 target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let port = |c: &mut D| -> u16 { c.query_one("SELECT inet_server_port()", &[]).unwrap().get::<i32>(0) as u16 };
    assert_eq!(port(&mut D::connect(&url).unwrap()), primary.port());
    // The primary goes away: the standby alone is not writable.
    let (primary_port, standby_port) = (primary.port(), standby.port());
    drop(primary);
    let e = D::connect(&url).err().unwrap();
    let text = e.to_string();
    assert!(
        text.contains(&format!(":{primary_port}")) && text.contains("hot standby"),
        "both hosts named with their reasons: {text}"
    );
    standby.promote().unwrap();
    let mut c = D::connect(&url).unwrap();
    assert_eq!(port(&mut c), standby_port);
    c.execute("CREATE TABLE promoted_and_writable (id int)", &[]).unwrap();
}

fn the_password_file_is_read_and_guarded<D: Driver>() {
    use std::os::unix::fs::PermissionsExt;
    let s = tls_server();
    let dir = std::env::temp_dir().join(format!("duet-pgpass-{}-{}", D::NAME, std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgpass");
    std::fs::write(
        &file,
        format!(
            "# another server first\nelsewhere:*:*:*:nope\nlocalhost:{}:*:{}:{}\n",
            s.port(),
            tls::SCRAM_USER,
            tls::SCRAM_PASSWORD
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = words(s, "localhost", tls::SCRAM_USER, &format!("passfile={}", file.display()));
    assert_usable(&mut D::connect(&url).unwrap());
    // Readable by others: ignored, and the error says so.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = D::connect(&url).err().unwrap();
    assert!(e.to_string().contains("group or world access"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn protocol_version_is_negotiated<D: Driver>() {
    let s = plain();
    let url = words(s, "localhost", "postgres", "");
    let mut c = D::connect(&url).unwrap();
    let expected = if s.version() >= 18 {
        ProtocolVersion::V3_2
    } else {
        ProtocolVersion::V3_0
    };
    assert_eq!(c.connection().protocol_version(), expected);
    // The cancel key (32 bytes with 3.2) works: a cancel ends a sleep.
    let cancel = c.canceller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        cancel()
    });
    let e = c.execute("SELECT pg_sleep(30)", &[]).expect_err("cancelled");
    assert_eq!(e.code(), Some("57014"), "{e}");
    t.join().unwrap().unwrap();
    assert_usable(&mut c);
    // Asked for 3.0, 3.0 it is.
    let c = D::connect(&words(s, "localhost", "postgres", "max_protocol_version=3.0")).unwrap();
    assert_eq!(c.connection().protocol_version(), ProtocolVersion::V3_0);
    // A floor the server is below is refused, saying so.
    let r = D::connect(&words(s, "localhost", "postgres", "min_protocol_version=3.2"));
    if s.version() >= 18 {
        assert!(r.is_ok());
    } else {
        let e = r.err().unwrap();
        assert!(e.to_string().contains("min_protocol_version"), "{e}");
    }
}

/// PgBouncer 1.18 predates protocol 3.2 and refuses its StartupMessage
/// ("bad packet header"): the default asks again for 3.0, so a pooled
/// server is reached as before; 3.2 asked for by name is refused, saying so.
fn a_pooler_that_predates_protocol_32_is_asked_for_30<D: Driver>() {
    if !harness_started() {
        return;
    }
    let pgb = duet_conformance::pgbouncer::PgBouncer::start(plain()).unwrap();
    let mut c = D::connect(&pgb.url()).unwrap();
    assert_eq!(c.connection().protocol_version(), ProtocolVersion::V3_0);
    let row = c.query_one("SELECT $1::int4 + 1", &[&41i32]).unwrap();
    assert_eq!(row.get::<i32>(0), 42);
    assert_eq!(
        c.atomic_script(&[duet_conformance::TxStep::Execute("SELECT 1".into())])
            .unwrap(),
        ["SELECT 1 -> 1"]
    );
    assert_usable(&mut c);
    let e = D::connect(&format!("{}&max_protocol_version=3.2", pgb.url()))
        .err()
        .unwrap();
    assert_eq!(e.code(), Some("08P01"), "{e}");
}

/// A cancel travels like its session (libpq 17): over TLS for a TLS session,
/// so the key that lets anyone cancel the session's work is not on the wire
/// in the clear; in plaintext (the bare request) for a plaintext one.
fn cancels_travel_like_their_session<D: Driver>() {
    use duet_conformance::faults::{Fault, Proxy};
    let s = tls_server();
    let proxy = Proxy::start(&s.host(), s.port());
    for (mode, tls) in [("require", true), ("disable", false)] {
        let url = proxy.url(&format!("{}?sslmode={mode}", s.url()));
        let mut c = D::connect(&url).unwrap();
        assert_eq!(c.connection().is_tls(), tls);
        // 16 bytes with protocol 3.0's key, 44 with 3.2's.
        let request_len = c.connection().cancel_token().unwrap().encode().len();
        let cancel = c.canceller();
        let proxy = &proxy;
        let sent = std::thread::scope(|scope| {
            let t = scope.spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(300));
                // The session is waiting now: what flows next is the cancel's.
                proxy.arm(Fault::None);
                cancel().unwrap();
                proxy.client_bytes()
            });
            let e = c.execute("SELECT pg_sleep(30)", &[]).expect_err("cancelled");
            assert_eq!(e.code(), Some("57014"), "{mode}: {e}");
            t.join().unwrap()
        });
        if tls {
            assert!(
                sent > 100,
                "a TLS cancel is an SSLRequest and a handshake, not {sent} bytes"
            );
        } else {
            assert_eq!(sent, request_len, "a plaintext CancelRequest");
        }
        assert_usable(&mut c);
    }
}

fn keepalive_words_are_applied<D: Driver>() {
    let s = plain();
    let url = words(
        s,
        "127.0.0.1",
        "postgres",
        "keepalives=1 keepalives_idle=30 keepalives_interval=5 keepalives_count=3 tcp_user_timeout=9000",
    );
    assert_usable(&mut D::connect(&url).unwrap());
    assert_usable(&mut D::connect(&words(s, "127.0.0.1", "postgres", "keepalives=0")).unwrap());
}

/// Under TLS an unsent COMMIT can still be taken back: plaintext enters
/// TLS only as the socket takes it (the plaintext twin is in faults.rs).
fn abandoned_transaction_over_tls_never_commits<D: Driver>() {
    use duet_core::ops::{atomic, pipeline, query};
    let s = tls_server();
    let url = words(s, "localhost", "postgres", &format!("sslmode=verify-full {}", ca()));
    let (mut c, mut check) = (D::connect(&url).unwrap(), D::connect(&url).unwrap());
    assert!(c.connection().is_tls());
    let t = format!("tls_unsent_commit_{}", D::NAME);
    c.batch_execute(&format!("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (v text)"))
        .unwrap();
    let big = "x".repeat(32 << 20);
    let (insert_big, insert_small) = (
        format!("INSERT INTO {t} VALUES ($1)"),
        format!("INSERT INTO {t} VALUES ('small')"),
    );
    let p: [duet_core::Param; 1] = [&big];
    let op = atomic(pipeline((
        query(insert_big.as_str(), &p).affected(),
        query(insert_small.as_str(), &[]).affected(),
    )));
    assert!(c.run_steps(op, 1).is_none(), "32 MiB cannot go in one step");
    let count = |d: &mut D| -> i64 { d.query_one(&format!("SELECT count(*) FROM {t}"), &[]).unwrap().get(0) };
    assert_eq!(count(&mut check), 0);
    assert_usable(&mut c);
    assert_eq!(count(&mut c), 0);
    assert_eq!(count(&mut check), 0, "the abandoned transaction committed");
}

conformance_tests!(
    abandoned_transaction_over_tls_never_commits,
    every_sslmode_against_a_tls_server,
    every_sslmode_against_a_plaintext_server,
    certificates_are_judged_as_sslmode_says,
    tls_only_and_plaintext_only_roles_fall_back_as_libpq,
    a_replaced_root_certificate_is_read_again,
    client_certificates_authenticate,
    channel_binding_is_used_and_required,
    direct_tls_needs_postgresql_17,
    several_hosts_are_tried_in_order,
    random_load_balancing_reaches_every_host,
    target_session_attrs_route_between_primary_and_standby,
    read_write_follows_a_promoted_standby,
    the_password_file_is_read_and_guarded,
    protocol_version_is_negotiated,
    keepalive_words_are_applied,
    a_pooler_that_predates_protocol_32_is_asked_for_30,
    cancels_travel_like_their_session,
);
