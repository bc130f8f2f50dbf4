//! Photos and evidence end to end: tus uploads (Rust client and the real
//! tus-js-client), refusals that leave nothing behind, the blob access
//! matrix, renditions, ranges and caching, the missing list, expiry.
//!
//! Inspections that reference photos are written straight into the
//! projection tables of the test server's database (WAL lets a second
//! connection write), standing in for documents synced by tablets.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use serde_json::Value;
use server::blobs::fixtures::{self, ExifSpec};
use server::blobs::{Sha256Hex, UploadId};
use server::demo::DEMO_PASSWORD;
use tests::*;

const TUS: &str = "1.0.0";

fn sha_of(bytes: &[u8]) -> String {
    Sha256Hex::of(bytes).as_str().to_owned()
}

fn metadata(sha256: &str, filename: &str, filetype: &str) -> String {
    format!(
        "sha256 {},filename {},filetype {}",
        STANDARD.encode(sha256),
        STANDARD.encode(filename),
        STANDARD.encode(filetype)
    )
}

/// mime, bytes, width, height, taken_at, gps_lat, gps_lon, uploaded_by
type BlobRow = (
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<f64>,
    Option<f64>,
    String,
);

/// what, bytes, declared sha256, status, code, what the message says
type FinalByteCase<'a> = (&'a str, &'a [u8], String, StatusCode, &'a str, &'a str);

/// A demo server and a client.
async fn demo() -> (TestServer, reqwest::Client) {
    (TestServer::start(true).await, client())
}

async fn token(c: &reqwest::Client, server: &TestServer, username: &str) -> String {
    login_ok(c, &server.base, username, DEMO_PASSWORD)
        .await
        .access_token
}

/// A second connection to the server's database.
fn db(server: &TestServer) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(server.state.db.path()).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

fn user_id(conn: &rusqlite::Connection, username: &str) -> String {
    conn.query_row(
        "SELECT id FROM users WHERE username = ?1",
        [username],
        |r| r.get(0),
    )
    .unwrap()
}

fn team_of(conn: &rusqlite::Connection, username: &str) -> String {
    conn.query_row(
        "SELECT team_id FROM users WHERE username = ?1",
        [username],
        |r| r.get(0),
    )
    .unwrap()
}

/// An inspection projection row with its members and photos.
fn insert_inspection(
    conn: &rusqlite::Connection,
    id: &str,
    unit_code: &str,
    team_id: &str,
    status: &str,
    members: &[&str],
    photos: &[&str],
) {
    conn.execute(
        "INSERT INTO inspections (id, unit_code, unit_name, team_id, template_id,
                                  template_version, scheduled_date, status)
         VALUES (?1, ?2, 'Đơn vị thử', ?3, 'de-an-06', 1, '2025-07-01', ?4)",
        rusqlite::params![id, unit_code, team_id, status],
    )
    .unwrap();
    for m in members {
        conn.execute(
            "INSERT INTO inspection_members (inspection_id, user_id, role) VALUES (?1, ?2, 'member')",
            [id, m],
        )
        .unwrap();
    }
    for p in photos {
        conn.execute(
            "INSERT INTO inspection_photos (inspection_id, sha256) VALUES (?1, ?2)",
            [id, p],
        )
        .unwrap();
    }
}

/// `POST /api/v1/uploads`.
async fn create(
    c: &reqwest::Client,
    server: &TestServer,
    token: &str,
    length: u64,
    meta: Option<&str>,
) -> reqwest::Response {
    let mut req = c
        .post(server.url("/api/v1/uploads"))
        .bearer_auth(token)
        .header("Tus-Resumable", TUS)
        .header("Upload-Length", length.to_string());
    if let Some(m) = meta {
        req = req.header("Upload-Metadata", m);
    }
    req.send().await.unwrap()
}

