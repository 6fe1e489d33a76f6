//! `duet`: the command line for duet's migrations. It connects as libpq
//! does (`--database-url`, else `DATABASE_URL`, else the `PG*` variables
//! and the password file) through the blocking driver, and runs the same
//! operations an application runs (`duet_core::migrate`).
//!
//! `duet makemigrations` compares the application's models with the
//! database, so it needs the models: an application adds a binary of its
//! own that hands them over, and runs that instead of the plain `duet`:
//!
//! ```no_run
//! // src/bin/duet.rs
//! use duet_sync::prelude::*;
//!
//! #[derive(Model)]
//! struct Note {
//!     #[duet(primary_key, auto)]
//!     id: i64,
//!     body: String,
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     duet_cli::main(&[Note::META])
//! }
//! ```
//!
//! `cargo run --bin duet -- makemigrations --name notes`, then
//! `cargo run --bin duet -- migrate run`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use duet_sync::migrate::{draft, live_and_models, Draft, Migrations, Rename, State, VERSION_TABLE};
use duet_sync::orm::ModelMeta;
use duet_sync::{Client, Error};

#[derive(Parser)]
#[command(name = "duet", version, about = "duet's command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Place {
    /// The folder of migration files.
    #[arg(long, global = true, default_value = "migrations")]
    dir: PathBuf,
    /// A `postgres://` URL or libpq `key=value` words (else the `PG*`
    /// environment, as libpq).
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Migrations: SQL files applied in order, once, recorded in the database.
    Migrate {
        #[command(subcommand)]
        action: Migrate,
        #[command(flatten)]
        place: Place,
    },
    /// Writes the migration that takes the database's schema to the
    /// models' (and its down file): tables, columns, types, nullability,
    /// defaults, keys, unique constraints, foreign keys, indexes, enums.
    Makemigrations {
        /// The migration's name.
        #[arg(long, default_value = "auto")]
        name: String,
        /// A rename, answered ahead: `OLD=NEW` for a table,
        /// `TABLE.OLD=NEW` for a column, TABLE being the table's name in
        /// the models (repeatable).
        #[arg(long = "rename", value_name = "FROM=TO")]
        renames: Vec<String>,
        /// Answer every rename question no: what is gone is dropped, what
        /// is new is created.
        #[arg(long)]
        no_renames: bool,
        /// Never ask (scripts, CI): a rename question left unanswered by
        /// --rename or --no-renames is an error. Also the case without a
        /// terminal.
        #[arg(long)]
        no_input: bool,
        /// A table the models do not declare that must not be dropped (repeatable).
        #[arg(long = "ignore-table", value_name = "TABLE")]
        ignore_tables: Vec<String>,
        /// Prints the migration instead of writing files.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        place: Place,
    },
}

#[derive(Subcommand)]
enum Migrate {
    /// Writes `<timestamp>_<name>.up.sql` and `.down.sql` to fill in.
    New {
        name: String,
        /// Only an up file (the migration cannot be reverted).
        #[arg(long)]
        no_down: bool,
    },
    /// Applies every pending migration.
    Run,
    /// Reverts the last applied migrations with their down files.
    Revert {
        #[arg(long, default_value_t = 1)]
        steps: usize,
    },
    /// Lists every migration and where it stands.
    Status,
}

