//! Discovery against a real Postgres event store and real directories:
//! a package dropped into a watched root registers within a second, the
//! periodic rescan catches what the watcher does not see, a version bump
//! updates the spec, config layer edits become config versions under the
//! runtime values, invalid packages are reported and not registered,
//! removed packages are reported and left registered; a secret the schema
//! refuses is named, never shown; invalid packages, registered or not, are
//! published once on the packages stream and cleared when fixed.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BASE, package, write};
use opmas_domain::secret::SecretKey;
use opmas_domain::{AgentCommand, AgentEvent, Health};
use opmas_packages::ScanReport;
use opmas_packages::discovery::{Config, Discovery, PackageEvent, PackageEvents};
use opmas_store::{AgentStore, PackageEventSettings};
use opmas_testkit::{TestDb, eventually};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn config(root: &std::path::Path) -> Config {
    Config {
        roots: vec![root.to_path_buf()],
        environment: "test".into(),
        rescan_interval: Duration::from_secs(3600),
        ..Config::default()
    }
}

/// A fresh database and its store, a temporary directory, and the path of
/// a root in it (`agents`, not created).
async fn setup() -> (TestDb, AgentStore, tempfile::TempDir, PathBuf) {
    let db = TestDb::new().await;
    let store = AgentStore::new(db.pool.clone());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("agents");
    (db, store, tmp, root)
}

async fn registered(store: &AgentStore, id: &str) -> bool {
    store
        .load(id)
        .await
        .is_ok_and(|(agent, _)| agent.registered)
}

/// `config` publishing on a packages stream of the test's own (as
/// `node-a`), a JetStream context and the stream's settings.
async fn publishing(
    config: Config,
) -> (Config, async_nats::jetstream::Context, PackageEventSettings) {
    let js = async_nats::jetstream::new(opmas_testkit::nats().await);
    let (config, settings) = publishing_on(config, js.clone());
    (config, js, settings)
}

/// `config` publishing through `js` on a packages stream of the test's own.
fn publishing_on(
    config: Config,
    js: async_nats::jetstream::Context,
) -> (Config, PackageEventSettings) {
    let settings = PackageEventSettings::isolated(&opmas_testkit::tag());
    let events = PackageEvents::new(js, settings.clone(), "node-a".into());
    let config = Config {
        events: Some(events),
        ..config
    };
    (config, settings)
}

/// Every message of the packages stream, with its subject, in order.
async fn package_messages(
    js: &async_nats::jetstream::Context,
    settings: &PackageEventSettings,
) -> Vec<(String, PackageEvent)> {
    let Ok(mut stream) = js.get_stream(&settings.name).await else {
        return Vec::new();
    };
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut messages = Vec::new();
    for sequence in 1..=last {
        let m = stream.get_raw_message(sequence).await.unwrap();
        let event = serde_json::from_slice(&m.payload).unwrap();
        messages.push((m.subject.to_string(), event));
    }
    messages
}

/// The last of the packages stream's messages, which must be `count`; each
/// on the subject of its kind.
async fn last_message(
    js: &async_nats::jetstream::Context,
    settings: &PackageEventSettings,
    count: usize,
) -> PackageEvent {
    let messages = package_messages(js, settings).await;
    assert_eq!(messages.len(), count, "{messages:?}");
    for (subject, event) in &messages {
        assert_eq!(subject, &settings.subject(event.kind()));
    }
    messages.into_iter().last().unwrap().1
}

async fn event_types(store: &AgentStore, id: &str) -> Vec<&'static str> {
    store
        .events(id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.payload.name())
        .collect()
}

