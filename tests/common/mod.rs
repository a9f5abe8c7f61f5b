//! The workspace's test support lives in `testkit/` (shared with the
//! projections crate's tests); here only what needs this package's
//! binaries.
#![allow(unused_imports, dead_code)]

pub use opmas_testkit::*;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// `opmas agents new NAME --template rust --dir PARENT [extra]` with a
/// stand-in for `cargo` first on `PATH`: it appends how it was called
/// (`<dir> <args>`) to `PARENT/cargo-calls` and builds by copying the
/// template's program as this workspace compiled it
/// (`opmas-template-agent`) to `<--target-dir>/release/<package dir name>`
/// (building it for real takes minutes).
pub async fn agents_new_rust(parent: &Path, name: &str, extra: &[&str]) -> std::process::Output {
    let bin = parent.join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let cargo = bin.join("cargo");
    std::fs::write(
        &cargo,
        r#"#!/bin/sh
echo "$PWD $*" >> "$FAKE_CARGO_CALLS"
while [ $# -gt 0 ]; do
    if [ "$1" = --target-dir ]; then target="$2"; fi
    shift
done
mkdir -p "$target/release" && cp "$TEMPLATE_PROGRAM" "$target/release/$(basename "$PWD")"
"#,
    )
    .unwrap();
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    tokio::process::Command::new(env!("CARGO_BIN_EXE_opmas"))
        .args(["agents", "new", name, "--template", "rust", "--dir"])
        .arg(parent)
        .args(extra)
        .env("PATH", path)
        .env("FAKE_CARGO_CALLS", parent.join("cargo-calls"))
        .env(
            "TEMPLATE_PROGRAM",
            env!("CARGO_BIN_EXE_opmas-template-agent"),
        )
        .output()
        .await
        .unwrap()
}
