//! The password file (`~/.pgpass`, `PGPASSFILE`), read as libpq reads it:
//! lines of `hostname:port:database:username:password`, `*` matching
//! anything, `\` escaping `:` and `\`, the first matching line winning; the
//! file ignored when its group or others may read it.

use std::path::Path;

/// What reading the password file gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passfile {
    /// There is no such file (the usual case): nothing to say.
    Missing,
    /// Read; the contents.
    Read(String),
    /// Present but not used; why (named in an authentication error that
    /// follows, so a user knows why their password was not sent).
    Ignored(String),
}

impl Passfile {
    /// Reads the file at `path`, checking its permissions as libpq does.
    pub fn load(path: &str) -> Passfile {
        let p = Path::new(path);
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(_) => return Passfile::Missing,
        };
        if !meta.is_file() {
            return Passfile::Ignored(format!("the password file {path} is not a plain file"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                return Passfile::Ignored(format!(
                    "the password file {path} was ignored: it has group or world access; permissions should be u=rw (0600) or less"
                ));
            }
        }
        match std::fs::read_to_string(p) {
            Ok(s) => Passfile::Read(s),
            Err(e) => Passfile::Ignored(format!("the password file {path} cannot be read: {e}")),
        }
    }
}

/// The password of the first line matching the session.
///
/// ```
/// use duet_core::config::passfile::find;
/// let file = "# comment\ndb.local:5432:*:app:s\\:cret\n*:*:*:*:fallback\n";
/// assert_eq!(find(file, "db.local", 5432, "shop", "app").as_deref(), Some("s:cret"));
/// assert_eq!(find(file, "other", 5432, "shop", "app").as_deref(), Some("fallback"));
/// ```
pub fn find(contents: &str, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    let wanted = [host, port.as_str(), dbname, user];
    contents.lines().find_map(|line| {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') || line.is_empty() {
            return None;
        }
        let fields = split_fields(line);
        if fields.len() < 5 {
            return None;
        }
        let matches = fields[..4]
            .iter()
            .zip(wanted)
            .all(|(field, want)| field == "*" || field == want);
        matches.then(|| fields[4..].join(":"))
    })
}

/// Splits on unescaped `:`, undoing `\:` and `\\`.
fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut().expect("never empty").push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("never empty").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_line_wins_with_wildcards_and_escapes() {
        let f = "a:1:d:u:one\n*:*:d:u:two\n*:*:*:*:three\nh\\:x:*:*:*:four\n";
        assert_eq!(find(f, "a", 1, "d", "u").as_deref(), Some("one"));
        assert_eq!(find(f, "b", 1, "d", "u").as_deref(), Some("two"));
        assert_eq!(find(f, "b", 1, "e", "u").as_deref(), Some("three"));
        assert_eq!(find("h\\:x:*:*:*:four\n", "h:x", 1, "d", "u").as_deref(), Some("four"));
        assert_eq!(
            find("a:1:d:u\n", "a", 1, "d", "u"),
            None,
            "a short line matches nothing"
        );
        assert_eq!(find("a:1:d:u:p\\\\w\r\n", "a", 1, "d", "u").as_deref(), Some("p\\w"));
        assert_eq!(find("a:1:d:u:p:w\n", "a", 1, "d", "u").as_deref(), Some("p:w"));
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_can_read_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("duet-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgpass");
        std::fs::write(&path, "*:*:*:*:pw\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let p = path.to_str().unwrap();
        assert!(matches!(Passfile::load(p), Passfile::Ignored(why) if why.contains("group or world")));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Passfile::load(p), Passfile::Read("*:*:*:*:pw\n".into()));
        assert_eq!(Passfile::load(dir.join("none").to_str().unwrap()), Passfile::Missing);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
