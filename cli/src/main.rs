//! The plain `duet` binary: migrations without an application's models
//! (`makemigrations` needs them; see the crate's documentation).

fn main() -> std::process::ExitCode {
    duet_cli::main(&[])
}
