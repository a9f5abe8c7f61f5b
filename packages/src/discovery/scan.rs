//! The event-store side of a scan: [`apply`] compares what `find.rs`
//! found with the registered agents and issues commands.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use opmas_domain::secret::{self, SealError};
use opmas_domain::{
    Agent, AgentCommand, AgentError, AgentEvent, AgentId, AgentSpec, EventMetadata,
};
use opmas_store::{AgentStore, CommandError};
use tracing::{info, warn};

use super::find::{Found, at_field, refuse_cycles};
use super::plan::{Step, plan};
use super::{Config, Memo, notice};
use crate::error::Error;
use crate::package::Package;
use crate::report::{AgentEntry, ConfigChange, ScanReport, Unapplied, Updated};

fn unavailable(e: CommandError) -> Error {
    Error::Unavailable(e.to_string())
}

/// Compares what was found with the registered agents and acts.
pub(super) async fn apply(
    store: &AgentStore,
    config: &Config,
    memo: &mut Memo,
    mut found: Found,
) -> Result<ScanReport, Error> {
    let mut existing: HashMap<String, Agent> = HashMap::new();
    for id in store.agent_ids().await.map_err(unavailable)? {
        let (agent, _) = store.load(&id).await.map_err(unavailable)?;
        existing.insert(id, agent);
    }
    // Cycles through agents registered earlier (or through the API).
    let registered = existing
        .iter()
        .filter(|(_, a)| a.registered && !a.deregistered)
        .filter_map(|(id, a)| Some((id.clone(), a.spec.as_ref()?.requires.clone())))
        .collect();
    refuse_cycles(&mut found, &registered);
    let scan_number = memo.scans;
    let meta = |reason: String| {
        let correlation = format!("discovery-scan-{scan_number}");
        let mut m = EventMetadata::new(&config.actor, correlation, chrono::Utc::now()).to_map();
        m.insert("reason".to_owned(), reason);
        m
    };
    let mut report = ScanReport::default();
    let mut defined: BTreeSet<String> = BTreeSet::new();
    // Packages whose every agent this scan registered, updated or left as is.
    let mut applied: BTreeSet<PathBuf> = BTreeSet::new();
    for package in std::mem::take(&mut found.packages) {
        let mut commands = Vec::new();
        let mut refusal = None;
        for (id, spec) in &package.agents {
            defined.insert(id.to_string());
            // Sealed before anything else: an unchanged secret seals to the
            // same text (config layers and runtime values compare sealed).
            let spec = match seal(config, spec) {
                Ok(spec) => spec,
                Err(e) => {
                    refusal = Some(at_field(&package.dir, e.field(), e.reason()));
                    break;
                }
            };
            let key = config.secret_key.as_deref();
            match plan(&package, id.as_str(), &spec, existing.get(id.as_str()), key) {
                Ok(step) => commands.push((id.clone(), step)),
                Err(message) => {
                    refusal = Some(at_field(&package.dir, "name", message));
                    break;
                }
            }
        }
        if let Some(invalid) = refusal {
            found.invalid.push((package.dir.clone(), invalid));
            continue;
        }
        let mut refused = false;
        for (id, step) in commands {
            let outcome = act(store, &meta, &package, &id, step, &mut report).await?;
            if let Some(refusal) = outcome {
                let invalid = match refusal {
                    AgentError::Validation { field, message } => {
                        at_field(&package.dir, &field, message)
                    }
                    AgentError::InvalidSpec(e) => at_field(
                        &package.dir,
                        &crate::build::manifest_field(&e.field),
                        e.message,
                    ),
                    other => at_field(&package.dir, "", other.to_string()),
                };
                found.invalid.push((package.dir.clone(), invalid));
                refused = true;
                break;
            }
        }
        if !refused {
            applied.insert(package.dir.clone());
        }
    }
    let events = config.events.as_ref();
    notice::invalid(store, &existing, memo, &found, &mut report, events, &meta).await;
    notice::cleared(memo, &found, &applied, events);
    notice::removed(&existing, memo, &found, &defined, &mut report);
    report.sort();
    if let Some(events) = events {
        events.flush(&mut memo.stream_ready, &mut memo.unsent).await;
    }
    if config.autostart {
        // Agents registered by this scan are started (`requires` still
        // orders them: the supervisor holds each until its requirements are
        // healthy). Agents registered earlier keep the state they are in.
        for entry in &report.registered {
            let reason = format!("autostart of discovered package {}", entry.package);
            if let Err(e) = store
                .execute(&entry.agent_id, AgentCommand::Start, meta(reason))
                .await
            {
                warn!(agent_id = %entry.agent_id, error = %e, "cannot start discovered agent");
            }
        }
    }
    Ok(report)
}

