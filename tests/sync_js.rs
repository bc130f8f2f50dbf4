//! The real JavaScript automerge-repo client (npm
//! `@automerge/automerge-repo` 2.5.6 with
//! `@automerge/automerge-repo-network-websocket` 2.5.6) against the real
//! server: find, change, see the change from another client, survive a
//! restart, be refused what it may not read, and read the structured
//! `error` of a refused write.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tests::{TestServer, client, get_with, login_ok, test_settings};

use crate::peer::{db_file, stored_doc, stored_rows};

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js/automerge")
}

/// Installs the npm packages pinned by package-lock.json once (the README's test command does
/// this up front; this covers running `cargo test` alone).
async fn ensure_npm() {
    let dir = js_dir();
    if dir.join("node_modules/@automerge/automerge-repo").exists() {
        return;
    }
    let status = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status(),
    )
    .await
    .expect("npm ci timed out")
    .expect("npm is not installed");
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

/// Runs `node client.mjs ARGS…` and parses its one line of JSON.
async fn node(args: &[&str]) -> Value {
    node_script("client.mjs", args).await
}

/// Runs `node SCRIPT ARGS…` (a script of `js/automerge`) and parses the
/// last line it prints as JSON.
async fn node_script(script: &str, args: &[&str]) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(js_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the JS client did not finish in time")
    .expect("node is not installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "JS client printed no JSON ({e}): stdout={stdout} stderr={}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

async fn me(base: &str, token: &str) -> Value {
    get_with(&client(), &format!("{base}/api/v1/me"), token)
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_clients_sync_an_answer_through_the_server_and_it_survives_a_restart() {
    ensure_npm().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path(), true);
    let server = TestServer::start_in(dir, settings.clone()).await.unwrap();
    let c = client();
    let base = server.base.clone();
    let one = login_ok(&c, &base, "inspector1", "demo").await;
    let two = login_ok(&c, &base, "inspector2", "demo").await;
    let one_id = me(&base, &one.access_token).await["user_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let list: Vec<Value> = get_with(&c, &format!("{base}/api/v1/inspections"), &one.access_token)
        .await
        .json()
        .await
        .unwrap();
    let ba_dinh = list
        .iter()
        .find(|i| i["unit_code"] == "00004")
        .expect("inspector1 sees the Ba Đình inspection");
    let url = ba_dinh["doc_url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("automerge:"));

    // Client one answers A1; the script returns once the server committed it.
    let r = node(&[
        "answer",
        &base,
        &one.access_token,
        "tab-1",
        &url,
        "A1",
        "yes",
        &one_id,
    ])
    .await;
    assert_eq!(r["ok"], true, "{r}");

    // Client two, another member of the team, finds it through the server.
    let r = node(&["find", &base, &two.access_token, "tab-2", &url]).await;
    let answer = &r["doc"]["answers"]["A1"];
    assert_eq!(answer["value"], "yes", "{r}");
    assert_eq!(answer["by"], one_id.as_str());
    assert_eq!(r["doc"]["header"]["unit_code"], "00004");

    // The server projected it in the same commit.
    let id = url.trim_start_matches("automerge:");
    let view: Value = get_with(
        &c,
        &format!("{base}/api/v1/inspections/{id}"),
        &two.access_token,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(view["answers"], 1);
    assert_eq!(view["status"], "in_progress");

    // Restart on the same data folder: the document is still served with the change.
    let dir = server
        .stop()
        .await
        .expect("the helper owns the data folder");
    let server = TestServer::start_in(dir, settings).await.unwrap();
    let base = server.base.clone();
    let two = login_ok(&c, &base, "inspector2", "demo").await;
    let r = node(&["find", &base, &two.access_token, "tab-2b", &url]).await;
    assert_eq!(r["doc"]["answers"]["A1"]["value"], "yes", "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_client_of_another_team_finds_the_inspection_unavailable() {
    ensure_npm().await;
    let server = TestServer::start(true).await;
    let c = client();
    let base = server.base.clone();
    let one = login_ok(&c, &base, "inspector1", "demo").await;
    let three = login_ok(&c, &base, "inspector3", "demo").await;
    let list: Vec<Value> = get_with(&c, &format!("{base}/api/v1/inspections"), &one.access_token)
        .await
        .json()
        .await
        .unwrap();
    let url = list.iter().find(|i| i["unit_code"] == "00004").unwrap()["doc_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = node(&["find", &base, &three.access_token, "tab-3", &url]).await;
    assert_eq!(r["unavailable"], true, "{r}");
    assert!(r.get("doc").is_none());
    server.stop().await;
}

/// A refused write reaches the JS client as an `error` message whose
/// structured fields (extra keys of the CBOR map) are plain JS values:
/// `documentId`, `code: "refused"`, `refused` (hex hashes), `violations`
/// with their `rule`. Nothing of the write is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_js_client_reads_the_structured_error() {
    ensure_npm().await;
    let server = TestServer::start(true).await;
    let db = db_file(&server.data_dir());
    let c = client();
    let base = server.base.clone();
    let one = login_ok(&c, &base, "inspector1", "demo").await;
    let list: Vec<Value> = get_with(&c, &format!("{base}/api/v1/inspections"), &one.access_token)
        .await
        .json()
        .await
        .unwrap();
    let url = list.iter().find(|i| i["unit_code"] == "00004").unwrap()["doc_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = url.trim_start_matches("automerge:").to_owned();
    let before = stored_rows(&db);

    // inspector1 answers in someone else's name: `by` must be the author.
    let r = node_script(
        "refused.mjs",
        &[
            &base,
            &one.access_token,
            "tab-refused",
            &url,
            "A1",
            "u-someone-else",
        ],
    )
    .await;
    let error = &r["error"];
    assert_eq!(error["type"], "error", "{r}");
    assert_eq!(error["documentId"], id.as_str(), "{r}");
    assert_eq!(error["code"], "refused", "{r}");
    let heads = r["heads"].as_array().unwrap();
    assert_eq!(heads.len(), 1, "{r}");
    assert_eq!(error["refused"], json!([heads[0]]), "{r}");
    assert_eq!(error["refusedCount"], 1, "{r}");
    assert_eq!(error["violations"][0]["rule"], "author", "{r}");
    assert_eq!(error["violations"][0]["change"], heads[0], "{r}");
    assert_eq!(error["violations"][0]["role"], "inspector", "{r}");
    assert_eq!(error["violations"][0]["path"], "answers/A1/by", "{r}");
    assert_eq!(error["violationCount"], 1, "{r}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("document {id}: 1 change(s) refused, 0 kept")),
        "{r}"
    );

    assert_eq!(
        stored_rows(&db),
        before,
        "nothing of the refused write is stored"
    );
    let hash: automerge::ChangeHash = heads[0].as_str().unwrap().parse().unwrap();
    let stored = stored_doc(&db, sync_core::ids::DocumentId::parse(&id).unwrap()).unwrap();
    assert!(stored.get_change_meta_by_hash(&hash).is_none());
    server.stop().await;
}
