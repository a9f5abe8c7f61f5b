//! `opmas serve --package-root`: the binary discovers packages at start and
//! as they are dropped in, with the environment's config layer and the
//! `OPMAS_AGENT_*` variables; a bad `--environment` is refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use opmas_store::AgentStore;
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

fn opmas(db: &TestDb, events: &opmas_store::StreamSettings) -> tokio::process::Command {
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

    delete_stream(&nats().await, &events).await;
    db.cleanup().await;
}
