//! Path confinement: every path a manifest names (command, working
//! directory, health-check program, schema, config files) must stay inside
//! the package directory. `..`, absolute paths and symlinks that resolve
//! outside are refused.

use std::path::{Component, Path, PathBuf};

/// What is wrong with a path (the caller adds file, line and field).
pub type Refusal = String;

/// Resolves `relative` inside `package` (a canonical directory). The path
/// must exist; the result is canonical.
pub fn confine(package: &Path, relative: &str) -> Result<PathBuf, Refusal> {
    let path = Path::new(relative);
    if relative.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if path.is_absolute() {
        return Err(format!(
            "`{relative}` is absolute: paths are relative to the package directory"
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "`{relative}` contains `..`: paths must stay inside the package directory"
        ));
    }
    let joined = package.join(path);
    let resolved = joined
        .canonicalize()
        .map_err(|e| format!("`{relative}` cannot be opened in the package: {e}"))?;
    if !resolved.starts_with(package) {
        return Err(format!(
            "`{relative}` is a symlink to `{}`, outside the package directory",
            resolved.display()
        ));
    }
    Ok(resolved)
}

/// Like [`confine`] for an optional file: `Ok(None)` when nothing is at
/// `relative` (a dangling symlink is refused, not ignored).
pub fn confine_optional(package: &Path, relative: &str) -> Result<Option<PathBuf>, Refusal> {
    let joined = package.join(relative);
    if std::fs::symlink_metadata(&joined).is_err() {
        return Ok(None);
    }
    confine(package, relative).map(Some)
}

/// Resolves a program: a bare name (no `/`) is looked up on `PATH` when the
/// agent starts and is kept as is; anything else is a file in the package
/// that must be executable.
pub fn program(package: &Path, command: &str) -> Result<String, Refusal> {
    if command.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if !command.contains('/') {
        return Ok(command.to_owned());
    }
    let resolved = confine(package, command)?;
    let meta =
        std::fs::metadata(&resolved).map_err(|e| format!("`{command}` cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err(format!("`{command}` is not a file"));
    }
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("`{command}` is not executable (chmod +x it)"));
    }
    Ok(resolved.to_string_lossy().into_owned())
}
