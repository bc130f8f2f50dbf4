//! The server's HTTP endpoints the tablet uses: login and refresh, who am I,
//! which documents to start from, templates, and tus 1.0 photo uploads.
//!
//! Every function maps transport failures to [`FieldError::Network`] (retry
//! later) and error answers to the case the app can act on: 401 on a token
//! to [`FieldError::NeedsLogin`], 401 on a password to
//! [`FieldError::InvalidCredentials`], others to [`FieldError::Server`]
//! with the server's own message.
#![forbid(unsafe_code)]

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Client, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::error::{FieldError, Result};

/// The tus protocol version spoken.
pub const TUS_VERSION: &str = "1.0.0";

/// Tokens from login or refresh.
#[derive(Clone, Deserialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until `access_token` expires.
    pub expires_in: i64,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// `GET /api/v1/me`.
#[derive(Debug, Clone, Deserialize)]
pub struct Me {
    pub user_id: String,
    pub username: String,
    pub role: String,
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default)]
    pub unit_code: Option<String>,
}

/// `GET /api/v1/me/documents`: where a device starts syncing.
#[derive(Debug, Clone, Deserialize)]
pub struct MyDocuments {
    pub index_doc_url: String,
    #[serde(default)]
    pub catalog_doc_url: Option<String>,
}

/// `GET /api/v1/blobs/missing`.
#[derive(Debug, Clone, Deserialize)]
pub struct MissingBlobs {
    /// sha256 of each photo the server lacks.
    pub missing: Vec<String>,
    /// More are missing than were listed.
    #[serde(default)]
    pub truncated: bool,
}

/// Metadata sent when creating a tus upload.
#[derive(Debug, Clone)]
pub struct UploadMeta<'a> {
    pub sha256: &'a str,
    pub mime: &'a str,
    pub filename: &'a str,
}

/// The server's HTTP API at one base URL.
#[derive(Debug, Clone)]
pub struct ServerApi {
    base: String,
    client: Client,
}

impl ServerApi {
    /// `base` is `http(s)://host[:port]`; a trailing `/` is ignored.
    pub fn new(base: &str, timeout: Duration) -> Result<Self> {
        let base = normalize_base(base)?;
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(15)))
            .build()
            .map_err(|e| FieldError::Network(format!("cannot set up HTTP: {e}")))?;
        Ok(Self { base, client })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The WebSocket URL of the sync endpoint.
    pub fn sync_url(&self) -> String {
        let rest = self
            .base
            .strip_prefix("https://")
            .map(|r| format!("wss://{r}"))
            .or_else(|| {
                self.base
                    .strip_prefix("http://")
                    .map(|r| format!("ws://{r}"))
            })
            .unwrap_or_else(|| self.base.clone());
        format!("{rest}/sync")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_id: &str,
    ) -> Result<TokenPair> {
        let r = self
            .client
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({ "username": username, "password": password, "device_id": device_id }))
            .send()
            .await
            .map_err(|e| network(&self.base, e))?;
        if r.status() == StatusCode::UNAUTHORIZED {
            return Err(FieldError::InvalidCredentials);
        }
        json_of(r).await
    }

    /// Rotates the refresh token. A refused token means logging in again.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair> {
        let r = self
            .client
            .post(self.url("/api/v1/auth/refresh"))
            .json(&json!({ "refresh_token": refresh_token }))
            .send()
            .await
            .map_err(|e| network(&self.base, e))?;
        if r.status() == StatusCode::UNAUTHORIZED {
            return Err(FieldError::NeedsLogin(
                "the session expired or was revoked; log in again (nothing on this device is lost)"
                    .into(),
            ));
        }
        json_of(r).await
    }

    pub async fn me(&self, token: &str) -> Result<Me> {
        self.get_json("/api/v1/me", token).await
    }

    pub async fn my_documents(&self, token: &str) -> Result<MyDocuments> {
        self.get_json("/api/v1/me/documents", token).await
    }

    /// A template's canonical JSON.
    pub async fn template(&self, token: &str, template_id: &str, version: u32) -> Result<String> {
        let r = self
            .client
            .get(self.url(&format!("/api/v1/templates/{template_id}/{version}")))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| network(&self.base, e))?;
        let r = check(r).await?;
        r.text().await.map_err(|e| network(&self.base, e))
    }

    /// `GET /api/v1/blobs/missing`: photos the caller's documents reference
    /// that the server does not hold.
    pub async fn missing_blobs(&self, token: &str) -> Result<MissingBlobs> {
        self.get_json("/api/v1/blobs/missing", token).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str, token: &str) -> Result<T> {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| network(&self.base, e))?;
        json_of(r).await
    }

    // ----- tus 1.0 (core + creation) ---------------------------------------

    /// Creates an upload of `length` bytes; returns its URL.
    pub async fn tus_create(
        &self,
        token: &str,
        length: u64,
        meta: &UploadMeta<'_>,
    ) -> Result<String> {
        let metadata = [
            ("sha256", meta.sha256),
            ("filename", meta.filename),
            ("filetype", meta.mime),
        ]
        .iter()
        .map(|(k, v)| format!("{k} {}", STANDARD.encode(v.as_bytes())))
        .collect::<Vec<_>>()
        .join(",");
        let r = self
            .client
            .post(self.url("/api/v1/uploads"))
            .bearer_auth(token)
            .header("Tus-Resumable", TUS_VERSION)
            .header("Upload-Length", length.to_string())
            .header("Upload-Metadata", metadata)
            .send()
            .await
            .map_err(|e| network(&self.base, e))?;
        let r = check(r).await?;
        let location = r
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                FieldError::Server("the upload was created without a Location header".into())
            })?;
        Ok(self.absolute(location))
    }

    /// The offset the server holds for an upload; `None` when the upload is
    /// gone (expired or unknown) and must be created again.
    pub async fn tus_offset(&self, token: &str, url: &str) -> Result<Option<u64>> {
        let r = self
            .client
            .head(url)
            .bearer_auth(token)
            .header("Tus-Resumable", TUS_VERSION)
            .send()
            .await
            .map_err(|e| network(&self.base, e))?;
        if matches!(
            r.status(),
            StatusCode::NOT_FOUND | StatusCode::GONE | StatusCode::FORBIDDEN
        ) {
            return Ok(None);
        }
        let r = check(r).await?;
        upload_offset(&r).map(Some)
    }

    /// Sends `chunk` at `offset`; returns the server's new offset.
    pub async fn tus_patch(
        &self,
        token: &str,
        url: &str,
        offset: u64,
        chunk: Vec<u8>,
    ) -> Result<u64> {
        let r = self
            .client
            .patch(url)
            .bearer_auth(token)
            .header("Tus-Resumable", TUS_VERSION)
            .header("Upload-Offset", offset.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .body(chunk)
            .send()
            .await
            .map_err(|e| network(&self.base, e))?;
        if r.status() == StatusCode::CONFLICT {
            return Err(FieldError::Sync(
                "the upload offset no longer matches the server's; resuming from the server's offset"
                    .into(),
            ));
        }
        let r = check(r).await?;
        upload_offset(&r)
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else if location.starts_with('/') {
            self.url(location)
        } else {
            format!("{}/api/v1/uploads/{location}", self.base)
        }
    }
}

