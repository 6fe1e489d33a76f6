//! TLS test material: a throwaway CA and the certificates the TLS server
//! ([`TestServer::start_tls`](crate::server::TestServer::start_tls)) and
//! its clients use, plus the roles that server's `pg_hba.conf` sets up.
//!
//! Generated once per process (with `rcgen`) into a temp dir that a detached
//! watchdog shell removes when the process ends, however it ends (the same
//! trick as the servers': it waits for a pipe whose write end only this
//! process holds).
//!
//! What there is, and what each is for:
//!
//! * `ca_cert`: "duet test CA", which signed everything below except the
//!   `untrusted_*` pair. The server trusts it for client certificates
//!   (`ssl_ca_file`); clients pass it as `sslrootcert`.
//! * `server_cert`/`server_key`: subject alternative names exactly DNS
//!   `localhost` and DNS `db.test`, no IP address. So `host=127.0.0.1
//!   sslmode=verify-full` must fail with a hostname mismatch, while
//!   `host=db.test hostaddr=127.0.0.1` (or `host=localhost`) passes.
//! * `client_cert`/`client_key`: CN `cert_user`, for the `cert` line of
//!   [`CERT_USER`].
//! * `other_ca_cert`: a CA that signed nothing the server presents: the
//!   "wrong CA" (`sslrootcert` that must not verify the server).
//! * `untrusted_client_cert`/`untrusted_client_key`: CN `cert_user` too, but
//!   signed by the other CA, so the server must refuse it.
//!
//! Key files are mode 0600 (libpq refuses a client key others can read; the
//! server refuses such a server key); when we run as root the server key
//! belongs to the `postgres` user, who runs the server.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// Role that logs in only over TLS and only with the client certificate
/// (`hostssl … cert`; refused over plaintext and the Unix socket).
pub const CERT_USER: &str = "cert_user";
/// Role allowed only over TLS (`hostssl … trust`, `hostnossl … reject`).
pub const SSL_ONLY: &str = "ssl_only";
/// Role allowed only without TLS (`hostnossl … trust`, `hostssl … reject`).
pub const PLAIN_ONLY: &str = "plain_only";
/// Role whose password is stored as SCRAM (`host … scram-sha-256`), over
/// TLS or not: for SCRAM-SHA-256-PLUS (channel binding) tests.
pub const SCRAM_USER: &str = "scram_user";
/// [`SCRAM_USER`]'s password.
pub const SCRAM_PASSWORD: &str = "scram_pw";
/// Role whose password is stored as MD5 (`host … md5`), over TLS or not.
pub const MD5_USER: &str = "md5_user";
/// [`MD5_USER`]'s password.
pub const MD5_PASSWORD: &str = "md5_pw";
/// The DNS names in the server certificate (and nothing else).
pub const SERVER_NAMES: [&str; 2] = ["localhost", "db.test"];

/// The certificate and key files (PEM) of [`Certs::get`]; see the module
/// docs for what each is for.
#[derive(Debug)]
pub struct Certs {
    /// The temp dir holding every file below.
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca_cert: PathBuf,
    pub untrusted_client_cert: PathBuf,
    pub untrusted_client_key: PathBuf,
    /// Removes `dir` when the process ends (dropping its stdin releases it).
    _cleanup: Mutex<Child>,
}

