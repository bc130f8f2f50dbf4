//! The REST handlers under `/api/v1`.
//!
//! - `GET  /health` — the database answers a query.
//! - `GET  /version` — crate and schema versions.
//! - `POST /auth/login` `{"username","password","device_id"}` → tokens.
//! - `POST /auth/refresh` `{"refresh_token"}` → tokens (rotated).
//! - `POST /auth/logout` `{"refresh_token"}` → 204, the device's session revoked.
//! - `GET  /me` — the caller as the access token describes them.
//! - `GET  /units?structure=post_2025&type=ward` — units and departments.
//! - `GET  /templates` — published checklist templates (without content).
//! - `GET  /templates/{template_id}/{version}` — one template's canonical JSON.

use std::net::SocketAddr;
use std::time::Instant;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::audit::{self, AuditEntry};
use crate::auth::AuthUser;
use crate::auth::refresh::{self, NewRefreshToken, Rotation};
use crate::clock;
use crate::db::DbError;
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::reference::{self, UnitView};
use crate::users::{self, User};

/// The client's IP address, or `unknown` when the server runs without
/// connection info (for example under a test harness calling the router).
#[derive(Debug, Clone)]
pub struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string()),
        ))
    }
}

/// `GET /api/v1/health`
pub async fn health(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state
        .db
        .read(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map_err(DbError::from)
        })
        .await
        .map_err(|e| ApiError::Unavailable(format!("database check failed: {e}")))?;
    Ok(Json(json!({ "status": "ok", "database": "ok" })))
}

/// `GET /api/v1/version`
pub async fn version(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "name": "kiemtra",
        "version": env!("CARGO_PKG_VERSION"),
        "schema_version": state.db.schema_version(),
        "document_store_version": state.db.document_store_version(),
    }))
}

/// Body of `POST /api/v1/auth/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    pub device_id: String,
}

/// Body of `POST /api/v1/auth/refresh` and `/logout`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

// Requests carry secrets: their Debug output must not.
impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("password", &"***")
            .field("device_id", &self.device_id)
            .finish()
    }
}

impl std::fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshRequest(***)")
    }
}

/// Answer of login and refresh.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until `access_token` expires.
    pub expires_in: i64,
    pub token_type: String,
}

/// Device ids are chosen by clients; keep them short and printable.
fn check_device_id(id: &str) -> Result<(), ApiError> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "device_id must be 1–128 characters of letters, digits, '-', '_', '.', ':'".into(),
        ))
    }
}

/// `POST /api/v1/auth/login`
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    check_device_id(&req.device_id)?;
    // Limit before any work: per address first, then per account name.
    let now = Instant::now();
    let account_key: String = req
        .username
        .trim()
        .to_lowercase()
        .chars()
        .take(64)
        .collect();
    for (limiter, key) in [
        (&state.auth.login_by_ip, ip.as_str()),
        (&state.auth.login_by_account, account_key.as_str()),
    ] {
        if let Err(retry) = limiter.check(key, now) {
            tracing::warn!(ip = %ip, "login rate limit reached");
            return Err(ApiError::RateLimited {
                retry_after_secs: retry.as_header_secs(),
            });
        }
    }

    let found = match users::normalize_username(&req.username) {
        Ok(name) => {
            state
                .db
                .read(move |c| users::find_with_hash(c, &name))
                .await?
        }
        Err(_) => None,
    };
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    // Unknown users are checked against a dummy hash: same time, same answer.
    let password_ok = state.auth.passwords.verify(req.password, hash).await?;
    let now_ts = clock::now();
    let at = clock::rfc3339(now_ts);
    let user = match user {
        Some(user) if password_ok && !user.disabled => user,
        other => {
            let reason = match &other {
                None => "unknown_user",
                Some(u) if u.disabled => "disabled",
                Some(_) => "wrong_password",
            };
            let subject = account_key.clone();
            let actor = other.map(|u| u.id);
            state
                .db
                .write(move |tx| {
                    audit::append(
                        tx,
                        &at,
                        &AuditEntry {
                            actor: actor.as_deref(),
                            action: "auth.login_failed",
                            subject: &subject,
                            detail: json!({ "ip": ip, "reason": reason }),
                        },
                    )
                    .map_err(ApiError::from)
                })
                .await?;
            return Err(ApiError::InvalidCredentials);
        }
    };

    let now_unix = now_ts.as_second();
    let access_token = state.auth.tokens.issue(&user, &req.device_id, now_unix)?;
    let refresh = NewRefreshToken::generate().map_err(ApiError::internal)?;
    let refresh_token = refresh.token.clone();
    let ttl = state.auth.refresh_ttl_secs;
    let device_id = req.device_id;
    state
        .db
        .write(move |tx| {
            let family = refresh::start_family(tx, &refresh, &user.id, &device_id, now_unix, ttl)?;
            audit::append(
                tx,
                &at,
                &AuditEntry {
                    actor: Some(&user.id),
                    action: "auth.login",
                    subject: &user.username,
                    detail: json!({ "ip": ip, "device_id": device_id, "family": family }),
                },
            )?;
            Ok::<_, ApiError>(())
        })
        .await?;
    Ok(Json(TokenResponse {
        access_token,
        refresh_token,
        expires_in: state.auth.tokens.ttl_secs(),
        token_type: "Bearer".into(),
    }))
}

