//! The `duet` binary end to end against the harness's server: a migration
//! written with `migrate new`, applied, listed, reverted; errors on stderr
//! with a failing exit status.

use std::path::Path;
use std::process::{Command, Output};

use duet_conformance::server::TestServer;
use duet_sync::prelude::*;

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

/// A fresh schema, a URL whose sessions use it, and an empty folder.
fn place(schema: &str) -> (duet_sync::Client, String, std::path::PathBuf) {
    let server = TestServer::shared();
    let mut setup = duet_sync::Client::connect(&server.url()).unwrap();
    setup
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .unwrap();
    let base = server.url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
    let dir = std::env::temp_dir().join(format!("duet-{schema}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    (setup, url, dir)
}

#[test]
fn migrate_new_run_status_revert() {
    let (mut setup, url, dir) = place("cli_test");

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

mod first {
    use super::*;
    #[derive(Model)]
    #[duet(table = "notes")]
    pub struct Note {
        #[duet(primary_key, auto)]
        pub id: i64,
        pub body: String,
    }
}

mod second {
    use super::*;
    #[derive(Model)]
    #[duet(table = "notes")]
    pub struct Note {
        #[duet(primary_key, auto)]
        pub id: i64,
        pub text: String,
        #[duet(default = "now()")]
        pub written: chrono::DateTime<chrono::Utc>,
    }
}

/// The command line of an application that hands over its models
/// (`duet_cli::main(&[…])` in its own binary), run in this process.
fn app(dir: &Path, url: &str, models: &[&'static duet_sync::orm::ModelMeta], args: &[&str]) -> Result<(), Error> {
    let mut argv: Vec<String> = vec!["duet".into()];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv.extend([
        "--dir".into(),
        dir.display().to_string(),
        "--database-url".into(),
        url.into(),
    ]);
    duet_cli::run(argv, models)
}

fn sql_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn makemigrations_from_models_then_migrate_run() {
    let (mut setup, url, dir) = place("cli_make");

    // The plain binary has no models: it says what to do instead.
    let out = duet(&dir, &url, &["makemigrations"]);
    assert!(
        !out.status.success() && text(&out).contains("src/bin/duet.rs"),
        "{}",
        text(&out)
    );

    let v1 = [first::Note::META];
    app(&dir, &url, &v1, &["makemigrations", "--name", "notes", "--no-input"]).unwrap();
    let files = sql_files(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let up = std::fs::read_to_string(&files[1]).unwrap();
    assert!(files[1].to_string_lossy().ends_with("_notes.up.sql"), "{files:?}");
    assert!(up.contains("CREATE TABLE \"notes\""), "{up}");
    // Pending files first: a draft now would repeat them.
    let e = app(&dir, &url, &v1, &["makemigrations", "--no-input"]).unwrap_err();
    assert!(e.to_string().contains("run `duet migrate run` first"), "{e}");
    let out = duet(&dir, &url, &["migrate", "run"]);
    assert!(out.status.success() && text(&out).contains("applied"), "{}", text(&out));
    setup
        .batch_execute("INSERT INTO cli_make.notes (body) VALUES ('kept')")
        .unwrap();
    // Nothing changed: nothing written.
    app(&dir, &url, &v1, &["makemigrations", "--no-input"]).unwrap();
    assert_eq!(sql_files(&dir).len(), 2);

    // body → text: asked, never guessed; answered on the command line.
    let v2 = [second::Note::META];
    let e = app(&dir, &url, &v2, &["makemigrations", "--no-input"]).unwrap_err();
    assert!(
        e.to_string().contains("column notes.body renamed to notes.text?") && e.to_string().contains("--rename"),
        "{e}"
    );
    let bad = app(&dir, &url, &v2, &["makemigrations", "--rename", "body"]).unwrap_err();
    assert!(bad.to_string().contains("OLD=NEW"), "{bad}");
    // A rename that matches nothing is refused, not quietly a drop and an add.
    let bad = app(
        &dir,
        &url,
        &v2,
        &["makemigrations", "--no-renames", "--rename", "notes.bodY=text"],
    )
    .unwrap_err();
    assert!(bad.to_string().contains("match nothing"), "{bad}");
    assert_eq!(sql_files(&dir).len(), 2, "nothing written");
    app(
        &dir,
        &url,
        &v2,
        &[
            "makemigrations",
            "--name",
            "rename_body",
            "--rename",
            "notes.body=text",
            "--no-input",
        ],
    )
    .unwrap();
    let files = sql_files(&dir);
    assert_eq!(files.len(), 4, "{files:?}");
    let out = duet(&dir, &url, &["migrate", "run"]);
    assert!(
        out.status.success() && text(&out).contains("rename_body"),
        "{}",
        text(&out)
    );
    let row = setup.query_one("SELECT text FROM cli_make.notes", &[]).unwrap();
    assert_eq!(row.get::<&str>(0), "kept");
    app(&dir, &url, &v2, &["makemigrations", "--no-input"]).unwrap();
    assert_eq!(sql_files(&dir).len(), 4, "the models and the database agree");

    // And back: the down file the draft wrote.
    let out = duet(&dir, &url, &["migrate", "revert"]);
    assert!(out.status.success(), "{}", text(&out));
    let row = setup.query_one("SELECT body FROM cli_make.notes", &[]).unwrap();
    assert_eq!(row.get::<&str>(0), "kept");
    std::fs::remove_dir_all(&dir).unwrap();
}
