//! A private `nats-server -js` bound to 127.0.0.1 on a free port.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::{Error, find_program, free_port, io, tail, wait_for_port};

/// A running nats-server with JetStream; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl NatsServer {
    /// Starts a server storing JetStream data under `dir/jetstream`, on a free port.
    pub async fn start(dir: &Path) -> Result<Self, Error> {
        Self::start_on(dir, free_port()?).await
    }

    /// Starts (or restarts) a server on a given port, keeping `dir`'s data.
    pub async fn start_on(dir: &Path, port: u16) -> Result<Self, Error> {
        let program = find_program("nats-server").ok_or(Error::NotInstalled {
            program: "nats-server".into(),
            package: "nats-server",
            extra: "",
        })?;
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let log = dir.join("nats-server.log");
        let child = Command::new(program)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("jetstream"))
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(io("spawn nats-server"))?;
        let mut server = Self {
            child: Some(child),
            port,
            dir: dir.to_path_buf(),
        };
        if !wait_for_port(port, Duration::from_secs(10)).await {
            server.stop().await;
            return Err(Error::NotReady {
                what: "nats-server",
                port,
                secs: 10,
                log: tail(&log),
            });
        }
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (stable across [`NatsServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as an outage would) and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port with the same data.
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.stop().await;
        let again = Self::start_on(&self.dir, self.port).await?;
        *self = again;
        Ok(())
    }
}
