//! Camera photos: read, re-encoded to the configured maximum size, hashed,
//! and kept in the device's blob folder until uploaded.
//!
//! A photo already within the limits (pixels and bytes) keeps its original
//! bytes, so its EXIF capture time and GPS reach the server, which extracts
//! them. A larger one is scaled down and re-encoded as JPEG (which drops its
//! EXIF). The sha256 is taken of the bytes that are kept: it is the photo's
//! id in the documents and on the server.
#![forbid(unsafe_code)]

use std::io::{Cursor, Write};
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use sha2::{Digest, Sha256};
use sync_core::model::PhotoMime;

use crate::error::{FieldError, Result};

/// Largest file accepted as input.
pub const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest side decoded (larger images are refused before decoding).
pub const MAX_DECODE_SIDE: u32 = 20_000;
/// Memory the decoder may allocate.
const MAX_DECODE_ALLOC: u64 = 768 * 1024 * 1024;
/// Lowest JPEG quality tried when squeezing a photo under the byte limit.
const MIN_QUALITY: u8 = 40;

/// How photos are re-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhotoOptions {
    /// Longest side kept, in pixels.
    pub max_side_px: u32,
    /// Largest file kept, in bytes.
    pub max_bytes: u64,
    /// JPEG quality of re-encoded photos (1–100).
    pub jpeg_quality: u8,
}

impl Default for PhotoOptions {
    fn default() -> Self {
        Self {
            max_side_px: 2048,
            max_bytes: 2 * 1024 * 1024,
            jpeg_quality: 85,
        }
    }
}

/// A photo ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedPhoto {
    pub bytes: Vec<u8>,
    pub mime: PhotoMime,
    pub width: u32,
    pub height: u32,
    /// Lowercase hex sha256 of `bytes`.
    pub sha256: String,
    /// Whether the bytes were re-encoded (false: the original file is kept).
    pub reencoded: bool,
}