/// `POST /api/v1/auth/refresh`
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    if !refresh::well_formed(&req.refresh_token) {
        return Err(ApiError::InvalidRefreshToken);
    }
    let presented = refresh::hash_token(&req.refresh_token);
    let next = NewRefreshToken::generate().map_err(ApiError::internal)?;
    let next_token = next.token.clone();
    let now_ts = clock::now();
    let now_unix = now_ts.as_second();
    let at = clock::rfc3339(now_ts);
    let ttl = state.auth.refresh_ttl_secs;
    let outcome = state
        .db
        .write(move |tx| {
            let outcome = refresh::rotate(tx, &presented, &next, now_unix, ttl)?;
            if let Rotation::Reused { user_id, family_id } = &outcome {
                audit::append(
                    tx,
                    &at,
                    &AuditEntry {
                        actor: Some(user_id),
                        action: "auth.refresh_reuse",
                        subject: family_id,
                        detail: json!({ "revoked": "family" }),
                    },
                )?;
            }
            Ok::<_, ApiError>(outcome)
        })
        .await?;
    let (user, device_id): (User, String) = match outcome {
        Rotation::Rotated { user, device_id } => (user, device_id),
        Rotation::Reused { user_id, .. } => {
            tracing::warn!(user.id = %user_id, "refresh token reused; session revoked");
            return Err(ApiError::InvalidRefreshToken);
        }
        Rotation::Refused => return Err(ApiError::InvalidRefreshToken),
    };
    let access_token = state.auth.tokens.issue(&user, &device_id, now_unix)?;
    Ok(Json(TokenResponse {
        access_token,
        refresh_token: next_token,
        expires_in: state.auth.tokens.ttl_secs(),
        token_type: "Bearer".into(),
    }))
}

/// `POST /api/v1/auth/logout`: revokes the device's session. Answers 204
/// for unknown tokens too, so it tells nothing about them.
pub async fn logout(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    if !refresh::well_formed(&req.refresh_token) {
        return Ok(StatusCode::NO_CONTENT);
    }
    let presented = refresh::hash_token(&req.refresh_token);
    let now_ts = clock::now();
    let at = clock::rfc3339(now_ts);
    state
        .db
        .write(move |tx| {
            if let Some(user_id) = refresh::revoke(tx, &presented, now_ts.as_second())? {
                audit::append(
                    tx,
                    &at,
                    &AuditEntry {
                        actor: Some(&user_id),
                        action: "auth.logout",
                        subject: &user_id,
                        detail: json!({}),
                    },
                )?;
            }
            Ok::<_, ApiError>(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Answer of `GET /api/v1/me`.
#[derive(Debug, Serialize)]
pub struct Me {
    pub user_id: String,
    pub username: String,
    pub role: crate::users::Role,
    pub team_id: Option<String>,
    pub unit_code: Option<String>,
    pub device_id: String,
}

/// `GET /api/v1/me`
pub async fn me(user: AuthUser) -> Json<Me> {
    Json(Me {
        user_id: user.user_id,
        username: user.username,
        role: user.role,
        team_id: user.team_id,
        unit_code: user.unit_code,
        device_id: user.device_id,
    })
}

/// Query of `GET /api/v1/units`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitsQuery {
    pub structure: Option<String>,
    #[serde(rename = "type")]
    pub unit_type: Option<String>,
    /// Accepted (and ignored) so browsers can authenticate with `?token=`.
    pub token: Option<String>,
}

/// `GET /api/v1/units`
pub async fn units(
    _user: AuthUser,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<UnitsQuery>,
) -> Result<Json<Vec<UnitView>>, ApiError> {
    let structure = q
        .structure
        .unwrap_or_else(|| reference::CURRENT_STRUCTURE.to_owned());
    if !reference::STRUCTURES.contains(&structure.as_str()) {
        return Err(ApiError::BadRequest(format!(
            "unknown structure `{structure}`; use pre_2025 or post_2025"
        )));
    }
    if let Some(t) = &q.unit_type
        && !reference::UNIT_TYPES.contains(&t.as_str())
        && t != reference::DEPARTMENT_UNIT_TYPE
    {
        return Err(ApiError::BadRequest(format!(
            "unknown type `{t}`; use one of {}, {}",
            reference::UNIT_TYPES.join(", "),
            reference::DEPARTMENT_UNIT_TYPE
        )));
    }
    let list = state
        .db
        .read(move |c| {
            reference::list_units(c, &structure, q.unit_type.as_deref()).map_err(ApiError::from)
        })
        .await?;
    Ok(Json(list))
}

/// `GET /api/v1/templates`
pub async fn templates(
    _user: AuthUser,
    State(state): State<AppState>,
) -> Result<Json<Vec<crate::templates::TemplateSummary>>, ApiError> {
    let list = state
        .db
        .read(|c| crate::templates::list(c).map_err(ApiError::from))
        .await?;
    Ok(Json(list))
}

/// `GET /api/v1/templates/{template_id}/{version}`: the canonical JSON,
/// whose sha256 is the one listed.
pub async fn template(
    _user: AuthUser,
    State(state): State<AppState>,
    Path((template_id, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let version: u32 = version
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("version `{version}` is not a number")))?;
    let id = template_id.clone();
    let json = state
        .db
        .read(move |c| crate::templates::get_json(c, &id, version).map_err(ApiError::from))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no template {template_id}@{version}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json))
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// A known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
