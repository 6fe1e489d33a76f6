//! What libpq takes from outside the connection string: the `PG*`
//! environment (under the string's words), the operating system's user name,
//! and the files in the home directory (`~/.pgpass`, `~/.postgresql/`).
//! This is the one place the core reads the process's surroundings; it runs
//! once, before any socket is opened, and the protocol machine never does.

use std::path::PathBuf;

use super::Config;
use crate::Error;

/// The environment variables libpq reads, and the word each one sets.
const ENV_WORDS: &[(&str, &str)] = &[
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGDATABASE", "dbname"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGPASSFILE", "passfile"),
    ("PGOPTIONS", "options"),
    ("PGAPPNAME", "application_name"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLNEGOTIATION", "sslnegotiation"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGSSLCERTMODE", "sslcertmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLSNI", "sslsni"),
    ("PGSSLMINPROTOCOLVERSION", "ssl_min_protocol_version"),
    ("PGSSLMAXPROTOCOLVERSION", "ssl_max_protocol_version"),
    ("PGCHANNELBINDING", "channel_binding"),
    ("PGGSSENCMODE", "gssencmode"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGLOADBALANCEHOSTS", "load_balance_hosts"),
    ("PGMINPROTOCOLVERSION", "min_protocol_version"),
    ("PGMAXPROTOCOLVERSION", "max_protocol_version"),
];

/// Where [`Config::from_env_with`] finds what lies outside the string: the
/// process's own ([`SystemEnv`]), or a stand-in in tests.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
    /// The home directory (`HOME`, else the user database's entry).
    fn home(&self) -> Option<PathBuf>;
    /// The effective user's login name.
    fn os_user(&self) -> Option<String>;
    fn is_file(&self, path: &std::path::Path) -> bool;
}

/// This process's environment, user and files.
pub struct SystemEnv;

impl EnvSource for SystemEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn home(&self) -> Option<PathBuf> {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(|| passwd_entry().map(|(_, home)| home))
    }
    fn os_user(&self) -> Option<String> {
        passwd_entry().map(|(name, _)| name)
    }
    fn is_file(&self, path: &std::path::Path) -> bool {
        path.is_file()
    }
}

/// The effective user's name and home directory, from the user database,
/// as libpq finds them (`getpwuid_r(geteuid())`).
#[cfg(unix)]
fn passwd_entry() -> Option<(String, PathBuf)> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0u8; 4096];
    // SAFETY: zeroed passwd is a valid out-parameter for getpwuid_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: buf outlives the call and the pointers read from pwd below.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so both point at NUL-terminated strings in buf.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
    let home = if pwd.pw_dir.is_null() {
        PathBuf::new()
    } else {
        // SAFETY: as above.
        PathBuf::from(std::ffi::OsStr::from_bytes(
            unsafe { CStr::from_ptr(pwd.pw_dir) }.to_bytes(),
        ))
    };
    Some((name, home))
}

#[cfg(not(unix))]
fn passwd_entry() -> Option<(String, PathBuf)> {
    None
}

impl Config {
    /// A connection string read as libpq reads it: its words over the `PG*`
    /// environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGSSLMODE`,
    /// `PGTARGETSESSIONATTRS`, … — the same names as libpq), the operating
    /// system's user when none is named, the password file (`PGPASSFILE` or
    /// `~/.pgpass`), and `~/.postgresql/root.crt`, `postgresql.crt` and
    /// `postgresql.key` when they exist. This is what the drivers'
    /// `Client::connect` uses.
    ///
    /// ```no_run
    /// # use duet_core::Config;
    /// std::env::set_var("PGAPPNAME", "billing");
    /// let c = Config::from_env("host=db.internal sslmode=verify-full").unwrap();
    /// assert_eq!(c.application_name.as_deref(), Some("billing"));
    /// ```
    pub fn from_env(s: &str) -> Result<Config, Error> {
        Config::from_env_with(s, &SystemEnv)
    }

