//! Signals to process groups, and waiting for processes we did not spawn.

use std::io;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Parses a spec's stop signal name (`SIGTERM`, `TERM`...).
pub fn parse(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse().ok()
}

/// Sends `signal` to every process of the group `pgid` (the agent, its
/// children and theirs, unless they left the group). A group that no longer
/// exists is not an error.
pub fn group(pgid: u32, signal: Signal) -> io::Result<()> {
    let Ok(raw) = i32::try_from(pgid) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pid out of range",
        ));
    };
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Waits until process `pid` exits, without polling (a pidfd; see
/// [`crate::spawn::pidfd_exit`]). Works for processes that are not our
/// children (adopted after a supervisor restart); their exit status is not
/// available to us.
pub async fn wait_exit(pid: u32) -> io::Result<()> {
    crate::spawn::pidfd_exit(pid).await
}
