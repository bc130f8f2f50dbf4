//! Throughput of the photo pipeline on camera-sized JPEGs.
//!
//! `cargo bench -p server --bench blobs`
//!
//! Generates 4 MB, 12-megapixel JPEGs (with EXIF) once into a temporary
//! folder, reads them back, and measures, per photo:
//! - `ingest`: everything an upload's last byte triggers — sha256, type
//!   sniffing, header size check, EXIF, decode — plus both renditions
//!   (thumb and preview), which the server makes right after, off the
//!   request path;
//! - `inspect`: sha256 + sniffing + header size + EXIF only;
//! - `decode`: decoding with limits;
//! - `thumb_256` / `preview_1280`: one rendition from the decoded image;
//! - `thumb_and_preview`: both, as the server makes them (the thumbnail
//!   scaled from the preview).
//!
//! Criterion prints photos per second (`thrpt … elem/s`). One thread runs
//! each step, as the server runs each upload on one blocking thread (with
//! at most `decode_concurrency` decodes at once).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use server::blobs::Sha256Hex;
use server::blobs::fixtures::{self, ExifSpec};
use server::blobs::pipeline::{self, Limits};

/// Grain that makes a 4000×3000 quality-90 JPEG about 4 MB.
const GRAIN: u8 = 22;

const LIMITS: Limits = Limits {
    max_side: 8192,
    max_decode_bytes: 320 << 20,
};

/// Two different 4 MB photos, written to and read back from a temp folder.
fn photos() -> Vec<(Vec<u8>, Sha256Hex)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut out = Vec::new();
    for seed in [1u64, 2] {
        let plain = fixtures::textured_jpeg(4000, 3000, 90, GRAIN, seed);
        // Camera-like EXIF, spliced in after SOI.
        let exif = fixtures::jpeg_with_exif(
            8,
            8,
            &ExifSpec {
                date_time_original: Some("2025:07:01 08:30:15"),
                offset_time_original: Some("+07:00"),
                gps: Some(((21, 1, 432, 10), b'N', (105, 51, 72, 10), b'E')),
            },
        );
        let app1_len = usize::from(u16::from_be_bytes([exif[4], exif[5]])) + 2;
        let mut bytes = plain[..2].to_vec();
        bytes.extend_from_slice(&exif[2..2 + app1_len]);
        bytes.extend_from_slice(&plain[2..]);
        let path = dir.path().join(format!("photo-{seed}.jpg"));
        std::fs::write(&path, &bytes).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let sha = Sha256Hex::of(&bytes);
        eprintln!(
            "photo {seed}: {:.2} MB, 4000×3000, sha256 {sha}",
            bytes.len() as f64 / 1e6
        );
        out.push((bytes, sha));
    }
    out
}

fn pipeline_bench(c: &mut Criterion) {
    let photos = photos();
    let (bytes, sha) = &photos[0];
    let inspected = pipeline::inspect(bytes, sha, &LIMITS).unwrap();
    assert_eq!(
        inspected.exif.taken_at.as_deref(),
        Some("2025-07-01T08:30:15+07:00")
    );
    let decoded = pipeline::decode(bytes, inspected.kind, &LIMITS).unwrap();

    let mut g = c.benchmark_group("blobs");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.warm_up_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));

    let mut i = 0;
    g.bench_function("ingest_4mb_jpeg", |b| {
        b.iter(|| {
            let (bytes, sha) = &photos[i % photos.len()];
            i += 1;
            let ins = pipeline::inspect(bytes, sha, &LIMITS).unwrap();
            let img = pipeline::decode(bytes, ins.kind, &LIMITS).unwrap();
            let (thumb, preview) = pipeline::renditions(&img, 256, 1280).unwrap();
            black_box((ins, thumb, preview))
        });
    });
    g.bench_function("inspect_4mb_jpeg", |b| {
        b.iter(|| black_box(pipeline::inspect(bytes, sha, &LIMITS).unwrap()));
    });
    g.bench_function("decode_4mb_jpeg", |b| {
        b.iter(|| black_box(pipeline::decode(bytes, inspected.kind, &LIMITS).unwrap()));
    });
    g.bench_function("thumb_256_from_decoded", |b| {
        b.iter(|| black_box(pipeline::rendition(&decoded, 256).unwrap()));
    });
    g.bench_function("preview_1280_from_decoded", |b| {
        b.iter(|| black_box(pipeline::rendition(&decoded, 1280).unwrap()));
    });
    g.bench_function("thumb_and_preview_from_decoded", |b| {
        b.iter(|| black_box(pipeline::renditions(&decoded, 256, 1280).unwrap()));
    });
    g.finish();
}

criterion_group!(benches, pipeline_bench);
criterion_main!(benches);
