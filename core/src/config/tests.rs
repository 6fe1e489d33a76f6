use super::*;

#[test]
fn url_forms() {
    let c = Config::parse(
        "postgresql://u%40x:p%3Aw@[::1]:7/d%20b?options=-c%20a%3Db&statement_cache_capacity=0&event_capacity=8",
    )
    .unwrap();
    assert_eq!(c.user, "u@x");
    assert_eq!(c.password.as_deref(), Some("p:w"));
    assert_eq!(c.host, [Host::Tcp("::1".into())]);
    assert_eq!(c.port, [7]);
    assert_eq!(c.dbname.as_deref(), Some("d b"));
    assert_eq!(c.options.as_deref(), Some("-c a=b"));
    assert_eq!(c.statement_cache_capacity, 0);
    assert_eq!(c.event_capacity, 8);
    let h = Config::parse("postgres://%2Ftmp%2Fsock/db").unwrap();
    assert_eq!(h.host, [Host::Unix("/tmp/sock".into())]);
}

#[test]
fn key_value_forms() {
    let c = Config::parse("host=h port = 99 password='it\\'s' connect_timeout=3").unwrap();
    assert_eq!(c.host, [Host::Tcp("h".into())]);
    assert_eq!(c.port, [99]);
    assert_eq!(c.password.as_deref(), Some("it's"));
    assert_eq!(c.connect_timeout, Some(Duration::from_secs(3)));
}

#[test]
fn errors_name_the_problem_and_hide_passwords() {
    let e = Config::parse("port=abc").unwrap_err().to_string();
    assert!(e.contains("port \"abc\""), "{e}");
    let e = Config::parse("mysql://u:secret@h/d").unwrap_err().to_string();
    assert!(!e.contains("secret"), "{e}");
    assert!(Config::parse("bogus=1").unwrap_err().to_string().contains("bogus"));
    assert!(Config::parse("host='x").is_err());
    assert!(Config::parse("sslmode=required")
        .unwrap_err()
        .to_string()
        .contains("verify-full"));
}

