//! TLS as a layer of the core, between the socket's bytes and the protocol
//! machine. rustls's `ClientConnection` takes and gives bytes in memory, so
//! the drivers keep moving bytes and never learn TLS is there.
//!
//! Plaintext enters TLS only when the socket can take it: a chunk of the
//! protocol machine's send buffer is encrypted when the previous records
//! have all been written, and counts as sent once its records have. So an
//! unsent COMMIT can still be taken back (`Connection::retract`), and "the
//! COMMIT was wholly sent" still means what it says.
//!
//! Certificates are judged as libpq judges them (`sslmode`): `require`
//! checks nothing unless a root certificate is given, `verify-ca` checks the
//! chain, `verify-full` the chain and the host name. rustls reads the
//! system's calendar to judge validity dates; that is its only clock.

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::BytesMut;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{word_of_ssl_mode, Config, SslMode, TlsVersion};
use crate::Error;

/// ALPN protocol name PostgreSQL 17+ expects (and direct TLS requires).
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Plaintext handed to rustls at a time: four full records.
const CHUNK: usize = 64 * 1024;

/// ring, with P-256 offered first: PostgreSQL before 18 accepts only the
/// curve of `ssl_ecdh_curve` (prime256v1 by default), so offering X25519
/// first (rustls's order) costs every connect a HelloRetryRequest — one more
/// round trip and key generation. PostgreSQL 18 takes either.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::kx_group;
    let mut p = rustls::crypto::ring::default_provider();
    p.kx_groups = vec![kx_group::SECP256R1, kx_group::X25519, kx_group::SECP384R1];
    Arc::new(p)
}

/// What a built `ClientConfig` depends on: the words, and the size and
/// modification time of each file they name (a replaced certificate is
/// read afresh). `sslrootcert=system` is read once per process.
/// A named file as it was: its path, and (size, modification time,
/// permission bits) when it could be read.
type FileStamp = (String, Option<(u64, std::time::SystemTime, u32)>);

#[derive(PartialEq, Eq, Clone)]
struct CacheKey {
    mode: SslMode,
    files: [Option<FileStamp>; 3],
    sni: bool,
    versions: (TlsVersion, TlsVersion),
}

impl CacheKey {
    fn of(config: &Config) -> CacheKey {
        let stamp = |path: &Option<String>| {
            path.as_ref().map(|p| {
                let meta = std::fs::metadata(p).ok();
                (
                    p.clone(),
                    meta.and_then(|m| Some((m.len(), m.modified().ok()?, mode_of(&m)))),
                )
            })
        };
        CacheKey {
            mode: config.ssl_mode(),
            files: [
                stamp(&config.ssl_root_cert),
                stamp(&config.ssl_cert),
                stamp(&config.ssl_key),
            ],
            sni: config.ssl_sni,
            versions: (config.ssl_min_protocol_version, config.ssl_max_protocol_version),
        }
    }
}

/// Permission bits, so a key file made readable by others is judged again.
fn mode_of(m: &std::fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode()
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        0
    }
}

/// The last few `ClientConfig`s built: parsing certificates (the whole
/// system store for `sslrootcert=system`) and building a verifier cost more
/// than a connect should, and every connect of an application asks for the
/// same few.
static BUILT: std::sync::Mutex<Vec<(CacheKey, Arc<ClientConfig>)>> = std::sync::Mutex::new(Vec::new());

/// The rustls settings a configuration asks for, with its files read:
/// `None` when TLS is off (`sslmode=disable`). Shared by every host tried,
/// and by later connects with the same settings and files.
pub fn client_config(config: &Config) -> Result<Option<Arc<ClientConfig>>, Error> {
    if config.ssl_mode() == SslMode::Disable {
        return Ok(None);
    }
    let key = CacheKey::of(config);
    let cache = || BUILT.lock().unwrap_or_else(|e| e.into_inner());
    {
        let mut built = cache();
        if let Some(i) = built.iter().position(|(k, _)| *k == key) {
            let entry = built.remove(i);
            let tls = entry.1.clone();
            built.push(entry);
            return Ok(Some(tls));
        }
    }
    // Built without the lock: reading the system store must not hold up
    // connects that have theirs already.
    let tls = build_client_config(config)?;
    let mut built = cache();
    if built.len() >= 8 {
        built.remove(0);
    }
    built.push((key, tls.clone()));
    Ok(Some(tls))
}

