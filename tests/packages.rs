//! `opmas serve --package-root`: the binary discovers packages at start and
//! as they are dropped in, with the environment's config layer and the
//! `OPMAS_AGENT_*` variables; a bad `--environment` is refused; with
//! `--autostart` and the supervisor role it runs every instance of a
//! package, and a Rust package made by `opmas agents new` as it is.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use opmas_domain::telemetry::Heartbeat;
use opmas_domain::{Health, ProcessStatus};
use opmas_store::{AgentStore, PackageEventSettings, TelemetrySettings};
use serde_json::json;

fn write_package(root: &std::path::Path, name: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let manifest =
        format!("name = \"{name}\"\ntype = \"t\"\nversion = \"1.0.0\"\ncommand = \"./run.sh\"\n");
    std::fs::write(dir.join("agent.toml"), manifest).unwrap();
    std::fs::write(dir.join("config/staging.toml"), "batch = 7\n").unwrap();
    std::fs::write(dir.join("run.sh"), "#!/bin/sh\nsleep 1000\n").unwrap();
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The packages stream of a test whose events stream is `events`.
fn packages(events: &opmas_store::StreamSettings) -> PackageEventSettings {
    PackageEventSettings::isolated(&events.name)
}

/// Deletes the test's events and packages streams.
async fn delete_streams(client: &async_nats::Client, events: &opmas_store::StreamSettings) {
    delete_stream(client, events).await;
    let js = async_nats::jetstream::new(client.clone());
    let _ = js.delete_stream(&packages(events).name).await;
}

fn opmas(db: &TestDb, events: &opmas_store::StreamSettings) -> tokio::process::Command {
    let packages = packages(events);
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_opmas"));
    cmd.env("OPMAS_DATABASE_URL", &db.url)
        .env("OPMAS_NATS_URL", nats_url())
        .env("OPMAS_LOG", "warn")
        .env_remove("OPMAS_PACKAGE_ROOTS")
        .args([
            "--events-stream",
            &events.name,
            "--events-subject-prefix",
            &events.subject_prefix,
            "--packages-stream",
            &packages.name,
            "--packages-subject-prefix",
            &packages.subject_prefix,
        ])
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn serve_discovers_packages_with_their_environment_and_variables() {
    let db = TestDb::new().await;
    let events = stream();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("agents");
    write_package(&root, "web");
    let mut child = opmas(&db, &events)
        .args([
            "serve",
            "--roles",
            "relay",
            "--environment",
            "staging",
            "--package-root",
        ])
        .arg(&root)
        // its secret key goes there, not into the working directory
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .env("OPMAS_AGENT_WEB__LEVEL", "debug")
        .spawn()
        .unwrap();
    let store = AgentStore::new(db.pool.clone());
    let config_of = |id: &'static str| {
        let store = store.clone();
        async move {
            store
                .load(id)
                .await
                .ok()
                .and_then(|(a, _)| a.config().cloned())
        }
    };
    let found = eventually(Duration::from_secs(30), || async {
        config_of("web").await == Some(json!({"batch": 7, "level": "debug"}))
    })
    .await;
    assert!(
        found,
        "web not registered with its layered config: {:?}",
        config_of("web").await
    );
    write_package(&root, "late");
    let late = eventually(Duration::from_secs(10), || async {
        config_of("late").await.is_some()
    })
    .await;
    assert!(
        late,
        "a package dropped in while serving was not registered"
    );

    let pid = child.id().unwrap().to_string();
    assert!(
        tokio::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");

    let out = opmas(&db, &events)
        .args([
            "serve",
            "--roles",
            "relay",
            "--environment",
            "../prod",
            "--package-root",
        ])
        .arg(&root)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--environment `../prod`"), "{err}");

    delete_streams(&nats().await, &events).await;
    db.cleanup().await;
}

/// `opmas serve --roles relay,supervisor --autostart` on a package root of
/// its own, with a database and streams of its own.
struct Supervised {
    db: TestDb,
    events: opmas_store::StreamSettings,
    telemetry: TelemetrySettings,
    tmp: tempfile::TempDir,
    root: PathBuf,
    store: AgentStore,
}

impl Supervised {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("agents");
        std::fs::create_dir_all(&root).unwrap();
        Self {
            store: AgentStore::new(db.pool.clone()),
            db,
            events: stream(),
            telemetry: TelemetrySettings::isolated(&tag()),
            tmp,
            root,
        }
    }

    /// Starts `opmas serve` on the root as it is now.
    fn serve(&self) -> tokio::process::Child {
        let telemetry = &self.telemetry;
        opmas(&self.db, &self.events)
            .args(["serve", "--roles", "relay,supervisor", "--autostart"])
            .args(["--reconcile-interval", "1s", "--package-root"])
            .arg(&self.root)
            .arg("--data-dir")
            .arg(self.tmp.path().join("data"))
            .env("OPMAS_METRICS_STREAM", &telemetry.metrics_stream)
            .env("OPMAS_METRICS_SUBJECT_PREFIX", &telemetry.metrics_prefix)
            .env("OPMAS_LOGS_STREAM", &telemetry.logs_stream)
            .env("OPMAS_LOGS_SUBJECT_PREFIX", &telemetry.logs_prefix)
            .spawn()
            .unwrap()
    }

    /// The pids of those of `ids` that run.
    async fn running(&self, ids: &[String]) -> BTreeMap<String, u32> {
        let mut pids = BTreeMap::new();
        for id in ids {
            if let Ok((agent, _)) = self.store.load(id).await
                && agent.status == ProcessStatus::Running
                && let Some(pid) = agent.pid
            {
                pids.insert(id.clone(), pid);
            }
        }
        pids
    }

    /// Waits until all of `ids` run (60 s at most); their pids.
    async fn all_running(&self, ids: &[String]) -> BTreeMap<String, u32> {
        eventually(Duration::from_secs(60), || async {
            self.running(ids).await.len() == ids.len()
        })
        .await;
        let pids = self.running(ids).await;
        assert_eq!(pids.len(), ids.len(), "not all of {ids:?} run: {pids:?}");
        pids
    }

    /// Kills `opmas serve`, removes the package root (and so ends the
    /// agents that run while their package exists), the streams and the
    /// database.
    async fn finish(self, mut serve: tokio::process::Child) {
        serve.kill().await.unwrap();
        drop(self.tmp);
        let client = nats().await;
        delete_streams(&client, &self.events).await;
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(&self.telemetry.logs_stream).await;
        let _ = js.delete_stream(&self.telemetry.metrics_stream).await;
        self.db.cleanup().await;
    }
}

/// The variable `name` of process `pid`, from `/proc/<pid>/environ`.
fn environ_var(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// A package with `instances = 3` is registered as three agents, and with
/// `--autostart` the supervisor runs three processes, each with the id of
/// its own agent in `AGENT_ID`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_autostarts_every_instance_of_a_package() {
    let s = Supervised::new().await;
    let name = format!("trio-{}", tag());
    let dir = s.root.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = format!(
        "name = \"{name}\"\ntype = \"t\"\nversion = \"1.0.0\"\ncommand = \"./run.sh\"\ninstances = 3\n\n[heartbeat]\nenabled = false\n"
    );
    std::fs::write(dir.join("agent.toml"), manifest).unwrap();
    // Runs while its package exists: the processes end with the test.
    std::fs::write(
        dir.join("run.sh"),
        "#!/bin/sh\nwhile [ -e agent.toml ]; do sleep 0.2; done\n",
    )
    .unwrap();
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let serve = s.serve();

    let ids: Vec<String> = (1..=3).map(|i| format!("{name}-{i}")).collect();
    let pids = s.all_running(&ids).await;
    let seen: Vec<Option<String>> = pids
        .values()
        .map(|pid| environ_var(*pid, "AGENT_ID"))
        .collect();
    let expected: Vec<Option<String>> = ids.iter().cloned().map(Some).collect();
    assert_eq!(seen, expected, "AGENT_ID of each instance's process");
    assert_eq!(
        pids.values().collect::<BTreeSet<_>>().len(),
        3,
        "three processes: {pids:?}"
    );
    s.finish(serve).await;
}

/// Kills the process group of each pid when dropped (agents outlive
/// `opmas serve` by design; a test must not leave them running).
struct Reap(Vec<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = opmas_supervisor::signal::group(*pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A package made by `opmas agents new --template rust` (its cargo build
/// stood in for, see `agents_new_rust`) runs under `opmas serve
/// --autostart` as it is: the supervisor starts the program the manifest
/// names, it heartbeats on the subject the supervisor watches, and the
/// agent turns healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_a_scaffolded_rust_package_until_it_heartbeats() {
    let s = Supervised::new().await;
    let name = format!("made-{}", tag());
    let made = agents_new_rust(&s.root, &name, &[]).await;
    assert!(made.status.success(), "{made:?}");
    let client = nats().await;
    let mut beats = client
        .subscribe(format!("opmas.heartbeat.{name}"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let serve = s.serve();

    let pid = s.all_running(std::slice::from_ref(&name)).await[&name];
    let reap = Reap(vec![pid]);
    let program = s.root.join(&name).join("target/release").join(&name);
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        program.canonicalize().unwrap(),
        "the manifest's command"
    );
    let beat = tokio::time::timeout(Duration::from_secs(30), beats.next())
        .await
        .expect("a heartbeat within 30 s")
        .unwrap();
    let beat: Heartbeat = serde_json::from_slice(&beat.payload).unwrap();
    assert_eq!(beat.agent_id, name);
    let healthy = eventually(Duration::from_secs(30), || async {
        s.store
            .load(&name)
            .await
            .is_ok_and(|(a, _)| a.health == Health::Healthy && a.pid == Some(pid))
    })
    .await;
    assert!(healthy, "{:?}", s.store.load(&name).await.map(|(a, _)| a));

    drop(reap);
    s.finish(serve).await;
}
