//! Which CPUs the client and the server run on.
//!
//! Left to the scheduler on a 2-core VM, a client and its server backend
//! share a core part of the time and sit on different cores the rest: a
//! point select then takes either about 17 µs or about 58 µs (a cross-core
//! wake-up costs an inter-processor interrupt, dear under virtualisation),
//! and the median of such a mix moves from run to run by more than the
//! differences being measured. Pinning makes every sample one or the other.

use std::io;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Client on CPU 0, server on CPU 1: as in production, the two never
    /// compete for a core, and a pipeline's client and server work overlap.
    Split,
    /// Client and server on CPU 0: no cross-core wake-ups, so round trips
    /// are cheapest and client CPU weighs most in every ratio.
    Shared,
    /// No pinning.
    Free,
}

impl Placement {
    pub fn parse(s: &str) -> Option<Placement> {
        match s {
            "split" => Some(Placement::Split),
            "shared" => Some(Placement::Shared),
            "free" => Some(Placement::Free),
            _ => None,
        }
    }

    /// The default: `Split` where there are two CPUs to split.
    pub fn default_for_machine() -> Placement {
        match std::thread::available_parallelism() {
            Ok(n) if n.get() >= 2 => Placement::Split,
            _ => Placement::Free,
        }
    }

    /// Runs `start_server` with this process pinned where the server
    /// should run (it inherits the affinity), then pins this process where
    /// the clients run. Call before any other thread exists: affinity is
    /// per thread, and threads inherit their creator's.
    pub fn apply<T>(self, start_server: impl FnOnce() -> T) -> io::Result<T> {
        let (server_cpu, client_cpu) = match self {
            Placement::Split => (Some(1), Some(0)),
            Placement::Shared => (Some(0), Some(0)),
            Placement::Free => (None, None),
        };
        if let Some(cpu) = server_cpu {
            pin_to(cpu)?;
        }
        let started = start_server();
        if let Some(cpu) = client_cpu {
            pin_to(cpu)?;
        }
        Ok(started)
    }

    /// For the report's header.
    pub fn describe(self, own_server: bool) -> String {
        let server = |cpu: &str| {
            if own_server {
                format!("server on CPU {cpu}")
            } else {
                "server where DATABASE_URL runs it".to_string()
            }
        };
        match self {
            Placement::Split => format!("client pinned to CPU 0, {}", server("1")),
            Placement::Shared => format!("client pinned to CPU 0, {}", server("0")),
            Placement::Free => "client and server not pinned".to_string(),
        }
    }
}

fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data that CPU_ZERO/CPU_SET initialise, and
    // sched_setaffinity only reads it for the size given.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_free_pins_nothing() {
        assert_eq!(Placement::parse("split"), Some(Placement::Split));
        assert_eq!(Placement::parse("shared"), Some(Placement::Shared));
        assert_eq!(Placement::parse("free"), Some(Placement::Free));
        assert_eq!(Placement::parse("both"), None);
        assert_eq!(Placement::Free.apply(|| 7).unwrap(), 7);
    }
}
