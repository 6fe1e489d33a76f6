//! The startup phase: authentication (cleartext password, MD5, SCRAM) up
//! to the first `ReadyForQuery`. Kept apart from the request/response
//! machinery so a TLS layer and protocol negotiation can join it here.

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::response::tx_status;
use super::{io_to_encode, proto, CancelRequest, Connection, Phase};
use crate::{DbError, Error};

impl Connection {
    pub(super) fn handle_startup(&mut self, msg: Message) -> Result<(), Error> {
        let password = || {
            self.config.password.clone().ok_or_else(|| {
                Error::auth(format!(
                    "the server asked for a password for user {:?}, but none was given",
                    self.config.user
                ))
            })
        };
        match msg {
            Message::AuthenticationOk => {
                if let Phase::Scram(_) = self.phase {
                    return Err(Error::auth("server ended SCRAM without its final message"));
                }
                self.phase = Phase::Starting;
            }
            Message::AuthenticationCleartextPassword => {
                let pw = password()?;
                frontend::password_message(pw.as_bytes(), &mut self.out).map_err(io_to_encode)?;
            }
            Message::AuthenticationMd5Password(body) => {
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
                let mut scram = false;
                let mut offered = Vec::new();
                while let Some(m) = mechanisms.next().map_err(proto)? {
                    scram |= m == SCRAM_SHA_256;
                    offered.push(m.to_string());
                }
                if !scram {
                    return Err(Error::auth(format!(
                        "the server offers SASL mechanisms {offered:?}; duet supports SCRAM-SHA-256 only (no channel binding without TLS)"
                    )));
                }
                let pw = password()?;
                let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.out).map_err(io_to_encode)?;
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
            Message::BackendKeyData(body) => {
                self.backend_key = Some(CancelRequest {
                    process_id: body.process_id(),
                    secret_key: body.secret_key(),
                });
            }
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
