//! Starting an agent's process from its [`AgentSpec`]: argv exec (never a
//! shell), cleared environment plus the declared one and the OPMAS variables,
//! working directory, output to the agent's log files, its own process group
//! (so the whole group can be signalled), and resource limits.
//!
//! A process that needs nothing done in the child before `exec` (no rlimit,
//! no cgroup, no user switch) is started with `posix_spawn` (a vfork: no copy
//! of the supervisor's page tables), which is most of the cost of a `fork`
//! in a large supervisor (see docs/adr/0005-agent-process-groups-and-posix-spawn.md).
//!
//! This is the one module with `unsafe` code, in two places:
//! - `CommandExt::pre_exec` is unsafe because its closure runs in the forked
//!   child before `exec`, where only async-signal-safe calls are allowed. Ours
//!   makes two kinds of plain system calls, `write(2)` and `setrlimit(2)`, on
//!   values computed before the fork; it allocates nothing and takes no lock.
//! - registering a pidfd with Tokio's reactor (`AsyncFd::register`) is unsafe
//!   because the reactor must not outlive the descriptor: the `OwnedFd` is
//!   moved into the `AsyncFd` and dropped with it.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::resource::{Resource, setrlimit};
use opmas_domain::AgentSpec;
use tokio::process::Command;

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program does not exist or is not executable.
    #[error("program `{program}` not found{hint}")]
    NotFound { program: String, hint: String },
    /// The working directory does not exist.
    #[error("working directory `{0}` does not exist")]
    NoWorkingDir(String),
    /// The user or group to run as does not exist on this node.
    #[error("{kind} `{name}` does not exist on this node")]
    NoSuchAccount { kind: &'static str, name: String },
    /// The agent's cgroup could not be prepared.
    #[error("cannot prepare the agent's cgroup {path}: {source}")]
    Cgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The spec's sealed secrets do not open (no key, or another key).
    #[error("cannot open the secrets of agent `{agent}`: {source}")]
    Secrets {
        agent: String,
        #[source]
        source: opmas_domain::secret::SealError,
    },
    /// exec failed.
    #[error("cannot start `{program}`: {source}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Everything needed to start one process.
pub struct Launch<'a> {
    /// The agent (also exported as `AGENT_ID`).
    pub agent_id: &'a str,
    /// What to run.
    pub spec: &'a AgentSpec,
    /// Variables OPMAS adds (`NATS_URL`, `HEARTBEAT_INTERVAL`, ...).
    pub opmas_env: BTreeMap<String, String>,
    /// Where stdout goes (opened for append).
    pub stdout: File,
    /// Where stderr goes (opened for append).
    pub stderr: File,
    /// The agent's `cgroup.procs`, opened: the child joins before `exec`.
    pub cgroup: Option<std::os::fd::OwnedFd>,
}

/// Limits applied in the child, as plain numbers.
#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    data: Option<u64>,
    nofile: Option<u64>,
    cpu: Option<u64>,
    nproc: Option<u64>,
}

