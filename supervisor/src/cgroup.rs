//! A cgroup v2 per agent, where the node has a writable cgroup v2 hierarchy.
//!
//! Each agent runs in `<root>/<agent_id>`: its process joins the group in the
//! forked child before `exec` (see [`crate::spawn`]), so everything it starts
//! is inside, including descendants that leave its session or process group.
//! Where the controllers are available, the spec's limits are written as
//! `memory.max` (memory_bytes), `cpu.max` (cpu_percent) and `pids.max`
//! (processes); the kernel enforces them. A stop ends with `cgroup.kill` (or
//! SIGKILL to every pid listed, on kernels before 5.14), so nothing of the
//! agent survives it; the group is removed once empty.
//!
//! Modes (`--cgroups`): `auto` (the default) uses cgroups when the hierarchy is
//! writable *and* the memory and pids controllers can be delegated to the
//! agents' groups; `on` uses them whenever the hierarchy is writable (for
//! containment and kill even without controllers) and fails the start
//! otherwise; `off` never. Without cgroups, limits are rlimits plus sampled
//! enforcement (see [`crate::metrics`]).
//!
//! Root (`--cgroup-root`): by default `<own cgroup>/agents`, after this
//! process moved itself to `<own cgroup>/supervisor` (cgroup v2 allows
//! controllers to be delegated only from groups without processes; systemd
//! gives the service its own group with `Delegate=yes`).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use opmas_domain::AgentSpec;
use tracing::{debug, info, warn};

/// When to put agents into cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupMode {
    /// When a writable hierarchy with the memory and pids controllers exists.
    #[default]
    Auto,
    /// Whenever a writable hierarchy exists (error otherwise).
    On,
    /// Never.
    Off,
}

impl std::str::FromStr for CgroupMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("`{other}`: use auto, on or off")),
        }
    }
}