fn build_client_config(config: &Config) -> Result<Arc<ClientConfig>, Error> {
    let mode = config.ssl_mode();
    let provider = provider();
    let versions: &[&'static rustls::SupportedProtocolVersion] =
        match (config.ssl_min_protocol_version, config.ssl_max_protocol_version) {
            (TlsVersion::Tls12, TlsVersion::Tls12) => &[&rustls::version::TLS12],
            (TlsVersion::Tls13, _) => &[&rustls::version::TLS13],
            _ => &[&rustls::version::TLS12, &rustls::version::TLS13],
        };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| Error::config(format!("TLS: {e}")))?;
    let roots = load_roots(config)?;
    // libpq: with a root certificate at hand, every mode checks the chain
    // (so `require` behaves as verify-ca); only verify-full the name.
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => webpki(roots, &provider)?,
        (_, Some(roots)) => Arc::new(Lenient {
            chain: Some(webpki(roots, &provider)?),
            algorithms: provider.signature_verification_algorithms,
        }),
        (SslMode::VerifyFull | SslMode::VerifyCa, None) => {
            return Err(Error::config(format!(
                "sslmode={} needs a root certificate to verify the server with: set sslrootcert to a PEM file, \
                 or to system for the platform's trusted roots (~/.postgresql/root.crt does not exist)",
                word_of_ssl_mode(mode)
            )))
        }
        (_, None) => Arc::new(Lenient {
            chain: None,
            algorithms: provider.signature_verification_algorithms,
        }),
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let mut tls = match (&config.ssl_cert, &config.ssl_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&read_pem("sslcert", cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::config(format!("sslcert {cert}: {e}")))?;
            if chain.is_empty() {
                return Err(Error::config(format!("sslcert {cert} holds no PEM certificate")));
            }
            check_key_permissions(key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&read_pem("sslkey", key)?)
                .map_err(|e| Error::config(format!("sslkey {key}: {e}")))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| Error::config(format!("sslcert/sslkey: {e}")))?
        }
        (Some(_), None) => return Err(Error::config("sslcert is set but sslkey is not")),
        (None, Some(_)) => return Err(Error::config("sslkey is set but sslcert is not")),
        (None, None) => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    tls.enable_sni = config.ssl_sni;
    Ok(Arc::new(tls))
}

fn load_roots(config: &Config) -> Result<Option<Arc<RootCertStore>>, Error> {
    let Some(path) = &config.ssl_root_cert else {
        return Ok(None);
    };
    let mut store = RootCertStore::empty();
    if path == "system" {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(Error::config(format!(
                "sslrootcert=system: no trusted root certificates found on this system ({} errors)",
                found.errors.len()
            )));
        }
    } else {
        let certs = CertificateDer::pem_slice_iter(&read_pem("sslrootcert", path)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::config(format!("sslrootcert {path}: {e}")))?;
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(Error::config(format!(
                "sslrootcert {path} holds no usable PEM certificate"
            )));
        }
    }
    Ok(Some(Arc::new(store)))
}

/// A PEM file's bytes: a plain file (not a device that never ends) of a
/// sane size, or an error naming the word that pointed at it.
fn read_pem(word: &str, path: &str) -> Result<Vec<u8>, Error> {
    const LIMIT: u64 = 16 << 20;
    let meta = std::fs::metadata(path).map_err(|e| Error::config(format!("{word} {path}: {e}")))?;
    if !meta.is_file() {
        return Err(Error::config(format!("{word} {path}: not a plain file")));
    }
    if meta.len() > LIMIT {
        return Err(Error::config(format!(
            "{word} {path}: larger than 16 MiB, not a PEM file"
        )));
    }
    std::fs::read(path).map_err(|e| Error::config(format!("{word} {path}: {e}")))
}

fn webpki(roots: Arc<RootCertStore>, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, Error> {
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| Error::config(format!("TLS roots: {e}")))
}

/// libpq refuses a private key others may read: u=rw (0600) or less, or
/// u=rw,g=r (0640) or less when root owns it.
fn check_key_permissions(path: &str) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(path).map_err(|e| Error::config(format!("sslkey {path}: {e}")))?;
        let mode = meta.permissions().mode();
        let ok = if meta.uid() == 0 {
            mode & 0o037 == 0
        } else {
            mode & 0o077 == 0
        };
        if !ok {
            return Err(Error::config(format!(
                "sslkey {path} has group or world access; permissions should be u=rw (0600) or less \
                 (u=rw,g=r (0640) when owned by root)"
            )));
        }
    }
    let _ = path;
    Ok(())
}

