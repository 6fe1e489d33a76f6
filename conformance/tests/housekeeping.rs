//! Housekeeping: secrets stay out of `Debug` output, and a connection that
//! cannot be opened says where it tried in plain words. Generic tests run
//! against both drivers (`name::sync`, `name::tokio`) on the harness's
//! PostgreSQL.

use std::error::Error as _;
use std::net::TcpListener;

use duet_conformance::server::{AuthRole, TestServer};
use duet_conformance::{conformance_tests, Driver};
use duet_core::{CancelRequest, Error};

fn server() -> &'static TestServer {
    TestServer::shared()
}

/// A URL with a password in it when the server has the password roles
/// (so the token's `Config` holds one), else the superuser URL.
fn url_with_password() -> (String, Option<&'static str>) {
    let s = server();
    if s.auth_roles_available() {
        (s.url_for(AuthRole::Scram), AuthRole::Scram.password())
    } else {
        (s.url(), None)
    }
}

/// The token's `Debug` shows neither the backend's secret key nor the
/// password, but still says which backend it is for.
fn assert_token_debug_redacted(debug: &str, request: CancelRequest, password: Option<&str>) {
    let key = request.secret_key.as_bytes();
    let mut shown = vec![
        format!("{key:?}"),
        key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    ];
    if let Ok(four) = <[u8; 4]>::try_from(key) {
        shown.push(i32::from_be_bytes(four).to_string());
    }
    for form in shown {
        assert!(!debug.contains(&form), "secret key shown as {form}: {debug}");
    }
    assert!(
        debug.contains(&format!("process_id: {}", request.process_id)),
        "{debug}"
    );
    assert!(debug.contains(r#"secret_key: "<redacted>""#), "{debug}");
    if let Some(pw) = password {
        assert!(!debug.contains(pw), "password shown: {debug}");
        assert!(debug.contains(r#"password: Some("<redacted>")"#), "{debug}");
    }
}

#[test]
fn sync_cancel_token_debug_hides_secrets() {
    let (url, password) = url_with_password();
    let client = duet_sync::Client::connect(&url).unwrap_or_else(|e| panic!("connect: {e}"));
    let request = client.connection().cancel_token().expect("BackendKeyData");
    let token = client.cancel_token().expect("cancel token");
    assert_token_debug_redacted(&format!("{token:?}"), request, password);
    client.close().unwrap();
}

#[test]
fn tokio_cancel_token_debug_hides_secrets() {
    let (url, password) = url_with_password();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = duet_async::Client::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let request = client.connection().cancel_token().expect("BackendKeyData");
        let token = client.cancel_token().expect("cancel token");
        assert_token_debug_redacted(&format!("{token:?}"), request, password);
        client.close().await.unwrap();
    });
}

conformance_tests!(
    connect_to_a_closed_port_is_error_connect,
    connect_to_a_missing_unix_socket_names_it,
);

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn connect_to_a_closed_port_is_error_connect<D: Driver>() {
    let port = closed_port();
    let url = format!("host=127.0.0.1 port={port} local_socket=disable connect_timeout=30");
    let Err(err) = D::connect(&url) else {
        panic!("{}: connected to a closed port {port}", D::NAME);
    };
    let Error::Connect { target, source } = &err else {
        panic!("{}: expected Error::Connect, got {err:?}", D::NAME);
    };
    assert_eq!(&**target, format!("127.0.0.1:{port}"));
    assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let text = err.to_string();
    assert_eq!(text, format!("cannot connect to 127.0.0.1:{port}: {source}"));
    assert!(!text.contains("Tcp("), "{text}");
    assert!(err.is_fatal());
    let io = err
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("source() is the io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
}

fn connect_to_a_missing_unix_socket_names_it<D: Driver>() {
    let dir = std::env::temp_dir().join(format!("duet-no-such-dir-{}", std::process::id()));
    let url = format!("host={} port=5999", dir.display());
    let Err(err) = D::connect(&url) else {
        panic!("{}: connected to a missing socket", D::NAME);
    };
    let path = format!("{}/.s.PGSQL.5999", dir.display());
    let Error::Connect { target, source } = &err else {
        panic!("{}: expected Error::Connect, got {err:?}", D::NAME);
    };
    assert_eq!(&**target, format!("the Unix socket {path}"));
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{err}");
    assert_eq!(
        err.to_string(),
        format!("cannot connect to the Unix socket {path}: {source}")
    );
    assert!(err.source().is_some_and(|s| s.is::<std::io::Error>()));
}

// ---- the README ----

const README: &str = include_str!("../../README.md");

/// The README's `after_save` example queues the welcome post only for a new
/// user, and the README points at nothing outside the repository.
#[test]
fn readme_welcome_post_only_on_insert_and_no_outside_links() {
    let start = README
        .find("fn after_save")
        .expect("the README has an after_save example");
    let body = &README[start..start + README[start..].find("\n    }\n").expect("end of after_save")];
    let guard = body
        .find("if ctx.inserting()")
        .unwrap_or_else(|| panic!("unguarded:\n{body}"));
    assert!(body.find("ctx.queue(").is_some_and(|q| q > guard), "{body}");
    for outside in ["../shared", "DESIGN.md", "](../", "`../"] {
        assert!(
            !README.contains(outside),
            "README refers outside the repository: {outside}"
        );
    }
    assert!(README.contains("](ARCHITECTURE.md)"));
    assert!(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../ARCHITECTURE.md")).is_file());
}

/// The README's models and hook, run: a save that inserts queues one
/// welcome post, a save that updates queues none.
mod readme {
    use duet_core::orm::prelude::*;
    use duet_core::orm::{HookCtx, Hooks};
    use duet_core::Error;

    #[derive(Model, Debug)]
    #[duet(hooks)]
    pub struct User {
        #[duet(primary_key, auto)]
        pub id: i32,
        #[duet(unique)]
        pub email: String,
        pub name: String,
    }

    #[derive(Model, Debug)]
    pub struct Post {
        #[duet(primary_key, auto)]
        pub id: i32,
        #[duet(references = User, on_delete = "cascade")]
        pub user_id: i32,
        pub title: String,
    }

    impl Hooks for User {
        fn after_save(&mut self, ctx: &mut HookCtx) -> Result<(), Error> {
            // As in the README.
            if ctx.inserting() {
                ctx.queue(
                    Post {
                        id: 0,
                        user_id: self.id,
                        title: "welcome".into(),
                    }
                    .into_save(),
                );
            }
            Ok(())
        }
    }
}

conformance_tests!(readme_hook_welcomes_new_users_once);

fn readme_hook_welcomes_new_users_once<D: Driver>() {
    use duet_core::orm::prelude::*;
    use readme::{Post, User};
    let mut c = D::connect(&server().url()).unwrap_or_else(|e| panic!("{}: connect: {e}", D::NAME));
    let schema = format!("housekeeping_readme_{}", D::NAME);
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path TO {schema}"
    ))
    .unwrap();
    c.run(pipeline((User::create_table(), Post::create_table()))).unwrap();
    let mut ada = User {
        id: 0,
        email: "ada@example.com".into(),
        name: "Ada".into(),
    };
    c.run(ada.save()).unwrap();
    assert!(ada.id > 0);
    ada.name = "Ada L.".into();
    c.run(ada.save()).unwrap();
    c.run(ada.save()).unwrap();
    let posts: Vec<Post> = c.run(Post::objects().all()).unwrap();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!((posts[0].user_id, posts[0].title.as_str()), (ada.id, "welcome"));
    c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).unwrap();
}