impl Certs {
    /// The process's certificates, generated on first use.
    pub fn get() -> io::Result<&'static Certs> {
        static CERTS: OnceLock<Result<Certs, String>> = OnceLock::new();
        match CERTS.get_or_init(|| Certs::generate().map_err(|e| e.to_string())) {
            Ok(c) => Ok(c),
            Err(e) => Err(io::Error::other(format!(
                "duet test harness: cannot make the TLS certificates: {e}"
            ))),
        }
    }

    fn generate() -> io::Result<Certs> {
        let dir = make_dir()?;
        let cleanup = spawn_cleanup(&dir)?;
        let certs = Certs {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            other_ca_cert: dir.join("other-ca.crt"),
            untrusted_client_cert: dir.join("untrusted-client.crt"),
            untrusted_client_key: dir.join("untrusted-client.key"),
            dir,
            _cleanup: Mutex::new(cleanup),
        };
        let (ca_pem, ca) = make_ca("duet test CA")?;
        let (other_ca_pem, other_ca) = make_ca("duet other test CA")?;

        let (server_pem, server_key) = make_leaf(
            &ca,
            SERVER_NAMES.iter().map(|s| s.to_string()).collect(),
            "duet test server",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_pem, client_key) = make_leaf(&ca, Vec::new(), CERT_USER, ExtendedKeyUsagePurpose::ClientAuth)?;
        let (untrusted_pem, untrusted_key) =
            make_leaf(&other_ca, Vec::new(), CERT_USER, ExtendedKeyUsagePurpose::ClientAuth)?;

        write(&certs.ca_cert, &ca_pem, 0o644)?;
        write(&certs.other_ca_cert, &other_ca_pem, 0o644)?;
        write(&certs.server_cert, &server_pem, 0o644)?;
        write(&certs.server_key, &server_key, 0o600)?;
        write(&certs.client_cert, &client_pem, 0o644)?;
        write(&certs.client_key, &client_key, 0o600)?;
        write(&certs.untrusted_client_cert, &untrusted_pem, 0o644)?;
        write(&certs.untrusted_client_key, &untrusted_key, 0o600)?;
        // The server runs as `postgres` and insists on owning (or root
        // owning, with mode 0640) its key; hand it over when we are root.
        if fs::metadata(&certs.dir)?.uid() == 0 {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&certs.server_key)
                .stdin(Stdio::null())
                .status();
            if !status.as_ref().is_ok_and(|s| s.success()) {
                return Err(io::Error::other(format!(
                    "chown postgres {} failed ({status:?})",
                    certs.server_key.display()
                )));
            }
        }
        Ok(certs)
    }
}

fn rc(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("rcgen: {e}"))
}