/// Creates an upload that must succeed; returns its absolute URL.
async fn create_ok(
    c: &reqwest::Client,
    server: &TestServer,
    token: &str,
    bytes: &[u8],
    declared_sha: &str,
) -> String {
    let r = create(
        c,
        server,
        token,
        bytes.len() as u64,
        Some(&metadata(declared_sha, "anh.jpg", "image/jpeg")),
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    assert_eq!(r.headers()["tus-resumable"], TUS);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/api/v1/uploads/"), "{location}");
    server.url(&location)
}

async fn patch(
    c: &reqwest::Client,
    url: &str,
    token: &str,
    offset: u64,
    body: &[u8],
) -> reqwest::Response {
    c.patch(url)
        .bearer_auth(token)
        .header("Tus-Resumable", TUS)
        .header("Upload-Offset", offset.to_string())
        .header("Content-Type", "application/offset+octet-stream")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

async fn head(c: &reqwest::Client, url: &str, token: &str) -> reqwest::Response {
    c.head(url)
        .bearer_auth(token)
        .header("Tus-Resumable", TUS)
        .send()
        .await
        .unwrap()
}

fn offset_of(r: &reqwest::Response) -> u64 {
    r.headers()["upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Uploads `bytes` in `chunk`-sized PATCHes; returns the last response.
async fn upload(
    c: &reqwest::Client,
    server: &TestServer,
    token: &str,
    bytes: &[u8],
    declared_sha: &str,
    chunk: usize,
) -> reqwest::Response {
    let url = create_ok(c, server, token, bytes, declared_sha).await;
    let mut offset = 0;
    loop {
        let end = (offset + chunk).min(bytes.len());
        let r = patch(c, &url, token, offset as u64, &bytes[offset..end]).await;
        if r.status() != StatusCode::NO_CONTENT || end == bytes.len() {
            return r;
        }
        assert_eq!(offset_of(&r), end as u64);
        offset = end;
    }
}

/// Uploads a photo that must be accepted; returns its sha256.
async fn upload_ok(c: &reqwest::Client, server: &TestServer, token: &str, bytes: &[u8]) -> String {
    let sha = sha_of(bytes);
    let r = upload(c, server, token, bytes, &sha, 64 * 1024).await;
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "{}",
        r.text().await.unwrap()
    );
    assert_eq!(offset_of(&r), bytes.len() as u64);
    assert!(
        !r.headers().contains_key("upload-expires"),
        "a finished upload does not expire"
    );
    sha
}

async fn get_blob(
    c: &reqwest::Client,
    server: &TestServer,
    token: &str,
    path: &str,
) -> reqwest::Response {
    get_with(c, &server.url(&format!("/api/v1/blobs/{path}")), token).await
}

/// Status and JSON error code.
async fn refusal(r: reqwest::Response) -> (StatusCode, String, String) {
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Waits (bounded) for the background job to write a rendition file.
async fn wait_for_file(path: &Path) {
    for _ in 0..200 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} did not appear", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_tus_discovery_and_version_check() {
    let (server, c) = demo().await;
    let r = c
        .request(reqwest::Method::OPTIONS, server.url("/api/v1/uploads"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    assert_eq!(
        r.headers()["tus-extension"],
        "creation,termination,expiration"
    );
    assert_eq!(
        r.headers()["tus-max-size"],
        (64u64 << 20).to_string().as_str()
    );

    let t = token(&c, &server, "inspector1").await;
    let bytes = fixtures::jpeg(16, 16);
    for version in [None, Some("0.2.2")] {
        let mut req = c
            .post(server.url("/api/v1/uploads"))
            .bearer_auth(&t)
            .header("Upload-Length", bytes.len().to_string())
            .header(
                "Upload-Metadata",
                metadata(&sha_of(&bytes), "a.jpg", "image/jpeg"),
            );
        if let Some(v) = version {
            req = req.header("Tus-Resumable", v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.headers()["tus-version"], "1.0.0");
        assert_eq!(r.headers()["tus-resumable"], "1.0.0");
        let (status, code, message) = refusal(r).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::PRECONDITION_FAILED, "tus_version")
        );
        assert!(message.contains("Tus-Resumable: 1.0.0"), "{message}");
    }
    // Uploads need a token; the leader's read-only account may not upload.
    let r = c
        .post(server.url("/api/v1/uploads"))
        .header("Tus-Resumable", TUS)
        .header("Upload-Length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let leader = token(&c, &server, "leader").await;
    let r = create(
        &c,
        &server,
        &leader,
        10,
        Some(&metadata(&sha_of(b"x"), "a", "image/jpeg")),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_upload_in_chunks_then_read_back() {
    let (server, c) = demo().await;
    let t = token(&c, &server, "inspector1").await;
    let photo = fixtures::jpeg_with_exif(
        2000,
        1500,
        &ExifSpec {
            date_time_original: Some("2025:07:01 08:30:15"),
            offset_time_original: Some("+07:00"),
            gps: Some(((21, 1, 432, 10), b'N', (105, 51, 72, 10), b'E')),
        },
    );
    let sha = sha_of(&photo);
    let url = create_ok(&c, &server, &t, &photo, &sha).await;

    let r = head(&c, &url, &t).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(offset_of(&r), 0);
    assert_eq!(
        r.headers()["upload-length"],
        photo.len().to_string().as_str()
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(
        r.headers()["upload-metadata"],
        metadata(&sha, "anh.jpg", "image/jpeg").as_str(),
        "HEAD echoes the metadata"
    );
    assert!(
        r.headers()["upload-expires"]
            .to_str()
            .unwrap()
            .ends_with(" GMT")
    );

    let third = photo.len() / 3;
    for (start, end) in [(0, third), (third, 2 * third)] {
        let r = patch(&c, &url, &t, start as u64, &photo[start..end]).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(offset_of(&r), end as u64);
        assert!(r.headers().contains_key("upload-expires"));
        assert_eq!(offset_of(&head(&c, &url, &t).await), end as u64);
    }
    let r = patch(&c, &url, &t, 2 * third as u64, &photo[2 * third..]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(offset_of(&r), photo.len() as u64);
    let r = head(&c, &url, &t).await;
    assert_eq!(offset_of(&r), photo.len() as u64);

    // The original, byte for byte, with caching headers.
    let r = get_blob(&c, &server, &t, &sha).await;
    assert_eq!(r.status(), StatusCode::OK);
    let etag = format!("\"{sha}\"");
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert_eq!(
        r.headers()["cache-control"],
        "private, max-age=31536000, immutable"
    );
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.bytes().await.unwrap().as_ref(), photo.as_slice());
    // The sha256 is accepted in capitals too.
    let r = get_blob(&c, &server, &t, &sha.to_uppercase()).await;
    assert_eq!(r.status(), StatusCode::OK);

    // Conditional and partial requests.
    let r = c
        .get(server.url(&format!("/api/v1/blobs/{sha}")))
        .bearer_auth(&t)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], etag.as_str());
    let ranged = |range: String| {
        c.get(server.url(&format!("/api/v1/blobs/{sha}")))
            .bearer_auth(&t)
            .header("Range", range)
            .send()
    };
    let r = ranged("bytes=100-199".into()).await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-199/{}", photo.len()).as_str()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &photo[100..200]);
    let r = ranged("bytes=-10".into()).await.unwrap();
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        &photo[photo.len() - 10..]
    );
    let r = ranged(format!("bytes={}-", photo.len())).await.unwrap();
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", photo.len()).as_str()
    );
    let (status, code, _) = refusal(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
    );

    // Renditions: JPEGs that fit their box, each with its own ETag.
    for (size, expected) in [("thumb", (256, 192)), ("preview", (1280, 960))] {
        let r = get_blob(&c, &server, &t, &format!("{sha}?size={size}")).await;
        assert_eq!(r.status(), StatusCode::OK, "{size}");
        assert_eq!(r.headers()["content-type"], "image/jpeg");
        assert_eq!(r.headers()["etag"], format!("\"{sha}.{size}\"").as_str());
        let bytes = r.bytes().await.unwrap();
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).unwrap();
        assert_eq!((img.width(), img.height()), expected, "{size}");
    }
    let (status, code, _) =
        refusal(get_blob(&c, &server, &t, &format!("{sha}?size=huge")).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );

    // EXIF facts and the audit trail are in the database.
    let conn = db(&server);
    let row: BlobRow = conn
        .query_row(
            "SELECT mime, bytes, width, height, taken_at, gps_lat, gps_lon, uploaded_by
             FROM blobs WHERE sha256 = ?1",
            [&sha],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            },
        )
        .unwrap();
    assert_eq!(row.0, "image/jpeg");
    assert_eq!(row.1, photo.len() as i64);
    assert_eq!((row.2, row.3), (2000, 1500));
    assert_eq!(row.4.as_deref(), Some("2025-07-01T08:30:15+07:00"));
    assert!((row.5.unwrap() - 21.028_666_7).abs() < 1e-6);
    assert!((row.6.unwrap() - 105.852).abs() < 1e-6);
    assert_eq!(row.7, user_id(&conn, "inspector1"));
    let audited: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit_log WHERE action = 'blob.upload' AND subject = ?1",
            [&sha],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(audited, 1);
    // The upload's file moved into the store; nothing is left behind.
    assert!(files_under(&server.data_dir().join("uploads")).is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_png_and_webp_are_accepted_and_renditions_are_made_in_the_background() {
    let (server, c) = demo().await;
    let t = token(&c, &server, "inspector1").await;
    for (bytes, mime) in [
        (fixtures::png(700, 500), "image/png"),
        (fixtures::webp(700, 500), "image/webp"),
    ] {
        let sha = upload_ok(&c, &server, &t, &bytes).await;
        // Made without anybody asking for them.
        let h = &sha;
        for kind in ["thumb", "preview"] {
            let file =
                server
                    .data_dir()
                    .join(format!("blobs/{kind}/{}/{}/{h}.jpg", &h[..2], &h[2..4]));
            wait_for_file(&file).await;
        }
        let r = get_blob(&c, &server, &t, &sha).await;
        assert_eq!(r.headers()["content-type"], mime);
        assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());
        let r = get_blob(&c, &server, &t, &format!("{sha}?size=preview")).await;
        let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
        assert_eq!((img.width(), img.height()), (700, 500), "never enlarged");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_same_bytes_twice_are_stored_once() {
    let (server, c) = demo().await;
    let t1 = token(&c, &server, "inspector1").await;
    let t3 = token(&c, &server, "inspector3").await;
    let photo = fixtures::jpeg(300, 200);
    let sha = upload_ok(&c, &server, &t1, &photo).await;
    assert_eq!(upload_ok(&c, &server, &t3, &photo).await, sha);
    let originals = files_under(&server.data_dir().join("blobs/original"));
    assert_eq!(originals.len(), 1, "{originals:?}");
    let conn = db(&server);
    assert_eq!(count(&conn, "SELECT count(*) FROM blobs"), 1);
    assert_eq!(count(&conn, "SELECT count(*) FROM blob_uploaders"), 2);
    // Each uploader may read back what they sent, though no document
    // references it yet.
    for t in [&t1, &t3] {
        assert_eq!(
            get_blob(&c, &server, t, &sha).await.status(),
            StatusCode::OK
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_bad_input_is_refused_and_leaves_nothing_behind() {
    let (server, c) = demo().await;
    let t = token(&c, &server, "inspector1").await;
    let uploads_dir = server.data_dir().join("uploads");
    let store_dir = server.data_dir().join("blobs");
    let conn = db(&server);
    let nothing_left = |what: &str| {
        assert!(
            files_under(&uploads_dir).is_empty(),
            "{what}: upload files left"
        );
        let stored: Vec<_> = files_under(&store_dir);
        assert!(stored.is_empty(), "{what}: stored {stored:?}");
        assert_eq!(
            count(&conn, "SELECT count(*) FROM uploads"),
            0,
            "{what}: upload rows left"
        );
        assert_eq!(
            count(&conn, "SELECT count(*) FROM blobs"),
            0,
            "{what}: blob rows"
        );
    };

    // Refused when the last byte arrives: the file is deleted with its upload.
    let photo = fixtures::jpeg(64, 64);
    let text = b"Bien ban kiem tra: this is a text file, not a photo.".repeat(40);
    let bomb = fixtures::png_header_only(60_000, 60_000);
    let heic = fixtures::heic_header();
    let cases: [FinalByteCase<'_>; 4] = [
        (
            "wrong sha256",
            &photo,
            sha_of(b"some other file"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "sha256_mismatch",
            "upload it again",
        ),
        (
            "not an image",
            &text,
            sha_of(&text),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_an_image",
            "not a JPEG, PNG or WebP",
        ),
        (
            "60000×60000 PNG",
            &bomb,
            sha_of(&bomb),
            StatusCode::UNPROCESSABLE_ENTITY,
            "image_too_large",
            "60000×60000",
        ),
        (
            "HEIC sent as JPEG",
            &heic,
            sha_of(&heic),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "heic_not_supported",
            "convert the photo to JPEG",
        ),
    ];
    for (what, bytes, declared, status, code, says) in cases {
        let url = create_ok(&c, &server, &t, bytes, &declared).await;
        let half = bytes.len() / 2;
        assert_eq!(
            patch(&c, &url, &t, 0, &bytes[..half]).await.status(),
            StatusCode::NO_CONTENT
        );
        let r = patch(&c, &url, &t, half as u64, &bytes[half..]).await;
        assert_eq!(r.headers()["tus-resumable"], TUS, "{what}");
        let (got_status, got_code, message) = refusal(r).await;
        assert_eq!(
            (got_status, got_code.as_str()),
            (status, code),
            "{what}: {message}"
        );
        assert!(message.contains(says), "{what}: {message}");
        assert_eq!(
            head(&c, &url, &t).await.status(),
            StatusCode::NOT_FOUND,
            "{what}"
        );
        nothing_left(what);
    }

    // Refused at creation.
    let valid = metadata(&sha_of(&photo), "a.jpg", "image/jpeg");
    let creation_cases: [(&str, u64, Option<String>, StatusCode, &str); 5] = [
        (
            "zero bytes",
            0,
            Some(valid.clone()),
            StatusCode::BAD_REQUEST,
            "empty_upload",
        ),
        (
            "over the limit",
            (64 << 20) + 1,
            Some(valid.clone()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "no metadata",
            100,
            None,
            StatusCode::BAD_REQUEST,
            "invalid_metadata",
        ),
        (
            "declared HEIC",
            100,
            Some(metadata(&sha_of(&heic), "IMG_0001.HEIC", "image/heic")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "heic_not_supported",
        ),
        (
            "bad sha256",
            100,
            Some(format!("sha256 {}", STANDARD.encode("../../etc/passwd"))),
            StatusCode::BAD_REQUEST,
            "invalid_metadata",
        ),
    ];
    for (what, length, meta, status, code) in creation_cases {
        let r = create(&c, &server, &t, length, meta.as_deref()).await;
        let (got_status, got_code, message) = refusal(r).await;
        assert_eq!(
            (got_status, got_code.as_str()),
            (status, code),
            "{what}: {message}"
        );
        nothing_left(what);
    }

    // Refused PATCHes leave the upload as it was.
    let url = create_ok(&c, &server, &t, &photo, &sha_of(&photo)).await;
    assert_eq!(
        patch(&c, &url, &t, 0, &photo[..100]).await.status(),
        StatusCode::NO_CONTENT
    );
    let (status, code, message) = refusal(patch(&c, &url, &t, 50, &photo[50..150]).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "offset_mismatch")
    );
    assert!(message.contains("holds 100 bytes"), "{message}");
    let wrong_type = c
        .patch(&url)
        .bearer_auth(&t)
        .header("Tus-Resumable", TUS)
        .header("Upload-Offset", "100")
        .header("Content-Type", "application/octet-stream")
        .body(photo[100..].to_vec())
        .send()
        .await
        .unwrap();
    let (status, code, _) = refusal(wrong_type).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let mut too_long = photo[100..].to_vec();
    too_long.extend_from_slice(b"extra");
    let (status, code, _) = refusal(patch(&c, &url, &t, 100, &too_long).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    assert_eq!(offset_of(&head(&c, &url, &t).await), 100);
    // Another user cannot see or touch it.
    let other = token(&c, &server, "inspector2").await;
    assert_eq!(head(&c, &url, &other).await.status(), StatusCode::NOT_FOUND);
    let (status, _, _) = refusal(patch(&c, &url, &other, 100, &photo[100..]).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Termination removes it.
    let r = c
        .delete(&url)
        .bearer_auth(&t)
        .header("Tus-Resumable", TUS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(head(&c, &url, &t).await.status(), StatusCode::NOT_FOUND);
    nothing_left("terminated");

    // Ids that are not ours cannot name a file.
    let db_file = server.state.db.path().to_path_buf();
    let before = std::fs::metadata(&db_file).unwrap().len();
    for id in [
        "..%2F..%2Fkiemtra.sqlite3",
        "..%2Fkeys",
        "%2Fetc%2Fpasswd",
        "0123456789ABCDEF0123456789ABCDEF",
        "0123456789abcdef0123456789abcdef",
    ] {
        let url = server.url(&format!("/api/v1/uploads/{id}"));
        let (status, code, _) = refusal(patch(&c, &url, &t, 0, b"x").await).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{id}"
        );
        assert_eq!(
            head(&c, &url, &t).await.status(),
            StatusCode::NOT_FOUND,
            "{id}"
        );
        let r = c
            .delete(&url)
            .bearer_auth(&t)
            .header("Tus-Resumable", TUS)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{id}");
        let (status, code, message) = refusal(get_blob(&c, &server, &t, id).await).await;
        assert_eq!(
            (status, code.as_str(), message.as_str()),
            (StatusCode::NOT_FOUND, "not_found", "no such blob"),
            "{id}"
        );
    }
    assert!(db_file.exists());
    assert!(std::fs::metadata(&db_file).unwrap().len() >= before);
    nothing_left("traversal");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_access_matrix() {
    let (server, c) = demo().await;
    let conn = db(&server);
    let insp1 = token(&c, &server, "inspector1").await;
    let photo = fixtures::jpeg(120, 90);
    let sha = upload_ok(&c, &server, &insp1, &photo).await;
    let team_a = team_of(&conn, "inspector1");
    let inspection = "test-inspection-access";
    insert_inspection(
        &conn,
        inspection,
        "00004",
        &team_a,
        "submitted",
        &[&user_id(&conn, "inspector1")],
        &[&sha],
    );

    let absent = sha_of(b"a photo nobody uploaded");
    let mut tokens = Vec::new();
    for name in [
        "inspector2",
        "inspector3",
        "unit-00004",
        "unit-00070",
        "secretariat",
        "leader",
        "admin",
    ] {
        tokens.push((name, token(&c, &server, name).await));
    }
    let tok = |name: &str| tokens.iter().find(|(n, _)| *n == name).unwrap().1.clone();

    // The body of "may not" must be the body of "does not exist".
    let not_found: Value = get_blob(&c, &server, &insp1, &absent)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(not_found["error"]["code"], "not_found");
    let check = |who: &'static str, t: String, allowed: bool| {
        let (c, server, sha, not_found) = (&c, &server, &sha, &not_found);
        async move {
            for size in ["", "?size=thumb"] {
                let r = get_blob(c, server, &t, &format!("{sha}{size}")).await;
                if allowed {
                    assert_eq!(r.status(), StatusCode::OK, "{who} {size}");
                } else {
                    assert_eq!(r.status(), StatusCode::NOT_FOUND, "{who} {size}");
                    let body: Value = r.json().await.unwrap();
                    assert_eq!(&body, not_found, "{who} {size}");
                }
            }
        }
    };
    check("inspector1 (uploader, team A)", insp1.clone(), true).await;
    check("inspector2 (team A)", tok("inspector2"), true).await;
    check("inspector3 (team B)", tok("inspector3"), false).await;
    check(
        "unit-00004 (inspection submitted)",
        tok("unit-00004"),
        false,
    )
    .await;
    check("unit-00070 (other unit)", tok("unit-00070"), false).await;
    check("secretariat", tok("secretariat"), true).await;
    check("leader", tok("leader"), true).await;
    check("admin", tok("admin"), true).await;
    // Anonymous and forged callers learn nothing about the hash: 401 always.
    for path in [sha.clone(), absent.clone()] {
        let r = c
            .get(server.url(&format!("/api/v1/blobs/{path}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = get_with(
            &c,
            &server.url(&format!("/api/v1/blobs/{path}")),
            "not.a.jwt",
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }

    // The unit sees it once the inspection is accepted.
    conn.execute(
        "UPDATE inspections SET status = 'accepted' WHERE id = ?1",
        [inspection],
    )
    .unwrap();
    check("unit-00004 (inspection accepted)", tok("unit-00004"), true).await;
    check(
        "unit-00070 (other unit, accepted)",
        tok("unit-00070"),
        false,
    )
    .await;
    // Team B's inspector once made a member of the inspection.
    conn.execute(
        "INSERT INTO inspection_members (inspection_id, user_id, role) VALUES (?1, ?2, 'member')",
        [inspection, &user_id(&conn, "inspector3")],
    )
    .unwrap();
    check("inspector3 (member)", tok("inspector3"), true).await;
    // `?token=` works for <img src>.
    let r = c
        .get(server.url(&format!(
            "/api/v1/blobs/{sha}?size=thumb&token={}",
            tok("secretariat")
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // An unreferenced upload is its uploader's alone.
    let insp4 = token(&c, &server, "inspector4").await;
    let lone = upload_ok(&c, &server, &insp4, &fixtures::jpeg(50, 50)).await;
    assert_eq!(
        get_blob(&c, &server, &insp4, &lone).await.status(),
        StatusCode::OK
    );
    for name in ["secretariat", "inspector3", "admin"] {
        assert_eq!(
            get_blob(&c, &server, &tok(name), &lone).await.status(),
            StatusCode::NOT_FOUND,
            "{name}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_missing_lists_what_the_server_lacks() {
    let (server, c) = demo().await;
    let conn = db(&server);
    let insp1 = token(&c, &server, "inspector1").await;
    let held = upload_ok(&c, &server, &insp1, &fixtures::jpeg(40, 40)).await;
    let lacking_a = sha_of(b"photo still on the tablet (a)");
    let lacking_b = sha_of(b"photo still on the tablet (b)");
    let team_a = team_of(&conn, "inspector1");
    let team_b = team_of(&conn, "inspector3");
    insert_inspection(
        &conn,
        "test-missing-a",
        "00004",
        &team_a,
        "in_progress",
        &[],
        &[&held, &lacking_a],
    );
    insert_inspection(
        &conn,
        "test-missing-b",
        "00070",
        &team_b,
        "in_progress",
        &[],
        &[&lacking_b],
    );

    let missing = |t: String| {
        let (c, server) = (&c, &server);
        async move {
            let r = get_with(c, &server.url("/api/v1/blobs/missing"), &t).await;
            assert_eq!(r.status(), StatusCode::OK);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["truncated"], false);
            v["missing"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let mut both = vec![lacking_a.clone(), lacking_b.clone()];
    both.sort();
    assert_eq!(
        missing(insp1.clone()).await,
        std::slice::from_ref(&lacking_a)
    );
    assert_eq!(
        missing(token(&c, &server, "inspector3").await).await,
        std::slice::from_ref(&lacking_b)
    );
    assert_eq!(missing(token(&c, &server, "secretariat").await).await, both);
    assert!(
        missing(token(&c, &server, "unit-00004").await)
            .await
            .is_empty()
    );

    // Once uploaded, a hash leaves the list.
    let photo_a = fixtures::jpeg(41, 41);
    let real_a = upload_ok(&c, &server, &insp1, &photo_a).await;
    conn.execute(
        "UPDATE inspection_photos SET sha256 = ?1 WHERE sha256 = ?2",
        [&real_a, &lacking_a],
    )
    .unwrap();
    assert!(missing(insp1.clone()).await.is_empty());
    let r = c
        .get(server.url("/api/v1/blobs/missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    server.stop().await;
}

/// A PATCH whose connection dies part-way: what arrived is kept, and the
/// upload resumes from the offset HEAD reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_a_cut_patch_keeps_what_arrived() {
    use tokio::io::AsyncWriteExt;
    let (server, c) = demo().await;
    let t = token(&c, &server, "inspector1").await;
    let photo = fixtures::noise_jpeg(400, 300, 90, 7);
    let url = create_ok(&c, &server, &t, &photo, &sha_of(&photo)).await;
    let path = url.trim_start_matches(&server.base).to_owned();
    let sent = photo.len() / 2;

    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head_text = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\n\
         Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: {}\r\n\r\n",
        photo.len()
    );
    tcp.write_all(head_text.as_bytes()).await.unwrap();
    tcp.write_all(&photo[..sent]).await.unwrap();
    tcp.flush().await.unwrap();
    let mut offset = 0;
    drop(tcp);
    // HEAD waits for the cut request to record what it received.
    for _ in 0..100 {
        offset = offset_of(&head(&c, &url, &t).await);
        if offset > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(offset as usize, sent, "every byte that arrived is kept");
    let r = patch(&c, &url, &t, offset, &photo[sent..]).await;
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "{}",
        r.text().await.unwrap()
    );
    let back = get_blob(&c, &server, &t, &sha_of(&photo))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(back.as_ref(), photo.as_slice());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_expired_uploads_answer_410_and_are_swept() {
    let (server, c) = demo().await;
    let t = token(&c, &server, "inspector1").await;
    let photo = fixtures::jpeg(64, 64);
    let url = create_ok(&c, &server, &t, &photo, &sha_of(&photo)).await;
    assert_eq!(
        patch(&c, &url, &t, 0, &photo[..10]).await.status(),
        StatusCode::NO_CONTENT
    );
    let id = UploadId::parse(url.rsplit('/').next().unwrap()).unwrap();
    let part = server.state.blobs.part_path(&id);
    assert!(part.exists());
    // An orphan file (as a crash could leave) and a live upload.
    let orphan = server.state.blobs.part_path(&UploadId::generate());
    std::fs::write(&orphan, b"left over").unwrap();
    let live_url = create_ok(&c, &server, &t, &photo, &sha_of(&photo)).await;
    assert_eq!(
        patch(&c, &live_url, &t, 0, &photo[..10]).await.status(),
        StatusCode::NO_CONTENT
    );

    let conn = db(&server);
    conn.execute(
        "UPDATE uploads SET expires_at = ?2 WHERE id = ?1",
        rusqlite::params![id.as_str(), now_unix() - 1],
    )
    .unwrap();
    assert_eq!(head(&c, &url, &t).await.status(), StatusCode::GONE);
    let (status, code, _) = refusal(patch(&c, &url, &t, 10, &photo[10..]).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::GONE, "upload_expired")
    );

    let report = server
        .state
        .blobs
        .sweep(&server.state.db, now_unix())
        .await
        .unwrap();
    assert_eq!((report.removed, report.orphans), (1, 1));
    assert!(!part.exists());
    assert!(!orphan.exists());
    assert_eq!(head(&c, &url, &t).await.status(), StatusCode::NOT_FOUND);
    // The live upload is untouched and still completes.
    assert_eq!(offset_of(&head(&c, &live_url, &t).await), 10);
    assert_eq!(
        patch(&c, &live_url, &t, 10, &photo[10..]).await.status(),
        StatusCode::NO_CONTENT
    );
    // After its expiry time a finished upload's record goes too (the blob stays).
    let report = server
        .state
        .blobs
        .sweep(&server.state.db, now_unix() + 2 * 86_400)
        .await
        .unwrap();
    assert_eq!(report.removed, 1);
    assert_eq!(count(&conn, "SELECT count(*) FROM uploads"), 0);
    assert_eq!(
        get_blob(&c, &server, &t, &sha_of(&photo)).await.status(),
        StatusCode::OK
    );
    server.stop().await;
}

fn tus_js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js/tus")
}

/// Installs the pinned tus-js-client once (the README's test command does
/// this up front; this covers running `cargo test` alone).
async fn ensure_tus_js_client() {
    let dir = tus_js_dir();
    if dir.join("node_modules/tus-js-client/package.json").exists() {
        return;
    }
    let status = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .status(),
    )
    .await
    .expect("npm ci timed out")
    .expect("npm is not installed (Debian: apt-get install nodejs npm)");
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

/// A TCP proxy in front of the server that, once, cuts the connection
/// after `cut_after` bytes from client to server have passed (forwarding
/// exactly those), like a network that drops mid-upload. Later
/// connections pass untouched. Returns its `host:port`.
async fn cutting_proxy(target: String, cut_after: usize) -> String {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Client-to-server bytes forwarded so far; usize::MAX once cut.
    let sent = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&target).await.unwrap();
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            let downstream = tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match server_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            let sent = Arc::clone(&sent);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match client_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let before = sent.load(Ordering::SeqCst);
                    if before != usize::MAX && before + n >= cut_after {
                        let _ = server_tx.write_all(&buf[..cut_after - before]).await;
                        sent.store(usize::MAX, Ordering::SeqCst);
                        // Both directions die at once: no answer reaches
                        // the client, as when a network drops.
                        downstream.abort();
                        return;
                    }
                    if before != usize::MAX {
                        sent.fetch_add(n, Ordering::SeqCst);
                    }
                    if server_tx.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_tus_js_client_resumes_after_the_connection_is_cut() {
    ensure_tus_js_client().await;
    let (server, c) = demo().await;
    let t = token(&c, &server, "inspector1").await;
    // About 1.1 MB: five 256 KiB PATCHes.
    let photo = fixtures::noise_jpeg(1000, 750, 92, 42);
    // Cut in the middle of the second PATCH's body.
    const CUT_AFTER: usize = 256 * 1024 + 100_000;
    let proxy = cutting_proxy(
        server.base.trim_start_matches("http://").to_owned(),
        CUT_AFTER,
    )
    .await;
    let sha = sha_of(&photo);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hien-truong.jpg");
    std::fs::write(&file, &photo).unwrap();

    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg("tus_upload.mjs")
            .arg(format!("http://{proxy}/api/v1/uploads"))
            .arg(&t)
            .arg(&file)
            .arg(&sha)
            .current_dir(tus_js_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the tus-js-client run did not finish in time")
    .expect("node is not installed (Debian: apt-get install nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| {
            panic!(
                "tus-js-client printed no JSON ({e}): stdout={stdout} stderr={}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(out.status.success(), "tus-js-client failed: {v}");
    assert_eq!(v["size"], photo.len());
    assert_eq!(
        v["first"]["url"], v["second"]["url"],
        "the same upload resumed"
    );

    assert!(
        v["first"]["error"].as_str().unwrap().contains("tus:"),
        "the first attempt failed on the cut: {}",
        v["first"]
    );

    // The resumed client asked the server (HEAD) and continued from the
    // offset it was given: what arrived before the cut, mid-chunk.
    let events = v["events"].as_array().unwrap();
    let head_at = events
        .iter()
        .position(|e| e["kind"] == "response" && e["method"] == "HEAD")
        .expect("the resumed client sent HEAD");
    assert_eq!(events[head_at]["status"], 200);
    let resumed_at: u64 = events[head_at]["offset"].as_str().unwrap().parse().unwrap();
    assert!(
        resumed_at > 256 * 1024 && resumed_at < CUT_AFTER as u64,
        "resumed at {resumed_at}: the first chunk and the part of the second that arrived"
    );
    let next_patch = events[head_at..]
        .iter()
        .find(|e| e["kind"] == "request" && e["method"] == "PATCH")
        .expect("a PATCH after HEAD");
    assert_eq!(
        next_patch["offset"].as_str().unwrap(),
        resumed_at.to_string()
    );
    // Before the cut, exactly one PATCH (the first chunk) was acknowledged.
    let acked_before: Vec<&Value> = events[..head_at]
        .iter()
        .filter(|e| e["kind"] == "response" && e["method"] == "PATCH")
        .collect();
    assert_eq!(acked_before.len(), 1, "{acked_before:?}");
    assert_eq!(acked_before[0]["offset"], (256 * 1024).to_string());
    let last = events.last().unwrap();
    assert_eq!(last["method"], "PATCH");
    assert_eq!(last["status"], 204);
    assert_eq!(last["offset"].as_str().unwrap(), photo.len().to_string());

    // The stored bytes are the file's.
    let back = get_blob(&c, &server, &t, &sha).await;
    assert_eq!(back.status(), StatusCode::OK);
    assert_eq!(back.bytes().await.unwrap().as_ref(), photo.as_slice());
    println!(
        "tus-js-client: connection cut after {CUT_AFTER} bytes, server kept {resumed_at}, resumed and completed {} bytes",
        photo.len()
    );
    server.stop().await;
}
