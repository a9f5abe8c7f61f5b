//! Read models built from `OPMAS_EVENTS` (agent status, history, metrics,
//! errors, logs). Filled by the projections issue.
//!
//! # Layout
//! Empty for now: the crate exists so the dependency direction is fixed
//! (`projections` → `domain`, never the other way round).
