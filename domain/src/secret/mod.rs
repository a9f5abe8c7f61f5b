//! Secrets sealed at the edge: the values of `secret_env` keys and of config
//! fields marked `"x-secret": true` are stored, published and replayed as
//! `opmas:sealed:v1:<base64url(siv tag + ciphertext)>`; only the supervisor
//! opens them, to hand them to the agent's process (ADR 0004).
//!
//! The cipher is AES-SIV (RFC 5297, AES-256, 64-byte key): deterministic
//! authenticated encryption, so an unchanged secret seals to the same text
//! (specs compare equal, config diffs stay empty) and a value cannot be
//! altered. The associated data is the field's path (`env/DB_PASSWORD`,
//! `config/db/password`): a sealed value moved to another field does not open.
//!
//! The aggregate never seals or opens anything: it accepts sealed values
//! where a secret is expected (see [`crate::spec::check_config`]). The edges
//! (API, package discovery) open what a client sent, validate the clear spec
//! and seal it; the supervisor opens it when it starts the process.
//!
//! [`SecretKey::load`] and [`SecretKey::create`] read and write the key
//! file: the only IO of this crate, called by the binary at start, never by
//! the aggregate.

use std::path::{Path, PathBuf};

use aes_siv::siv::Aes256Siv;
use aes_siv::{Key, KeyInit};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

mod spec;

pub use spec::{open_config, open_spec, seal_config, seal_spec};

/// Prefix of every sealed value (the version names the format and cipher).
pub const SEALED_PREFIX: &str = "opmas:sealed:v1:";

/// How an operator gives a process its key; part of every "no key" message.
pub const KEY_HINT: &str = "start it with --secret-key-file PATH (or OPMAS_SECRET_KEY_FILE) \
    naming the installation's key file; `opmas serve` and `opmas dev` create \
    <data-dir>/secret.key on first start";

/// Bytes of a key: two AES-256 keys (one for S2V/CMAC, one for CTR).
pub const KEY_BYTES: usize = 64;

/// Why an `env` value was refused by a deserializer, said in place of its
/// message (`invalid type: integer `1234`, ...` shows the value, and any
/// env value may be one `secret_env` names: the spec that says which did
/// not decode).
pub const ENV_VALUE_REFUSED: &str = "must be a string (value hidden: env values may be secret)";

/// Whether the dotted `field` a deserializer refused is an `env` value
/// (`env.TOKEN`, `spec.env.DB_PASSWORD`).
pub fn is_env_value(field: &str) -> bool {
    field
        .split('.')
        .rev()
        .skip(1)
        .any(|segment| segment == "env")
}

/// Whether `text` is a sealed value.
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(SEALED_PREFIX)
}

/// Why a secret could not be sealed or opened. `field` is dotted, as in
/// validation errors: `env.DB_PASSWORD`, `config.db.password`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{}`: {}", self.field(), self.reason())]
pub enum SealError {
    /// A secret arrived and this process has no key to seal it with.
    NoKeyToSeal { field: String },
    /// A sealed value and no key to open it with.
    NoKeyToOpen { field: String },
    /// The value does not open with this key at this field: sealed with
    /// another key, moved from another field, or altered.
    Unauthentic { field: String },
}

impl SealError {
    /// The dotted field at fault.
    pub fn field(&self) -> &str {
        match self {
            Self::NoKeyToSeal { field } | Self::NoKeyToOpen { field } => field,
            Self::Unauthentic { field } => field,
        }
    }

    /// What is wrong and what to do, without the field.
    pub fn reason(&self) -> String {
        match self {
            Self::NoKeyToSeal { .. } => format!(
                "is a secret; secrets are sealed before they are stored, and this process has no secret key: {KEY_HINT}"
            ),
            Self::NoKeyToOpen { .. } => {
                format!("is sealed, and this process has no secret key to open it: {KEY_HINT}")
            }
            Self::Unauthentic { .. } => "the sealed value does not open with this process's \
                secret key (sealed with another key, copied from another field, or altered): \
                use the key file the API and discovery seal with"
                .to_owned(),
        }
    }
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error(
        "{}: not a secret key ({why}); a key file holds {KEY_BYTES} random bytes as {} hex digits, e.g. from `openssl rand -hex {KEY_BYTES}`",
        path.display(), KEY_BYTES * 2
    )]
    Invalid { path: PathBuf, why: String },
    /// The system's random source failed.
    #[error("cannot draw a random key: {0}")]
    Random(String),
}

