//! Authentication: passwords, access tokens, refresh tokens, login rate
//! limits, and the [`AuthUser`] extractor every protected handler takes.
//!
//! - [`password`]: argon2id hashing off the async workers, capped.
//! - [`keys`]: the Ed25519 key list in the data folder.
//! - [`tokens`]: EdDSA JWTs (`kid`, `exp`, `nbf`, `iss`, `aud`, `sub`, role, `did`).
//! - [`refresh`]: opaque rotating refresh tokens with reuse detection.
//! - [`ratelimit`]: per-account and per-IP login limits.

pub mod keys;
pub mod password;
pub mod ratelimit;
pub mod refresh;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use serde::Deserialize;

use crate::error::ApiError;
use crate::settings::AuthSettings;
use crate::users::Role;
use keys::KeyRing;
use password::Passwords;
use ratelimit::RateLimiter;
use tokens::{AccessClaims, TokenService};

/// Everything authentication needs at run time.
#[derive(Debug)]
pub struct Auth {
    pub tokens: TokenService,
    pub passwords: Passwords,
    pub login_by_ip: RateLimiter,
    pub login_by_account: RateLimiter,
    /// Lifetime of refresh tokens, in seconds.
    pub refresh_ttl_secs: i64,
}

impl Auth {
    /// Builds the services from settings and a loaded key list.
    pub fn new(settings: &AuthSettings, keys: KeyRing) -> Self {
        Self {
            tokens: TokenService::new(
                keys,
                &settings.issuer,
                &settings.audience,
                settings.access_token_ttl_secs,
            ),
            passwords: Passwords::new(
                settings.password_hash_concurrency,
                settings.password_pepper.as_ref().map(|p| p.expose()),
            ),
            login_by_ip: RateLimiter::new(
                settings.login_burst_per_ip,
                Duration::from_secs(settings.login_refill_secs_per_ip),
            ),
            login_by_account: RateLimiter::new(
                settings.login_burst_per_account,
                Duration::from_secs(settings.login_refill_secs_per_account),
            ),
            refresh_ttl_secs: i64::try_from(settings.refresh_token_ttl_days)
                .unwrap_or(30)
                .saturating_mul(86_400),
        }
    }
}

/// The caller of a request, from a valid access token.
///
/// Taken from `Authorization: Bearer <jwt>` or, for browsers opening a
/// WebSocket (which cannot set headers), from `?token=<jwt>`. A missing or
/// invalid token is a 401 with a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: String,
    pub username: String,
    pub role: Role,
    pub team_id: Option<String>,
    pub unit_code: Option<String>,
    pub device_id: String,
}

impl From<AccessClaims> for AuthUser {
    fn from(c: AccessClaims) -> Self {
        Self {
            user_id: c.sub,
            username: c.name,
            role: c.role,
            team_id: c.team,
            unit_code: c.unit,
            device_id: c.did,
        }
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The token in the `Authorization` header or the `token` query parameter.
fn presented_token(parts: &Parts) -> Result<String, ApiError> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| ApiError::Unauthorized)?;
        let (scheme, token) = value.split_once(' ').ok_or(ApiError::Unauthorized)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthorized);
        }
        return Ok(token.trim().to_owned());
    }
    axum::extract::Query::<TokenQuery>::try_from_uri(&parts.uri)
        .ok()
        .and_then(|q| q.0.token)
        .ok_or(ApiError::Unauthorized)
}

impl<S> FromRequestParts<S> for AuthUser
where
    Arc<Auth>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Arc::<Auth>::from_ref(state);
        let token = presented_token(parts)?;
        let claims = auth.tokens.verify(&token)?;
        Ok(AuthUser::from(claims))
    }
}
