//! The `duet` binary end to end against the harness's server: a migration
//! written with `migrate new`, applied, listed, reverted; errors on stderr
//! with a failing exit status.

use std::path::Path;
use std::process::{Command, Output};

use duet_conformance::server::TestServer;

fn duet(dir: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("DATABASE_URL", url)
        .output()
        .expect("the duet binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn notes_exist(c: &mut duet_sync::Client) -> bool {
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'cli_test' AND tablename = 'notes')",
        &[],
    )
    .unwrap()
    .get(0)
}

#[test]
fn migrate_new_run_status_revert() {
    let server = TestServer::shared();
    let mut setup = duet_sync::Client::connect(&server.url()).unwrap();
    setup
        .batch_execute("DROP SCHEMA IF EXISTS cli_test CASCADE; CREATE SCHEMA cli_test")
        .unwrap();
    let base = server.url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3Dcli_test");
    let dir = std::env::temp_dir().join(format!("duet-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let out = duet(&dir, &url, &["migrate", "new", "create_notes"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    let (down, up) = (&files[0], &files[1]);
    assert!(up.to_string_lossy().ends_with("_create_notes.up.sql"), "{up:?}");
    std::fs::write(up, "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);").unwrap();
    std::fs::write(down, "DROP TABLE notes;").unwrap();

    let out = duet(&dir, &url, &["migrate", "status"]);
    assert!(out.status.success() && text(&out).contains("pending"), "{}", text(&out));
    let out = duet(&dir, &url, &["migrate", "run"]);
    assert!(
        out.status.success() && text(&out).contains("applied") && text(&out).contains("create_notes"),
        "{}",
        text(&out)
    );
    assert!(notes_exist(&mut setup));
    let out = duet(&dir, &url, &["migrate", "run"]);
    assert!(
        out.status.success() && text(&out).contains("nothing to apply"),
        "{}",
        text(&out)
    );

    // An applied file edited: refused, by version, with a failing status.
    std::fs::write(up, "CREATE TABLE notes (id serial PRIMARY KEY);").unwrap();
    let out = duet(&dir, &url, &["migrate", "run"]);
    assert!(
        !out.status.success() && text(&out).contains("has changed"),
        "{}",
        text(&out)
    );
    let out = duet(&dir, &url, &["migrate", "status"]);
    assert!(text(&out).contains("CHANGED"), "{}", text(&out));
    std::fs::write(up, "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);").unwrap();

    let out = duet(&dir, &url, &["migrate", "revert"]);
    assert!(
        out.status.success() && text(&out).contains("reverted"),
        "{}",
        text(&out)
    );
    assert!(!notes_exist(&mut setup));

    // A server that is not there: the connect error, a failing status.
    let out = duet(
        &dir,
        "postgres://nobody@127.0.0.1:1/none?connect_timeout=2",
        &["migrate", "run"],
    );
    assert!(
        !out.status.success() && text(&out).starts_with("duet: "),
        "{}",
        text(&out)
    );
    let out = duet(&dir, &url, &["migrate", "new", "bad name"]);
    assert!(
        !out.status.success() && text(&out).contains("letters, digits"),
        "{}",
        text(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
