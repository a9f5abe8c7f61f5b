//! The example packages in `examples/agents/` are valid packages.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use opmas_packages::{Context, Package};

#[test]
fn every_example_package_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agents");
    let vars = BTreeMap::new();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("agent.toml").exists() {
            continue;
        }
        let package = Package::load(
            &dir,
            Context {
                environment: "development",
                vars: &vars,
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        names.push(package.name);
    }
    names.sort();
    assert_eq!(
        names,
        ["flaky", "host-health", "log-watcher", "shell-ticker"]
    );
}
