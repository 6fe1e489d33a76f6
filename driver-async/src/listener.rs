//! LISTEN/NOTIFY as a `Stream`. The core (`duet_core::listen`) keeps the
//! channels and says what was heard or missed; this file connects, waits
//! for input and connects again when the connection is lost.

use std::time::{Duration, Instant};

use duet_core::listen::{Heard, Listen};
use duet_core::{deadline_after, Config, Error};

use crate::Client;

/// A connection that listens to channels; [`Listener::recv`] or
/// [`Listener::into_stream`] gives what it hears. A lost connection is replaced (with a back-off between failed
/// attempts) and its channels listened to again; the iterator then yields
/// [`Heard::Missed`] with `reconnected`, as it does with `dropped` when
/// more notifications arrived than the event buffer holds.
///
/// ```no_run
/// use duet_async::{Heard, Listener};
/// use futures_util::StreamExt;
/// # async fn f() -> Result<(), duet_async::Error> {
/// let mut jobs = Listener::connect("postgres://app@localhost/shop").await?;
/// jobs.listen("jobs").await?;
/// let mut heard = std::pin::pin!(jobs.into_stream());
/// while let Some(h) = heard.next().await {
///     match h? {
///         Heard::Notification(n) => println!("{}: {}", n.channel, n.payload),
///         Heard::Missed(_) => println!("some were missed: reload the job list"),
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Listener {
    config: Config,
    client: Option<Client>,
    listen: Listen,
}

impl Listener {
    /// Connects as [`Client::connect`] does.
    pub async fn connect(params: &str) -> Result<Listener, Error> {
        Listener::connect_config(&Config::from_env(params)?).await
    }

    pub async fn connect_config(config: &Config) -> Result<Listener, Error> {
        Ok(Listener {
            client: Some(Client::connect_config(config).await?),
            config: config.clone(),
            listen: Listen::new(),
        })
    }

    /// Listens to `channel` (any name; case is kept), on this connection
    /// and every one that replaces it.
    pub async fn listen(&mut self, channel: &str) -> Result<(), Error> {
        let sql = self.listen.listen(channel)?;
        self.connected(None).await?;
        match &mut self.client {
            Some(c) => c.batch_execute(&sql).await,
            None => Err(Error::closed("the listening connection is lost")),
        }
    }

    /// Stops listening to `channel`.
    pub async fn unlisten(&mut self, channel: &str) -> Result<(), Error> {
        let sql = self.listen.unlisten(channel)?;
        match &mut self.client {
            Some(c) => c.batch_execute(&sql).await,
            None => Ok(()),
        }
    }

    /// The channels listened to.
    pub fn channels(&self) -> &[String] {
        self.listen.channels()
    }

    /// Waits for the next thing heard.
    pub async fn recv(&mut self) -> Result<Heard, Error> {
        loop {
            if let Some(h) = self.recv_timeout(Duration::MAX).await? {
                return Ok(h);
            }
        }
    }

    /// Waits up to `timeout` for the next thing heard (`None`: nothing).
    /// An error when the connection was lost and connecting again failed;
    /// the next call tries again, after the back-off.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Heard>, Error> {
        let until = deadline_after(Instant::now(), timeout);
        loop {
            if let Some(h) = self.listen.take_pending() {
                return Ok(Some(h));
            }
            if !self.connected(until).await? {
                return Ok(None);
            }
            let Some(client) = &mut self.client else { continue };
            if let Some(h) = self.listen.next(&mut client.conn) {
                return Ok(Some(h));
            }
            let waited = if client.is_closed() {
                Err(Error::closed("the listening connection closed"))
            } else {
                client.await_input(until).await
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
    async fn connected(&mut self, until: Option<Instant>) -> Result<bool, Error> {
        if self.client.is_none() {
            let (sleep, then_connect) = self.listen.before_connect(until);
            if let Some(t) = sleep {
                tokio::time::sleep_until(t.into()).await;
            }
            if !then_connect {
                return Ok(false);
            }
            match self.reconnect().await {
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

    async fn reconnect(&self) -> Result<Client, Error> {
        let mut c = Client::connect_config(&self.config).await?;
        if let Some(sql) = self.listen.subscribe_all() {
            c.batch_execute(&sql).await?;
        }
        Ok(c)
    }

    /// What it hears, as a `Stream` that never ends: a failed reconnect is
    /// an `Err` item, and the next poll tries again.
    pub fn into_stream(self) -> impl futures_core::Stream<Item = Result<Heard, Error>> + Send {
        futures_util::stream::unfold(self, |mut l| async move {
            let heard = l.recv().await;
            Some((heard, l))
        })
    }
}
