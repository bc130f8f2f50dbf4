//! `server`: kiemtra's central server, as a library; the `kiemtra` binary is
//! a thin `main` around it.
//!
//! - [`start`] opens the data folder (database, signing keys, demo check) and
//!   returns the [`AppState`] every handler shares.
//! - [`app`] builds the axum [`Router`]; [`serve`] runs it on a listener until
//!   a shutdown future completes, then finishes in-flight requests and
//!   writes and closes the database.
//! - [`db`] is the SQLite store (one group-commit writer thread, a reader
//!   pool); [`auth`] passwords, tokens and the [`auth::AuthUser`] extractor;
//!   [`reference`] units and departments; [`templates`] checklist templates; [`audit`] the hash-chained log;
//!   [`demo`] demo mode; [`cli`] the command line; [`error`] the single place
//!   where errors become HTTP responses.
//!
//! Architecture invariant: no rusqlite call runs on an async worker thread;
//! every write goes through [`db::Db::write`] and is answered after COMMIT.

pub mod api;
pub mod audit;
pub mod auth;
pub mod blobs;
pub mod cli;
pub mod clock;
pub mod db;
pub mod demo;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspections;
pub mod projection;
pub mod reference;
pub mod settings;
pub mod sync;
pub mod telemetry;
pub mod templates;
pub mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath};
use axum::http::Request;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use auth::Auth;
use auth::keys::{KeyError, KeyRing};
use db::{Db, DbError};
use demo::{DemoError, Prepared};
use settings::Settings;

/// What every request handler shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: Db,
    pub auth: Arc<Auth>,
    /// The `/sync` hub thread; every document write goes through it.
    pub sync: sync::SyncService,
    /// Photo uploads (tus), the blob store and the image pipeline.
    pub blobs: blobs::BlobService,
}

impl FromRef<AppState> for Arc<Auth> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.auth)
    }
}

impl FromRef<AppState> for Db {
    fn from_ref(state: &AppState) -> Self {
        state.db.clone()
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data folder {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the database: {0}")]
    Db(#[from] DbError),
    #[error("cannot load the token signing keys: {0}")]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Demo(#[from] DemoError),
    #[error("a start-up task failed: {0}")]
    Task(String),
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the database did not close cleanly: {0}")]
    Close(#[from] DbError),
}

/// Opens the data folder: database (migrated), signing keys (created on
/// first start), and the demo-mode check (seeding an empty demo database).
pub async fn start(settings: Settings) -> Result<(AppState, Prepared), StartError> {
    let data_dir = settings.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let db = open_db(&settings).await?;
    let keys_dir = settings.keys_dir();
    let keys = match tokio::task::spawn_blocking(move || KeyRing::load_or_create(&keys_dir)).await {
        Ok(Ok(keys)) => keys,
        Ok(Err(e)) => return Err(close_after(&db, e.into()).await),
        Err(e) => return Err(close_after(&db, StartError::Task(e.to_string())).await),
    };
    let auth = Arc::new(Auth::new(&settings.auth, keys));
    let prepared = match demo::prepare(
        &db,
        &auth.passwords,
        settings.demo,
        clock::rfc3339(clock::now()),
    )
    .await
    {
        Ok(p) => p,
        Err(e) => return Err(close_after(&db, e.into()).await),
    };
    let templates = match db.read(inspections::load_templates).await {
        Ok(t) => t,
        Err(e) => return Err(close_after(&db, e.into()).await),
    };
    let sync = match sync::SyncService::start(
        db.clone(),
        db.path().to_path_buf(),
        templates,
        &settings.sync,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return Err(close_after(&db, StartError::Task(e.to_string())).await),
    };
    let blobs = match blobs::BlobService::open(&settings) {
        Ok(b) => b,
        Err(e) => {
            let err = StartError::DataDir {
                path: e.path,
                source: e.source,
            };
            return Err(close_after(&db, err).await);
        }
    };
    let state = AppState {
        settings: Arc::new(settings),
        db: db.clone(),
        auth,
        sync,
        blobs,
    };
    if let Err(e) = inspections::ensure_catalog(&state.db, &state.sync).await {
        return Err(close_after(&db, StartError::Task(format!("catalog document: {e}"))).await);
    }
    if !matches!(prepared, demo::Prepared::Standard)
        && let Err(e) = demo::schedule_inspections(&state).await
    {
        return Err(close_after(&db, StartError::Task(format!("demo inspections: {e}"))).await);
    }
    // Expired uploads are swept until the database closes.
    state.blobs.spawn_cleanup(state.db.clone());
    tracing::info!(
        db = %db.path().display(),
        schema = db.schema_version(),
        kid = state.auth.tokens.keys().active_kid(),
        demo = state.settings.demo,
        "data folder ready"
    );
    Ok((state, prepared))
}

/// Opens the database named by `settings` on a blocking thread.
pub async fn open_db(settings: &Settings) -> Result<Db, DbError> {
    let path = settings.db_path();
    let db_settings = settings.db.clone();
    tokio::task::spawn_blocking(move || Db::open(&path, &db_settings))
        .await
        .map_err(|e| DbError::Commit(format!("the database open task failed: {e}")))?
}

async fn close_after(db: &Db, err: StartError) -> StartError {
    if let Err(e) = db.close().await {
        tracing::warn!(error = %e, "closing the database after a failed start");
    }
    err
}

/// The HTTP application.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .merge(blobs::routes())
        .route("/health", get(api::health))
        .route("/version", get(api::version))
        .route("/auth/login", post(api::login))
        .route("/auth/refresh", post(api::refresh))
        .route("/auth/logout", post(api::logout))
        .route("/me", get(api::me))
        .route("/units", get(api::units))
        .route("/templates", get(api::templates))
        .route("/templates/{template_id}/{version}", get(api::template))
        .route("/me/documents", get(inspections::my_documents))
        .route(
            "/inspections",
            get(inspections::list).post(inspections::create),
        )
        .route("/inspections/{id}", get(inspections::get));
    Router::new()
        .route("/sync", get(sync::sync_ws))
        .nest("/api/v1", api)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings.server.json_body_limit))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// Spans name the route template, never the raw URI (which may carry
/// `?token=`).
fn request_span(req: &Request<Body>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    tracing::info_span!("http", method = %req.method(), route)
}

/// Serves `state` on `listener` until `shutdown` completes; then stops
/// accepting, lets in-flight requests (and their writes) finish, and closes
/// the database cleanly.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let db = state.db.clone();
    let router = app(state);
    let served = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    tracing::info!("no more requests in flight; closing the database");
    let closed = db.close().await;
    served?;
    closed?;
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
