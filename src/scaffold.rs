//! `opmas agents new NAME --template rust|shell`: a working package to
//! start from (manifest, config, schema, code, README) that passes
//! validation and runs as is.

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
    Ok(dir)
}
