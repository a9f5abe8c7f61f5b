//! [`plan`]: what a scan does for one agent of a valid package, from the
//! package as found and the agent as registered.

use std::path::Path;

use opmas_domain::secret::{self, SecretKey};
use opmas_domain::{Agent, AgentSpec};
use serde_json::Value;

use crate::package::{MANIFEST, Package};

/// What to do for one agent of a valid package.
pub(super) enum Step {
    Register(AgentSpec),
    /// `ApplyPackage`: a new version or directory (`from`: the registered
    /// version), changed config layers (`layers`), or both. `unapplied`: the
    /// manifest also changed without a version bump (that part is not sent).
    Apply {
        spec: AgentSpec,
        from: Option<String>,
        layers: bool,
        unapplied: bool,
    },
    Unchanged,
    Unapplied,
}

/// The step for agent `id` (`spec` sealed, its config the package's
/// layers), or why the package cannot own that id.
pub(super) fn plan(
    package: &Package,
    id: &str,
    spec: &AgentSpec,
    current: Option<&Agent>,
    key: Option<&SecretKey>,
) -> Result<Step, String> {
    let Some(agent) = current.filter(|a| a.registered) else {
        return Ok(Step::Register(spec.clone()));
    };
    if agent.deregistered {
        return Err(format!(
            "agent `{id}` was deregistered; ids are not reused: rename the package"
        ));
    }
    let Some(registered) = &agent.spec else {
        return Ok(Step::Register(spec.clone()));
    };
    let dir = package.dir.to_string_lossy();
    let moved = match registered.package_dir.as_deref() {
        Some(old) if old == dir => false,
        // The package moved: its old directory holds no package any more.
        Some(old) if !Path::new(old).join(MANIFEST).exists() => true,
        owner => {
            let owner = owner.unwrap_or("the API (no package)");
            return Err(format!(
                "agent `{id}` is already registered from {owner}: rename this package"
            ));
        }
    };
    // Compared open: a secret registered in clear (before sealing) and the
    // same secret sealed now are the same.
    let open_config = |c: &Value| secret::open_config(key, c).unwrap_or_else(|_| c.clone());
    let open = |s: &AgentSpec| secret::open_spec(key, s).unwrap_or_else(|_| s.clone());
    // The layers discovery applied last (the registration's config for an
    // agent registered before they were recorded).
    let last = agent.package_config.as_ref().unwrap_or(&registered.config);
    let layers = open_config(&spec.config) != open_config(last);
    let mut spec = spec.clone();
    if !layers {
        // As stored, so the aggregate sees no change.
        spec.config = last.clone();
    }
    if moved || registered.package_version != spec.package_version {
        return Ok(Step::Apply {
            spec,
            from: Some(registered.package_version.clone()),
            layers,
            unapplied: false,
        });
    }
    let mut same = open(&spec);
    let registered_open = open(registered);
    same.config = registered_open.config.clone();
    let unapplied = same != registered_open;
    if !layers {
        return Ok(if unapplied {
            Step::Unapplied
        } else {
            Step::Unchanged
        });
    }
    // Only the layers are applied: the spec stays as registered.
    let spec = AgentSpec {
        config: spec.config,
        ..registered.clone()
    };
    Ok(Step::Apply {
        spec,
        from: None,
        layers,
        unapplied,
    })
}
