//! REST + WebSocket management API. Filled by the API issue.
//!
//! # Layout
//! Empty for now: the crate exists so the dependency direction is fixed
//! (`api` → `domain`, never the other way round).
