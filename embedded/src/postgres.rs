//! A private PostgreSQL cluster (initdb into a data directory, trust auth,
//! loopback only, free port).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::{Error, find_program, free_port, io, tail, wait_for_port};

/// Superuser created by `initdb` in a private cluster.
pub const USER: &str = "opmas";

/// A running private PostgreSQL; stopped (fast mode) on drop.
#[derive(Debug)]
pub struct Postgres {
    data: PathBuf,
    port: u16,
    run_as: Option<String>,
    running: bool,
}

impl Postgres {
    /// Initialises `dir` if it holds no cluster yet, then starts it on a free port.
    pub async fn start(dir: &Path) -> Result<Self, Error> {
        let run_as = run_as_user().await?;
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(io(format!("resolve {}", dir.display())))?;
        let data = dir.join("data");
        if let Some(user) = &run_as {
            chown_to(&dir, user).await?;
            reachable_by(&dir, user).await?;
        }
        if !data.join("PG_VERSION").exists() {
            let initdb = program("initdb")?;
            let mut cmd = command(&run_as, &initdb);
            cmd.arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync"]);
            run(cmd, "initdb").await?;
        }
        stop_stale(&run_as, &data).await?;
        let port = free_port()?;
        let log = dir.join("postgres.log");
        let pg_ctl = program("pg_ctl")?;
        let mut cmd = command(&run_as, &pg_ctl);
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on",
            dir.display()
        );
        cmd.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &opts, "-w", "-t", "30", "start"]);
        run(cmd, "pg_ctl start").await.map_err(|e| match e {
            Error::Failed { command, output } => Error::Failed {
                command,
                output: format!("{output}\n{}", tail(&log)),
            },
            other => other,
        })?;
        let pg = Self {
            data,
            port,
            run_as,
            running: true,
        };
        if !wait_for_port(port, Duration::from_secs(10)).await {
            return Err(Error::NotReady {
                what: "postgres",
                port,
                secs: 10,
                log: tail(&log),
            });
        }
        Ok(pg)
    }

    /// URL of a database in this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the cluster (fast shutdown) and waits for it.
    pub async fn stop(&mut self) -> Result<(), Error> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let mut cmd = command(&self.run_as, &program("pg_ctl")?);
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        run(cmd, "pg_ctl stop").await
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let Some(pg_ctl) = find_program("pg_ctl") else {
            return;
        };
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(pg_ctl);
                c
            }
            None => std::process::Command::new(pg_ctl),
        };
        let _ = cmd
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A cluster left running by a process that was killed is stopped first, so
/// that it can be started again on a new port.
async fn stop_stale(run_as: &Option<String>, data: &Path) -> Result<(), Error> {
    let pg_ctl = program("pg_ctl")?;
    let mut status = command(run_as, &pg_ctl);
    status.arg("-D").arg(data).arg("status");
    if run(status, "pg_ctl status").await.is_err() {
        return Ok(());
    }
    let mut stop = command(run_as, &pg_ctl);
    stop.arg("-D").arg(data).args(["-m", "fast", "-w", "stop"]);
    run(stop, "pg_ctl stop (stale cluster)").await
}

fn program(name: &str) -> Result<PathBuf, Error> {
    find_program(name).ok_or(Error::NotInstalled {
        program: name.into(),
        package: "postgresql",
        extra: " or in /usr/lib/postgresql/*/bin",
    })
}

/// PostgreSQL will not run as root: use the `postgres` system user then.
async fn run_as_user() -> Result<Option<String>, Error> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .await
        .map_err(io("run id -u"))?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        return Ok(None);
    }
    let exists = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .await
        .map_err(io("run id -u postgres"))?
        .status
        .success();
    if !exists {
        return Err(Error::Failed {
            command: "id -u postgres".into(),
            output: "running as root, and PostgreSQL refuses root: a `postgres` user is needed \
                     (Debian's postgresql package creates it)"
                .into(),
        });
    }
    Ok(Some("postgres".into()))
}

/// The server runs as `user`: every directory above `dir` must let it in.
async fn reachable_by(dir: &Path, user: &str) -> Result<(), Error> {
    let mut test = Command::new("runuser");
    test.args(["-u", user, "--", "test", "-w"]).arg(dir);
    run(test, "access check").await.map_err(|_| Error::Failed {
        command: format!("runuser -u {user} -- test -w {}", dir.display()),
        output: format!(
            "PostgreSQL runs as `{user}` (it refuses root) and cannot reach {}: a directory \
             above it is closed to that user; choose a data directory it can traverse \
             (e.g. --data-dir /var/lib/opmas) or open the parents (chmod o+x)",
            dir.display()
        ),
    })
}

async fn chown_to(dir: &Path, user: &str) -> Result<(), Error> {
    let mut cmd = Command::new("chown");
    cmd.args(["-R", &format!("{user}:{user}")]).arg(dir);
    run(cmd, "chown").await
}

fn command(run_as: &Option<String>, program: &Path) -> Command {
    match run_as {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

async fn run(mut cmd: Command, what: &str) -> Result<(), Error> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io(format!("spawn {what}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Failed {
        command: what.into(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}
