//! The bytes between the socket and the protocol machine: plaintext, the
//! SSLRequest exchange that may start TLS, or TLS records (see
//! [`crate::tls`]). Everything above this file sees plaintext only.

use bytes::Buf;

use super::startup::not_postgres;
use super::Connection;
use crate::config::{word_of_ssl_mode, SslMode};
use crate::tls::Tls;
use crate::Error;

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

pub(super) enum Wire {
    Plain,
    /// SSLRequest sent (or being sent); the server's one-byte answer decides.
    AwaitingSsl {
        sent: usize,
    },
    Tls(Box<Tls>),
}

impl Connection {
    /// Bytes to write to the socket; empty when there is nothing to send.
    /// Under TLS these are records, encrypted from the protocol's send
    /// buffer a chunk at a time as the socket takes them.
    pub fn poll_transmit(&mut self) -> &[u8] {
        match &mut self.wire {
            Wire::Plain => &self.out,
            Wire::AwaitingSsl { sent } => &SSL_REQUEST[*sent..],
            Wire::Tls(t) => t.transmit(&self.out),
        }
    }

    /// Marks `n` bytes of [`Connection::poll_transmit`] as written.
    pub fn advance_transmit(&mut self, n: usize) {
        let plain = match &mut self.wire {
            Wire::Plain => n,
            Wire::AwaitingSsl { sent } => {
                *sent = (*sent + n).min(SSL_REQUEST.len());
                0
            }
            Wire::Tls(t) => t.advance(n),
        };
        let plain = plain.min(self.out.len());
        self.out.advance(plain);
        self.sent += plain as u64;
    }

    /// Whether anything waits to be written (the driver then waits for the
    /// socket to be writable too).
    pub(super) fn has_output(&self) -> bool {
        match &self.wire {
            Wire::Plain => !self.out.is_empty(),
            Wire::AwaitingSsl { sent } => *sent < SSL_REQUEST.len(),
            Wire::Tls(t) => t.has_output() || (t.accepts_plaintext() && !self.out.is_empty()),
        }
    }

    /// The end of the plaintext that is committed to the wire: sent, or
    /// encrypted into records on their way. Nothing before it can be taken
    /// back.
    pub(super) fn committed_to_wire(&self) -> u64 {
        match &self.wire {
            Wire::Tls(t) => self.sent + t.plain_in_flight() as u64,
            _ => self.sent,
        }
    }

    /// Whether the session runs over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.wire, Wire::Tls(_))
    }

    /// Bytes read from the socket, made plaintext in `self.input`.
    pub(super) fn take_in(&mut self, bytes: &[u8]) -> Result<(), Error> {
        match &mut self.wire {
            Wire::Plain => {
                self.input.extend_from_slice(bytes);
                Ok(())
            }
            Wire::Tls(t) => t.receive(bytes, &mut self.input),
            Wire::AwaitingSsl { sent } => {
                let Some((&answer, rest)) = bytes.split_first() else {
                    return Ok(());
                };
                if *sent < SSL_REQUEST.len() {
                    return Err(Error::protocol("the server spoke before the SSLRequest was sent"));
                }
                let mode = self.config.ssl_mode();
                match answer {
                    b'S' => {
                        // The server cannot have answered a ClientHello not
                        // yet sent: anything here was put in the stream by
                        // someone else (CVE-2021-23222).
                        if !rest.is_empty() {
                            return Err(Error::protocol(
                                "the server sent unencrypted bytes right after agreeing to TLS; refusing them \
                                 (they may have been injected by a man in the middle)",
                            ));
                        }
                        let config = self
                            .tls_config
                            .clone()
                            .ok_or_else(|| Error::config("TLS was asked for without TLS settings"))?;
                        let tls = Tls::start(config, &self.server_name, mode, false)?;
                        self.wire = Wire::Tls(Box::new(tls));
                        Ok(())
                    }
                    b'N' => {
                        if mode >= SslMode::Require {
                            return Err(Error::Rejected(
                                format!(
                                    "the server does not accept TLS (it answered the SSLRequest with N), \
                                     and sslmode={} requires it",
                                    word_of_ssl_mode(mode)
                                )
                                .into(),
                            ));
                        }
                        if !rest.is_empty() {
                            return Err(Error::protocol(
                                "the server sent bytes before the StartupMessage, right after declining TLS",
                            ));
                        }
                        self.wire = Wire::Plain;
                        Ok(())
                    }
                    // A server that cannot take the session yet (too many
                    // connections, starting up) answers with an ErrorResponse
                    // in plaintext: read it as one.
                    b'E' => {
                        self.wire = Wire::Plain;
                        self.input.extend_from_slice(bytes);
                        Ok(())
                    }
                    other => Err(not_postgres(bytes).unwrap_or_else(|| {
                        Error::protocol(format!(
                            "the server answered the SSLRequest with byte {other:#04x}, not S or N"
                        ))
                    })),
                }
            }
        }
    }
}
