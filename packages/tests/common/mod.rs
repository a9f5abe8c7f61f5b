//! Package fixtures on real files.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use opmas_packages::{Context, Invalid, Package};

/// The smallest valid manifest (4 lines); `./bin/web` exists.
pub const BASE: &str =
    "name = \"web\"\ntype = \"http\"\nversion = \"1.0.0\"\ncommand = \"./bin/web\"\n";

/// Writes `files` (path, content) under `dir`; `bin/*` and `*.sh` are executable.
pub fn write(dir: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        let name = path.to_string_lossy();
        if name.contains("/bin/") || name.ends_with(".sh") {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

/// A package directory `<parent>/<name>` with `manifest` and an executable `bin/web`.
pub fn package(parent: &Path, name: &str, manifest: &str) -> PathBuf {
    let dir = parent.join(name);
    write(
        &dir,
        &[
            ("agent.toml", manifest),
            ("bin/web", "#!/bin/sh\nsleep 1000\n"),
        ],
    );
    dir
}

/// Loads a package with `manifest` (+ `files`) in a temporary directory.
pub fn load_with(
    manifest: &str,
    files: &[(&str, &str)],
    environment: &str,
    vars: &BTreeMap<String, String>,
) -> (tempfile::TempDir, Result<Package, Invalid>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package(tmp.path(), "web", manifest);
    write(&dir, files);
    let result = Package::load(&dir, Context { environment, vars });
    (tmp, result)
}

pub fn load(manifest: &str) -> Result<Package, Invalid> {
    load_with(manifest, &[], "development", &BTreeMap::new()).1
}
