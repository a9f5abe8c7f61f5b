//! Process identity from `/proc`: boot id, pid and start time. A pid alone is
//! never trusted (pids are reused); a process is "the same" only if all three
//! match.

use opmas_domain::ProcessIdentity;

/// `/proc/sys/kernel/random/boot_id` of this node.
pub fn boot_id() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22).
pub fn start_time_ticks(pid: u32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad /proc/{pid}/stat"),
        )
    })
}

/// Field 22 of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces or parentheses: count from the last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // after ")" come fields 3.. ; field 22 is the 20th of them.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The identity of a live process on this node.
pub fn identify(pid: u32) -> std::io::Result<ProcessIdentity> {
    Ok(ProcessIdentity {
        pid,
        boot_id: boot_id()?,
        start_time_ticks: start_time_ticks(pid)?,
    })
}

/// Whether the process `identity` names is still running here (same boot,
/// same pid, same start time) and is not a zombie.
pub fn is_alive(identity: &ProcessIdentity) -> bool {
    let Ok(boot) = boot_id() else { return false };
    if boot != identity.boot_id {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", identity.pid)) else {
        return false;
    };
    let zombie = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X");
    !zombie && parse_start_time(&stat) == Some(identity.start_time_ticks)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn identifies_itself_and_rejects_a_changed_start_time() {
        let me = identify(std::process::id()).unwrap();
        assert!(is_alive(&me));
        let reused = ProcessIdentity {
            start_time_ticks: me.start_time_ticks + 1,
            ..me.clone()
        };
        assert!(
            !is_alive(&reused),
            "same pid, other start time: not the same process"
        );
        let other_boot = ProcessIdentity {
            boot_id: "another-boot".into(),
            ..me
        };
        assert!(!is_alive(&other_boot));
    }
}