#[tokio::test]
async fn a_package_dropped_into_a_watched_root_registers_within_a_second() {
    let (db, store, tmp, root) = setup().await;
    std::fs::create_dir_all(&root).unwrap();
    package(&root, "early", &BASE.replace("\"web\"", "\"early\""));
    let cancel = CancellationToken::new();
    // Rescans are an hour apart: only the start scan and the watcher act.
    let task = tokio::spawn(Discovery::new(store.clone(), config(&root)).run(cancel.clone()));
    assert!(
        eventually(Duration::from_secs(10), || registered(&store, "early")).await,
        "start scan"
    );

    // Dropped in whole (built elsewhere, renamed in).
    let staging = package(
        tmp.path(),
        "dropped",
        &BASE.replace("\"web\"", "\"dropped\""),
    );
    let dropped_at = Instant::now();
    std::fs::rename(&staging, root.join("dropped")).unwrap();
    assert!(eventually(Duration::from_secs(10), || registered(&store, "dropped")).await);
    eprintln!(
        "dropped package registered after {:?}",
        dropped_at.elapsed()
    );

    // Written in place, file by file: it converges once the files are complete.
    let dir = root.join("written");
    write(&dir, &[("bin/web", "#!/bin/sh\n")]);
    write(
        &dir,
        &[("agent.toml", "name = \"written\"\ntype = \"t\"\n")],
    );
    write(
        &dir,
        &[("agent.toml", &BASE.replace("\"web\"", "\"written\""))],
    );
    assert!(eventually(Duration::from_secs(10), || registered(&store, "written")).await);

    // A version bump on disk becomes a PackageUpdated event.
    write(
        &dir,
        &[(
            "agent.toml",
            &BASE
                .replace("\"web\"", "\"written\"")
                .replace("1.0.0", "1.1.0"),
        )],
    );
    let updated = eventually(Duration::from_secs(10), || async {
        store
            .load("written")
            .await
            .is_ok_and(|(a, _)| a.spec.is_some_and(|s| s.package_version == "1.1.0"))
    })
    .await;
    assert!(updated, "version bump applied by the watcher");
    assert_eq!(
        event_types(&store, "written").await,
        ["AgentRegistered", "PackageUpdated"]
    );

    cancel.cancel();
    task.await.unwrap().unwrap();
    db.cleanup().await;
}

/// The watcher ignores what is not `agent.toml`, `config/` or a JSON file (a
/// program being rebuilt must not cause scans), so a package made valid by
/// its program appearing is only seen by the periodic rescan: with a short
/// interval it registers; with an hour (the control) it does not.
#[tokio::test]
async fn the_periodic_rescan_picks_up_what_the_watcher_ignores() {
    let (db, store, tmp, _) = setup().await;
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut late = Vec::new();
    for (name, every) in [("fast", 300), ("slow", 3_600_000)] {
        let root = tmp.path().join(name);
        let named = |id: &str| BASE.replace("\"web\"", &format!("\"{id}\""));
        package(&root, "marker", &named(&format!("marker-{name}")));
        // Invalid until `bin/web` exists.
        let dir = root.join("late");
        write(&dir, &[("agent.toml", &named(&format!("late-{name}")))]);
        let config = Config {
            rescan_interval: Duration::from_millis(every),
            ..config(&root)
        };
        tasks.push(tokio::spawn(
            Discovery::new(store.clone(), config).run(cancel.clone()),
        ));
        let marker = format!("marker-{name}");
        assert!(
            eventually(Duration::from_secs(10), || registered(&store, &marker)).await,
            "start scan of {name}"
        );
        assert!(!registered(&store, &format!("late-{name}")).await);
        late.push(dir);
    }
    for dir in &late {
        write(dir, &[("bin/web", "#!/bin/sh\nsleep 1000\n")]);
    }
    assert!(
        eventually(Duration::from_secs(10), || registered(&store, "late-fast")).await,
        "the rescan registers it"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !registered(&store, "late-slow").await,
        "the watcher did not see it (else the fast case proves nothing)"
    );
    cancel.cancel();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    db.cleanup().await;
}