/// The agents' cgroups on this node.
#[derive(Debug)]
pub struct Cgroups {
    root: PathBuf,
    /// Controllers enabled for the agents' groups.
    controllers: BTreeSet<String>,
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo`.
fn mount_point() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// This process's cgroup v2 path (relative to the mount).
fn own_group() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

fn controllers_of(dir: &Path) -> BTreeSet<String> {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Enables `wanted` controllers (those available) for `dir`'s children.
fn delegate(dir: &Path, wanted: &[&str]) -> BTreeSet<String> {
    let available = controllers_of(dir);
    for c in wanted.iter().filter(|c| available.contains(**c)) {
        if let Err(e) = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
            debug!(dir = %dir.display(), controller = c, error = %e, "cannot delegate controller");
        }
    }
    fs::read_to_string(dir.join("cgroup.subtree_control"))
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

const WANTED: [&str; 3] = ["memory", "pids", "cpu"];

impl Cgroups {
    /// Sets up the agents' root as `mode` asks; `None` when cgroups are not used.
    pub fn detect(mode: CgroupMode, root: Option<&Path>) -> Result<Option<Self>, String> {
        if mode == CgroupMode::Off {
            return Ok(None);
        }
        let result = match root {
            Some(root) => Self::at(root),
            None => Self::default_root(mode),
        };
        let cgroups = match (result, mode) {
            (Ok(c), _) => c,
            (Err(e), CgroupMode::On) => {
                return Err(format!("cgroups asked for (--cgroups on) but {e}"));
            }
            (Err(e), _) => {
                info!(reason = %e, "no cgroups for agents: rlimits and sampled limits only");
                return Ok(None);
            }
        };
        let complete = ["memory", "pids"]
            .iter()
            .all(|c| cgroups.controllers.contains(*c));
        if mode == CgroupMode::Auto && !complete {
            info!(
                root = %cgroups.root.display(),
                controllers = ?cgroups.controllers,
                "cgroup v2 hierarchy without the memory and pids controllers: not used \
                 (rlimits and sampled limits; --cgroups on uses it for containment alone)"
            );
            return Ok(None);
        }
        info!(root = %cgroups.root.display(), controllers = ?cgroups.controllers, "agents run in cgroups");
        Ok(Some(cgroups))
    }

    /// An explicit root: created if missing.
    fn at(root: &Path) -> Result<Self, String> {
        fs::create_dir_all(root)
            .map_err(|e| format!("cannot create cgroup root {}: {e}", root.display()))?;
        if !root.join("cgroup.procs").exists() {
            return Err(format!(
                "{} is not in a cgroup v2 hierarchy",
                root.display()
            ));
        }
        let controllers = delegate(root, &WANTED);
        Ok(Self {
            root: root.to_path_buf(),
            controllers,
        })
    }

    /// `<own>/agents`, after moving this process to `<own>/supervisor`. In
    /// `auto` mode nothing is changed unless the controllers are there.
    fn default_root(mode: CgroupMode) -> Result<Self, String> {
        let mount = mount_point().ok_or("no cgroup v2 hierarchy is mounted")?;
        let own = own_group().ok_or("this process is in no cgroup v2 group")?;
        let own = mount.join(own.trim_start_matches('/'));
        let available = controllers_of(&own);
        if mode == CgroupMode::Auto && !(available.contains("memory") && available.contains("pids"))
        {
            return Err(format!(
                "{} offers no memory and pids controllers (available: {})",
                own.display(),
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.into_iter().collect::<Vec<_>>().join(" ")
                }
            ));
        }
        let leaf = own.join("supervisor");
        fs::create_dir_all(&leaf)
            .map_err(|e| format!("cgroup {} is not writable: {e}", own.display()))?;
        fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("cannot move the supervisor into {}: {e}", leaf.display()))?;
        delegate(&own, &WANTED);
        Self::at(&own.join("agents"))
    }

    /// The group of `agent_id`.
    pub fn path(&self, agent_id: &str) -> PathBuf {
        self.root.join(agent_id)
    }

    /// Creates (or reuses) the agent's group, writes the spec's limits, and
    /// opens its `cgroup.procs` for the child to join before `exec`.
    pub fn prepare(&self, agent_id: &str, spec: &AgentSpec) -> io::Result<OwnedFd> {
        let dir = self.path(agent_id);
        fs::create_dir_all(&dir)?;
        let limits = &spec.limits;
        let writes = [
            (
                "memory",
                "memory.max",
                limits.memory_bytes.map(|b| b.to_string()),
            ),
            ("pids", "pids.max", limits.processes.map(|p| p.to_string())),
            (
                "cpu",
                "cpu.max",
                limits
                    .cpu_percent
                    .map(|p| format!("{} 100000", ((p * 1000.0) as u64).max(1000))),
            ),
        ];
        for (controller, file, value) in writes {
            if !self.controllers.contains(controller) {
                continue;
            }
            let value = value.unwrap_or_else(|| "max".into());
            let value = if file == "cpu.max" && value == "max" {
                "max 100000".into()
            } else {
                value
            };
            fs::write(dir.join(file), &value)?;
        }
        let file = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        Ok(file.into())
    }

    /// Kills every process in the agent's group (descendants that left its
    /// process group too) and removes the group when it is empty.
    pub fn kill(&self, agent_id: &str) {
        let dir = self.path(agent_id);
        if !dir.exists() {
            return;
        }
        if fs::write(dir.join("cgroup.kill"), "1").is_err() {
            // Before Linux 5.14: signal what is listed.
            if let Ok(pids) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }

    /// Whether any process is still in the agent's group.
    pub fn populated(&self, agent_id: &str) -> bool {
        fs::read_to_string(self.path(agent_id).join("cgroup.procs"))
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false)
    }

    /// Removes the agent's group if it is empty (harmless otherwise).
    pub fn remove(&self, agent_id: &str) {
        let dir = self.path(agent_id);
        if dir.exists()
            && let Err(e) = fs::remove_dir(&dir)
        {
            warn!(agent_id, error = %e, "cannot remove the agent's cgroup yet");
        }
    }

    /// The controllers whose limits are enforced by the kernel.
    pub fn controllers(&self) -> &BTreeSet<String> {
        &self.controllers
    }

    /// The root of the agents' groups.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_with_a_clear_error() {
        assert_eq!("auto".parse::<CgroupMode>(), Ok(CgroupMode::Auto));
        assert_eq!("on".parse::<CgroupMode>(), Ok(CgroupMode::On));
        assert_eq!("off".parse::<CgroupMode>(), Ok(CgroupMode::Off));
        assert_eq!(
            "yes".parse::<CgroupMode>(),
            Err("`yes`: use auto, on or off".to_string())
        );
    }

    #[test]
    fn off_never_touches_the_hierarchy() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path().join("never");
        let c = Cgroups::detect(CgroupMode::Off, Some(&root));
        assert!(matches!(c, Ok(None)));
        assert!(!root.exists());
    }

    #[test]
    fn a_root_outside_cgroupfs_is_refused_when_asked_for() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let err = Cgroups::detect(CgroupMode::On, Some(dir.path()))
            .err()
            .unwrap_or_default();
        assert!(err.contains("is not in a cgroup v2 hierarchy"), "{err}");
        // auto falls back quietly
        assert!(matches!(
            Cgroups::detect(CgroupMode::Auto, Some(dir.path())),
            Ok(None)
        ));
    }
}