/// The server certificate checks that are not webpki's own: `require`
/// without a root certificate (`chain: None`; the session is encrypted but
/// the server not authenticated, libpq's meaning) and `verify-ca` (the chain
/// must lead to a trusted root; the name on the certificate is not compared
/// with the host). The handshake's signatures are checked either way, so
/// the peer holds the key of the certificate it showed — which channel
/// binding relies on.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// One TLS session's state: rustls's connection and the ciphertext on its
/// way to the socket.
pub(crate) struct Tls {
    conn: ClientConnection,
    /// Records for the socket; `wire[wire_sent..]` is still to be written.
    wire: Vec<u8>,
    wire_sent: usize,
    /// Plaintext bytes whose records are in `wire`: sent once `wire` is.
    plain_in_wire: usize,
    host: String,
    mode: SslMode,
    /// Started without SSLRequest (`sslnegotiation=direct`).
    direct: bool,
    /// The session failed at the TLS level: nothing more can be sent.
    dead: bool,
}

impl Tls {
    /// Starts the handshake with `host` (the name verified and sent as SNI).
    pub(crate) fn start(config: Arc<ClientConfig>, host: &str, mode: SslMode, direct: bool) -> Result<Tls, Error> {
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
            .map_err(|_| Error::config(format!("TLS: {host:?} is not a valid server name")))?;
        let conn = ClientConnection::new(config, name).map_err(|e| Error::Tls(format!("{e}").into()))?;
        Ok(Tls {
            conn,
            wire: Vec::new(),
            wire_sent: 0,
            plain_in_wire: 0,
            host: host.to_string(),
            mode,
            direct,
            dead: false,
        })
    }

    /// Records wait for the socket (or rustls has some to produce).
    pub(crate) fn has_output(&self) -> bool {
        !self.dead && (self.wire_sent < self.wire.len() || self.conn.wants_write())
    }

    /// Whether plaintext can be encrypted now.
    pub(crate) fn accepts_plaintext(&self) -> bool {
        !self.dead && !self.conn.is_handshaking()
    }

    /// Forgets records not yet written: after a failure nothing queued may
    /// reach the server (a record cut short is refused whole by it).
    pub(crate) fn discard_output(&mut self, tls_failed: bool) {
        self.wire.clear();
        self.wire_sent = 0;
        self.plain_in_wire = 0;
        self.dead |= tls_failed;
    }

    /// Why a server that hung up mid-handshake did so, as far as can be said.
    pub(crate) fn closed_during_handshake(&self) -> String {
        if self.direct {
            "the server closed the connection during the TLS handshake \
             (sslnegotiation=direct needs PostgreSQL 17 or later; older servers need sslnegotiation=postgres)"
                .into()
        } else {
            "the server closed the connection during the TLS handshake".into()
        }
    }