#[tokio::test]
async fn scans_register_update_report_invalid_and_removed_packages() {
    let (db, store, _tmp, root) = setup().await;
    let web = package(&root, "web", BASE);
    let workers = package(
        &root,
        "workers",
        &format!(
            "{}instances = 3\nrequires = [\"web\"]\n",
            BASE.replace("\"web\"", "\"worker\"")
        ),
    );
    let broken = package(
        &root,
        "broken",
        &format!(
            "{}[heartbeat]\ninterval = \"5s\"\ntimeout = \"1s\"\n",
            BASE.replace("\"web\"", "\"broken\"")
        ),
    );
    std::fs::create_dir_all(root.join("notes")).unwrap(); // no manifest: not a package
    let discovery = Discovery::new(store.clone(), config(&root));

    let report = discovery.scan().await.unwrap();
    let ids = |entries: &[opmas_packages::report::AgentEntry]| {
        entries
            .iter()
            .map(|e| e.agent_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&report.registered),
        ["web", "worker-1", "worker-2", "worker-3"]
    );
    assert_eq!(report.registered[0].version, "1.0.0");
    assert_eq!(
        report.registered[0].package,
        web.canonicalize().unwrap().to_string_lossy()
    );
    assert_eq!(report.invalid.len(), 1);
    let invalid = &report.invalid[0];
    assert_eq!(invalid.package, broken.to_string_lossy());
    assert!(invalid.file.ends_with("broken/agent.toml"));
    assert_eq!(
        (invalid.line, invalid.field.as_str()),
        (Some(7), "heartbeat.timeout")
    );
    assert_eq!(
        invalid.message,
        "must be at least `heartbeat.interval` (5s), got 1s"
    );
    assert!(
        !registered(&store, "broken").await,
        "an invalid package registers nothing"
    );
    assert!(report.removed.is_empty() && report.updated.is_empty());

    // The registered spec came from the package, with the discovery actor.
    let events = store.events("worker-2").await.unwrap();
    let AgentEvent::AgentRegistered { spec, .. } = &events[0].payload else {
        panic!("{events:?}")
    };
    assert_eq!(spec.requires.iter().collect::<Vec<_>>(), ["web"]);
    assert_eq!(
        spec.package_dir.as_deref(),
        Some(&*workers.canonicalize().unwrap().to_string_lossy())
    );
    assert_eq!(events[0].metadata["actor"], "discovery");

    // Nothing changed: everything unchanged, no new events.
    let again = discovery.scan().await.unwrap();
    assert_eq!(
        ids(&again.unchanged),
        ["web", "worker-1", "worker-2", "worker-3"]
    );
    assert!(again.registered.is_empty() && again.updated.is_empty());
    assert_eq!(event_types(&store, "web").await, ["AgentRegistered"]);

    // An edit without a version bump is reported, not applied.
    write(&web, &[("agent.toml", &format!("{BASE}args = [\"-v\"]\n"))]);
    let edited = discovery.scan().await.unwrap();
    assert_eq!(edited.unapplied.len(), 1);
    assert_eq!(
        edited.unapplied[0].message,
        "agent.toml changed but `version` is still `1.0.0`: bump it to apply the change"
    );
    assert_eq!(event_types(&store, "web").await, ["AgentRegistered"]);

    // A version bump updates the spec as an event.
    write(
        &web,
        &[(
            "agent.toml",
            &format!("{}args = [\"-v\"]\n", BASE.replace("1.0.0", "1.1.0")),
        )],
    );
    let bumped = discovery.scan().await.unwrap();
    assert_eq!(bumped.updated.len(), 1);
    let u = &bumped.updated[0];
    assert_eq!(
        (
            u.agent_id.as_str(),
            u.from_version.as_str(),
            u.to_version.as_str()
        ),
        ("web", "1.0.0", "1.1.0")
    );
    let (agent, _) = store.load("web").await.unwrap();
    let spec = agent.spec.unwrap();
    assert_eq!(
        (
            agent.spec_version,
            spec.package_version.as_str(),
            spec.args.clone()
        ),
        (2, "1.1.0", vec!["-v".to_owned()])
    );

    // A registered package turning invalid: reported, recorded once on the agent, spec kept.
    write(
        &web,
        &[(
            "agent.toml",
            &format!(
                "{}[stop]\nsignal = \"SIGSTOP\"\n",
                BASE.replace("1.0.0", "1.2.0")
            ),
        )],
    );
    for _ in 0..2 {
        let report = discovery.scan().await.unwrap();
        assert_eq!(
            report
                .invalid
                .iter()
                .map(|i| i.field.as_str())
                .collect::<Vec<_>>(),
            ["heartbeat.timeout", "stop.signal"]
        );
        assert!(
            report.removed.is_empty(),
            "an invalid package is not a removed one"
        );
    }
    assert_eq!(
        event_types(&store, "web").await,
        ["AgentRegistered", "PackageUpdated", "ErrorRecorded"]
    );
    let (agent, _) = store.load("web").await.unwrap();
    assert_eq!(agent.spec.unwrap().package_version, "1.1.0");
    assert!(
        agent
            .last_error
            .unwrap()
            .contains("`stop.signal`: unknown signal `SIGSTOP`")
    );

    // A package moved to another directory (same agents) is taken over there.
    let moved = root.join("web-moved");
    std::fs::rename(&web, &moved).unwrap();
    write(
        &moved,
        &[(
            "agent.toml",
            &format!("{}args = [\"-v\"]\n", BASE.replace("1.0.0", "1.1.0")),
        )],
    );
    let report = discovery.scan().await.unwrap();
    assert_eq!(report.updated.len(), 1, "{report:?}");
    assert!(
        report.removed.is_empty() && report.invalid.len() == 1,
        "{report:?}"
    );
    let (agent, _) = store.load("web").await.unwrap();
    let spec = agent.spec.unwrap();
    let moved = moved.canonicalize().unwrap().to_string_lossy().into_owned();
    assert_eq!(spec.package_dir.as_deref(), Some(moved.as_str()));
    assert_eq!(spec.command, format!("{moved}/bin/web"));

    // A removed package is reported; its agents stay registered.
    std::fs::remove_dir_all(&workers).unwrap();
    let report = discovery.scan().await.unwrap();
    let removed: Vec<&str> = report.removed.iter().map(|r| r.agent_id.as_str()).collect();
    assert_eq!(removed, ["worker-1", "worker-2", "worker-3"]);
    let (agent, _) = store.load("worker-1").await.unwrap();
    assert!(agent.registered && !agent.deregistered);
    assert_eq!(agent.health, Health::Unknown);
    assert_eq!(event_types(&store, "worker-1").await, ["AgentRegistered"]);

    db.cleanup().await;
}