/// Reads the image file at `path` and prepares it.
pub fn prepare_file(path: &Path, opts: &PhotoOptions) -> Result<PreparedPhoto> {
    let meta = std::fs::metadata(path)
        .map_err(|e| FieldError::Photo(format!("cannot read the photo {}: {e}", path.display())))?;
    if meta.len() > MAX_INPUT_BYTES {
        return Err(FieldError::Photo(format!(
            "the photo {} has {} bytes; at most {MAX_INPUT_BYTES} are accepted",
            path.display(),
            meta.len()
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| FieldError::Photo(format!("cannot read the photo {}: {e}", path.display())))?;
    prepare(bytes, opts)
}

/// Prepares the bytes of an image file (JPEG, PNG or WebP).
pub fn prepare(bytes: Vec<u8>, opts: &PhotoOptions) -> Result<PreparedPhoto> {
    if opts.max_side_px == 0 || opts.jpeg_quality == 0 || opts.jpeg_quality > 100 {
        return Err(FieldError::InvalidInput(
            "photo options: the maximum side must be positive and the JPEG quality 1–100".into(),
        ));
    }
    let format = image::guess_format(&bytes).map_err(|_| {
        FieldError::Photo("the file is not an image (JPEG, PNG or WebP expected)".into())
    })?;
    let mime = match format {
        ImageFormat::Jpeg => PhotoMime::Jpeg,
        ImageFormat::Png => PhotoMime::Png,
        ImageFormat::WebP => PhotoMime::Webp,
        other => {
            return Err(FieldError::Photo(format!(
                "{other:?} images are not accepted; use JPEG, PNG or WebP"
            )));
        }
    };
    let image = decode(&bytes, format)?;
    let (width, height) = (image.width(), image.height());
    let fits = width.max(height) <= opts.max_side_px
        && u64::try_from(bytes.len()).unwrap_or(u64::MAX) <= opts.max_bytes;
    if fits {
        let sha256 = sha256_hex(&bytes);
        return Ok(PreparedPhoto {
            bytes,
            mime,
            width,
            height,
            sha256,
            reencoded: false,
        });
    }
    let (bytes, width, height) = shrink(&image, opts)?;
    let sha256 = sha256_hex(&bytes);
    Ok(PreparedPhoto {
        bytes,
        mime: PhotoMime::Jpeg,
        width,
        height,
        sha256,
        reencoded: true,
    })
}

fn decode(bytes: &[u8], format: ImageFormat) -> Result<DynamicImage> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| FieldError::Photo(format!("the image cannot be decoded: {e}")))
}

/// Scales down to the maximum side, then lowers the JPEG quality (and, as a
/// last resort, the size) until the file fits the byte limit.
fn shrink(image: &DynamicImage, opts: &PhotoOptions) -> Result<(Vec<u8>, u32, u32)> {
    let mut side = opts.max_side_px.min(image.width().max(image.height()));
    let mut quality = opts.jpeg_quality;
    // Bounded: each round lowers the quality or the size.
    for _ in 0..32 {
        let scaled = if image.width().max(image.height()) > side {
            image.resize(side, side, FilterType::Triangle)
        } else {
            image.clone()
        };
        let rgb = DynamicImage::ImageRgb8(scaled.to_rgb8());
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, quality)
            .encode_image(&rgb)
            .map_err(|e| FieldError::Photo(format!("the photo cannot be encoded: {e}")))?;
        if u64::try_from(out.len()).unwrap_or(u64::MAX) <= opts.max_bytes {
            return Ok((out, rgb.width(), rgb.height()));
        }
        if quality > MIN_QUALITY {
            quality = quality.saturating_sub(10).max(MIN_QUALITY);
        } else if side > 64 {
            side = side * 3 / 4;
        } else {
            break;
        }
    }
    Err(FieldError::Photo(format!(
        "the photo cannot be made smaller than {} bytes; raise the maximum photo size",
        opts.max_bytes
    )))
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `bytes` to `path` so that a crash leaves either nothing or the
/// whole file: a temporary file in the same folder, synced, then renamed.
pub fn write_blob(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let io = |e: std::io::Error| {
        FieldError::Storage(format!(
            "cannot write the photo {}: {e}; free some space on the device",
            path.display()
        ))
    };
    let dir = path
        .parent()
        .ok_or_else(|| FieldError::Storage(format!("{} has no folder", path.display())))?;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgb};

    /// A noisy picture (so JPEG cannot squeeze it to nothing), deterministic.
    pub(crate) fn noise_png(w: u32, h: u32, seed: u32) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        let img = ImageBuffer::from_fn(w, h, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let b = state.to_le_bytes();
            Rgb([b[0], b[1], b[2]])
        });
        let mut out = Vec::new();
        DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn a_large_photo_is_scaled_and_reencoded_as_jpeg() {
        let png = noise_png(1200, 800, 1);
        let opts = PhotoOptions {
            max_side_px: 600,
            max_bytes: 10 * 1024 * 1024,
            jpeg_quality: 80,
        };
        let p = prepare(png, &opts).unwrap();
        assert!(p.reencoded);
        assert_eq!(p.mime, PhotoMime::Jpeg);
        assert_eq!((p.width, p.height), (600, 400));
        assert_eq!(p.sha256, sha256_hex(&p.bytes));
        assert_eq!(image::guess_format(&p.bytes).unwrap(), ImageFormat::Jpeg);
        // Deterministic: the same input gives the same hash.
        let again = prepare(noise_png(1200, 800, 1), &opts).unwrap();
        assert_eq!(again.sha256, p.sha256);
    }

    #[test]
    fn a_photo_within_limits_keeps_its_bytes() {
        let png = noise_png(100, 50, 2);
        let p = prepare(png.clone(), &PhotoOptions::default()).unwrap();
        assert!(!p.reencoded);
        assert_eq!(p.mime, PhotoMime::Png);
        assert_eq!(p.bytes, png);
        assert_eq!((p.width, p.height), (100, 50));
    }

    #[test]
    fn the_byte_limit_lowers_quality_until_it_fits() {
        let png = noise_png(400, 400, 3);
        let opts = PhotoOptions {
            max_side_px: 400,
            max_bytes: 30_000,
            jpeg_quality: 95,
        };
        let p = prepare(png, &opts).unwrap();
        assert!(p.bytes.len() <= 30_000, "{}", p.bytes.len());
        assert!(p.reencoded);
    }

    #[test]
    fn non_images_and_bad_options_are_refused() {
        let e = prepare(b"hello, not a photo".to_vec(), &PhotoOptions::default()).unwrap_err();
        assert!(matches!(e, FieldError::Photo(_)), "{e}");
        let mut truncated = noise_png(50, 50, 4);
        truncated.truncate(60);
        assert!(matches!(
            prepare(truncated, &PhotoOptions::default()).unwrap_err(),
            FieldError::Photo(_)
        ));
        let bad = PhotoOptions {
            jpeg_quality: 0,
            ..PhotoOptions::default()
        };
        assert!(matches!(
            prepare(noise_png(10, 10, 5), &bad).unwrap_err(),
            FieldError::InvalidInput(_)
        ));
    }

    #[test]
    fn blobs_are_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        write_blob(&path, b"bytes").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"bytes");
        // Content-addressed: an existing blob is never rewritten.
        write_blob(&path, b"other").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"bytes");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
