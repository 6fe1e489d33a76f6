//! LISTEN/NOTIFY as an iterator. The core (`duet_core::listen`) keeps the
//! channels and says what was heard or missed; this file connects, waits
//! for input and connects again when the connection is lost.

use std::time::{Duration, Instant};

use duet_core::listen::{Heard, Listen};
use duet_core::{deadline_after, Config, Error};

use crate::Client;

/// A connection that listens to channels, as an iterator of what it
/// hears. A lost connection is replaced (with a back-off between failed
/// attempts) and its channels listened to again; the iterator then yields
/// [`Heard::Missed`] with `reconnected`, as it does with `dropped` when
/// more notifications arrived than the event buffer holds.
///
/// ```no_run
/// use duet_sync::{Heard, Listener};
/// let mut jobs = Listener::connect("postgres://app@localhost/shop")?;
/// jobs.listen("jobs")?;
/// for heard in &mut jobs {
///     match heard? {
///         Heard::Notification(n) => println!("{}: {}", n.channel, n.payload),
///         Heard::Missed(_) => println!("some were missed: reload the job list"),
///     }
/// }
/// # Ok::<(), duet_sync::Error>(())
/// ```
pub struct Listener {
    config: Config,
    client: Option<Client>,
    listen: Listen,
}

impl Listener {
    /// Connects as [`Client::connect`] does.
    pub fn connect(params: &str) -> Result<Listener, Error> {
        Listener::connect_config(&Config::from_env(params)?)
    }

    pub fn connect_config(config: &Config) -> Result<Listener, Error> {
        Ok(Listener {
            client: Some(Client::connect_config(config)?),
            config: config.clone(),
            listen: Listen::new(),
        })
    }

    /// Listens to `channel` (any name; case is kept), on this connection
    /// and every one that replaces it.
    pub fn listen(&mut self, channel: &str) -> Result<(), Error> {
        let sql = self.listen.listen(channel)?;
        self.connected(None)?;
        match &mut self.client {
            Some(c) => c.batch_execute(&sql),
            None => Err(Error::closed("the listening connection is lost")),
        }
    }

    /// Stops listening to `channel`.
    pub fn unlisten(&mut self, channel: &str) -> Result<(), Error> {
        let sql = self.listen.unlisten(channel)?;
        match &mut self.client {
            Some(c) => c.batch_execute(&sql),
            None => Ok(()),
        }
    }

    /// The channels listened to.
    pub fn channels(&self) -> &[String] {
        self.listen.channels()
    }

    /// Waits for the next thing heard.
    pub fn recv(&mut self) -> Result<Heard, Error> {
        loop {
            if let Some(h) = self.recv_timeout(Duration::MAX)? {
                return Ok(h);
            }
        }
    }

    /// Waits up to `timeout` for the next thing heard (`None`: nothing).
    /// An error when the connection was lost and connecting again failed;
    /// the next call tries again, after the back-off.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Heard>, Error> {
        let until = deadline_after(Instant::now(), timeout);
        loop {
            if let Some(h) = self.listen.take_pending() {
                return Ok(Some(h));
            }
            if !self.connected(until)? {
                return Ok(None);
            }
            let Some(client) = &mut self.client else { continue };
            if let Some(h) = self.listen.next(&mut client.conn) {
                return Ok(Some(h));
            }
            let waited = if client.is_closed() {
                Err(Error::closed("the listening connection closed"))
            } else {
                client.await_input(until)
            };
            match waited {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(_) => {
                    // Lost: what it heard is kept, then a new connection.
                    self.listen.lost(&mut client.conn);
                    self.client = None;
                }
            }
        }
    }

    /// Makes sure there is a live connection, made anew (and subscribed
    /// again) when the last one was lost; false when `until` passes while
    /// waiting out the back-off.
    fn connected(&mut self, until: Option<Instant>) -> Result<bool, Error> {
        if self.client.is_none() {
            let (sleep, then_connect) = self.listen.before_connect(until);
            if let Some(t) = sleep {
                std::thread::sleep(t.saturating_duration_since(Instant::now()));
            }
            if !then_connect {
                return Ok(false);
            }
            match self.reconnect() {
                Ok(c) => {
                    self.client = Some(c);
                    self.listen.reconnected();
                }
                Err(e) => {
                    self.listen.connect_failed(Instant::now());
                    return Err(e);
                }
            }
        }
        Ok(true)
    }

    fn reconnect(&self) -> Result<Client, Error> {
        let mut c = Client::connect_config(&self.config)?;
        if let Some(sql) = self.listen.subscribe_all() {
            c.batch_execute(&sql)?;
        }
        Ok(c)
    }
}

impl Iterator for Listener {
    type Item = Result<Heard, Error>;

    /// Never ends: a failed reconnect is an `Err` item, and the next call
    /// tries again.
    fn next(&mut self) -> Option<Self::Item> {
        Some(self.recv())
    }
}
