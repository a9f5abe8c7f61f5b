//! `opmas agents new NAME --template rust|shell`: a working package to
//! start from (manifest, config, schema, code, README) that passes
//! validation and runs as is. A Rust package is built right away with
//! `cargo build --release` (its manifest runs `target/release/NAME`),
//! unless cargo is missing or `--no-build` says not to.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// A package template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// A POSIX shell script (no SDK; watched by process liveness).
    Shell,
    /// A Rust program on the OPMAS SDK (heartbeats, control, reload).
    Rust,
}

/// Where the SDK's sources are: this build's checkout.
pub fn sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk")
}

/// The checkout's lock file: a Rust package starts from the dependency
/// versions the SDK is built and tested with (cargo drops the others).
fn lock_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock")
}

/// How a Rust package is built, in its directory: into its own `target/`
/// whatever `CARGO_TARGET_DIR` or a cargo config say, so that the
/// manifest's `command` finds the program.
pub const BUILD: &str = "cargo build --release --target-dir target";

/// What became of building a Rust package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Built {
    /// `target/release/NAME` is there.
    Yes,
    /// No `cargo` on `PATH`.
    NoCargo,
}

/// Builds the Rust package in `dir` ([`BUILD`]), saying so first; cargo's
/// progress goes to stderr. A failed build is an error naming the package.
pub async fn build(dir: &Path) -> anyhow::Result<Built> {
    let child = tokio::process::Command::new("cargo")
        .args(["build", "--release", "--target-dir", "target"])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .spawn();
    let mut child = match child {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Built::NoCargo),
        other => other.context("running cargo")?,
    };
    crate::println_out(&format!(
        "  building:  {BUILD} (the first build compiles the SDK and its dependencies: minutes)"
    ));
    let status = child.wait().await.context("waiting for cargo")?;
    if !status.success() {
        bail!(
            "cargo build failed ({status}); the package is in {}: fix it and run `{BUILD}` there",
            dir.display()
        );
    }
    Ok(Built::Yes)
}

fn files(template: Template) -> Vec<(&'static str, &'static str, bool)> {
    // (path in the package, contents, executable)
    match template {
        Template::Shell => vec![
            (
                "agent.toml",
                include_str!("templates/shell/agent.toml"),
                false,
            ),
            ("run.sh", include_str!("templates/shell/run.sh"), true),
            (
                "config.schema.json",
                include_str!("templates/shell/config.schema.json"),
                false,
            ),
            (
                "config/base.toml",
                include_str!("templates/shell/base.toml"),
                false,
            ),
            (
                "README.md",
                include_str!("templates/shell/README.md"),
                false,
            ),
        ],
        Template::Rust => vec![
            (
                "agent.toml",
                include_str!("templates/rust/agent.toml"),
                false,
            ),
            (
                "Cargo.toml",
                include_str!("templates/rust/Cargo.toml"),
                false,
            ),
            ("src/main.rs", include_str!("templates/rust/main.rs"), false),
            (
                "config.schema.json",
                include_str!("templates/rust/config.schema.json"),
                false,
            ),
            (
                "config/base.toml",
                include_str!("templates/rust/base.toml"),
                false,
            ),
            ("README.md", include_str!("templates/rust/README.md"), false),
        ],
    }
}

/// Writes package `name` from `template` into `parent/name`; returns its path.
pub fn scaffold(name: &str, template: Template, parent: &Path) -> anyhow::Result<PathBuf> {
    opmas_domain::AgentId::parse(name)
        .map_err(|e| anyhow::anyhow!("`{name}` cannot name an agent: {e}"))?;
    let dir = parent.join(name);
    if dir.exists() {
        bail!(
            "{} already exists: choose another name or directory (--dir)",
            dir.display()
        );
    }
    let env_name = name.to_uppercase().replace('-', "_");
    let sdk = sdk_path();
    for (path, text, executable) in files(template) {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let text = text
            .replace("{{name}}", name)
            .replace("{{env_name}}", &env_name)
            .replace("{{sdk_path}}", &sdk.display().to_string());
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    if template == Template::Rust && lock_file().exists() {
        std::fs::copy(lock_file(), dir.join("Cargo.lock"))
            .with_context(|| format!("writing {}", dir.join("Cargo.lock").display()))?;
    }
    Ok(dir)
}