    /// [`Config::from_env`] with the surroundings given.
    pub fn from_env_with(s: &str, env: &dyn EnvSource) -> Result<Config, Error> {
        let mut c = Config::default();
        if let Some(user) = env.os_user() {
            c.user = user;
        }
        for (var, word) in ENV_WORDS {
            if let Some(v) = env.var(var).filter(|v| !v.is_empty()) {
                c.set(word, &v).map_err(|e| match e {
                    // Name the variable, never echo its value (PGPASSWORD).
                    Error::Config(m) => Error::config(format!("environment variable {var}: {m}")),
                    e => e,
                })?;
            }
        }
        c.apply(s)?;
        let home = env.home();
        if c.passfile.is_none() {
            c.passfile = home.as_ref().map(|h| h.join(".pgpass").to_string_lossy().into_owned());
        }
        let default_file = |name: &str| {
            home.as_ref()
                .map(|h| h.join(".postgresql").join(name))
                .filter(|p| env.is_file(p))
                .map(|p| p.to_string_lossy().into_owned())
        };
        if c.ssl_root_cert.is_none() {
            c.ssl_root_cert = default_file("root.crt");
        }
        if c.ssl_cert.is_none() && c.ssl_key.is_none() {
            if let (Some(cert), Some(key)) = (default_file("postgresql.crt"), default_file("postgresql.key")) {
                c.ssl_cert = Some(cert);
                c.ssl_key = Some(key);
            }
        }
        c.endpoints()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Host, SslMode, TargetSessionAttrs};
    use std::collections::HashMap;

    struct Fake(HashMap<&'static str, &'static str>, Vec<&'static str>);

    impl EnvSource for Fake {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
        fn home(&self) -> Option<PathBuf> {
            Some("/home/ann".into())
        }
        fn os_user(&self) -> Option<String> {
            Some("ann".into())
        }
        fn is_file(&self, path: &std::path::Path) -> bool {
            self.1.iter().any(|f| path == std::path::Path::new(f))
        }
    }

    #[test]
    fn the_string_wins_over_the_environment_which_wins_over_defaults() {
        let env = Fake(
            [
                ("PGHOST", "envhost"),
                ("PGPORT", "6000"),
                ("PGDATABASE", "envdb"),
                ("PGSSLMODE", "require"),
                ("PGTARGETSESSIONATTRS", "read-write"),
                ("PGAPPNAME", "envapp"),
                ("PGCONNECT_TIMEOUT", "7"),
            ]
            .into(),
            vec![],
        );
        let c = Config::from_env_with("host=strhost dbname=strdb", &env).unwrap();
        assert_eq!(c.host, [Host::Tcp("strhost".into())]);
        assert_eq!(c.port, [6000]);
        assert_eq!(c.dbname.as_deref(), Some("strdb"));
        assert_eq!(c.user, "ann", "the OS user when none is named");
        assert_eq!(c.ssl_mode(), SslMode::Require);
        assert_eq!(c.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert_eq!(c.application_name.as_deref(), Some("envapp"));
        assert_eq!(c.connect_timeout, Some(std::time::Duration::from_secs(7)));
        assert_eq!(c.passfile.as_deref(), Some("/home/ann/.pgpass"));
        assert_eq!(c.ssl_root_cert, None, "no ~/.postgresql/root.crt here");
        let c = Config::from_env_with("postgres://bob@h/db", &env).unwrap();
        assert_eq!(c.user, "bob");
    }

    #[cfg(unix)]
    #[test]
    fn the_os_user_is_the_effective_users_name() {
        let id = std::process::Command::new("id").arg("-un").output().expect("id -un");
        let expected = String::from_utf8(id.stdout).unwrap().trim().to_string();
        assert_eq!(SystemEnv.os_user().as_deref(), Some(expected.as_str()));
        let c = Config::from_env_with("host=h", &SystemEnv).unwrap();
        if std::env::var_os("PGUSER").is_none() {
            assert_eq!(c.user, expected);
        }
    }

    #[test]
    fn bad_environment_values_name_the_variable_not_the_value() {
        let env = Fake([("PGPORT", "sixty")].into(), vec![]);
        let e = Config::from_env_with("", &env).unwrap_err().to_string();
        assert!(e.contains("PGPORT"), "{e}");
        let env = Fake([("PGPASSWORD", "hunter2"), ("PGSSLMODE", "nope")].into(), vec![]);
        let e = Config::from_env_with("", &env).unwrap_err().to_string();
        assert!(e.contains("PGSSLMODE") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn files_in_the_home_directory_are_used_when_present() {
        let env = Fake(
            [].into(),
            vec![
                "/home/ann/.postgresql/root.crt",
                "/home/ann/.postgresql/postgresql.crt",
                "/home/ann/.postgresql/postgresql.key",
            ],
        );
        let c = Config::from_env_with("sslmode=require", &env).unwrap();
        assert_eq!(c.ssl_root_cert.as_deref(), Some("/home/ann/.postgresql/root.crt"));
        assert_eq!(c.ssl_cert.as_deref(), Some("/home/ann/.postgresql/postgresql.crt"));
        let c = Config::from_env_with("sslrootcert=/etc/ca.pem passfile=/etc/pgpass", &env).unwrap();
        assert_eq!(c.ssl_root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(c.passfile.as_deref(), Some("/etc/pgpass"));
    }
}
