//! JWT verification: the algorithm is pinned per key (a token's `alg` must
//! match its key's; `none` is never accepted), `exp` is required, `nbf`,
//! `iss` and `aud` are checked, and several keys may be active at once,
//! chosen by `kid` (key rotation: add the new key, move issuers to it,
//! remove the old one).
//!
//! Claims: `sub` (the actor in the audit trail) and `role`
//! (`viewer`|`operator`|`admin`).

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{Credential, Principal, Role};
use crate::error::ApiError;

/// One verification key.
#[derive(Clone)]
pub struct JwtKey {
    /// Matched against the token header's `kid`; `None` matches tokens
    /// without a `kid` (only when this is the only key without one).
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl JwtKey {
    /// An HMAC-SHA256 secret.
    pub fn hs256(kid: Option<&str>, secret: &[u8]) -> Self {
        Self {
            kid: kid.map(str::to_owned),
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        }
    }

    /// A public key in PEM: `EdDSA` (Ed25519) or `RS256`.
    pub fn from_pem(kid: Option<&str>, algorithm: Algorithm, pem: &[u8]) -> Result<Self, String> {
        let key = match algorithm {
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                DecodingKey::from_rsa_pem(pem)
            }
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
            other => return Err(format!("{other:?} keys are secrets, not PEM")),
        }
        .map_err(|e| format!("cannot read the {algorithm:?} public key: {e}"))?;
        Ok(Self {
            kid: kid.map(str::to_owned),
            algorithm,
            key,
        })
    }
}

/// Verifier for bearer JWTs.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    keys: Vec<JwtKey>,
    issuer: String,
    audience: String,
    leeway_secs: u64,
}

/// The claims OPMAS reads (others are ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub iss: String,
    pub aud: String,
}

impl JwtVerifier {
    pub fn new(keys: Vec<JwtKey>, issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            keys,
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_secs: 30,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    fn key_for(&self, kid: Option<&str>) -> Option<&JwtKey> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let mut unnamed = self.keys.iter().filter(|k| k.kid.is_none());
                match (unnamed.next(), unnamed.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        }
    }

    /// Checks signature, algorithm, expiry, not-before, issuer and audience.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        if self.keys.is_empty() {
            return Err(ApiError::unauthorized(
                "not an API token, and no JWT keys are configured on this server",
            ));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| ApiError::unauthorized(format!("malformed token: {e}")))?;
        let key = self.key_for(header.kid.as_deref()).ok_or_else(|| {
            ApiError::unauthorized(match &header.kid {
                Some(kid) => format!("unknown key id `{kid}`"),
                None => "the token has no `kid` and the server has several keys".to_owned(),
            })
        })?;
        if header.alg != key.algorithm {
            return Err(ApiError::unauthorized(format!(
                "token algorithm {:?} is not the key's {:?}",
                header.alg, key.algorithm
            )));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway_secs;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
        Ok(Principal {
            subject: data.claims.sub,
            role: data.claims.role,
            credential: Credential::Jwt,
        })
    }
}

/// Signs HS256 tokens (tests, and `opmas` helpers that mint short-lived
/// tokens from a shared secret).
pub fn sign_hs256(kid: Option<&str>, secret: &[u8], claims: &Claims) -> Result<String, String> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret))
        .map_err(|e| e.to_string())
}

/// Keys from configuration strings `kid:alg:source` where source is
/// `secret=<text>` / `secret-file=<path>` (HS256) or `pem-file=<path>`
/// (EdDSA, RS256, ES256). Example: `k2:EdDSA:pem-file=/etc/opmas/jwt.pub`.
pub fn parse_keys(specs: &[String]) -> Result<Vec<JwtKey>, String> {
    let mut seen = HashMap::new();
    let mut keys = Vec::new();
    for spec in specs {
        let mut parts = spec.splitn(3, ':');
        let (kid, alg, source) = match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(a), Some(s)) => (k, a, s),
            _ => {
                return Err(format!(
                    "JWT key `{}`: use kid:alg:secret=..|secret-file=..|pem-file=..",
                    redact(spec)
                ));
            }
        };
        if seen.insert(kid.to_owned(), ()).is_some() {
            return Err(format!("JWT key id `{kid}` is configured twice"));
        }
        let algorithm: Algorithm = alg
            .parse()
            .map_err(|_| format!("JWT key `{kid}`: unknown algorithm `{alg}`"))?;
        let kid_opt = (!kid.is_empty()).then_some(kid);
        let key = if let Some(secret) = source.strip_prefix("secret=") {
            hmac(kid, algorithm, secret.as_bytes(), kid_opt)?
        } else if let Some(path) = source.strip_prefix("secret-file=") {
            let secret = std::fs::read(path)
                .map_err(|e| format!("JWT key `{kid}`: cannot read {path}: {e}"))?;
            hmac(kid, algorithm, secret.trim_ascii(), kid_opt)?
        } else if let Some(path) = source.strip_prefix("pem-file=") {
            let pem = std::fs::read(path)
                .map_err(|e| format!("JWT key `{kid}`: cannot read {path}: {e}"))?;
            JwtKey::from_pem(kid_opt, algorithm, &pem)
                .map_err(|e| format!("JWT key `{kid}`: {e}"))?
        } else {
            return Err(format!(
                "JWT key `{kid}`: source must start with secret=, secret-file= or pem-file="
            ));
        };
        keys.push(key);
    }
    Ok(keys)
}