/// The command line over these models (none for the plain `duet`
/// binary): parses the process's arguments, runs, reports errors on
/// standard error.
pub fn main(models: &[&'static ModelMeta]) -> ExitCode {
    match run(std::env::args_os(), models) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("duet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// [`main`] with the arguments given (the first is the program's name).
pub fn run<I, T>(args: I, models: &[&'static ModelMeta]) -> Result<(), Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => return Err(Error::invalid(e.to_string().trim_end().to_string())),
        Err(e) => {
            // --help, --version
            print!("{e}");
            return Ok(());
        }
    };
    let (action, Place { dir, database_url }) = match cli.command {
        Command::Migrate { action, place } => (action, place),
        Command::Makemigrations {
            name,
            renames,
            no_renames,
            no_input,
            ignore_tables,
            dry_run,
            place,
        } => {
            let answers = parse_renames(&renames)?;
            let options = MakeOptions {
                name,
                answers,
                no_renames,
                interactive: !no_input && std::io::stdin().is_terminal(),
                ignore_tables,
                dry_run,
            };
            return make_migrations(&place, models, options);
        }
    };
    // The folder read and the database connected, for the actions that use them.
    let open = || -> Result<(Migrations, Client), Error> {
        let migrations = Migrations::from_dir(&dir)?;
        let client = Client::connect(database_url.as_deref().unwrap_or(""))?;
        Ok((migrations, client))
    };
    match action {
        Migrate::New { name, no_down } => new_migration(&dir, &name, !no_down),
        Migrate::Run => {
            let (migrations, mut client) = open()?;
            one_at_a_time(
                &mut client,
                &migrations,
                usize::MAX,
                |m| m.run_next(1),
                "applied",
                "nothing to apply",
            )
        }
        Migrate::Revert { steps } => {
            let (migrations, mut client) = open()?;
            one_at_a_time(
                &mut client,
                &migrations,
                steps,
                |m| m.revert(1),
                "reverted",
                "nothing to revert",
            )
        }
        Migrate::Status => {
            let (migrations, mut client) = open()?;
            for (version, name, state) in client.run(migrations.status())? {
                println!("{version:>14}  {name:<40} {}", describe(&state));
            }
            Ok(())
        }
    }
}

/// Runs `step` (one migration, under the lock) up to `limit` times, saying
/// each as it ends with its time, so a long run shows where it stands.
fn one_at_a_time(
    client: &mut Client,
    migrations: &Migrations,
    limit: usize,
    step: impl Fn(&Migrations) -> duet_sync::ops::BoxOp<'static, Vec<i64>>,
    done: &str,
    nothing: &str,
) -> Result<(), Error> {
    let mut any = false;
    for _ in 0..limit {
        let started = std::time::Instant::now();
        let versions = client.run(step(migrations))?;
        if versions.is_empty() {
            break;
        }
        any = true;
        for v in versions {
            let name = migrations
                .list()
                .iter()
                .find(|m| m.version == v)
                .map_or("", |m| m.name.as_str());
            println!("{done} {v} {name} ({:.2} s)", started.elapsed().as_secs_f64());
        }
    }
    if !any {
        println!("{nothing}");
    }
    Ok(())
}

fn new_migration(dir: &Path, name: &str, down: bool) -> Result<(), Error> {
    let down = down.then(|| format!("-- undo {name}\n"));
    write_migration(dir, name, format!("-- {name}\n"), down)
}

/// Writes `<version>_<name>.up.sql` (and `.down.sql`), the version being
/// the time in UTC, one second later than the newest file's if that is
/// not later already (two migrations made in the same second keep order).
fn write_migration(dir: &Path, name: &str, up: String, down: Option<String>) -> Result<(), Error> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::invalid(format!(
            "a migration name is letters, digits and underscores, not {name:?}"
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::invalid(format!("{}: {e}", dir.display())))?;
    let now: i64 = chrono::Utc::now()
        .format("%Y%m%d%H%M%S")
        .to_string()
        .parse()
        .expect("digits");
    let newest = Migrations::from_dir(dir)?.list().iter().map(|m| m.version).max();
    let version = match newest {
        Some(v) if v >= now => v + 1,
        _ => now,
    };
    let mut files = vec![(format!("{version}_{name}.up.sql"), up)];
    if let Some(down) = down {
        files.push((format!("{version}_{name}.down.sql"), down));
    }
    for (file, text) in files {
        let path = dir.join(&file);
        if path.exists() {
            return Err(Error::invalid(format!("{} exists already", path.display())));
        }
        std::fs::write(&path, text).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        println!("created {}", path.display());
    }
    Ok(())
}

struct MakeOptions {
    name: String,
    answers: Vec<(Rename, bool)>,
    no_renames: bool,
    interactive: bool,
    ignore_tables: Vec<String>,
    dry_run: bool,
}

/// `OLD=NEW` (a table) or `TABLE.OLD=NEW` (a column), each a yes.
fn parse_renames(words: &[String]) -> Result<Vec<(Rename, bool)>, Error> {
    let mut out = Vec::new();
    for w in words {
        let bad = || Error::invalid(format!("--rename takes OLD=NEW or TABLE.OLD=NEW, not {w:?}"));
        let (from, to) = w.split_once('=').ok_or_else(bad)?;
        let rename = match from.split_once('.') {
            Some((table, from)) => Rename::Column {
                table: table.into(),
                from: from.into(),
                to: to.into(),
            },
            None => Rename::Table {
                from: from.into(),
                to: to.into(),
            },
        };
        if from.is_empty() || to.is_empty() || to.contains('.') {
            return Err(bad());
        }
        out.push((rename, true));
    }
    Ok(out)
}

fn make_migrations(place: &Place, models: &[&'static ModelMeta], mut o: MakeOptions) -> Result<(), Error> {
    if models.is_empty() {
        return Err(Error::invalid(
            "makemigrations compares the application's models with the database, and this binary has no \
             models: add a binary to the application (src/bin/duet.rs) whose main is \
             `duet_cli::main(&[User::META, Post::META])`, and run `cargo run --bin duet -- makemigrations`",
        ));
    }
    let migrations = Migrations::from_dir(&place.dir).or_else(|e| {
        if place.dir.exists() {
            Err(e)
        } else {
            Migrations::from_files(Vec::<(String, String)>::new())
        }
    })?;
    let mut client = Client::connect(place.database_url.as_deref().unwrap_or(""))?;
    // The database must be where the files lead, or the new migration
    // would repeat the pending ones.
    for (version, name, state) in client.run(migrations.status())? {
        if state != State::Applied {
            return Err(Error::invalid(format!(
                "migration {version} {name} is {}: makemigrations compares the models with a database that \
                 has every migration applied (run `duet migrate run` first)",
                describe(&state)
            )));
        }
    }
    o.ignore_tables.push(VERSION_TABLE.to_string());
    let (live, models) = client.run(live_and_models(models, o.ignore_tables.clone()))?;
    let draft: Draft = loop {
        match draft(&live, &models, &o.answers) {
            Ok(d) => break d,
            Err(questions) if o.no_renames => o.answers.extend(questions.into_iter().map(|q| (q, false))),
            Err(questions) if o.interactive => {
                for q in questions {
                    let yes = ask(&format!("Was {q}? [y/N] "))?;
                    o.answers.push((q, yes));
                }
            }
            Err(questions) => {
                let list: Vec<String> = questions.iter().map(|q| format!("  {q}?")).collect();
                return Err(Error::invalid(format!(
                    "makemigrations cannot tell a rename from a drop and a create, and may not ask:\n{}\nanswer with --rename OLD=NEW / --rename TABLE.OLD=NEW, or --no-renames",
                    list.join("\n")
                )));
            }
        }
    };
    if !draft.unmatched.is_empty() {
        let list: Vec<String> = draft.unmatched.iter().map(|r| format!("  {r}")).collect();
        return Err(Error::invalid(format!(
            "these renames match nothing the models changed (a column's TABLE is the table's new name; a \
             column whose type changes too is not a rename: rename it in one migration, change it in the \
             next):\n{}",
            list.join("\n")
        )));
    }
    if draft.empty {
        println!("no changes: the database matches the models");
        return Ok(());
    }
    let header = format!(
        "-- {}: written by duet makemigrations from the models {}\n",
        o.name,
        models_list(&models)
    );
    let up = format!("{header}{}", draft.up);
    let down = format!("-- undo {}: written by duet makemigrations\n{}", o.name, draft.down);
    for d in &draft.destructive {
        eprintln!("duet: destructive: {d}");
    }
    if o.dry_run {
        println!("{up}\n-- down\n{down}");
        return Ok(());
    }
    write_migration(&place.dir, &o.name, up, Some(down))?;
    if !draft.destructive.is_empty() {
        eprintln!("duet: read the destructive steps (marked -- duet:destructive) before you apply it");
    }
    Ok(())
}

fn models_list(schema: &duet_sync::migrate::Schema) -> String {
    schema.tables.keys().cloned().collect::<Vec<_>>().join(", ")
}

fn ask(question: &str) -> Result<bool, Error> {
    print!("{question}");
    std::io::stdout().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::invalid(format!("reading the answer: {e}")))?;
    Ok(matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

fn describe(state: &State) -> &'static str {
    match state {
        State::Applied => "applied",
        State::Pending => "pending",
        State::Changed => "CHANGED since applied",
        State::Unfinished => "UNFINISHED (failed part way)",
        State::Missing => "applied, file MISSING",
    }
}
