//! Access tokens: short-lived JWTs signed with Ed25519 (`alg: EdDSA`).
//!
//! Verification pins the algorithm (a token claiming `none`, HS256 or
//! anything else is refused before any key is looked up), looks the `kid` up
//! in our own key list, and requires `exp`, `nbf`, `iss`, `aud` and `sub`.

use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use super::keys::KeyRing;
use crate::users::{Role, User};

/// Longest token we try to parse.
const MAX_TOKEN_BYTES: usize = 4096;
/// Clock skew tolerated between server nodes and tablets.
const LEEWAY_SECS: u64 = 30;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    /// Unique id of this token (for logs).
    pub jti: String,
    pub role: Role,
    /// The device the user logged in from; bound to its sync peer id.
    pub did: String,
    /// The username, for display and logs.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// Why a token was refused. The client only ever sees "unauthorized"; the
/// reason goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is too long")]
    TooLong,
    #[error("malformed token header: {0}")]
    Header(jsonwebtoken::errors::Error),
    #[error("algorithm {0:?} is not accepted (only EdDSA)")]
    Algorithm(Algorithm),
    #[error("the token names no key id")]
    NoKid,
    #[error("unknown key id `{0}`")]
    UnknownKid(String),
    #[error("invalid token: {0}")]
    Invalid(jsonwebtoken::errors::Error),
    #[error("cannot sign the token: {0}")]
    Sign(jsonwebtoken::errors::Error),
    #[error("no active signing key")]
    NoSigningKey,
}

/// Signs and verifies access tokens with one key list.
#[derive(Debug)]
pub struct TokenService {
    keys: KeyRing,
    issuer: String,
    audience: String,
    ttl_secs: i64,
    validation: Validation,
}

impl TokenService {
    /// Tokens from `issuer` for `audience`, living `ttl_secs`.
    pub fn new(keys: KeyRing, issuer: &str, audience: &str, ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        Self {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl_secs: i64::try_from(ttl_secs).unwrap_or(900),
            validation,
        }
    }

    /// The key list.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Lifetime of new tokens, in seconds.
    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// A signed token for `user` on `device_id`, valid from `now_unix`.
    pub fn issue(&self, user: &User, device_id: &str, now_unix: i64) -> Result<String, TokenError> {
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user.id.clone(),
            exp: now_unix + self.ttl_secs,
            nbf: now_unix,
            iat: now_unix,
            jti: uuid::Uuid::now_v7().simple().to_string(),
            role: user.role,
            did: device_id.to_owned(),
            name: user.username.clone(),
            team: user.team_id.clone(),
            unit: user.unit_code.clone(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.keys.active_kid().to_owned());
        let key = self.keys.encoding_key().ok_or(TokenError::NoSigningKey)?;
        jsonwebtoken::encode(&header, &claims, key).map_err(TokenError::Sign)
    }

    /// The claims of a valid token.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(TokenError::Header)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Algorithm(header.alg));
        }
        let kid = header.kid.ok_or(TokenError::NoKid)?;
        let key = self
            .keys
            .decoding_key(&kid)
            .ok_or_else(|| TokenError::UnknownKid(kid.chars().take(64).collect()))?;
        jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(TokenError::Invalid)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ed25519_dalek::SigningKey;

    fn service(seed: u8, kid: &str) -> TokenService {
        let ring =
            KeyRing::from_keys(vec![(kid.into(), SigningKey::from_bytes(&[seed; 32]))]).unwrap();
        TokenService::new(ring, "kiemtra", "kiemtra-api", 900)
    }

    fn user() -> User {
        User {
            id: "u-1".into(),
            username: "inspector1".into(),
            display_name: "Kiểm tra viên 1".into(),
            role: Role::Inspector,
            team_id: Some("team-a".into()),
            team_name: Some("Đoàn A".into()),
            unit_code: None,
            disabled: false,
            created_at: "2025-07-01T00:00:00Z".into(),
        }
    }

    fn now() -> i64 {
        jiff::Timestamp::now().as_second()
    }

    #[test]
    fn issued_tokens_verify() {
        let s = service(7, "k1");
        let t = s.issue(&user(), "tablet-1", now()).unwrap();
        let c = s.verify(&t).unwrap();
        assert_eq!(c.sub, "u-1");
        assert_eq!(c.role, Role::Inspector);
        assert_eq!(c.did, "tablet-1");
        assert_eq!(c.team.as_deref(), Some("team-a"));
        assert_eq!(c.exp - c.nbf, 900);
    }

    #[test]
    fn expired_tokens_are_refused() {
        let s = service(7, "k1");
        let t = s.issue(&user(), "d", now() - 3600).unwrap();
        assert!(matches!(s.verify(&t), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn tokens_of_another_key_with_the_same_kid_are_refused() {
        let ours = service(7, "k1");
        let theirs = service(8, "k1");
        let t = theirs.issue(&user(), "d", now()).unwrap();
        assert!(matches!(ours.verify(&t), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn unknown_kids_are_refused() {
        let ours = service(7, "k1");
        let theirs = service(7, "k2");
        let t = theirs.issue(&user(), "d", now()).unwrap();
        assert!(matches!(ours.verify(&t), Err(TokenError::UnknownKid(_))));
    }

    #[test]
    fn alg_none_and_hs256_are_refused() {
        let s = service(7, "k1");
        let good = s.issue(&user(), "d", now()).unwrap();
        let payload = good.split('.').nth(1).unwrap();
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        let none_token = format!("{none_header}.{payload}.");
        assert!(s.verify(&none_token).is_err());
        let hs = jsonwebtoken::encode(
            &Header {
                kid: Some("k1".into()),
                ..Header::new(Algorithm::HS256)
            },
            &s.verify(&good).unwrap(),
            &jsonwebtoken::EncodingKey::from_secret(b"k1"),
        )
        .unwrap();
        assert!(matches!(s.verify(&hs), Err(TokenError::Algorithm(_))));
    }

    #[test]
    fn wrong_audience_is_refused() {
        let s = service(7, "k1");
        let other = TokenService::new(
            KeyRing::from_keys(vec![("k1".into(), SigningKey::from_bytes(&[7; 32]))]).unwrap(),
            "kiemtra",
            "someone-else",
            900,
        );
        let t = other.issue(&user(), "d", now()).unwrap();
        assert!(matches!(s.verify(&t), Err(TokenError::Invalid(_))));
    }
}
