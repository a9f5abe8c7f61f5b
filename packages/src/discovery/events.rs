//! What discovery tells the `OPMAS_PACKAGES` stream (ADR 0006): a
//! [`PackageEvent`] per new error of a package, and one when a package
//! reported invalid is no longer. Messages wait in the memo until the stream
//! acknowledges them; a failure is logged and retried at the next scan,
//! never fails the scan.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use async_nats::jetstream::{self, message::PublishMessage};
use chrono::{DateTime, Utc};
use opmas_store::PackageEventSettings;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::Invalid;

/// Where discovery publishes its package messages.
#[derive(Debug, Clone)]
pub struct PackageEvents {
    js: jetstream::Context,
    settings: PackageEventSettings,
    server: String,
}

impl PackageEvents {
    /// Publishing on `settings`' stream (created at the first message), as
    /// `server` (the node name).
    pub fn new(js: jetstream::Context, settings: PackageEventSettings, server: String) -> Self {
        Self {
            js,
            settings,
            server,
        }
    }

    /// The message saying that the package in `dir` is invalid.
    pub(super) fn invalid(&self, dir: &Path, why: &Invalid, agent_ids: Vec<String>) -> Outgoing {
        Outgoing::new(PackageEvent::PackageInvalid {
            package: dir.to_string_lossy().into_owned(),
            file: why.file.to_string_lossy().into_owned(),
            line: why.line,
            field: why.field.clone(),
            message: why.message.clone(),
            agent_ids,
            server: self.server.clone(),
            at: Utc::now(),
        })
    }

    /// The message clearing an earlier [`PackageEvent::PackageInvalid`].
    pub(super) fn valid(&self, dir: &Path, agent_ids: Vec<String>, gone: bool) -> Outgoing {
        Outgoing::new(PackageEvent::PackageValid {
            package: dir.to_string_lossy().into_owned(),
            agent_ids,
            gone,
            server: self.server.clone(),
            at: Utc::now(),
        })
    }

    /// Publishes what is `unsent` (one message per package, the latest) and
    /// awaits the acks; what fails stays for the next scan.
    pub(super) async fn flush(&self, ready: &mut bool, unsent: &mut BTreeMap<PathBuf, Outgoing>) {
        if unsent.is_empty() {
            return;
        }
        if !*ready {
            if let Err(e) = self.settings.ensure(&self.js).await {
                warn!(stream = %self.settings.name, error = %e, "cannot create the packages stream; retrying at the next scan");
                return;
            }
            *ready = true;
        }
        let mut acks = Vec::new();
        for (dir, out) in std::mem::take(unsent) {
            let sent = self.send(&out).await;
            acks.push((dir, out, sent));
        }
        for (dir, out, sent) in acks {
            let acked = match sent {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            if let Err(error) = acked {
                warn!(package = %dir.display(), %error, "cannot publish a package message; retrying at the next scan");
                unsent.insert(dir, out);
            }
        }
    }

    async fn send(&self, out: &Outgoing) -> Result<jetstream::context::PublishAckFuture, String> {
        let payload = serde_json::to_vec(&out.event).map_err(|e| e.to_string())?;
        let publish = PublishMessage::build()
            .payload(payload.into())
            .message_id(&out.message_id);
        let subject = self.settings.subject(out.event.kind());
        self.js
            .send_publish(subject, publish)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A message waiting for its ack, with its `Nats-Msg-Id` (fixed when it is
/// made, so a retry after a lost ack is dropped as a duplicate).
#[derive(Debug, Clone)]
pub(super) struct Outgoing {
    event: PackageEvent,
    message_id: String,
}

impl Outgoing {
    fn new(event: PackageEvent) -> Self {
        let (package, server, at) = match &event {
            PackageEvent::PackageInvalid {
                package,
                server,
                at,
                ..
            }
            | PackageEvent::PackageValid {
                package,
                server,
                at,
                ..
            } => (package, server, at),
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        package.hash(&mut hasher);
        let message_id = format!(
            "{server}:{}:{:016x}:{}",
            event.kind(),
            hasher.finish(),
            at.timestamp_nanos_opt().unwrap_or_default()
        );
        Self { event, message_id }
    }
}

/// A message of the `OPMAS_PACKAGES` stream (JSON, `type` names the variant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PackageEvent {
    /// On `<prefix>.invalid`, once per distinct error of a package (and
    /// again after a restart of discovery). Nothing of the package was
    /// registered or updated.
    PackageInvalid {
        /// Package directory.
        package: String,
        /// File at fault.
        file: String,
        /// 1-based line in `file`, when known.
        line: Option<usize>,
        /// Dotted field path (empty when the whole file is at fault).
        field: String,
        /// Why (secret values are never part of it).
        message: String,
        /// Agents the package defines (when it could be read) or that are
        /// registered from it; empty when neither is known.
        agent_ids: Vec<String>,
        /// Node whose discovery found it.
        server: String,
        at: DateTime<Utc>,
    },
    /// On `<prefix>.valid`: a package reported invalid is no longer. It was
    /// applied (`gone: false`), or its directory holds no package any more
    /// (`gone: true`).
    PackageValid {
        package: String,
        agent_ids: Vec<String>,
        gone: bool,
        server: String,
        at: DateTime<Utc>,
    },
}

impl PackageEvent {
    /// The last subject token: `invalid` or `valid`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PackageInvalid { .. } => "invalid",
            Self::PackageValid { .. } => "valid",
        }
    }
}
