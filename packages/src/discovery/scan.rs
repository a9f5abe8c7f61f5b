//! The event-store side of a scan: [`apply`] compares what `find.rs`
//! found with the registered agents and issues commands.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use opmas_domain::secret::{self, SealError, SecretKey};
use opmas_domain::{Agent, AgentCommand, AgentError, AgentId, AgentSpec, EventMetadata, Severity};
use opmas_store::{AgentStore, CommandError};
use serde_json::json;
use tracing::{error, info, warn};

use super::find::{Found, at_field, refuse_cycles};
use super::{Config, Memo};
use crate::error::{Error, Invalid};
use crate::package::{MANIFEST, Package};
use crate::report::{AgentEntry, InvalidPackage, Removed, ScanReport, Unapplied, Updated};

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
    for package in std::mem::take(&mut found.packages) {
        let mut commands = Vec::new();
        let mut refusal = None;
        for (id, spec) in &package.agents {
            defined.insert(id.to_string());
            // Sealed before anything else: an unchanged secret seals to the
            // same text, so `plan` compares with the registered spec as is.
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
        memo.errors.remove(&package.dir);
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
                break;
            }
        }
    }
    report_invalid(store, &existing, memo, &found.invalid, &mut report, &meta).await;
    report_removed(&existing, memo, &found, &defined, &mut report);
    report.sort();
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
/// its agents keep their spec).
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
    let (command, reason, updated) = match step {
        Step::Unchanged => {
            report.unchanged.push(entry);
            return Ok(None);
        }
        Step::Unapplied => {
            let message = format!(
                "agent.toml changed but `version` is still `{version}`: bump it to apply the change"
            );
            report.unapplied.push(Unapplied {
                agent_id: id.to_owned(),
                package: dir,
                version,
                message,
            });
            return Ok(None);
        }
        Step::Register(spec) => {
            let agent_id = agent_id.clone();
            let reason = format!("discovered package {dir} version {version}");
            (AgentCommand::Register { agent_id, spec }, reason, None)
        }
        Step::Update { spec, from } => {
            let reason = format!("package {dir} version {from} -> {version}");
            let updated = Updated {
                agent_id: id.to_owned(),
                package: dir.clone(),
                from_version: from,
                to_version: version.clone(),
            };
            (AgentCommand::UpdatePackage { spec }, reason, Some(updated))
        }
    };
    match (store.execute(id, command, meta(reason)).await, updated) {
        (Ok(_), Some(updated)) => {
            info!(agent_id = %id, package = %dir, from = %updated.from_version, to = %version, "package updated");
            report.updated.push(updated);
        }
        (Ok(_), None) => {
            info!(agent_id = %id, package = %dir, %version, "package registered");
            report.registered.push(entry);
        }
        // Another discovery (on another node) registered it first.
        (Err(CommandError::Rejected(AgentError::AlreadyRegistered)), _) => {
            report.unchanged.push(entry);
        }
        (Err(CommandError::Rejected(e)), _) => return Ok(Some(e)),
        (Err(e), _) => return Err(unavailable(e)),
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

/// What to do for one agent of a valid package.
enum Step {
    Register(AgentSpec),
    Update { spec: AgentSpec, from: String },
    Unchanged,
    Unapplied,
}

/// The step for agent `id`, or why the package cannot own that id.
fn plan(
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
    if moved || registered.package_version != spec.package_version {
        return Ok(Step::Update {
            spec: spec.clone(),
            from: registered.package_version.clone(),
        });
    }
    // Compared open: a secret registered in clear (before sealing) and the
    // same secret sealed now are the same spec.
    let open = |s: &AgentSpec| secret::open_spec(key, s).unwrap_or_else(|_| s.clone());
    let mut same = open(spec);
    let registered = open(registered);
    same.config = registered.config.clone();
    Ok(if same == registered {
        Step::Unchanged
    } else {
        Step::Unapplied
    })
}

/// Logs new errors, records them on agents registered from the package,
/// and lists every invalid package in the report.
async fn report_invalid(
    store: &AgentStore,
    existing: &HashMap<String, Agent>,
    memo: &mut Memo,
    invalid: &[(PathBuf, Invalid)],
    report: &mut ScanReport,
    meta: &impl Fn(String) -> HashMap<String, String>,
) {
    for (dir, why) in invalid {
        report.invalid.push(InvalidPackage::new(dir, why));
        let text = why.to_string();
        if memo.errors.get(dir) == Some(&text) {
            continue;
        }
        error!(package = %dir.display(), error = %text, "invalid package");
        memo.errors.insert(dir.clone(), text.clone());
        let dir_text = dir.to_string_lossy();
        let owners = existing.iter().filter(|(_, a)| {
            !a.deregistered
                && a.spec.as_ref().and_then(|s| s.package_dir.as_deref()) == Some(&*dir_text)
        });
        for (id, _) in owners {
            let command = AgentCommand::RecordError {
                severity: Severity::Error,
                category: "package".to_owned(),
                error_type: "InvalidPackage".to_owned(),
                message: text.clone(),
                context: json!({"package": dir_text, "file": why.file, "line": why.line, "field": why.field}),
            };
            if let Err(e) = store
                .execute(id, command, meta(format!("invalid package {dir_text}")))
                .await
            {
                warn!(agent_id = %id, error = %e, "cannot record the package error");
            }
        }
    }
}

/// Registered, live agents from under a root that no valid package defines
/// any more (unless their package is there but invalid).
fn report_removed(
    existing: &HashMap<String, Agent>,
    memo: &mut Memo,
    found: &Found,
    defined: &BTreeSet<String>,
    report: &mut ScanReport,
) {
    let invalid_dirs: BTreeSet<String> = found
        .invalid
        .iter()
        .filter_map(|(dir, _)| {
            dir.canonicalize()
                .ok()
                .map(|d| d.to_string_lossy().into_owned())
        })
        .collect();
    let mut still = BTreeSet::new();
    for (id, agent) in existing {
        let Some(dir) = agent.spec.as_ref().and_then(|s| s.package_dir.clone()) else {
            continue;
        };
        let under_root = found.roots.iter().any(|r| Path::new(&dir).starts_with(r));
        if agent.deregistered || !under_root || defined.contains(id) || invalid_dirs.contains(&dir)
        {
            continue;
        }
        if !memo.removed.contains(id) {
            warn!(agent_id = %id, package = %dir, "package removed; the agent stays registered");
        }
        still.insert(id.clone());
        report.removed.push(Removed {
            agent_id: id.clone(),
            package: dir,
        });
    }
    memo.removed = still;
}
