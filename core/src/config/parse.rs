//! The two connection-string forms libpq users know:
//! `postgres://user:pass@host1:port1,host2:port2/db?opt=v` and
//! `host=… port=… dbname=…`. Each word lands in [`Config::set`], so both
//! forms (and the `PG*` environment) mean exactly the same thing.

use super::Config;
use crate::Error;

/// Never echo a password back in an error message: everything between
/// the scheme and the last '@' goes (a password may itself hold '@').
pub(super) fn redact(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(a), Some(b)) if a < b => format!("{}://***{}", &s[..a], &s[b..]),
        _ => s.to_string(),
    }
}

/// Applies a URL's parts (after `postgres://`) on top of `c`.
pub(super) fn parse_url(c: &mut Config, rest: &str) -> Result<(), Error> {
    // The user info ends at the last '@' before the first '/': like libpq, a
    // '?' (and here also an '@') may appear unencoded in a password, since
    // neither can appear in a host name. A '/' there must be percent-encoded.
    let head = &rest[..rest.find('/').unwrap_or(rest.len())];
    if let Some((_, after_slash)) = rest.split_once('/') {
        if after_slash.split('?').next().is_some_and(|path| path.contains('@')) {
            // Most likely `user:pa/ss@host`: the password would land in the
            // host, port and database name. Refuse without echoing any of it.
            return Err(Error::config(
                "the URL has an '@' after its first '/': a '/' in the user name or password must be \
                 percent-encoded as %2F (and an '@' in the database name as %40)",
            ));
        }
    }
    let (userinfo, after) = match head.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (before_query, query) = match after.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (after, None),
    };
    let (hostports, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    if let Some(u) = userinfo {
        let (user, pass) = match u.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (u, None),
        };
        if !user.is_empty() {
            c.user = percent_decode(user, "user name")?;
        }
        if let Some(p) = pass {
            c.password = Some(percent_decode(p, "password")?);
        }
    }
    if !hostports.is_empty() {
        // `host1:port1,host2:port2`: the lists go through the same words as
        // `host=h1,h2 port=p1,p2`, so an entry without a port gets the default.
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for hostport in hostports.split(',') {
            let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| Error::config("unterminated [ in IPv6 host"))?;
                (h.to_string(), after.strip_prefix(':'))
            } else {
                match hostport.rsplit_once(':') {
                    Some((h, p)) => (percent_decode(h, "host")?, Some(p)),
                    None => (percent_decode(hostport, "host")?, None),
                }
            };
            if host.contains(',') {
                return Err(Error::config("a host name in the URL holds a ','"));
            }
            if let Some(p) = port {
                // Not quoted: with a mistyped URL this text can be a password.
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| Error::config("the URL's port is not a number from 1 to 65535"))?;
            }
            hosts.push(host);
            ports.push(port.unwrap_or("").to_string());
        }
        if hosts.iter().any(|h| !h.is_empty()) {
            c.set("host", &hosts.join(","))?;
        }
        if ports.iter().any(|p| !p.is_empty()) {
            c.set("port", &ports.join(","))?;
        }
    }
    if let Some(p) = path {
        if !p.is_empty() {
            c.dbname = Some(percent_decode(p, "database name")?);
        }
    }
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Error::config("an option after the URL's '?' has no '=' (write name=value)"))?;
            let k = percent_decode(k, "URL option name")?;
            let v = percent_decode(v, &format!("value of URL option {k:?}"))?;
            c.set(&k, &v)?;
        }
    }
    Ok(())
}

/// Decodes `%XX` escapes. `what` names the part in errors, which never
/// quote the password (or any other part, so the message is the same for
/// all of them).
fn percent_decode(s: &str, what: &str) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::config(format!(
                        "bad percent-escape in the URL's {what}: '%' must be followed by two hex digits"
                    ))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::config(format!("the URL's {what} is not UTF-8 after percent-decoding")))
}

/// Applies `key=value` words on top of `c`.
pub(super) fn parse_key_values(c: &mut Config, s: &str) -> Result<(), Error> {
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&ch) = chars.peek() {
            if ch == '=' || ch.is_whitespace() {
                break;
            }
            key.push(ch);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(Error::config(format!("option {key:?} has no '=' and value")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(e) => value.push(e),
                        None => return Err(Error::config("dangling backslash in quoted value")),
                    },
                    Some('\'') => break,
                    Some(ch) => value.push(ch),
                    None => return Err(Error::config(format!("unterminated quote in value of {key:?}"))),
                }
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                chars.next();
                if ch == '\\' {
                    if let Some(e) = chars.next() {
                        value.push(e);
                    }
                } else {
                    value.push(ch);
                }
            }
        }
        c.set(&key, &value)?;
    }
    Ok(())
}