#[tokio::test]
async fn cycles_duplicates_foreign_agents_and_escaping_package_dirs_are_refused() {
    let (db, store, tmp, root) = setup().await;
    let named = |name: &str, extra: &str| {
        format!("{}{extra}", BASE.replace("\"web\"", &format!("\"{name}\"")))
    };
    package(&root, "a", &named("a", "requires = [\"b\"]\n"));
    package(&root, "b", &named("b", "requires = [\"c\"]\n"));
    package(&root, "c", &named("c", "requires = [\"a\"]\n"));
    package(&root, "d", &named("d", "requires = [\"e\"]\n")); // e is not a package: external
    package(&root, "d-copy", &named("d", ""));
    package(&root, "taken", &named("taken", ""));
    let elsewhere = package(tmp.path(), "elsewhere", &named("elsewhere", ""));
    std::os::unix::fs::symlink(&elsewhere, root.join("elsewhere")).unwrap();
    // `taken` was registered through the API (no package).
    store
        .execute(
            "taken",
            opmas_testkit::register("taken"),
            opmas_testkit::meta("admin"),
        )
        .await
        .unwrap();
    // So was `x`, which requires `y`: a package `y` requiring `x` closes a cycle.
    let mut x = opmas_testkit::spec();
    x.requires.insert("y".into());
    let register_x = opmas_domain::AgentCommand::Register {
        agent_id: "x".parse().unwrap(),
        spec: x,
    };
    store
        .execute("x", register_x, opmas_testkit::meta("admin"))
        .await
        .unwrap();
    package(&root, "y", &named("y", "requires = [\"x\"]\n"));

    let report = Discovery::new(store.clone(), config(&root))
        .scan()
        .await
        .unwrap();
    let registered_ids: Vec<&str> = report
        .registered
        .iter()
        .map(|e| e.agent_id.as_str())
        .collect();
    assert_eq!(registered_ids, ["d"]);
    let by_package = |name: &str| {
        report
            .invalid
            .iter()
            .find(|i| i.package.ends_with(&format!("/{name}")))
            .unwrap_or_else(|| panic!("{name}: {report:?}"))
    };
    for name in ["a", "b", "c"] {
        let i = by_package(name);
        assert_eq!((i.field.as_str(), i.line), ("requires", Some(5)));
        assert_eq!(i.message, "`requires` forms a cycle: a -> b -> c -> a");
        assert!(!registered(&store, name).await);
    }
    assert_eq!(
        by_package("y").message,
        "`requires` forms a cycle: x -> y -> x"
    );
    assert!(!registered(&store, "y").await);
    assert!(
        by_package("d-copy")
            .message
            .starts_with("agent id `d` is already defined by the package in `")
    );
    assert_eq!(
        by_package("taken").message,
        "agent `taken` is already registered from the API (no package): rename this package"
    );
    assert!(
        by_package("elsewhere")
            .message
            .starts_with("is a symlink to `"),
        "{report:?}"
    );
    assert!(!registered(&store, "elsewhere").await);
    assert_eq!(
        event_types(&store, "taken").await,
        ["AgentRegistered"],
        "a foreign agent is left alone"
    );
    db.cleanup().await;
}

