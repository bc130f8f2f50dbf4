//! The check behind the fuzz target `tus_headers` (`fuzz/`), kept here so
//! that `cargo test` replays its committed seeds and past crashes through
//! exactly the same code (the tests below). Not part of the server's API.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::blobs::tus::{
    self, CreationHeaders, PatchHeaders, check_tus_resumable, parse_creation_headers,
    parse_metadata, parse_patch_headers, u64_header,
};

/// The `max_upload_bytes` the creation headers are checked against (besides
/// `u64::MAX`).
pub const MAX_UPLOAD_BYTES: u64 = 25 * 1024 * 1024;

/// Reads headers written one `name: value` a line; lines that are not a
/// valid header (name or value) are skipped. A name may repeat.
pub fn headers_from_bytes(data: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default();
        let value = value.trim_ascii_start();
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    headers
}

/// `tus_headers`: parses the headers in `data` (see [`headers_from_bytes`])
/// as a tus creation request, a `PATCH` and for `Tus-Resumable`. Checked:
/// nothing panics, and whatever is accepted is what the protocol allows.
pub fn tus_headers(data: &[u8]) {
    let headers = headers_from_bytes(data);
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());

    let resumable = check_tus_resumable(&headers);
    assert_eq!(
        resumable.is_ok(),
        headers.get("tus-resumable").map(HeaderValue::as_bytes) == Some(b"1.0.0".as_slice()),
        "Tus-Resumable decided wrongly: {resumable:?}"
    );

    for name in ["upload-length", "upload-offset", "content-length"] {
        if let Ok(Some(n)) = u64_header(&headers, name) {
            let raw = text(name).unwrap_or_default();
            assert!(raw.bytes().all(|b| b.is_ascii_digit()), "{name}: {raw:?}");
            assert_eq!(raw.trim_start_matches('0').parse::<u64>().unwrap_or(0), n);
        }
    }

    let capped = parse_creation_headers(&headers, MAX_UPLOAD_BYTES);
    let uncapped = parse_creation_headers(&headers, u64::MAX);
    if let Ok(CreationHeaders { length, metadata }) = &capped {
        assert!((1..=MAX_UPLOAD_BYTES).contains(length), "length {length}");
        assert_eq!(uncapped.as_ref().ok(), capped.as_ref().ok());
        check_metadata(metadata, headers.get("upload-metadata"));
    }
    if let Ok(CreationHeaders { length, metadata }) = &uncapped {
        assert!(!headers.contains_key("upload-defer-length"));
        assert_eq!(
            u64_header(&headers, "upload-length").ok(),
            Some(Some(*length))
        );
        assert!(*length >= 1);
        check_metadata(metadata, headers.get("upload-metadata"));
    }
    if let Ok(metadata) = parse_metadata(headers.get("upload-metadata")) {
        check_metadata(&metadata, headers.get("upload-metadata"));
    }

    if let Ok(PatchHeaders {
        offset,
        content_length,
    }) = parse_patch_headers(&headers)
    {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        assert!(
            essence.eq_ignore_ascii_case("application/offset+octet-stream"),
            "PATCH accepted with Content-Type {content_type:?}"
        );
        assert_eq!(
            u64_header(&headers, "upload-offset").ok(),
            Some(Some(offset))
        );
        assert_eq!(
            u64_header(&headers, "content-length").ok(),
            Some(content_length)
        );
    }
}

/// What an accepted `Upload-Metadata` must look like.
fn check_metadata(m: &tus::Metadata, raw: Option<&HeaderValue>) {
    let sha = m.sha256.as_str();
    assert!(
        sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "sha256 {sha:?}"
    );
    for (label, value, max) in [
        ("filename", m.filename.as_deref(), 255),
        ("mime", m.mime.as_deref(), 127),
    ] {
        if let Some(v) = value {
            assert!(!v.is_empty(), "{label} is empty");
            assert!(v.chars().count() <= max, "{label} is too long");
            assert!(!v.chars().any(char::is_control), "{label} {v:?}");
            assert_eq!(v.trim(), v, "{label} is not trimmed");
        }
    }
    if let Some(mime) = &m.mime {
        assert_eq!(&mime.to_ascii_lowercase(), mime);
    }
    assert_eq!(raw.and_then(|v| v.to_str().ok()), Some(m.raw.as_str()));
    assert!(m.raw.len() <= 4096);
    // The header HEAD echoes parses to the same metadata.
    let echoed = HeaderValue::from_str(&m.raw).ok();
    assert_eq!(parse_metadata(echoed.as_ref()).ok().as_ref(), Some(m));
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Every file in `dir` (none if it does not exist), sorted.
    fn inputs(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// The committed seeds of `fuzz/seeds/tus_headers` and every crash
    /// found so far (`server/tests/fuzz-regressions/tus_headers`) go through
    /// the fuzz target's check.
    #[test]
    fn tus_headers_seeds_and_regressions_replay() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let seeds = inputs(&root.join("../fuzz/seeds/tus_headers"));
        assert!(!seeds.is_empty(), "fuzz/seeds/tus_headers has seeds");
        let regressions = inputs(&root.join("tests/fuzz-regressions/tus_headers"));
        for path in seeds.iter().chain(&regressions) {
            let data =
                std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            super::tus_headers(&data);
        }
    }

    #[test]
    fn headers_are_read_one_a_line() {
        let h = super::headers_from_bytes(
            b"Tus-Resumable: 1.0.0\r\nUpload-Length:12\nbad name: x\nno colon\nUpload-Length: 13",
        );
        assert_eq!(
            h.get("tus-resumable").map(|v| v.as_bytes()),
            Some(&b"1.0.0"[..])
        );
        let lengths: Vec<_> = h.get_all("upload-length").iter().collect();
        assert_eq!(lengths, ["12", "13"]);
        assert_eq!(h.len(), 3);
    }
}
