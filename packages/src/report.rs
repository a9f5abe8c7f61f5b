//! [`ScanReport`]: what one scan of the package roots found and did.

use serde::Serialize;

use crate::error::Invalid;

/// Outcome of one scan. Lists are sorted by agent id (or path).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScanReport {
    /// Agents registered by this scan.
    pub registered: Vec<AgentEntry>,
    /// Agents whose spec this scan replaced (a new package version).
    pub updated: Vec<Updated>,
    /// Agents given a new config version because their package's config
    /// layers (config files, `OPMAS_AGENT_*` variables) changed; values
    /// set at runtime through the API stay on top.
    pub config_updated: Vec<ConfigChange>,
    /// Agents whose package is as registered.
    pub unchanged: Vec<AgentEntry>,
    /// Agents whose manifest changed without a new `version`: not applied.
    pub unapplied: Vec<Unapplied>,
    /// Packages that were refused, with where and why. Nothing of them was
    /// registered or updated.
    pub invalid: Vec<InvalidPackage>,
    /// Registered agents whose package is gone from the roots. They are
    /// left as they are (not deregistered).
    pub removed: Vec<Removed>,
}

impl ScanReport {
    /// True when the scan registered or updated something.
    pub fn changed(&self) -> bool {
        !self.registered.is_empty() || !self.updated.is_empty() || !self.config_updated.is_empty()
    }

    pub(crate) fn sort(&mut self) {
        self.registered.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        self.updated.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        self.config_updated
            .sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        self.unchanged.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        self.unapplied.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        self.invalid.sort_by(|a, b| a.package.cmp(&b.package));
        self.removed.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    }
}

/// An agent and the package it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentEntry {
    pub agent_id: String,
    /// Package directory.
    pub package: String,
    pub version: String,
}

/// A spec replaced by a new package version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Updated {
    pub agent_id: String,
    pub package: String,
    pub from_version: String,
    pub to_version: String,
}

/// A config version made from a package's changed config layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigChange {
    pub agent_id: String,
    pub package: String,
    /// Package version.
    pub version: String,
    /// The new config version.
    pub config_version: u32,
}

/// A manifest edited without bumping `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Unapplied {
    pub agent_id: String,
    pub package: String,
    pub version: String,
    pub message: String,
}

/// A refused package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InvalidPackage {
    /// Package directory.
    pub package: String,
    /// File at fault.
    pub file: String,
    /// 1-based line in `file`, when known.
    pub line: Option<usize>,
    /// Dotted field path (empty when the whole file is at fault).
    pub field: String,
    pub message: String,
    /// The whole error in one line: `file:line: `field`: message`.
    pub error: String,
}

impl InvalidPackage {
    pub(crate) fn new(package: &std::path::Path, invalid: &Invalid) -> Self {
        Self {
            package: package.to_string_lossy().into_owned(),
            file: invalid.file.to_string_lossy().into_owned(),
            line: invalid.line,
            field: invalid.field.clone(),
            message: invalid.message.clone(),
            error: invalid.to_string(),
        }
    }
}

/// A registered agent whose package is no longer in any root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Removed {
    pub agent_id: String,
    /// Where its package was.
    pub package: String,
}