/// A new package version whose schema the agent's current config (changed
/// through the API since) does not satisfy is refused, naming the path; the
/// agent keeps its spec.
#[tokio::test]
async fn a_new_version_the_current_config_does_not_satisfy_is_refused() {
    let (db, store, _tmp, root) = setup().await;
    let schema = |max: u32| {
        format!(
            "[config]\nschema = {{ type = \"object\", properties = {{ port = {{ type = \"integer\", maximum = {max}, default = 1 }} }} }}\n"
        )
    };
    let web = package(&root, "web", &format!("{BASE}{}", schema(65535)));
    let discovery = Discovery::new(store.clone(), config(&root));
    assert_eq!(discovery.scan().await.unwrap().registered.len(), 1);
    let update = opmas_domain::AgentCommand::UpdateConfig {
        expected_version: 1,
        config: serde_json::json!({"port": 8080}),
    };
    store
        .execute("web", update, opmas_testkit::meta("operator"))
        .await
        .unwrap();

    write(
        &web,
        &[(
            "agent.toml",
            &format!("{}{}", BASE.replace("1.0.0", "2.0.0"), schema(1024)),
        )],
    );
    let report = discovery.scan().await.unwrap();
    assert!(report.updated.is_empty(), "{report:?}");
    let invalid = &report.invalid[0];
    assert_eq!(invalid.field, "config.port");
    assert!(
        invalid
            .message
            .starts_with("8080 is greater than the maximum of 1024 (a value set at runtime"),
        "{}",
        invalid.message
    );
    let (agent, _) = store.load("web").await.unwrap();
    assert_eq!(agent.spec.unwrap().package_version, "1.0.0");
    db.cleanup().await;
}

/// What `tracing` writes while the guard lives (this thread only).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A registered package whose `x-secret` config field turns into a value
/// its schema refuses: the report, the log line, the `ErrorRecorded` event
/// and the `PackageInvalid` message name the field and what is wrong, and
/// hold no trace of the value.
#[tokio::test]
async fn a_secret_the_schema_refuses_is_reported_without_its_value() {
    let db = TestDb::new().await;
    let store = AgentStore::new(db.pool.clone());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("agents");
    let manifest = format!(
        "{BASE}[config]\nschema = {{ type = \"object\", properties = {{ key = {{ type = \"string\", minLength = 8, \"x-secret\" = true }} }} }}\n"
    );
    let web = package(&root, "web", &manifest);
    write(
        &web,
        &[("config/base.toml", "key = \"long-enough-s3cret\"\n")],
    );
    let key = opmas_domain::secret::SecretKey::generate().unwrap();
    let (config, js, settings) = publishing(Config {
        secret_key: Some(Arc::new(key)),
        ..config(&root)
    })
    .await;
    let discovery = Discovery::new(store.clone(), config);
    assert_eq!(discovery.scan().await.unwrap().registered.len(), 1);

    write(&web, &[("config/base.toml", "key = \"hunt3r7\"\n")]);
    let logs = Logs::default();
    let report = {
        let _guard = logs.capture();
        discovery.scan().await.unwrap()
    };
    let invalid = &report.invalid[0];
    assert_eq!(
        (
            invalid.field.as_str(),
            invalid.line,
            invalid.message.as_str()
        ),
        (
            "config.key",
            Some(1),
            "the value is shorter than 8 characters (value hidden: secret)"
        )
    );
    let logged = logs.text();
    assert!(
        logged.contains("invalid package") && logged.contains("`config.key`"),
        "{logged}"
    );
    let events = store.events("web").await.unwrap();
    let recorded = events
        .iter()
        .find(|e| e.payload.name() == "ErrorRecorded")
        .expect("the error is recorded on the agent");
    let recorded = serde_json::to_string(&recorded.payload).unwrap();
    assert!(recorded.contains("`config.key`"), "{recorded}");
    let reported = serde_json::to_string(&report).unwrap();
    let message = last_message(&js, &settings, 1).await;
    let PackageEvent::PackageInvalid { agent_ids, .. } = &message else {
        panic!("{message:?}")
    };
    assert_eq!(agent_ids, &["web"]);
    let published = serde_json::to_string(&message).unwrap();
    assert!(published.contains("config.key"), "{published}");
    for (what, text) in [
        ("report", &reported),
        ("log", &logged),
        ("event", &recorded),
        ("message", &published),
    ] {
        assert!(!text.contains("hunt3r7"), "{what} shows the secret: {text}");
    }
    let _ = js.delete_stream(&settings.name).await;
    db.cleanup().await;
}

