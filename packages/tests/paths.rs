//! Paths a manifest names stay inside the package: `..`, absolute paths
//! and symlinks that leave it are refused, with the field that named them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;

use common::{BASE, package, write};
use opmas_packages::{Context, Invalid, Package};

fn load_dir(dir: &std::path::Path) -> Result<Package, Invalid> {
    let vars = BTreeMap::new();
    Package::load(
        dir,
        Context {
            environment: "production",
            vars: &vars,
        },
    )
}

#[test]
fn command_refuses_parent_dirs_absolute_paths_and_escaping_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    write(&outside, &[("tool.sh", "#!/bin/sh\n")]);
    let outside = outside.canonicalize().unwrap();
    let cases = [
        ("../outside/tool.sh", "`../outside/tool.sh` contains `..`: paths must stay inside the package directory".to_owned()),
        ("./bin/../../outside/tool.sh", "`./bin/../../outside/tool.sh` contains `..`: paths must stay inside the package directory".to_owned()),
        ("/bin/sh", "`/bin/sh` is absolute: paths are relative to the package directory".to_owned()),
        ("./bin/escape", format!("`./bin/escape` is a symlink to `{}/tool.sh`, outside the package directory", outside.display())),
    ];
    for (command, message) in cases {
        let dir = package(tmp.path(), "web", &BASE.replace("./bin/web", command));
        let _ = std::fs::remove_file(dir.join("bin/escape"));
        symlink(outside.join("tool.sh"), dir.join("bin/escape")).unwrap();
        let err = load_dir(&dir).expect_err(command);
        assert_eq!(
            (err.field.as_str(), err.line, err.message.as_str()),
            ("command", Some(4), message.as_str())
        );
    }
    // A symlink that stays inside is fine, and resolves to its target.
    let dir = package(
        tmp.path(),
        "inside",
        &BASE.replace("./bin/web", "./bin/alias"),
    );
    symlink("web", dir.join("bin/alias")).unwrap();
    let package = load_dir(&dir).unwrap();
    assert_eq!(
        package.agents[0].1.command,
        format!("{}/bin/web", package.dir.display())
    );
    // Not executable.
    let dir = common::package(tmp.path(), "plain", &BASE.replace("./bin/web", "./run.txt"));
    write(&dir, &[("run.txt", "echo")]);
    let err = load_dir(&dir).unwrap_err();
    assert_eq!(err.message, "`./run.txt` is not executable (chmod +x it)");
}

#[test]
fn working_dir_schema_health_check_and_config_files_are_confined_too() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    write(
        &outside,
        &[
            ("base.toml", "level = \"x\"\n"),
            ("schema.json", "{}"),
            ("agent.toml", BASE),
        ],
    );
    let outside = outside.canonicalize().unwrap();

    let dir = package(tmp.path(), "wd", &format!("{BASE}working_dir = \"data\"\n"));
    symlink(&outside, dir.join("data")).unwrap();
    let err = load_dir(&dir).unwrap_err();
    assert_eq!(err.field, "working_dir");
    assert_eq!(
        err.message,
        format!(
            "`data` is a symlink to `{}`, outside the package directory",
            outside.display()
        )
    );

    let dir = package(
        tmp.path(),
        "abs",
        &format!("{BASE}working_dir = \"/tmp\"\n"),
    );
    assert_eq!(
        load_dir(&dir).unwrap_err().message,
        "`/tmp` is absolute: paths are relative to the package directory"
    );

    let dir = package(
        tmp.path(),
        "schema",
        &format!("{BASE}[config]\nschema = \"../outside/schema.json\"\n"),
    );
    let err = load_dir(&dir).unwrap_err();
    assert_eq!((err.field.as_str(), err.line), ("config.schema", Some(6)));
    assert!(err.message.contains("contains `..`"), "{err}");

    let dir = package(
        tmp.path(),
        "check",
        &format!("{BASE}[health_check]\nkind = \"exec\"\ncommand = \"/bin/true\"\n"),
    );
    let err = load_dir(&dir).unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.line),
        ("health_check.command", Some(7))
    );
    assert_eq!(
        err.message,
        "`/bin/true` is absolute: paths are relative to the package directory"
    );

    // config/<environment>.toml that leads outside: the file is named.
    let dir = package(tmp.path(), "conf", BASE);
    std::fs::create_dir_all(dir.join("config")).unwrap();
    symlink(
        outside.join("base.toml"),
        dir.join("config/production.toml"),
    )
    .unwrap();
    let err = load_dir(&dir).unwrap_err();
    assert!(err.file.ends_with("conf/config/production.toml"), "{err}");
    assert_eq!(
        err.message,
        format!(
            "`config/production.toml` is a symlink to `{}/base.toml`, outside the package directory",
            outside.display()
        )
    );

    // Even the manifest itself.
    let dir = tmp.path().join("manifest");
    std::fs::create_dir_all(&dir).unwrap();
    symlink(outside.join("agent.toml"), dir.join("agent.toml")).unwrap();
    let err = load_dir(&dir).unwrap_err();
    assert!(
        err.message.starts_with("`agent.toml` is a symlink to"),
        "{err}"
    );
}
