//! Helpers shared by the end-to-end tests.
//!
//! - [`TestServer`] runs the real server in-process on `127.0.0.1:0` with a
//!   fresh temporary data folder, and shuts it down gracefully.
//! - [`ChildServer`] and [`run_cli`] run the real `kiemtra` binary (built by
//!   this package as `kiemtra-under-test` from `server/src/main.rs`).
//! - Token helpers decode JWTs without trusting them, and forge tokens with
//!   the server's own key or another one, to probe validation.
//!
//! Every wait is bounded by [`TIMEOUT`].
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde_json::{Value, json};
use server::demo::Prepared;
use server::settings::Settings;
use server::{AppState, ServeError};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound for any single wait in a test.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Installs a log subscriber once (quiet unless `RUST_LOG` is set).
pub fn init_logging() {
    server::telemetry::init("warn");
}

/// Settings for a test server in `dir`: a free port, small pools.
pub fn test_settings(dir: &Path, demo: bool) -> Settings {
    let mut s = Settings::for_data_dir(dir);
    s.server.addr = "127.0.0.1:0".into();
    s.demo = demo;
    s.db.readers = 2;
    s.auth.password_hash_concurrency = 2;
    s
}

/// The real server, in this process.
#[derive(Debug)]
pub struct TestServer {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub state: AppState,
    pub prepared: Prepared,
    /// The data folder.
    pub data: PathBuf,
    /// Owns the data folder when the helper created it.
    dir: Option<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    /// A server on a new data folder, demo-seeded or empty.
    pub async fn start(demo: bool) -> TestServer {
        Self::start_with(demo, |_| {}).await
    }

    /// Like [`TestServer::start`], adjusting the settings first.
    pub async fn start_with(demo: bool, tweak: impl FnOnce(&mut Settings)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(dir.path(), demo);
        tweak(&mut settings);
        Self::start_in(dir, settings).await.unwrap()
    }

    /// Starts on `dir` (which `settings.data_dir` names) and keeps it alive.
    pub async fn start_in(
        dir: TempDir,
        settings: Settings,
    ) -> Result<TestServer, server::StartError> {
        let mut server = Self::start_at(settings).await?;
        server.dir = Some(dir);
        Ok(server)
    }

    /// Starts on the folder `settings.data_dir`, owned by the caller.
    pub async fn start_at(settings: Settings) -> Result<TestServer, server::StartError> {
        init_logging();
        let data = settings.data_dir.clone();
        let (state, prepared) = tokio::time::timeout(TIMEOUT, server::start(settings))
            .await
            .expect("server start timed out")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, state.clone(), async {
            let _ = rx.await;
        }));
        Ok(TestServer {
            base,
            state,
            prepared,
            data,
            dir: None,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The data folder.
    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    /// Sends the shutdown signal without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for `serve` to return after [`TestServer::signal_shutdown`].
    pub async fn wait(&mut self) -> Result<(), ServeError> {
        let task = self.task.take().expect("server already awaited");
        tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("server did not stop in time")
            .expect("server task panicked")
    }

    /// Graceful stop; returns the data folder (if the helper owned it) for
    /// inspection or restart.
    pub async fn stop(mut self) -> Option<TempDir> {
        self.signal_shutdown();
        self.wait().await.unwrap();
        self.dir.take()
    }
}

/// An HTTP client with a bounded timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(TIMEOUT).build().unwrap()
}

/// The token pair a login or refresh returns.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
}

/// `POST /api/v1/auth/login`.
pub async fn login(
    c: &reqwest::Client,
    base: &str,
    username: &str,
    password: &str,
    device: &str,
) -> reqwest::Response {
    c.post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "username": username, "password": password, "device_id": device }))
        .send()
        .await
        .unwrap()
}

/// A login that must succeed.
pub async fn login_ok(c: &reqwest::Client, base: &str, username: &str, password: &str) -> Tokens {
    let r = login(c, base, username, password, "test-device").await;
    assert_eq!(
        r.status(),
        200,
        "login of {username}: {}",
        r.text().await.unwrap()
    );
    r.json().await.unwrap()
}

