//! Package commands: `UpdatePackage` (a spec from the API; config kept) and
//! `ApplyPackage` (a package as discovery read it, config layers included).

use super::error::AgentError;
use super::event::AgentEvent;
use super::handlers::{Events, none, not_self_required, one, schema_allows};
use super::state::Agent;
use crate::spec::{AgentSpec, rebase_config};

impl Agent {
    pub(super) fn update_package(&self, current: &AgentSpec, mut spec: AgentSpec) -> Events {
        spec.validate()?;
        if let Some(id) = &self.id {
            not_self_required(id, &spec)?;
        }
        spec.config = self.config().unwrap_or(&current.config).clone();
        // The current config must satisfy the new package's schema.
        if let Some(schema) = &spec.config_schema {
            schema_allows(schema, &spec.config)?;
        }
        if spec == *current {
            return none();
        }
        one(AgentEvent::PackageUpdated {
            spec,
            spec_version: self.spec_version.saturating_add(1),
        })
    }

    /// `spec.config` is the config of the package's layers. The spec is
    /// taken as `update_package` takes it; when the layers differ from
    /// those last applied (`package_config`), the config becomes the new
    /// layers with the runtime changes on top, as a new version (even when
    /// runtime values hide every change: the history says when the package
    /// changed, and those values stop being runtime changes).
    pub(super) fn apply_package(&self, current: &AgentSpec, mut spec: AgentSpec) -> Events {
        // Checks the layers against the new schema too.
        spec.validate()?;
        if let Some(id) = &self.id {
            not_self_required(id, &spec)?;
        }
        let config = self.config().unwrap_or(&current.config).clone();
        let layers = std::mem::replace(&mut spec.config, config.clone());
        let last = self.package_config.as_ref().unwrap_or(&config);
        let changed = layers != *last;
        let next = match changed {
            true => rebase_config(&config, last, &layers),
            false => config.clone(),
        };
        // The layers fit: a refusal is about a value set at runtime.
        if let Some(schema) = &spec.config_schema {
            schema_allows(schema, &next).map_err(set_at_runtime)?;
        }
        let mut events = Vec::new();
        if spec != *current {
            events.push(AgentEvent::PackageUpdated {
                spec,
                spec_version: self.spec_version.saturating_add(1),
            });
        }
        if changed {
            events.push(AgentEvent::ConfigUpdated {
                version: self.config_version.saturating_add(1),
                config: next,
                previous_version: self.config_version,
                package_config: Some(layers),
            });
        }
        Ok(events)
    }
}

fn set_at_runtime(err: AgentError) -> AgentError {
    match err {
        AgentError::Validation { field, message } => AgentError::Validation {
            message: format!(
                "{message} (a value set at runtime through the config API, which stays over \
                 the package's config files: change it there)"
            ),
            field,
        },
        other => other,
    }
}