/// Carries out `step` for agent `id` and adds it to the report; `Ok(Some)`
/// is the aggregate's refusal (the package is then reported invalid, and
/// its agents keep their spec and config).
async fn act(
    store: &AgentStore,
    meta: &impl Fn(String) -> HashMap<String, String>,
    package: &Package,
    agent_id: &AgentId,
    step: Step,
    report: &mut ScanReport,
) -> Result<Option<AgentError>, Error> {
    let id = agent_id.as_str();
    let dir = package.dir.to_string_lossy().into_owned();
    let version = package.version.clone();
    let entry = AgentEntry {
        agent_id: id.to_owned(),
        package: dir.clone(),
        version: version.clone(),
    };
    let unapplied = Unapplied {
        agent_id: id.to_owned(),
        package: dir.clone(),
        version: version.clone(),
        message: format!(
            "agent.toml changed but `version` is still `{version}`: bump it to apply the change"
        ),
    };
    let (spec, from, layers) = match step {
        Step::Unchanged => {
            report.unchanged.push(entry);
            return Ok(None);
        }
        Step::Unapplied => {
            report.unapplied.push(unapplied);
            return Ok(None);
        }
        Step::Register(spec) => return register(store, meta, agent_id, spec, entry, report).await,
        Step::Apply {
            spec,
            from,
            layers,
            unapplied: also,
        } => {
            if also {
                report.unapplied.push(unapplied);
            }
            (spec, from, layers)
        }
    };
    let mut reason = match &from {
        Some(from) => format!("package {dir} version {from} -> {version}"),
        None => format!("package {dir} version {version}"),
    };
    if layers {
        reason.push_str(": config files or OPMAS_AGENT_ variables changed");
    }
    let events = match store
        .execute(id, AgentCommand::ApplyPackage { spec }, meta(reason))
        .await
    {
        Ok(events) => events,
        Err(CommandError::Rejected(e)) => return Ok(Some(e)),
        Err(e) => return Err(unavailable(e)),
    };
    let mut changed = false;
    for event in events {
        match event.payload {
            AgentEvent::PackageUpdated { .. } => {
                let from = from.clone().unwrap_or_else(|| version.clone());
                info!(agent_id = %id, package = %dir, %from, to = %version, "package updated");
                report.updated.push(Updated {
                    agent_id: id.to_owned(),
                    package: dir.clone(),
                    from_version: from,
                    to_version: version.clone(),
                });
            }
            AgentEvent::ConfigUpdated {
                version: config_version,
                ..
            } => {
                info!(agent_id = %id, package = %dir, config_version, "package config applied");
                report.config_updated.push(ConfigChange {
                    agent_id: id.to_owned(),
                    package: dir.clone(),
                    version: version.clone(),
                    config_version,
                });
            }
            _ => continue,
        }
        changed = true;
    }
    if !changed {
        report.unchanged.push(entry);
    }
    Ok(None)
}

/// Registers agent `id` from its package.
async fn register(
    store: &AgentStore,
    meta: &impl Fn(String) -> HashMap<String, String>,
    agent_id: &AgentId,
    spec: AgentSpec,
    entry: AgentEntry,
    report: &mut ScanReport,
) -> Result<Option<AgentError>, Error> {
    let reason = format!(
        "discovered package {} version {}",
        entry.package, entry.version
    );
    let command = AgentCommand::Register {
        agent_id: agent_id.clone(),
        spec,
    };
    match store
        .execute(agent_id.as_str(), command, meta(reason))
        .await
    {
        Ok(_) => {
            info!(agent_id = %entry.agent_id, package = %entry.package, version = %entry.version, "package registered");
            report.registered.push(entry);
        }
        // Another discovery (on another node) registered it first.
        Err(CommandError::Rejected(AgentError::AlreadyRegistered)) => {
            report.unchanged.push(entry);
        }
        Err(CommandError::Rejected(e)) => return Ok(Some(e)),
        Err(e) => return Err(unavailable(e)),
    }
    Ok(None)
}

/// `spec` (checked when its package was loaded) with its secrets sealed;
/// a value already sealed in the package's files must open.
fn seal(config: &Config, spec: &AgentSpec) -> Result<AgentSpec, SealError> {
    let key = config.secret_key.as_deref();
    let mut spec = secret::open_spec(key, spec)?;
    secret::seal_spec(key, &mut spec)?;
    Ok(spec)
}