/// `POST /api/v1/auth/refresh`.
pub async fn refresh(c: &reqwest::Client, base: &str, token: &str) -> reqwest::Response {
    c.post(format!("{base}/api/v1/auth/refresh"))
        .json(&json!({ "refresh_token": token }))
        .send()
        .await
        .unwrap()
}

/// `GET path` with a bearer token.
pub async fn get_with(c: &reqwest::Client, url: &str, token: &str) -> reqwest::Response {
    c.get(url).bearer_auth(token).send().await.unwrap()
}

/// The JSON error code of an error response.
pub async fn error_code(r: reqwest::Response) -> String {
    let v: Value = r.json().await.unwrap();
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

/// Header and claims of a JWT, NOT verified.
pub fn decode_unverified(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let header = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    let claims = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&header).unwrap(),
        serde_json::from_slice(&claims).unwrap(),
    )
}

/// The server's signing key(s) from its data folder: (kid, key).
pub fn server_keys(data_dir: &Path) -> Vec<(String, SigningKey)> {
    let mut keys = Vec::new();
    for entry in std::fs::read_dir(data_dir.join("keys")).unwrap() {
        let path = entry.unwrap().path();
        let kid = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let pem = std::fs::read_to_string(&path).unwrap();
        keys.push((kid, SigningKey::from_pkcs8_pem(&pem).unwrap()));
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    keys
}

/// Signs `claims` with `key` as an EdDSA JWT with `kid`.
pub fn forge_eddsa(kid: &str, key: &SigningKey, claims: &Value) -> String {
    let der = key.to_pkcs8_der().unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
    )
    .unwrap()
}

/// Claims that the server would accept for `sub` at `now` (unix seconds).
pub fn valid_claims(sub: &str, now: i64) -> Value {
    json!({
        "iss": "kiemtra",
        "aud": "kiemtra-api",
        "sub": sub,
        "exp": now + 600,
        "nbf": now - 10,
        "iat": now - 10,
        "jti": "forged",
        "role": "admin",
        "did": "forged-device",
        "name": "admin",
    })
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Runs `PRAGMA integrity_check` on a database file.
pub fn integrity_check(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// The server binary as a child process.
#[derive(Debug)]
pub struct ChildServer {
    pub child: tokio::process::Child,
    pub base: String,
    /// Lines printed before and including the "listening" line, then the demo logins.
    pub banner: Vec<String>,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl ChildServer {
    /// Runs `BIN serve ARGS…`, waiting for the "listening on" line.
    pub async fn spawn(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> ChildServer {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = Vec::new();
        let base = tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = stdout.next_line().await.unwrap() {
                banner.push(line.clone());
                if let Some(pos) = line.find("listening on ") {
                    return line[pos + "listening on ".len()..].trim().to_owned();
                }
            }
            panic!("the server exited before listening: {banner:?}");
        })
        .await
        .expect("the server did not start in time");
        ChildServer {
            child,
            base,
            banner,
            stdout,
        }
    }

    /// Reads `n` more lines of standard output.
    pub async fn read_lines(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let line = tokio::time::timeout(TIMEOUT, self.stdout.next_line())
                .await
                .expect("no output in time")
                .unwrap();
            match line {
                Some(l) => out.push(l),
                None => break,
            }
        }
        out
    }

    /// Sends SIGTERM and waits for the exit; returns (success, rest of stdout).
    pub async fn terminate(mut self) -> (bool, Vec<String>) {
        let pid = self.child.id().expect("child already reaped");
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        let status = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .expect("the server did not stop in time")
            .unwrap();
        let mut rest = Vec::new();
        while let Ok(Ok(Some(line))) = tokio::time::timeout(TIMEOUT, self.stdout.next_line()).await
        {
            rest.push(line);
        }
        (status.success(), rest)
    }
}

/// Output of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `BIN ARGS…` with optional standard input and extra environment.
pub async fn run_cli(
    bin: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> CliOutput {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("KIEMTRA_PASSWORD")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("the command did not finish in time")
        .unwrap();
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The embedded demo copy of a reference file (`server/demo-data/NAME`).
pub fn demo_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../server/demo-data")
        .join(name)
}