fn hmac(
    kid: &str,
    algorithm: Algorithm,
    secret: &[u8],
    kid_opt: Option<&str>,
) -> Result<JwtKey, String> {
    if !matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        return Err(format!(
            "JWT key `{kid}`: a secret needs HS256, HS384 or HS512"
        ));
    }
    if secret.len() < 32 {
        return Err(format!(
            "JWT key `{kid}`: an HMAC secret must be at least 32 bytes"
        ));
    }
    Ok(JwtKey {
        kid: kid_opt.map(str::to_owned),
        algorithm,
        key: DecodingKey::from_secret(secret),
    })
}

fn redact(spec: &str) -> String {
    match spec.find("secret=") {
        Some(i) => format!("{}secret=***", &spec[..i]),
        None => spec.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(exp_offset: i64) -> Claims {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        Claims {
            sub: "alice".into(),
            role: Role::Operator,
            exp: (now + exp_offset) as u64,
            nbf: None,
            iss: "opmas".into(),
            aud: "opmas-api".into(),
        }
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(
            vec![
                JwtKey::hs256(Some("k1"), SECRET),
                JwtKey::hs256(Some("k2"), b"another-secret-of-32-bytes-long!"),
            ],
            "opmas",
            "opmas-api",
        )
    }

    #[test]
    fn accepts_a_valid_token_by_kid() {
        let token = sign_hs256(Some("k1"), SECRET, &claims(60)).unwrap();
        let p = verifier().verify(&token).unwrap();
        assert_eq!(p.subject, "alice");
        assert_eq!(p.role, Role::Operator);
    }

    #[test]
    fn rejects_expired_tampered_unknown_kid_and_none() {
        let v = verifier();
        let expired = sign_hs256(Some("k1"), SECRET, &claims(-3600)).unwrap();
        assert!(v.verify(&expired).unwrap_err().message.contains("Expired"));
        let wrong_key = sign_hs256(Some("k2"), SECRET, &claims(60)).unwrap();
        assert!(v.verify(&wrong_key).is_err());
        let unknown = sign_hs256(Some("k9"), SECRET, &claims(60)).unwrap();
        assert!(v.verify(&unknown).unwrap_err().message.contains("k9"));
        // Tamper with the payload: promote to admin.
        let good = sign_hs256(Some("k1"), SECRET, &claims(60)).unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = claims(60);
        c.role = Role::Admin;
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_vec(&c).unwrap()),
            parts[2]
        );
        assert!(v.verify(&forged).is_err());
        // alg=none with no signature.
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
            b64(&serde_json::to_vec(&claims(60)).unwrap())
        );
        assert!(v.verify(&none).is_err());
        // Wrong audience and issuer.
        let mut c = claims(60);
        c.aud = "someone-else".into();
        assert!(
            v.verify(&sign_hs256(Some("k1"), SECRET, &c).unwrap())
                .is_err()
        );
        let mut c = claims(60);
        c.iss = "evil".into();
        assert!(
            v.verify(&sign_hs256(Some("k1"), SECRET, &c).unwrap())
                .is_err()
        );
        // Not yet valid.
        let mut c = claims(3600);
        c.nbf = Some(jsonwebtoken::get_current_timestamp() + 600);
        assert!(
            v.verify(&sign_hs256(Some("k1"), SECRET, &c).unwrap())
                .is_err()
        );
    }

    fn b64(bytes: &[u8]) -> String {
        // base64url without padding, enough for tests
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn parses_key_specs_with_clear_errors() {
        let keys =
            parse_keys(&["k1:HS256:secret=0123456789abcdef0123456789abcdef".into()]).unwrap();
        assert_eq!(keys[0].kid.as_deref(), Some("k1"));
        assert!(
            parse_keys(&["k1:HS256:secret=short".into()])
                .unwrap_err()
                .contains("32 bytes")
        );
        assert!(
            parse_keys(&["k1:XX:secret=0123456789abcdef0123456789abcdef".into()])
                .unwrap_err()
                .contains("unknown algorithm")
        );
        let err = parse_keys(&["oops".into()]).unwrap_err();
        assert!(err.contains("kid:alg"), "{err}");
        assert!(
            parse_keys(&["k1:EdDSA:pem-file=/nonexistent".into()])
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