/// The config versions a scan made: `(agent, version)`.
fn config_versions(report: &ScanReport) -> Vec<(&str, u32)> {
    report
        .config_updated
        .iter()
        .map(|c| (c.agent_id.as_str(), c.config_version))
        .collect()
}

/// Edits of the config layers (base file, environment file, variable)
/// without a version bump become config versions by discovery; a value set
/// at runtime stays on top; secrets compare sealed; an edit the schema
/// refuses is reported where it is and not applied; a bump with an edit
/// applies both.
#[tokio::test]
async fn config_layer_edits_become_versions_under_runtime_values() {
    let (db, store, _tmp, root) = setup().await;
    let manifest = |version: &str, extra: &str| {
        format!(
            "{}{extra}[config]\nschema = \"config/schema.json\"\n",
            BASE.replace("1.0.0", version)
        )
    };
    let web = package(&root, "web", &manifest("1.0.0", ""));
    let schema = r#"{"type": "object", "properties": {
        "port": {"type": "integer"}, "workers": {"type": "integer"},
        "level": {"enum": ["info", "debug"], "default": "info"},
        "password": {"type": "string", "x-secret": true}}}"#;
    let base = |port: u32, password: &str| format!("port = {port}\npassword = \"{password}\"\n");
    write(
        &web,
        &[
            ("config/schema.json", schema),
            ("config/base.toml", &base(8000, "s3cret-1")),
        ],
    );
    let key = Some(Arc::new(SecretKey::generate().unwrap()));
    let settings = Config {
        secret_key: key.clone(),
        ..config(&root)
    };
    let discovery = Discovery::new(store.clone(), settings.clone());
    assert_eq!(discovery.scan().await.unwrap().registered.len(), 1);
    let config_now = || async {
        let (agent, _) = store.load("web").await.unwrap();
        (agent.config_version, agent.config().cloned().unwrap())
    };
    let (_, v1) = config_now().await;
    let sealed = v1["password"].clone();
    assert!(sealed.as_str().unwrap().starts_with("opmas:sealed:"));

    // Set at runtime (as `PUT .../config` does).
    let mut tuned = v1.clone();
    tuned["level"] = json!("debug");
    let update = AgentCommand::UpdateConfig {
        expected_version: 1,
        config: tuned,
    };
    store
        .execute("web", update, opmas_testkit::meta("operator"))
        .await
        .unwrap();

    // base.toml edited, same package version.
    write(&web, &[("config/base.toml", &base(8001, "s3cret-1"))]);
    let report = discovery.scan().await.unwrap();
    assert_eq!(config_versions(&report), [("web", 3)], "{report:?}");
    assert!(report.updated.is_empty() && report.unapplied.is_empty());
    let (_, config) = config_now().await;
    assert_eq!(
        (&config["port"], &config["level"], &config["password"]),
        (&json!(8001), &json!("debug"), &sealed),
        "the edit applied, the runtime value kept, the secret sealed alike"
    );
    let events = store.events("web").await.unwrap();
    let last = events.last().unwrap();
    assert!(
        matches!(&last.payload, AgentEvent::ConfigUpdated { previous_version: 2, package_config: Some(p), .. } if p["level"] == "info"),
        "{:?}",
        last.payload
    );
    assert_eq!(last.metadata["actor"], "discovery");
    assert!(last.metadata["reason"].contains("config files"));
    let again = discovery.scan().await.unwrap();
    assert_eq!(again.unchanged.len(), 1, "nothing new: {again:?}");

    // The environment's file (`--environment test`).
    write(&web, &[("config/test.toml", "workers = 4\n")]);
    let report = discovery.scan().await.unwrap();
    assert_eq!(config_versions(&report), [("web", 4)], "{report:?}");
    let (_, config) = config_now().await;
    assert_eq!(
        (&config["workers"], &config["port"], &config["level"]),
        (&json!(4), &json!(8001), &json!("debug"))
    );

    // A variable of the OPMAS process (read at start: a restarted server).
    let vars = [("OPMAS_AGENT_WEB__PORT".to_owned(), "7000".to_owned())];
    let restarted = Discovery::new(
        store.clone(),
        Config {
            vars: vars.into_iter().collect(),
            ..settings.clone()
        },
    );
    let report = restarted.scan().await.unwrap();
    assert_eq!(config_versions(&report), [("web", 5)], "{report:?}");
    assert_eq!(config_now().await.1["port"], 7000);

    // An edit the schema refuses: reported where it is, nothing applied.
    write(
        &web,
        &[("config/base.toml", "port = 8001\nlevel = \"loud\"\n")],
    );
    let report = discovery.scan().await.unwrap();
    assert!(report.config_updated.is_empty(), "{report:?}");
    let invalid = &report.invalid[0];
    assert!(
        invalid.file.ends_with("web/config/base.toml"),
        "{invalid:?}"
    );
    assert_eq!(
        (invalid.line, invalid.field.as_str()),
        (Some(2), "config.level")
    );
    assert_eq!(config_now().await.0, 5);
    let types = event_types(&store, "web").await;
    assert_eq!(types.last(), Some(&"ErrorRecorded"));

    // A version bump with a config edit: the spec, then the config.
    write(
        &web,
        &[
            ("agent.toml", &manifest("1.1.0", "args = [\"-v\"]\n")),
            ("config/base.toml", &base(8002, "s3cret-2")),
        ],
    );
    let report = discovery.scan().await.unwrap();
    assert_eq!(report.updated.len(), 1, "{report:?}");
    assert_eq!(config_versions(&report), [("web", 6)]);
    let types = event_types(&store, "web").await;
    assert_eq!(
        types[types.len() - 2..],
        ["PackageUpdated", "ConfigUpdated"]
    );
    let (agent, _) = store.load("web").await.unwrap();
    let spec = agent.spec.clone().unwrap();
    assert_eq!(
        (spec.package_version.as_str(), spec.args),
        ("1.1.0", vec!["-v".to_owned()])
    );
    let config = agent.config().unwrap();
    assert_eq!(
        (&config["port"], &config["level"], &config["workers"]),
        (&json!(8002), &json!("debug"), &json!(4))
    );
    assert_ne!(config["password"], sealed, "a new secret in the file");
    assert!(
        config["password"]
            .as_str()
            .unwrap()
            .starts_with("opmas:sealed:")
    );
    db.cleanup().await;
}