/// The installation's sealing key. Never printed: `Debug` shows only its
/// [`SecretKey::fingerprint`].
pub struct SecretKey {
    key: Key<Aes256Siv>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.fingerprint())
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self {
            key: Key::<Aes256Siv>::from(bytes),
        }
    }

    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        use aes_siv::aead::Generate as _;
        let key = Key::<Aes256Siv>::try_generate().map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self { key })
    }

    /// Parses a key file's text: hex digits, surrounding whitespace ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() != KEY_BYTES * 2 {
            return Err(format!(
                "{} characters, expected {} hex digits",
                text.len(),
                KEY_BYTES * 2
            ));
        }
        let mut bytes = [0u8; KEY_BYTES];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = text.get(2 * i..2 * i + 2).unwrap_or_default();
            *byte = u8::from_str_radix(pair, 16)
                .map_err(|_| format!("`{pair}` at {} is not hex", 2 * i))?;
        }
        Ok(Self::from_bytes(bytes))
    }

    /// Reads the key file at `path`.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|why| KeyError::Invalid {
            path: path.to_owned(),
            why,
        })
    }

    /// Generates a key and writes it to `path` (mode 0600, parent created);
    /// fails if the file exists.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let key = Self::generate()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let hex: String = key.key.iter().map(|b| format!("{b:02x}")).collect();
        file.write_all(format!("{hex}\n").as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(key)
    }

    /// The key at `path`, created first when there is no file; `true` when
    /// it was created. Two processes racing to create it end with one key.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        match Self::load(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                match Self::create(path) {
                    Ok(key) => Ok((key, true)),
                    Err(KeyError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        Ok((Self::load(path)?, false))
                    }
                    Err(e) => Err(e),
                }
            }
            other => other.map(|key| (key, false)),
        }
    }

    /// A short public name of the key (12 base64url characters of the seal
    /// of a fixed text): equal on two nodes iff they hold the same key.
    pub fn fingerprint(&self) -> String {
        let tag = self
            .cipher()
            .encrypt([b"opmas:key-fingerprint".as_slice()], b"")
            .unwrap_or_default();
        let mut text = URL_SAFE_NO_PAD.encode(tag);
        text.truncate(12);
        text
    }

    fn cipher(&self) -> Aes256Siv {
        Aes256Siv::new(&self.key)
    }

    /// Seals `value` (its JSON text) for the field at `path`; a sealed
    /// string is returned unchanged.
    pub fn seal(&self, path: &str, value: &Value) -> Value {
        if value.as_str().is_some_and(is_sealed) {
            return value.clone();
        }
        let plaintext = value.to_string();
        // Fails only with more than 126 associated data items; we pass one.
        let sealed = self
            .cipher()
            .encrypt([path.as_bytes()], plaintext.as_bytes())
            .unwrap_or_default();
        Value::String(format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(sealed)))
    }

    /// Opens `value` sealed for the field at `path` (`field`: its dotted
    /// name, for the error); a value that is not sealed is returned as is.
    pub fn open(&self, path: &str, field: &str, value: &Value) -> Result<Value, SealError> {
        let Some(text) = value.as_str().and_then(|s| s.strip_prefix(SEALED_PREFIX)) else {
            return Ok(value.clone());
        };
        let unauthentic = || SealError::Unauthentic {
            field: field.to_owned(),
        };
        let sealed = URL_SAFE_NO_PAD.decode(text).map_err(|_| unauthentic())?;
        let plaintext = self
            .cipher()
            .decrypt([path.as_bytes()], &sealed)
            .map_err(|_| unauthentic())?;
        serde_json::from_slice(&plaintext).map_err(|_| unauthentic())
    }
}

/// Replaces every sealed string in `value` with `***` (answers show
/// secrets as `***`, sealed or not).
pub fn mask_sealed(value: &mut Value) {
    match value {
        Value::String(s) if is_sealed(s) => "***".clone_into(s),
        Value::Array(items) => items.iter_mut().for_each(mask_sealed),
        Value::Object(map) => map.values_mut().for_each(mask_sealed),
        _ => {}
    }
}

/// Whether any string in `value` is sealed.
pub fn contains_sealed(value: &Value) -> bool {
    match value {
        Value::String(s) => is_sealed(s),
        Value::Array(items) => items.iter().any(contains_sealed),
        Value::Object(map) => map.values().any(contains_sealed),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
