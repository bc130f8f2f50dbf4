//! Errors become HTTP responses here, and only here.
//!
//! Every handler returns `Result<_, ApiError>`. The body is always
//! `{"error": {"code": "...", "message": "..."}}`; `code` is stable for
//! programs, `message` is for people. 5xx bodies are generic: the details
//! are logged once, in [`IntoResponse`], and never sent to the client.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::auth::password::PasswordError;
use crate::auth::tokens::TokenError;
use crate::db::DbError;
use crate::users::UserError;

/// What went wrong, as the client sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("wrong username or password")]
    InvalidCredentials,
    #[error("missing or invalid access token")]
    Unauthorized,
    #[error("invalid or expired refresh token; log in again")]
    InvalidRefreshToken,
    #[error("you may not do this")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("this endpoint does not accept that method")]
    MethodNotAllowed,
    #[error("too many attempts; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("service unavailable")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
    /// A refusal whose status the variants above do not cover (the tus and
    /// blob endpoints: 409, 410, 412, 415, 416, 422, 423), with its own
    /// stable `code`. Always a 4xx.
    #[error("{message}")]
    Refused {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
}

impl ApiError {
    /// An internal error; `detail` goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        ApiError::Internal(detail.to_string())
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InvalidRefreshToken => (StatusCode::UNAUTHORIZED, "invalid_refresh_token"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Refused { status, code, .. } => (*status, code),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            ApiError::Internal(detail) => tracing::error!(error = %detail, "request failed"),
            ApiError::Unavailable(detail) => tracing::warn!(error = %detail, "service unavailable"),
            _ => {}
        }
        let body = Json(json!({ "error": { "code": code, "message": self.to_string() } }));
        let mut response = (status, body).into_response();
        match self {
            ApiError::RateLimited { retry_after_secs } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::WriterStopped | DbError::Closed => ApiError::Unavailable(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Db(db) => db.into(),
            UserError::NotFound(_) => ApiError::NotFound(e.to_string()),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl From<PasswordError> for ApiError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::TooShort | PasswordError::TooLong => ApiError::BadRequest(e.to_string()),
            PasswordError::Cancelled => ApiError::Unavailable(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Sign(_) | TokenError::NoSigningKey => ApiError::Internal(e.to_string()),
            other => {
                tracing::debug!(reason = %other, "access token refused");
                ApiError::Unauthorized
            }
        }
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s (JSON bodies, 413 for too
/// large), instead of axum's plain-text ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::BadRequest(rejection.body_text())
    }
}

/// `Query<T>` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::BadRequest(rejection.body_text())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn body(e: ApiError) -> (StatusCode, serde_json::Value, Response) {
        let r = e.into_response();
        let status = r.status();
        let (parts, b) = r.into_parts();
        let bytes = axum::body::to_bytes(b, 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        (
            status,
            v,
            Response::from_parts(parts, axum::body::Body::empty()),
        )
    }

    #[tokio::test]
    async fn internal_errors_are_generic() {
        let (status, v, _) = body(ApiError::internal("disk I/O error at /secret/path")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(v["error"]["code"], "internal");
        assert_eq!(v["error"]["message"], "internal error");
    }

    #[tokio::test]
    async fn rate_limits_carry_retry_after() {
        let (status, v, r) = body(ApiError::RateLimited {
            retry_after_secs: 42,
        })
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(r.headers()[header::RETRY_AFTER], "42");
    }
}
