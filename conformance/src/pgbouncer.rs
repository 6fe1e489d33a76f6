//! PgBouncer (Debian's `pgbouncer`, 1.18 here) in transaction mode in
//! front of a harness server, for tests of what poolers do to a session:
//! 1.18 predates protocol 3.2 and refuses its StartupMessage outright.

use std::fs;
use std::io::{self, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{free_port, make_temp_dir, TestServer};

const BINARY: &str = "/usr/sbin/pgbouncer";

/// A running PgBouncer; stopped and its directory removed on drop, or by
/// its watchdog when the test process ends first.
pub struct PgBouncer {
    dir: PathBuf,
    port: u16,
    child: Child,
    watchdog: Child,
}

impl PgBouncer {
    /// Whether the binary is installed (`scripts/test` installs it).
    pub fn installed() -> bool {
        std::path::Path::new(BINARY).exists()
    }

    /// PgBouncer on a free port of 127.0.0.1, transaction pooling, trust
    /// authentication, every database forwarded to `server`'s TCP port.
    pub fn start(server: &TestServer) -> io::Result<PgBouncer> {
        if !Self::installed() {
            return Err(io::Error::other(format!(
                "{BINARY} is missing: scripts/test installs Debian's pgbouncer"
            )));
        }
        let (dir, as_postgres) = make_temp_dir()?;
        let port = free_port()?;
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("users.txt");
        fs::write(&users, "\"postgres\" \"\"\n")?;
        fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={server_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                 logfile = {log}\npidfile = {pid}\nignore_startup_parameters = extra_float_digits,options\n",
                server_port = server.port(),
                users = users.display(),
                log = dir.join("pgbouncer.log").display(),
                pid = dir.join("pgbouncer.pid").display(),
            ),
        )?;
        if as_postgres {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?;
        }
        // PgBouncer refuses to run as root.
        let mut cmd = if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", BINARY]);
            c
        } else {
            Command::new(BINARY)
        };
        let child = cmd
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Ends PgBouncer when this process ends without dropping it.
        let watchdog = Command::new("/bin/sh")
            .args([
                "-c",
                &format!(
                    "trap '' HUP INT; cat >/dev/null; kill $(cat {pid}) 2>/dev/null; rm -rf {dir}",
                    pid = dir.join("pgbouncer.pid").display(),
                    dir = dir.display()
                ),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let b = PgBouncer {
            dir,
            port,
            child,
            watchdog,
        };
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > until {
                let log = fs::read_to_string(b.dir.join("pgbouncer.log")).unwrap_or_default();
                return Err(io::Error::other(format!("pgbouncer did not listen on {port}: {log}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(b)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL through PgBouncer as `postgres`, with no named statements (its
    /// transaction mode before 1.21 cannot keep them).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?statement_cache_capacity=0&local_socket=disable&sslmode=disable",
            self.port
        )
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Ok(pid) = fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(mut stdin) = self.watchdog.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.watchdog.wait();
    }
}