/// A new package that never registered (its manifest refused) is published
/// as `PackageInvalid` with where and why; rescans publish nothing new, a
/// restarted discovery tells it again, the fix registers the agent and
/// publishes `PackageValid`, and breaking it again is published again.
#[tokio::test]
async fn invalid_packages_are_published_once_and_cleared_when_fixed() {
    let (db, store, _tmp, root) = setup().await;
    let (config, js, settings) = publishing(config(&root)).await;
    let fixed = BASE.replace("\"web\"", "\"late\"");
    let broken = format!("{fixed}[heartbeat]\ninterval = \"5s\"\ntimeout = \"1s\"\n");
    let dir = package(&root, "late", &broken);
    let discovery = Discovery::new(store.clone(), config.clone());
    assert_eq!(discovery.scan().await.unwrap().invalid.len(), 1);
    assert!(!registered(&store, "late").await);

    let PackageEvent::PackageInvalid {
        package,
        file,
        line,
        field,
        message,
        agent_ids,
        server,
        at,
    } = last_message(&js, &settings, 1).await
    else {
        panic!("not PackageInvalid")
    };
    assert_eq!(package, dir.to_string_lossy());
    assert!(file.ends_with("late/agent.toml"), "{file}");
    assert_eq!((line, field.as_str()), (Some(7), "heartbeat.timeout"));
    assert_eq!(
        message,
        "must be at least `heartbeat.interval` (5s), got 1s"
    );
    assert!(agent_ids.is_empty(), "unknown: the manifest was refused");
    assert_eq!(server, "node-a");
    assert!((chrono::Utc::now() - at).num_seconds() < 60);

    // The same error again: nothing new. A restarted discovery (empty
    // memo) tells it again.
    discovery.scan().await.unwrap();
    assert_eq!(package_messages(&js, &settings).await.len(), 1);
    Discovery::new(store.clone(), config).scan().await.unwrap();
    assert_eq!(last_message(&js, &settings, 2).await.kind(), "invalid");

    // Fixed: the agent registers and the alert can be cleared.
    write(&dir, &[("agent.toml", &fixed)]);
    let report = discovery.scan().await.unwrap();
    assert!(report.invalid.is_empty());
    assert!(registered(&store, "late").await);
    let PackageEvent::PackageValid {
        package,
        agent_ids,
        gone,
        server,
        ..
    } = last_message(&js, &settings, 3).await
    else {
        panic!("not PackageValid")
    };
    assert_eq!(package, dir.to_string_lossy());
    assert_eq!(
        (agent_ids, gone, server.as_str()),
        (vec!["late".to_owned()], false, "node-a")
    );
    discovery.scan().await.unwrap();
    assert_eq!(package_messages(&js, &settings).await.len(), 3);

    // Broken again the same way, now registered: published again (not
    // dropped as a duplicate), naming the agent registered from it.
    write(&dir, &[("agent.toml", &broken)]);
    discovery.scan().await.unwrap();
    let PackageEvent::PackageInvalid { agent_ids, .. } = last_message(&js, &settings, 4).await
    else {
        panic!("not PackageInvalid")
    };
    assert_eq!(agent_ids, ["late"]);

    let _ = js.delete_stream(&settings.name).await;
    db.cleanup().await;
}