/// A self-signed CA: its PEM and the issuer that signs with it.
fn make_ca(name: &str) -> io::Result<(String, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate().map_err(rc)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).map_err(rc)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// A certificate signed by `issuer`: its PEM and its key's PEM. `names`
/// become DNS subject alternative names (none for a client certificate,
/// whose CN is what `cert` authentication reads).
fn make_leaf(
    issuer: &Issuer<'_, KeyPair>,
    names: Vec<String>,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> io::Result<(String, String)> {
    let key = KeyPair::generate().map_err(rc)?;
    let mut params = CertificateParams::new(names).map_err(rc)?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).map_err(rc)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(path: &Path, contents: &str, mode: u32) -> io::Result<()> {
    fs::write(path, contents).map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// A fresh temp dir the `postgres` user can traverse (mode 0755).
fn make_dir() -> io::Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("duet-certs-{}-{nanos:x}", std::process::id()));
    fs::create_dir(&dir).map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// Removes `dir` once this process is gone (see the module docs).
fn spawn_cleanup(dir: &Path) -> io::Result<Child> {
    let quoted = format!("'{}'", dir.to_string_lossy().replace('\'', r"'\''"));
    Command::new("/bin/sh")
        .args(["-c", &format!("trap '' HUP INT; cat >/dev/null; rm -rf {quoted}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot spawn the cleanup watchdog (/bin/sh): {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{psql_at, psql_version, TestServer};

    /// libpq connection string on `server` with `extra` settings. No
    /// client certificate unless `extra` names one (a file that does not
    /// exist is simply not sent), so `~/.postgresql` cannot interfere.
    fn conninfo(server: &TestServer, certs: &Certs, extra: &str) -> String {
        let none = certs.dir.join("none");
        format!(
            "port={} dbname=postgres sslcert={} sslkey={} {extra}",
            server.port(),
            none.display(),
            none.display()
        )
    }

    const IS_TLS: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

    /// Every version the harness runs serves TLS: no skipping here (a build
    /// without OpenSSL makes `shared_tls` panic, saying so).
    #[test]
    fn certificates_and_roles_work_as_documented_with_psql() {
        assert!(TestServer::tls_supported().unwrap_or_else(|e| panic!("{e}")));
        let server = TestServer::shared_tls();
        let certs = server.certs().expect("a TLS server has certificates");
        let ca = certs.ca_cert.display();
        let verify = |host: &str, user: &str, more: &str| {
            let ci = conninfo(
                server,
                certs,
                &format!("{host} user={user} sslmode=verify-full sslrootcert={ca} {more}"),
            );
            psql_at(&ci, IS_TLS)
        };

        // The CA verifies the server under a name in its certificate.
        assert_eq!(verify("host=localhost", "postgres", ""), Ok("t".into()));
        assert_eq!(
            verify("host=db.test hostaddr=127.0.0.1", "postgres", ""),
            Ok("t".into())
        );
        // No IP address in the certificate: 127.0.0.1 is a mismatch.
        let err = verify("host=127.0.0.1", "postgres", "").expect_err("IP is not in the certificate");
        assert!(err.contains("does not match host name"), "{err}");
        // The wrong CA verifies nothing, even with the chain check only.
        let ci = conninfo(
            server,
            certs,
            &format!(
                "host=localhost user=postgres sslmode=verify-ca sslrootcert={}",
                certs.other_ca_cert.display()
            ),
        );
        let err = psql_at(&ci, IS_TLS).expect_err("wrong CA accepted");
        assert!(err.contains("certificate verify failed"), "{err}");

        // cert_user: with its certificate only.
        let with_cert = format!(
            "sslcert={} sslkey={}",
            certs.client_cert.display(),
            certs.client_key.display()
        );
        let ci = conninfo(
            server,
            certs,
            &format!("host=localhost user={CERT_USER} sslmode=verify-full sslrootcert={ca}"),
        );
        assert_eq!(
            psql_at(&format!("{ci} {with_cert}"), "SELECT current_user"),
            Ok(CERT_USER.into())
        );
        let err = psql_at(&ci, "SELECT 1").expect_err("cert_user without a certificate");
        assert!(err.contains("certificate"), "{err}");
        let untrusted = format!(
            "sslcert={} sslkey={}",
            certs.untrusted_client_cert.display(),
            certs.untrusted_client_key.display()
        );
        assert!(
            psql_at(&format!("{ci} {untrusted}"), "SELECT 1").is_err(),
            "a client certificate from the wrong CA was accepted"
        );
        let plain = conninfo(
            server,
            certs,
            &format!("host=127.0.0.1 user={CERT_USER} sslmode=disable"),
        );
        let err = psql_at(&format!("{plain} {with_cert}"), "SELECT 1").expect_err("cert_user without TLS");
        assert!(err.contains("pg_hba.conf rejects"), "{err}");

        // ssl_only / plain_only: each only on its kind of session.
        let session = |user: &str, mode: &str| {
            psql_at(
                &conninfo(server, certs, &format!("host=127.0.0.1 user={user} sslmode={mode}")),
                IS_TLS,
            )
        };
        assert_eq!(session(SSL_ONLY, "require"), Ok("t".into()));
        let err = session(SSL_ONLY, "disable").expect_err("ssl_only without TLS");
        assert!(err.contains("pg_hba.conf rejects"), "{err}");
        assert_eq!(session(PLAIN_ONLY, "disable"), Ok("f".into()));
        let err = session(PLAIN_ONLY, "require").expect_err("plain_only over TLS");
        assert!(err.contains("pg_hba.conf rejects"), "{err}");

        // Password roles: the right password only, stored as documented.
        for (user, pw) in [(SCRAM_USER, SCRAM_PASSWORD), (MD5_USER, MD5_PASSWORD)] {
            let ci = conninfo(server, certs, &format!("host=127.0.0.1 user={user} sslmode=require"));
            assert_eq!(psql_at(&format!("{ci} password={pw}"), IS_TLS), Ok("t".into()));
            let err = psql_at(&format!("{ci} password=wrong"), "SELECT 1").expect_err("wrong password");
            assert!(err.contains("password authentication failed"), "{err}");
        }
        let stored = server
            .psql_value(&format!(
                "SELECT string_agg(rolname || '=' || CASE WHEN rolpassword LIKE 'md5%' THEN 'md5' \
                 WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram' ELSE 'other' END, ',' ORDER BY rolname) \
                 FROM pg_authid WHERE rolname IN ('{SCRAM_USER}', '{MD5_USER}')"
            ))
            .unwrap();
        assert_eq!(stored, format!("{MD5_USER}=md5,{SCRAM_USER}=scram"));
    }

    /// Direct TLS (`sslnegotiation=direct`, no SSLRequest first) where the
    /// server has it (17+), proved with the psql of the same install; where
    /// it has not, [`TestServer::direct_tls_supported`] says so.
    #[test]
    fn direct_tls_with_psql_where_the_server_has_it() {
        let server = TestServer::shared_tls();
        let certs = server.certs().expect("a TLS server has certificates");
        let version = server.version();
        assert_eq!(server.direct_tls_supported(), version >= 17, "version {version}");
        let psql = psql_version();
        eprintln!("server {version}, {psql}");
        if !server.direct_tls_supported() {
            // PostgreSQL 15's psql does not even know the option.
            return;
        }
        // The harness's psql is the server's own install's: 17+ too.
        let psql_major: u32 = psql
            .rsplit(' ')
            .next()
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("psql --version said {psql:?}"));
        assert!(psql_major >= 17, "{psql}: cannot do sslnegotiation=direct");
        let ca = certs.ca_cert.display();
        let direct = |host: &str, user: &str, mode: &str| {
            psql_at(
                &conninfo(
                    server,
                    certs,
                    &format!("{host} user={user} sslmode={mode} sslrootcert={ca} sslnegotiation=direct"),
                ),
                IS_TLS,
            )
        };
        assert_eq!(direct("host=localhost", "postgres", "verify-full"), Ok("t".into()));
        assert_eq!(
            direct("host=db.test hostaddr=127.0.0.1", SSL_ONLY, "verify-full"),
            Ok("t".into())
        );
        // Certificate checks are the same as after an SSLRequest.
        let err = direct("host=127.0.0.1", "postgres", "verify-full").expect_err("IP is not in the certificate");
        assert!(err.contains("does not match host name"), "{err}");
        // libpq refuses direct TLS with a mode that could fall back to
        // plaintext: there is no plaintext after a direct handshake.
        let err = direct("host=localhost", "postgres", "prefer").expect_err("direct TLS with sslmode=prefer");
        assert!(err.contains("sslnegotiation"), "{err}");
        // A direct session is a TLS session to pg_hba.conf as well: the
        // plaintext-only role is rejected by its `hostssl … reject` line.
        let err = direct("host=localhost", PLAIN_ONLY, "require").expect_err("plain_only over direct TLS");
        assert!(err.contains("pg_hba.conf rejects"), "{err}");
    }

    /// A replica of the TLS server serves TLS with the same certificates
    /// and pg_hba.conf (what failover tests over TLS rely on).
    #[test]
    fn replica_of_the_tls_server_serves_tls() {
        let primary = TestServer::shared_tls();
        let replica = primary.start_replica().unwrap_or_else(|e| panic!("{e}"));
        let certs = replica.certs().expect("a replica of a TLS server has its certificates");
        let ca = certs.ca_cert.display();
        let ci = conninfo(
            &replica,
            certs,
            &format!("host=localhost user={SSL_ONLY} sslmode=verify-full sslrootcert={ca}"),
        );
        assert_eq!(psql_at(&ci, IS_TLS), Ok("t".into()));
        assert_eq!(psql_at(&ci, "SELECT pg_is_in_recovery()"), Ok("t".into()));
        if replica.direct_tls_supported() {
            assert_eq!(psql_at(&format!("{ci} sslnegotiation=direct"), IS_TLS), Ok("t".into()));
        }
    }

    #[test]
    fn key_files_are_private() {
        let certs = Certs::get().unwrap_or_else(|e| panic!("{e}"));
        for key in [&certs.server_key, &certs.client_key, &certs.untrusted_client_key] {
            let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        if fs::metadata(&certs.dir).unwrap().uid() == 0 {
            let owner = fs::metadata(&certs.server_key).unwrap().uid();
            assert_ne!(owner, 0, "the server key must belong to postgres, who runs the server");
        }
    }
}
