//! Checklist templates: published by the demo and `kiemtra import template`,
//! listed and served by the API, immutable per version.

use std::path::Path;

use serde_json::Value;
use server::demo::DEMO_PASSWORD;
use sha2::{Digest, Sha256};
use tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_kiemtra-under-test");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_checklist_is_published_and_served() {
    let server = TestServer::start(true).await;
    let c = client();
    let token = login_ok(&c, &server.base, "inspector1", DEMO_PASSWORD)
        .await
        .access_token;
    let r = get_with(&c, &server.url("/api/v1/templates"), &token).await;
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["key"], "DA06-HN-2025-v1@1");
    assert!(
        list[0]["title"]
            .as_str()
            .unwrap()
            .starts_with("Phiếu kiểm tra")
    );

    let r = get_with(
        &c,
        &server.url("/api/v1/templates/DA06-HN-2025-v1/1"),
        &token,
    )
    .await;
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(body.as_bytes())),
        list[0]["sha256"]
    );
    let parsed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(parsed["template_id"], "DA06-HN-2025-v1");

    let r = get_with(
        &c,
        &server.url("/api/v1/templates/DA06-HN-2025-v1/9"),
        &token,
    )
    .await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "not_found");
    let r = c.get(server.url("/api/v1/templates")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_template_is_idempotent_and_refuses_changes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = demo_data("checklist_de_an_06.json");
    let run = |args: Vec<String>| {
        let data = data.clone();
        async move {
            let mut full = args;
            full.extend(["--data".to_owned(), data.to_str().unwrap().to_owned()]);
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            run_cli(Path::new(BIN), &refs, None, &[]).await
        }
    };
    let import = |f: &Path| {
        vec![
            "import".to_owned(),
            "template".to_owned(),
            f.to_str().unwrap().to_owned(),
        ]
    };
    let out = run(import(&file)).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("30 items"), "{}", out.stdout);
    assert!(
        out.stdout.contains("published DA06-HN-2025-v1@1"),
        "{}",
        out.stdout
    );
    let out = run(import(&file)).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);

    // Same id and version, different content: refused.
    let text = std::fs::read_to_string(&file).unwrap();
    let changed = text.replacen("Phiếu kiểm tra", "Phiếu kiểm tra (sửa)", 1);
    assert_ne!(changed, text);
    let changed_path = dir.path().join("changed.json");
    std::fs::write(&changed_path, changed).unwrap();
    let out = run(import(&changed_path)).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("already published with different content"),
        "{}",
        out.stderr
    );

    // Invalid JSON is reported with its position.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"template_id\": ").unwrap();
    let out = run(import(&broken)).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("line 1"), "{}", out.stderr);
}
