//! The filesystem side of a scan (blocking IO, run off the runtime):
//! every package under the roots, then duplicate agent ids and `requires`
//! cycles refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::Config;
use crate::error::Invalid;
use crate::package::{Context, MANIFEST, Package};
use crate::{order, spans};

/// What the roots hold: valid packages and refused ones (by directory).
pub(super) struct Found {
    pub packages: Vec<Package>,
    pub invalid: Vec<(PathBuf, Invalid)>,
    /// Canonical roots that could be read.
    pub roots: Vec<PathBuf>,
    /// The agent ids of every package that could be read (refused later or not).
    pub defines: BTreeMap<PathBuf, Vec<String>>,
}

/// Reads every package under the roots, then refuses duplicate agent ids
/// and `requires` cycles among them.
pub(super) fn find(config: &Config) -> Found {
    let vars = &config.vars;
    let context = Context {
        environment: &config.environment,
        vars,
    };
    let mut found = Found {
        packages: Vec::new(),
        invalid: Vec::new(),
        roots: Vec::new(),
        defines: BTreeMap::new(),
    };
    for root in &config.roots {
        let canonical = match root.canonicalize() {
            Ok(c) => c,
            Err(e) => {
                let why = format!("package root cannot be read: {e}");
                found
                    .invalid
                    .push((root.clone(), Invalid::new(root, None, "", why)));
                continue;
            }
        };
        let mut dirs: Vec<PathBuf> = match std::fs::read_dir(&canonical) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                let why = format!("package root cannot be read: {e}");
                found
                    .invalid
                    .push((root.clone(), Invalid::new(root, None, "", why)));
                continue;
            }
        };
        dirs.sort();
        for dir in dirs {
            let hidden = dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            let is_package = dir.is_dir() && std::fs::symlink_metadata(dir.join(MANIFEST)).is_ok();
            if hidden || !is_package {
                continue;
            }
            match dir.canonicalize() {
                Ok(real) if !real.starts_with(&canonical) => {
                    let why = format!(
                        "is a symlink to `{}`, outside the package root `{}`",
                        real.display(),
                        canonical.display()
                    );
                    found
                        .invalid
                        .push((dir.clone(), Invalid::new(&dir, None, "", why)));
                }
                _ => match Package::load(&dir, context) {
                    Ok(package) => {
                        let ids = package.agents.iter().map(|(id, _)| id.to_string());
                        found.defines.insert(package.dir.clone(), ids.collect());
                        found.packages.push(package);
                    }
                    Err(invalid) => found.invalid.push((dir, invalid)),
                },
            }
        }
        found.roots.push(canonical);
    }
    refuse_duplicates(&mut found);
    refuse_cycles(&mut found, &BTreeMap::new());
    found
}

/// A package defining an agent id an earlier package already defines is refused.
fn refuse_duplicates(found: &mut Found) {
    let mut owners: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut kept = Vec::new();
    for package in std::mem::take(&mut found.packages) {
        let clash = package.agents.iter().find_map(|(id, _)| {
            owners
                .get(id.as_str())
                .map(|owner| (id.clone(), owner.clone()))
        });
        match clash {
            Some((id, owner)) => {
                let why = format!(
                    "agent id `{id}` is already defined by the package in `{}`",
                    owner.display()
                );
                let invalid = at_field(&package.dir, "name", why);
                found.invalid.push((package.dir.clone(), invalid));
            }
            None => {
                for (id, _) in &package.agents {
                    owners.insert(id.to_string(), package.dir.clone());
                }
                kept.push(package);
            }
        }
    }
    found.packages = kept;
}

/// Packages on a `requires` cycle are refused, with the cycle named. The
/// cycle may run through `registered` agents (id → requires) that no found
/// package redefines; a cycle of registered agents alone is not ours to
/// refuse and is skipped.
pub(super) fn refuse_cycles(found: &mut Found, registered: &BTreeMap<String, BTreeSet<String>>) {
    let mut registered = registered.clone();
    loop {
        let mut graph = registered.clone();
        for package in &found.packages {
            for (id, spec) in &package.agents {
                graph.insert(id.to_string(), spec.requires.clone());
            }
        }
        let Err(cycle) = order::start_order(&graph) else {
            return;
        };
        let on_cycle: BTreeSet<&String> = cycle.cycle.iter().collect();
        let (refused, kept): (Vec<Package>, Vec<Package>) = std::mem::take(&mut found.packages)
            .into_iter()
            .partition(|p| {
                p.agents
                    .iter()
                    .any(|(id, _)| on_cycle.contains(&id.to_string()))
            });
        found.packages = kept;
        if refused.is_empty() {
            registered.retain(|id, _| !on_cycle.contains(id));
        }
        for package in refused {
            let invalid = at_field(&package.dir, "requires", cycle.to_string());
            found.invalid.push((package.dir, invalid));
        }
    }
}

/// An [`Invalid`] at `field` of the package's manifest, with its line.
pub(super) fn at_field(dir: &Path, field: &str, message: String) -> Invalid {
    let file = dir.join(MANIFEST);
    let line = std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| spans::line_of_field(&text, field));
    Invalid::new(file, line, field, message)
}