/// Spawns the process; it is the leader of a new process group.
pub fn spawn(launch: Launch<'_>) -> Result<tokio::process::Child, SpawnError> {
    let spec = launch.spec;
    let workdir = spec.working_dir.as_deref().map(PathBuf::from);
    if let Some(dir) = &workdir
        && !dir.is_dir()
    {
        return Err(SpawnError::NoWorkingDir(dir.display().to_string()));
    }
    // The spec's PATH, else the supervisor's own (a service manager sets
    // one), else a minimal one.
    let path_var = spec
        .env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok().filter(|p| !p.is_empty()))
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_string());
    let program = resolve(&spec.command, workdir.as_deref(), &path_var)?;
    let mut cmd = Command::new(&program);
    cmd.args(&spec.args)
        .env_clear()
        .env("PATH", &path_var)
        .envs(&spec.env)
        .envs(&launch.opmas_env)
        .env("AGENT_ID", launch.agent_id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(launch.stdout))
        .stderr(Stdio::from(launch.stderr))
        .kill_on_drop(false);
    if let Some(dir) = &workdir {
        cmd.current_dir(dir);
    }
    let (uid, gid) = account(spec)?;
    if let Some(uid) = uid {
        cmd.uid(uid);
    }
    if let Some(gid) = gid {
        cmd.gid(gid);
    }
    // The memory limit is enforced on the tree's RSS by sampling (see
    // `metrics`); RLIMIT_DATA at twice the limit is a per-process backstop
    // against runaway allocation between samples.
    let limits = Limits {
        data: spec.limits.memory_bytes.map(|m| m.saturating_mul(2)),
        nofile: spec.limits.open_files,
        cpu: spec.limits.cpu_seconds,
        nproc: spec.limits.processes,
    };
    // setpgid in the child (posix_spawn's POSIX_SPAWN_SETPGROUP when no
    // pre_exec closure is set).
    cmd.process_group(0);
    let cgroup = launch.cgroup;
    if cgroup.is_some() || limits.any() {
        // SAFETY: the closure only calls write(2) on a descriptor opened
        // before the fork and setrlimit(2) with values copied in before the
        // fork; both are async-signal-safe, nothing allocates or locks.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = &cgroup {
                    // "0": the writing process itself joins the group.
                    nix::unistd::write(fd, b"0").map_err(std::io::Error::from)?;
                }
                child_setup(limits)
            });
        }
    }
    cmd.spawn().map_err(|source| SpawnError::Exec {
        program: program.display().to_string(),
        source,
    })
}

/// The uid and gid of the spec's `user` and `group` (a user's primary group
/// when only the user is named).
fn account(spec: &AgentSpec) -> Result<(Option<u32>, Option<u32>), SpawnError> {
    use nix::unistd::{Group, User};
    let user =
        match &spec.user {
            Some(name) => Some(User::from_name(name).ok().flatten().ok_or_else(|| {
                SpawnError::NoSuchAccount {
                    kind: "user",
                    name: name.clone(),
                }
            })?),
            None => None,
        };
    let gid = match &spec.group {
        Some(name) => Some(
            Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| SpawnError::NoSuchAccount {
                    kind: "group",
                    name: name.clone(),
                })?
                .gid
                .as_raw(),
        ),
        None => user.as_ref().map(|u| u.gid.as_raw()),
    };
    Ok((user.map(|u| u.uid.as_raw()), gid))
}

impl Limits {
    fn any(&self) -> bool {
        self.data.is_some() || self.nofile.is_some() || self.cpu.is_some() || self.nproc.is_some()
    }
}

fn child_setup(limits: Limits) -> std::io::Result<()> {
    let pairs = [
        (Resource::RLIMIT_DATA, limits.data),
        (Resource::RLIMIT_NOFILE, limits.nofile),
        (Resource::RLIMIT_CPU, limits.cpu),
        (Resource::RLIMIT_NPROC, limits.nproc),
    ];
    for (resource, value) in pairs {
        if let Some(v) = value {
            setrlimit(resource, v, v).map_err(std::io::Error::from)?;
        }
    }
    Ok(())
}

/// A program with a `/` is taken as a path (relative to the working
/// directory); a bare name is searched in `path_var`.
fn resolve(command: &str, workdir: Option<&Path>, path_var: &str) -> Result<PathBuf, SpawnError> {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if command.contains('/') {
        let path = match workdir {
            Some(dir) if !command.starts_with('/') => dir.join(command),
            _ => PathBuf::from(command),
        };
        return if executable(&path) {
            Ok(path)
        } else {
            Err(SpawnError::NotFound {
                program: path.display().to_string(),
                hint: " (or not executable)".into(),
            })
        };
    }
    std::env::split_paths(path_var)
        .map(|dir| dir.join(command))
        .find(|p| executable(p))
        .ok_or_else(|| SpawnError::NotFound {
            program: command.to_string(),
            hint: format!(" on PATH {path_var}"),
        })
}

/// Resolves when process `pid` terminates: a pidfd becomes readable then.
/// A process that is already gone resolves at once.
pub(crate) async fn pidfd_exit(pid: u32) -> std::io::Result<()> {
    let raw =
        i32::try_from(pid).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let Some(pid) = rustix::process::Pid::from_raw(raw) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // SAFETY: the AsyncFd owns the OwnedFd; it is neither closed nor replaced
    // while registered, and both are dropped together.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)?
    };
    let _ready = fd.readable().await?;
    Ok(())
}
