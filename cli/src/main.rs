//! `duet`: the command line for duet's migrations. It connects as libpq
//! does (`--database-url`, else `DATABASE_URL`, else the `PG*` variables
//! and the password file) through the blocking driver, and runs the same
//! operations an application runs (`duet_core::migrate`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use duet_sync::migrate::{Migrations, State};
use duet_sync::{Client, Error};

#[derive(Parser)]
#[command(name = "duet", version, about = "duet's command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrations: SQL files applied in order, once, recorded in the database.
    Migrate {
        #[command(subcommand)]
        action: Migrate,
        /// The folder of migration files.
        #[arg(long, global = true, default_value = "migrations")]
        dir: PathBuf,
        /// A `postgres://` URL or libpq `key=value` words (else the `PG*`
        /// environment, as libpq).
        #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("duet: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    let Command::Migrate {
        action,
        dir,
        database_url,
    } = cli.command;
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
            let applied = client.run(migrations.run())?;
            report(&migrations, &applied, "applied", "nothing to apply");
            Ok(())
        }
        Migrate::Revert { steps } => {
            let (migrations, mut client) = open()?;
            let reverted = client.run(migrations.revert(steps))?;
            report(&migrations, &reverted, "reverted", "nothing to revert");
            Ok(())
        }
        Migrate::Status => {
            let (migrations, mut client) = open()?;
            for (version, name, state) in client.run(migrations.status())? {
                let state = match state {
                    State::Applied => "applied",
                    State::Pending => "pending",
                    State::Changed => "CHANGED since applied",
                    State::Unfinished => "UNFINISHED (failed part way)",
                    State::Missing => "applied, file MISSING",
                };
                println!("{version:>14}  {name:<40} {state}");
            }
            Ok(())
        }
    }
}

fn report(migrations: &Migrations, versions: &[i64], done: &str, nothing: &str) {
    if versions.is_empty() {
        println!("{nothing}");
    }
    for v in versions {
        let name = migrations
            .list()
            .iter()
            .find(|m| m.version == *v)
            .map_or("", |m| m.name.as_str());
        println!("{done} {v} {name}");
    }
}

fn new_migration(dir: &Path, name: &str, down: bool) -> Result<(), Error> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::invalid(format!(
            "a migration name is letters, digits and underscores, not {name:?}"
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::invalid(format!("{}: {e}", dir.display())))?;
    let version = chrono::Utc::now().format("%Y%m%d%H%M%S");
    let mut files = vec![(format!("{version}_{name}.up.sql"), format!("-- {name}\n"))];
    if down {
        files.push((format!("{version}_{name}.down.sql"), format!("-- undo {name}\n")));
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