    /// Plaintext bytes encrypted into records not yet all written.
    pub(crate) fn plain_in_flight(&self) -> usize {
        self.plain_in_wire
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The records to write next; `plain` is the protocol machine's unsent
    /// plaintext, of which a chunk is encrypted when the wire is empty and
    /// the handshake is done.
    pub(crate) fn transmit(&mut self, plain: &[u8]) -> &[u8] {
        if self.wire_sent == self.wire.len() && !self.dead {
            self.wire.clear();
            self.wire_sent = 0;
            if !self.conn.is_handshaking() && !plain.is_empty() && !self.conn.wants_write() {
                let n = plain.len().min(CHUNK);
                self.plain_in_wire = self.conn.writer().write(&plain[..n]).unwrap_or(0);
            }
            while self.conn.wants_write() {
                if self.conn.write_tls(&mut self.wire).is_err() {
                    break;
                }
            }
        }
        &self.wire[self.wire_sent..]
    }

    /// `n` bytes of records were written; returns how many plaintext bytes
    /// that completed (all of a chunk once its last record is out, else 0).
    pub(crate) fn advance(&mut self, n: usize) -> usize {
        self.wire_sent = (self.wire_sent + n).min(self.wire.len());
        if self.wire_sent == self.wire.len() {
            std::mem::take(&mut self.plain_in_wire)
        } else {
            0
        }
    }

    /// Bytes from the socket: their plaintext is appended to `plain`.
    pub(crate) fn receive(&mut self, mut bytes: &[u8], plain: &mut BytesMut) -> Result<(), Error> {
        while !bytes.is_empty() {
            let n = self
                .conn
                .read_tls(&mut bytes)
                .map_err(|e| Error::Tls(format!("reading TLS records: {e}").into()))?;
            let was_handshaking = self.conn.is_handshaking();
            let state = self.conn.process_new_packets().map_err(|e| self.error(e))?;
            // Direct TLS skips the SSLRequest that shows the peer speaks
            // PostgreSQL; ALPN `postgresql` is that proof here, as in libpq.
            if was_handshaking
                && !self.conn.is_handshaking()
                && self.direct
                && self.conn.alpn_protocol() != Some(ALPN_POSTGRESQL)
            {
                return Err(Error::Tls(
                    "the server completed a direct TLS handshake without agreeing to ALPN \"postgresql\": \
                     it is not PostgreSQL 17 or later"
                        .into(),
                ));
            }
            let k = state.plaintext_bytes_to_read();
            if k > 0 {
                let start = plain.len();
                plain.resize(start + k, 0);
                self.conn
                    .reader()
                    .read_exact(&mut plain[start..])
                    .map_err(|e| Error::Tls(format!("reading decrypted data: {e}").into()))?;
            }
            if n == 0 || state.peer_has_closed() {
                break;
            }
        }
        Ok(())
    }

    /// The `tls-server-end-point` channel binding data (RFC 5929): a hash of
    /// the server's certificate, with the hash its signature used (SHA-256
    /// for MD5, SHA-1 and SHA-256).
    pub(crate) fn server_end_point(&self) -> Option<Vec<u8>> {
        use sha2::Digest;
        let cert = self.conn.peer_certificates()?.first()?;
        Some(match signature_hash(cert) {
            SigHash::Sha384 => sha2::Sha384::digest(cert).to_vec(),
            SigHash::Sha512 => sha2::Sha512::digest(cert).to_vec(),
            SigHash::Sha256 => sha2::Sha256::digest(cert).to_vec(),
        })
    }

    /// A rustls error, said in the words of the setting it comes from.
    fn error(&self, e: rustls::Error) -> Error {
        let mode = word_of_ssl_mode(self.mode);
        let msg = match &e {
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
            | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => format!(
                "the server's certificate is not valid for host name {:?} (sslmode={mode} checks the name; \
                 sslmode=verify-ca does not)",
                self.host
            ),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                format!("the server's certificate is not signed by a trusted root (sslmode={mode}; check sslrootcert)")
            }
            rustls::Error::InvalidCertificate(c) => format!("the server's certificate was refused: {c:?}"),
            other if self.direct && self.conn.is_handshaking() => format!(
                "handshake failed: {other} (sslnegotiation=direct needs PostgreSQL 17 or later; \
                 older servers need sslnegotiation=postgres)"
            ),
            other => format!("handshake failed: {other}"),
        };
        Error::Tls(msg.into())
    }
}

enum SigHash {
    Sha256,
    Sha384,
    Sha512,
}

/// The hash of a certificate's signature algorithm, read from its DER:
/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm
/// SEQUENCE { OID, … }, … }`. Written out because only this one field is
/// needed, and a parse failure just means the default (SHA-256).
fn signature_hash(cert: &[u8]) -> SigHash {
    fn header(b: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        if first < 0x80 {
            return Some((tag, 2, first));
        }
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let len = b.get(2..2 + n)?.iter().fold(0usize, |a, &x| (a << 8) | x as usize);
        Some((tag, 2 + n, len))
    }
    let oid = (|| {
        let (_, h, _) = header(cert)?;
        let body = cert.get(h..)?;
        let (_, th, tl) = header(body)?;
        let alg = body.get(th + tl..)?;
        let (_, ah, _) = header(alg)?;
        let oid = alg.get(ah..)?;
        let (tag, oh, ol) = header(oid)?;
        (tag == 0x06).then(|| oid.get(oh..oh + ol)).flatten()
    })();
    const RSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
    const RSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
    const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    const ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
    match oid {
        Some(RSA_SHA384 | ECDSA_SHA384) => SigHash::Sha384,
        Some(RSA_SHA512 | ECDSA_SHA512) => SigHash::Sha512,
        _ => SigHash::Sha256,
    }
}
