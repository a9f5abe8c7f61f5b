//! What a scan tells besides acting: invalid packages (log, `ErrorRecorded`
//! on agents registered from them, a `PackageInvalid` message, the report),
//! packages no longer invalid (`PackageValid`) and removed packages. The
//! memo keeps each told once.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use opmas_domain::{Agent, AgentCommand, Severity};
use opmas_store::AgentStore;
use serde_json::json;
use tracing::{error, info, warn};

use super::Memo;
use super::events::PackageEvents;
use super::find::Found;
use crate::report::{InvalidPackage, Removed, ScanReport};

/// Logs new errors, records them on agents registered from the package,
/// queues a `PackageInvalid` for each, and lists every invalid package in
/// the report.
pub(super) async fn invalid(
    store: &AgentStore,
    existing: &HashMap<String, Agent>,
    memo: &mut Memo,
    found: &Found,
    report: &mut ScanReport,
    events: Option<&PackageEvents>,
    meta: &impl Fn(String) -> HashMap<String, String>,
) {
    for (dir, why) in &found.invalid {
        report.invalid.push(InvalidPackage::new(dir, why));
        let text = why.to_string();
        if memo.errors.get(dir) == Some(&text) {
            continue;
        }
        error!(package = %dir.display(), error = %text, "invalid package");
        memo.errors.insert(dir.clone(), text.clone());
        let dir_text = dir.to_string_lossy();
        let owners: Vec<&String> = existing
            .iter()
            .filter(|(_, a)| {
                !a.deregistered
                    && a.spec.as_ref().and_then(|s| s.package_dir.as_deref()) == Some(&*dir_text)
            })
            .map(|(id, _)| id)
            .collect();
        if let Some(events) = events {
            let ids = agent_ids(found, dir, owners.iter().copied());
            memo.unsent
                .insert(dir.clone(), events.invalid(dir, why, ids));
        }
        for id in owners {
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

/// Forgets the errors of packages not invalid any more (so a new error is
/// told again) and queues a `PackageValid` for each: applied by this scan,
/// or gone from the roots.
pub(super) fn cleared(
    memo: &mut Memo,
    found: &Found,
    applied: &BTreeSet<PathBuf>,
    events: Option<&PackageEvents>,
) {
    let still: BTreeSet<&PathBuf> = found.invalid.iter().map(|(dir, _)| dir).collect();
    let cleared: Vec<PathBuf> = memo
        .errors
        .keys()
        .filter(|dir| !still.contains(dir))
        .cloned()
        .collect();
    for dir in cleared {
        memo.errors.remove(&dir);
        // The package's canonical directory (the error may name a symlink).
        let real = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        let gone = !applied.contains(&real);
        if gone {
            info!(package = %dir.display(), "invalid package gone");
        } else {
            info!(package = %dir.display(), "package valid again");
        }
        if let Some(events) = events {
            let ids = agent_ids(found, &real, std::iter::empty());
            memo.unsent
                .insert(dir.clone(), events.valid(&dir, ids, gone));
        }
    }
}

/// The agent ids the package in `dir` defines (when it could be read) and
/// `owners` (registered from it), sorted.
fn agent_ids<'a>(
    found: &'a Found,
    dir: &Path,
    owners: impl Iterator<Item = &'a String>,
) -> Vec<String> {
    let defined = found.defines.get(dir).into_iter().flatten();
    let ids: BTreeSet<String> = defined.chain(owners).cloned().collect();
    ids.into_iter().collect()
}

/// Registered, live agents from under a root that no valid package defines
/// any more (unless their package is there but invalid).
pub(super) fn removed(
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