#[test]
fn debug_never_shows_the_password() {
    let c = Config::parse("postgres://app:hunter2@db.local:6432/shop").unwrap();
    let d = format!("{c:?}");
    assert!(!d.contains("hunter2"), "{d}");
    assert!(d.contains(r#"password: Some("<redacted>")"#), "{d}");
    assert!(
        d.contains(r#"user: "app""#) && d.contains("port: [6432]") && d.contains("shop"),
        "{d}"
    );
    let none = format!("{:?}", Config::parse("host=h").unwrap());
    assert!(none.contains("password: None"), "{none}");
}

#[test]
fn bad_escape_in_the_password_is_named_not_echoed() {
    let e = Config::parse("postgres://u:p%zzsecret@h/db").unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let e = e.to_string();
    assert!(!e.contains("secret") && !e.contains("zz"), "{e}");
    assert!(e.contains("percent-escape") && e.contains("password"), "{e}");
    let e = Config::parse("postgres://u:%C3secret@h/db").unwrap_err().to_string();
    assert!(!e.contains("secret") && e.contains("password"), "{e}");
    let e = Config::parse("postgres://u@h/db?password=p%zzsecret")
        .unwrap_err()
        .to_string();
    assert!(!e.contains("secret"), "{e}");
}

#[test]
fn reserved_characters_stay_in_the_password() {
    // Percent-encoded '/', '?', '@', ':'.
    let c = Config::parse("postgres://u:a%2Fb%3Fc%40d%3Ae@h:6000/db?application_name=x").unwrap();
    assert_eq!(c.password.as_deref(), Some("a/b?c@d:e"));
    assert_eq!(
        (c.host.clone(), c.port.clone()),
        (vec![Host::Tcp("h".into())], vec![6000])
    );
    assert_eq!(c.dbname.as_deref(), Some("db"));
    assert_eq!(c.application_name.as_deref(), Some("x"));
    // Unencoded '@' and '?' (the user info ends at the last '@').
    let c = Config::parse("postgres://u:p@ss?w@rd@h:6000/db?application_name=x").unwrap();
    assert_eq!(c.user, "u");
    assert_eq!(c.password.as_deref(), Some("p@ss?w@rd"));
    assert_eq!(
        (c.host.clone(), c.port.clone()),
        (vec![Host::Tcp("h".into())], vec![6000])
    );
    assert_eq!(c.dbname.as_deref(), Some("db"));
    assert_eq!(c.application_name.as_deref(), Some("x"));
    let c = Config::parse("postgres://u:p?x@h").unwrap();
    assert_eq!(
        (c.password.as_deref(), c.host),
        (Some("p?x"), vec![Host::Tcp("h".into())])
    );
    // A ':' in the password is its own: only the first separates the user.
    let c = Config::parse("postgres://u:a:b@h/db").unwrap();
    assert_eq!((c.user.as_str(), c.password.as_deref()), ("u", Some("a:b")));
    // '@' in option values after the path is fine.
    let c = Config::parse("postgres://h/db?application_name=me@home").unwrap();
    assert_eq!(c.application_name.as_deref(), Some("me@home"));
    assert_eq!(c.password, None);
}

#[test]
fn an_unencoded_slash_in_the_password_is_refused_without_echo() {
    for url in [
        "postgres://u:sec/ret@h/db",
        "postgres://u:12/secret@h/db",
        "postgres://u:p@s/secret@h/db",
    ] {
        let e = Config::parse(url).unwrap_err().to_string();
        assert!(!e.contains("sec") && !e.contains("ret"), "{url}: {e}");
        assert!(e.contains("%2F"), "{url}: {e}");
    }
    // A '/' then '?' then '@' cannot be told apart from a query; still
    // nothing of the password is quoted.
    let e = Config::parse("postgres://u:secret/x?y@h").unwrap_err().to_string();
    assert!(!e.contains("secret"), "{e}");
    let e = Config::parse("postgres://u:a/b?secret@h").unwrap_err().to_string();
    assert!(!e.contains("secret"), "{e}");
    let e = Config::parse("postgres://u:a/b?sec@ret@h/db").unwrap_err().to_string();
    assert!(!e.contains("sec") && !e.contains("ret"), "{e}");
    let e = Config::parse("postgres://u:se/cret?secret@h").unwrap_err().to_string();
    assert!(!e.contains("secret") && !e.contains("cret"), "{e}");
}

#[test]
fn connect_errors_name_the_target_and_keep_the_io_error() {
    use std::error::Error as _;
    let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    let target = |s: &str| match Config::parse(s).unwrap().endpoints().unwrap()[0].connect_error(refused()) {
        Error::Connect { target, source } => {
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
            target.to_string()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(target("host=127.0.0.1 port=5433"), "127.0.0.1:5433");
    assert_eq!(target("postgres://[::1]:7/db"), "[::1]:7");
    assert_eq!(target("host=/tmp port=5433"), "the Unix socket /tmp/.s.PGSQL.5433");
    let e = Config::parse("host=db.local port=6432").unwrap().endpoints().unwrap()[0].connect_error(refused());
    assert!(e.is_fatal());
    assert_eq!(e.to_string(), format!("cannot connect to db.local:6432: {}", refused()));
    let src = e
        .source()
        .expect("source")
        .downcast_ref::<std::io::Error>()
        .expect("io::Error");
    assert_eq!(src.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn host_lists_pair_up_as_in_libpq() {
    let names = |s: &str| -> Vec<String> {
        Config::parse(s)
            .unwrap()
            .endpoints()
            .unwrap()
            .iter()
            .map(|e| e.to_string())
            .collect()
    };
    assert_eq!(names("host=a,b port=7"), ["a:7", "b:7"]);
    assert_eq!(names("host=a,b port=7,8"), ["a:7", "b:8"]);
    assert_eq!(names("host=a,b port=7,"), ["a:7", "b:5432"]);
    assert_eq!(
        names("host=a,/tmp port=1,2"),
        ["a:1", "the Unix socket /tmp/.s.PGSQL.2"]
    );
    assert_eq!(names("hostaddr=127.0.0.1 port=9"), ["127.0.0.1:9"]);
    assert_eq!(
        names("host=db.test,db2.test hostaddr=127.0.0.1,::1"),
        ["db.test (127.0.0.1:5432)", "db2.test ([::1]:5432)"]
    );
    assert_eq!(names("postgres://a:1,[::1]:2,c/db"), ["a:1", "[::1]:2", "c:5432"]);
    assert_eq!(names("postgres://u@a,b:6/db"), ["a:5432", "b:6"]);
    assert_eq!(names(""), ["localhost:5432"]);
    let e = Config::parse("host=a,b,c port=1,2").unwrap_err().to_string();
    assert!(e.contains("2 ports for 3 hosts"), "{e}");
    let e = Config::parse("host=a,b hostaddr=127.0.0.1").unwrap_err().to_string();
    assert!(e.contains("2 hosts but 1 hostaddr"), "{e}");
    let e = Config::parse("hostaddr=db.local").unwrap_err().to_string();
    assert!(e.contains("numeric"), "{e}");
    assert!(Config::parse("port=0").is_err());
    assert!(Config::parse("postgres://a:99999/db").is_err());
}

#[test]
fn libpq_words_are_understood() {
    let c = Config::parse(
        "sslmode=verify-full sslrootcert=/ca.pem sslcert=/c.pem sslkey=/c.key sslnegotiation=direct \
         channel_binding=require target_session_attrs=prefer-standby load_balance_hosts=random \
         keepalives=0 keepalives_idle=30 keepalives_interval=5 keepalives_count=3 tcp_user_timeout=1500 \
         min_protocol_version=3.0 max_protocol_version=latest gssencmode=disable sslsni=0 \
         fallback_application_name=fb connect_timeout=1",
    )
    .unwrap();
    assert_eq!(c.ssl_mode(), SslMode::VerifyFull);
    assert_eq!(c.ssl_root_cert.as_deref(), Some("/ca.pem"));
    assert_eq!(
        (c.ssl_cert.as_deref(), c.ssl_key.as_deref()),
        (Some("/c.pem"), Some("/c.key"))
    );
    assert_eq!(c.ssl_negotiation, SslNegotiation::Direct);
    assert_eq!(c.channel_binding, ChannelBindingMode::Require);
    assert_eq!(c.target_session_attrs, TargetSessionAttrs::PreferStandby);
    assert_eq!(c.load_balance_hosts, LoadBalanceHosts::Random);
    assert!(!c.keepalives && !c.ssl_sni);
    assert_eq!(c.keepalives_idle, Some(Duration::from_secs(30)));
    assert_eq!(c.keepalives_interval, Some(Duration::from_secs(5)));
    assert_eq!(c.keepalives_count, Some(3));
    assert_eq!(c.tcp_user_timeout, Some(Duration::from_millis(1500)));
    assert_eq!(c.max_protocol_version(), ProtocolVersion::V3_2);
    assert_eq!(c.fallback_application_name.as_deref(), Some("fb"));
    // libpq's floor: a connect_timeout under 2 s is 2 s.
    assert_eq!(c.connect_timeout, Some(Duration::from_secs(2)));
    assert!(c.validate().is_ok());
    // Defaults are libpq's.
    let d = Config::default();
    assert_eq!(d.ssl_mode(), SslMode::Prefer);
    assert!(d.keepalives && d.ssl_sni);
    assert_eq!(d.channel_binding, ChannelBindingMode::Prefer);
}

#[test]
fn contradictions_are_refused_before_connecting() {
    let refused = |s: &str| Config::parse(s).unwrap().validate().unwrap_err().to_string();
    let e = refused("sslnegotiation=direct");
    assert!(e.contains("sslnegotiation=direct") && e.contains("prefer"), "{e}");
    let e = refused("sslrootcert=system sslmode=require");
    assert!(e.contains("verify-full"), "{e}");
    assert_eq!(
        Config::parse("sslrootcert=system").unwrap().ssl_mode(),
        SslMode::VerifyFull
    );
    let e = refused("channel_binding=require sslmode=disable");
    assert!(e.contains("channel_binding=require"), "{e}");
    let e = refused("min_protocol_version=3.2 max_protocol_version=3.0");
    assert!(e.contains("3.2") && e.contains("3.0"), "{e}");
    for bad in [
        "sslmode=verify",
        "target_session_attrs=master",
        "channel_binding=yes",
        "gssencmode=require",
        "max_protocol_version=3.1",
        "ssl_min_protocol_version=TLSv1.1",
        "sslcrl=/x",
    ] {
        assert!(matches!(Config::parse(bad), Err(Error::Config(_))), "{bad}");
    }
}

#[test]
fn narrowing_to_one_endpoint_keeps_everything_else() {
    let c = Config::parse("host=a,b port=1,2 target_session_attrs=read-write user=u sslmode=require").unwrap();
    let e = c.endpoints().unwrap();
    let one = c.for_endpoint(&e[1]);
    assert_eq!(one.endpoints().unwrap(), vec![e[1].clone()]);
    assert_eq!(one.target_session_attrs, TargetSessionAttrs::Any);
    assert_eq!((one.user.as_str(), one.ssl_mode()), ("u", SslMode::Require));
}
