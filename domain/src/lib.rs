//! The OPMAS domain: the `Agent` aggregate and the value types around it.
//!
//! An *agent* is a long-running OS process that the control plane registers,
//! starts, watches and restarts. This crate holds the pure part of that: the
//! event-sourced [`Agent`] aggregate (commands in, events out), the
//! [`AgentSpec`] a supervisor needs to run a process, and the restart
//! arithmetic. Nothing here does IO, reads a clock or draws random numbers:
//! times and jitter samples arrive inside commands, so replaying the same
//! events always yields the same state. (The one exception is outside the
//! aggregate: [`secret::SecretKey`] reads, generates and writes the key file
//! when the binary starts.)
//!
//! # Layout
//!
//! - [`id`]: [`AgentId`], a validated slug.
//! - [`spec`]: [`AgentSpec`] and its policies, with [`AgentSpec::validate`].
//! - [`backoff`]: [`backoff::decide`], the restart decision (delay, intensity).
//! - [`metadata`]: [`EventMetadata`], who/why/when for each committed event.
//! - [`secret`]: sealing secret env values and config fields at the edges
//!   (AES-SIV), opening them in the supervisor; [`secret::SecretKey`].
//! - [`control`]: control request/reply messages (stop, reload, restart, ping).
//! - [`telemetry`]: metric samples, log lines and heartbeats (not events).
//! - [`agent`]: the [`Agent`] aggregate, its commands, events, errors and the
//!   upcasters for older event versions.

/// Declares a fieldless enum that serializes and displays in `snake_case`.
macro_rules! labelled_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
        )]
        #[serde(rename_all = "snake_case")]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// The `snake_case` name, as serialized.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $label ),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod agent;
pub mod backoff;
pub mod control;
pub mod id;
pub mod metadata;
pub mod secret;
pub mod spec;
pub mod telemetry;

pub use agent::{
    Agent, AgentCommand, AgentError, AgentEvent, DesiredState, Health, ProcessIdentity,
    ProcessStatus, RecoveryStatus, Severity, upcasters,
};
pub use backoff::{ExitKind, RestartDecision, RestartWindow};
pub use id::{AgentId, IdError};
pub use metadata::{EventMetadata, MetadataError};
pub use spec::{
    AgentSpec, HealthCheck, HealthCheckSpec, HeartbeatSpec, RecoveryPolicy, RecoveryStrategy,
    ReloadMode, ResourceLimits, RestartMode, RestartPolicy, SpecError,
};
