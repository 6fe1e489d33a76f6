//! The startup phase: the StartupMessage and protocol version negotiation,
//! authentication (cleartext password, MD5, SCRAM-SHA-256 and, over TLS,
//! SCRAM-SHA-256-PLUS with channel binding) up to the first
//! `ReadyForQuery`. TLS itself is below, in `wire.rs`.

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::response::tx_status;
use super::{io_to_encode, proto, CancelRequest, Connection, Phase, SecretKey};
use crate::config::{ChannelBindingMode, ProtocolVersion};
use crate::{DbError, Error};

/// Writes a StartupMessage asking for protocol `version` (postgres-protocol's
/// encoder asks for 3.0 only).
pub(super) fn startup_message(
    version: ProtocolVersion,
    params: &[(&str, &str)],
    out: &mut bytes::BytesMut,
) -> Result<(), Error> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&version.code().to_be_bytes());
    for (k, v) in params {
        if k.contains('\0') || v.contains('\0') {
            out.truncate(start);
            return Err(Error::config(format!("startup parameter {k} holds a NUL byte")));
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&[0]);
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(&[0]);
    }
    out.extend_from_slice(&[0]);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

impl Connection {
    /// The startup messages postgres-protocol cannot parse: BackendKeyData
    /// with protocol 3.2's longer keys, and NegotiateProtocolVersion.
    /// `body` is the frame after its tag and length.
    pub(super) fn handle_startup_frame(&mut self, tag: u8, body: &[u8]) -> Result<(), Error> {
        match tag {
            b'K' => {
                let (pid, key) = body
                    .split_first_chunk::<4>()
                    .ok_or_else(|| Error::protocol("BackendKeyData shorter than its process id"))?;
                let secret_key = SecretKey::new(key).ok_or_else(|| {
                    Error::protocol(format!(
                        "BackendKeyData with a {}-byte key (4 to 256 expected)",
                        key.len()
                    ))
                })?;
                self.backend_key = Some(CancelRequest {
                    process_id: i32::from_be_bytes(*pid),
                    secret_key,
                });
            }
            b'v' => {
                let newest = body
                    .first_chunk::<4>()
                    .map(|b| i32::from_be_bytes(*b))
                    .ok_or_else(|| Error::protocol("NegotiateProtocolVersion shorter than its version"))?;
                let minor = (newest & 0xffff) as u16;
                let offered = ProtocolVersion { major: 3, minor };
                if newest >> 16 != 3 || offered >= self.protocol {
                    return Err(Error::protocol(format!(
                        "the server answered protocol {} with NegotiateProtocolVersion for {}.{minor}",
                        self.protocol,
                        newest >> 16
                    )));
                }
                if offered < self.config.min_protocol_version {
                    return Err(Error::Rejected(
                        format!(
                            "the server speaks protocol {offered} at most, below min_protocol_version {}",
                            self.config.min_protocol_version
                        )
                        .into(),
                    ));
                }
                self.protocol = offered;
            }
            _ => return Err(Error::protocol("unexpected startup frame")),
        }
        Ok(())
    }

