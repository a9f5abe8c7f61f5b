//! The workspace's test support lives in `testkit/` (shared with the
//! projections crate's tests).
#![allow(unused_imports)]

pub use opmas_testkit::*;
