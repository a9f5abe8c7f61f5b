//! Which file changes matter: a package directory appearing, disappearing
//! or renamed directly under a root, its `agent.toml`, anything under its
//! `config/`, and JSON files (schemas). Agents writing their own files in
//! their package directory do not cause scans.

use std::path::{Component, Path, PathBuf};

/// True when `path` (as `notify` reports it) may change a scan's result.
pub fn relevant(roots: &[PathBuf], path: &Path) -> bool {
    let Some(relative) = roots.iter().find_map(|r| path.strip_prefix(r).ok()) else {
        return false;
    };
    let parts: Vec<&std::ffi::OsStr> = relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    match parts.as_slice() {
        [] | [_] => true,
        [_, second, ..] if *second == "agent.toml" || *second == "config" => true,
        _ => path.extension().is_some_and(|e| e == "json"),
    }
}

/// The roots as given and as canonical paths (events name either).
pub fn forms(roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut all = roots.to_vec();
    all.extend(roots.iter().filter_map(|r| r.canonicalize().ok()));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_package_level_changes_count() {
        let roots = [PathBuf::from("/srv/agents")];
        let yes = [
            "/srv/agents",
            "/srv/agents/web",
            "/srv/agents/web/agent.toml",
            "/srv/agents/web/config/production.toml",
            "/srv/agents/web/schemas/config.json",
        ];
        let no = [
            "/srv/agents/web/data/output.log",
            "/srv/agents/web/bin/web",
            "/srv/other/web/agent.toml",
        ];
        for p in yes {
            assert!(relevant(&roots, Path::new(p)), "{p}");
        }
        for p in no {
            assert!(!relevant(&roots, Path::new(p)), "{p}");
        }
    }
}