    /// The protocol version the session speaks (3.0, or 3.2 with
    /// PostgreSQL 18+ unless `max_protocol_version` says otherwise).
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.protocol
    }

    /// Whether SCRAM-SHA-256-PLUS bound the session to its TLS channel.
    pub fn channel_bound(&self) -> bool {
        self.channel_bound
    }

    /// What `target_session_attrs` asks of this session.
    pub fn session_attrs(&self) -> crate::TargetSessionAttrs {
        self.session_attrs
    }

    /// Whether the server refused the StartupMessage itself (before any
    /// authentication), as a pooler that does not know protocol 3.2 does.
    pub fn refused_protocol(&self, e: &Error) -> bool {
        !self.startup_taken && self.protocol > ProtocolVersion::V3_0 && matches!(e.code(), Some("08P01" | "0A000"))
    }

    pub(super) fn handle_startup(&mut self, msg: Message) -> Result<(), Error> {
        if !matches!(
            msg,
            Message::ErrorResponse(_) | Message::NoticeResponse(_) | Message::ParameterStatus(_)
        ) {
            self.startup_taken = true;
        }
        let password = || {
            self.config.password.clone().ok_or_else(|| {
                let why = match &self.passfile_note {
                    Some(note) => format!(" ({note})"),
                    None => String::new(),
                };
                Error::auth(format!(
                    "the server asked for a password for user {:?}, but none was given{why}",
                    self.config.user
                ))
            })
        };
        // channel_binding=require: only SCRAM-SHA-256-PLUS may authenticate.
        let unbound = |how: &str| -> Result<(), Error> {
            if self.config.channel_binding == ChannelBindingMode::Require && !self.channel_bound {
                return Err(Error::Rejected(
                    format!("channel_binding=require, but the server {how}, without channel binding").into(),
                ));
            }
            Ok(())
        };
        match msg {
            Message::AuthenticationOk => {
                unbound("let the session in (trust or a certificate)")?;
                if let Phase::Scram(_) = self.phase {
                    return Err(Error::auth("server ended SCRAM without its final message"));
                }
                self.phase = Phase::Starting;
            }
            Message::AuthenticationCleartextPassword => {
                unbound("asked for a cleartext password")?;
                let pw = password()?;
                frontend::password_message(pw.as_bytes(), &mut self.out).map_err(io_to_encode)?;
            }
            Message::AuthenticationMd5Password(body) => {
                unbound("asked for an MD5 password")?;
                let pw = password()?;
                let hash = postgres_protocol::authentication::md5_hash(
                    self.config.user.as_bytes(),
                    pw.as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut self.out).map_err(io_to_encode)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let (mut scram, mut plus) = (false, false);
                let mut offered = Vec::new();
                while let Some(m) = mechanisms.next().map_err(proto)? {
                    scram |= m == SCRAM_SHA_256;
                    plus |= m == SCRAM_SHA_256_PLUS;
                    offered.push(m.to_string());
                }
                let end_point = match (&self.wire, self.config.channel_binding) {
                    (super::Wire::Tls(t), ChannelBindingMode::Prefer | ChannelBindingMode::Require) => {
                        t.server_end_point()
                    }
                    _ => None,
                };
                let (mechanism, binding) = match (plus, end_point) {
                    (true, Some(hash)) => (SCRAM_SHA_256_PLUS, ChannelBinding::tls_server_end_point(hash)),
                    _ if self.config.channel_binding == ChannelBindingMode::Require => {
                        return Err(Error::Rejected(
                            if self.is_tls() {
                                format!(
                                    "channel_binding=require, but the server offers only {offered:?}, not SCRAM-SHA-256-PLUS"
                                )
                            } else {
                                "channel_binding=require, but the session is not TLS".to_string()
                            }
                            .into(),
                        ))
                    }
                    // "y": the client could bind, the server did not offer it
                    // (so a man in the middle who stripped PLUS is caught).
                    _ if scram && self.is_tls() && self.config.channel_binding != ChannelBindingMode::Disable => {
                        (SCRAM_SHA_256, ChannelBinding::unrequested())
                    }
                    _ if scram => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                    _ => {
                        return Err(Error::auth(format!(
                            "the server offers SASL mechanisms {offered:?}; duet supports SCRAM-SHA-256 and, over TLS, SCRAM-SHA-256-PLUS"
                        )))
                    }
                };
                let pw = password()?;
                let s = ScramSha256::new(pw.as_bytes(), binding);
                frontend::sasl_initial_response(mechanism, s.message(), &mut self.out).map_err(io_to_encode)?;
                self.channel_bound = mechanism == SCRAM_SHA_256_PLUS;
                self.phase = Phase::Scram(Box::new(s));
            }
            Message::AuthenticationSaslContinue(body) => {
                let Phase::Scram(s) = &mut self.phase else {
                    return Err(Error::protocol("SASLContinue outside a SASL exchange"));
                };
                s.update(body.data()).map_err(|e| Error::auth(format!("SCRAM: {e}")))?;
                let m = s.message().to_vec();
                frontend::sasl_response(&m, &mut self.out).map_err(io_to_encode)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let Phase::Scram(s) = &mut self.phase else {
                    return Err(Error::protocol("SASLFinal outside a SASL exchange"));
                };
                s.finish(body.data())
                    .map_err(|e| Error::auth(format!("SCRAM: the server's signature does not verify: {e}")))?;
                self.phase = Phase::Auth;
            }
            Message::AuthenticationKerberosV5 => return Err(unsupported_auth("Kerberos V5")),
            Message::AuthenticationScmCredential => return Err(unsupported_auth("SCM credentials")),
            Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                return Err(unsupported_auth("GSSAPI"))
            }
            Message::AuthenticationSspi => return Err(unsupported_auth("SSPI")),
            Message::ReadyForQuery(body) => {
                if !matches!(self.phase, Phase::Starting) {
                    return Err(Error::protocol("ReadyForQuery before authentication completed"));
                }
                self.tx_status = tx_status(body.status())?;
                self.phase = Phase::Ready;
                let held = std::mem::take(&mut self.held);
                self.out.extend_from_slice(&held);
            }
            Message::ErrorResponse(body) => {
                return Err(Error::Db(Box::new(DbError::parse(&body)?)));
            }
            _ => return Err(Error::protocol("unexpected message during startup")),
        }
        Ok(())
    }
}

/// The error for a peer whose first answer is not PostgreSQL's, named
/// instead of reported as a message of an absurd length.
pub(super) fn not_postgres(input: &[u8]) -> Option<Error> {
    let first = *input.first()?;
    // Judged once five bytes are in: before that, "HT" may still be HTTP.
    if b"HTTP/".starts_with(&input[..input.len().min(5)]) {
        return (input.len() >= 5)
            .then(|| Error::protocol("the server answered like an HTTP server, not PostgreSQL: is the port right?"));
    }
    // Before the session is ready the server sends only these.
    if !b"REKSNZv".contains(&first) {
        let shown: String = input.iter().take(16).map(|b| b.escape_ascii().to_string()).collect();
        return Some(Error::protocol(format!(
            "the server's answer is not PostgreSQL's (it begins with \"{shown}\"): is the port right?"
        )));
    }
    None
}

fn unsupported_auth(method: &str) -> Error {
    Error::auth(format!(
        "the server asks for {method} authentication, which duet does not support"
    ))
}
