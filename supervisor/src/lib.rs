//! Per-node supervisor: spawns, watches, restarts and adopts agent
//! processes. Filled by the supervisor issue.
//!
//! # Layout
//! Empty for now: the crate exists so the dependency direction is fixed
//! (`supervisor` → `domain`, never the other way round).