fn upload_offset(r: &Response) -> Result<u64> {
    r.headers()
        .get("Upload-Offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| FieldError::Server("the upload answer has no Upload-Offset header".into()))
}

/// Checks and trims a server base URL.
pub fn normalize_base(base: &str) -> Result<String> {
    let b = base.trim().trim_end_matches('/');
    if !(b.starts_with("http://") || b.starts_with("https://")) || b.len() <= "https://".len() {
        return Err(FieldError::InvalidInput(format!(
            "server URL {base:?} must start with http:// or https://, e.g. https://kiemtra.example.vn"
        )));
    }
    Ok(b.to_owned())
}

fn network(base: &str, e: reqwest::Error) -> FieldError {
    FieldError::Network(format!(
        "cannot reach the server at {base}: {e}; your work is kept on the device, sync again when online"
    ))
}

/// Passes a success; turns an error answer into a [`FieldError`].
async fn check(r: Response) -> Result<Response> {
    let status = r.status();
    if status.is_success() {
        return Ok(r);
    }
    let body = r.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect());
    Err(match status {
        StatusCode::UNAUTHORIZED => FieldError::NeedsLogin(format!(
            "the server refused the access token ({message}); log in again"
        )),
        StatusCode::FORBIDDEN => FieldError::NotAllowed(format!("the server refused: {message}")),
        StatusCode::NOT_FOUND => {
            FieldError::NotFound(format!("the server has no such thing: {message}"))
        }
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            FieldError::Server(format!("the server failed ({s}): {message}; retry later"))
        }
        s => FieldError::Server(format!("the server refused the request ({s}): {message}")),
    })
}

async fn json_of<T: serde::de::DeserializeOwned>(r: Response) -> Result<T> {
    let r = check(r).await?;
    let bytes = r
        .bytes()
        .await
        .map_err(|e| FieldError::Network(format!("the server's answer was cut: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        FieldError::Server(format!("the server's answer is not what was expected: {e}"))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked_and_sync_urls_derived() {
        let api = ServerApi::new("http://127.0.0.1:8080/", Duration::from_secs(5)).unwrap();
        assert_eq!(api.base(), "http://127.0.0.1:8080");
        assert_eq!(api.sync_url(), "ws://127.0.0.1:8080/sync");
        let tls = ServerApi::new("https://kiemtra.example.vn", Duration::from_secs(5)).unwrap();
        assert_eq!(tls.sync_url(), "wss://kiemtra.example.vn/sync");
        assert!(matches!(
            normalize_base("ftp://x").unwrap_err(),
            FieldError::InvalidInput(_)
        ));
        assert!(normalize_base("http://").is_err());
        assert_eq!(
            api.absolute("/api/v1/uploads/abc"),
            "http://127.0.0.1:8080/api/v1/uploads/abc"
        );
        assert_eq!(api.absolute("http://other/x"), "http://other/x");
    }
}