/// A package message that cannot be published (the NATS server is down)
/// fails nothing: the scan reports as usual, and the message goes out at the
/// first scan after the server is back, once.
#[tokio::test]
async fn a_package_message_not_published_is_sent_at_a_later_scan() {
    let (db, store, tmp, root) = setup().await;
    let mut server = opmas_embedded::NatsServer::start(&tmp.path().join("nats"))
        .await
        .unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let (config, settings) = publishing_on(config(&root), js.clone());
    let broken = |name: &str| {
        let manifest = BASE.replace("\"web\"", &format!("\"{name}\""));
        format!("{manifest}[heartbeat]\ninterval = \"5s\"\ntimeout = \"1s\"\n")
    };
    package(&root, "first", &broken("first"));
    let discovery = Discovery::new(store.clone(), config);
    discovery.scan().await.unwrap();
    assert_eq!(package_messages(&js, &settings).await.len(), 1);

    server.stop().await;
    package(&root, "second", &broken("second"));
    let report = discovery.scan().await.unwrap();
    assert_eq!(report.invalid.len(), 2, "reported without the stream");

    server.restart().await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            discovery.scan().await.unwrap();
            package_messages(&js, &settings).await.len() >= 2
        })
        .await,
        "the second package's message was never sent"
    );
    discovery.scan().await.unwrap();
    let PackageEvent::PackageInvalid { package, .. } = last_message(&js, &settings, 2).await else {
        panic!("not PackageInvalid")
    };
    assert!(package.ends_with("/second"), "{package}");
    db.cleanup().await;
}
