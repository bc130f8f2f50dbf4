//! The image pipeline: verify the hash, sniff the type, check the declared
//! size, read EXIF, decode with limits, make renditions.
//!
//! Pure functions over bytes (no I/O, no async) so that the server, tests
//! and the `blobs` benchmark run exactly the same code. The caller decides
//! where they run (a blocking thread) and how many at once (a semaphore:
//! decoding is the one step whose memory grows with the image).
//!
//! Order matters: the cheap checks come first, and the declared pixel size
//! is read from the file header *before* any decoder allocates, so a tiny
//! file declaring 60000×60000 pixels is refused without touching memory.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

use super::Sha256Hex;
use super::exif::{self, ExifFacts};

/// JPEG quality of renditions: small files, no visible blocking at
/// thumbnail and screen sizes.
pub const RENDITION_QUALITY: u8 = 82;

/// The image types the server stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Jpeg,
    Png,
    Webp,
}

impl ImageKind {
    /// The media type served with the original.
    pub fn mime(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Png => "image/png",
            ImageKind::Webp => "image/webp",
        }
    }

    fn format(self) -> ImageFormat {
        match self {
            ImageKind::Jpeg => ImageFormat::Jpeg,
            ImageKind::Png => ImageFormat::Png,
            ImageKind::Webp => ImageFormat::WebP,
        }
    }
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Image(ImageKind),
    /// HEIC/HEIF (iPhone photos): refused with advice.
    Heic,
    /// A recognised type that is not accepted (named in the message).
    Unsupported(&'static str),
    /// Nothing recognised.
    Unknown,
}

/// Looks at magic numbers only; the declared media type is never trusted.
pub fn sniff(head: &[u8]) -> Sniffed {
    if head.starts_with(&[0xff, 0xd8, 0xff]) {
        return Sniffed::Image(ImageKind::Jpeg);
    }
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Sniffed::Image(ImageKind::Png);
    }
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        return Sniffed::Image(ImageKind::Webp);
    }
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        return sniff_iso_media(head);
    }
    if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        return Sniffed::Unsupported("GIF");
    }
    if head.starts_with(b"II*\0") || head.starts_with(b"MM\0*") {
        return Sniffed::Unsupported("TIFF");
    }
    if head.starts_with(b"BM") && head.len() >= 14 {
        return Sniffed::Unsupported("BMP");
    }
    if head.starts_with(b"%PDF") {
        return Sniffed::Unsupported("PDF");
    }
    Sniffed::Unknown
}

/// ISO base media files (`ftyp` box): HEIC/HEIF, AVIF, or video.
fn sniff_iso_media(head: &[u8]) -> Sniffed {
    let box_len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let end = box_len.clamp(12, head.len());
    // The major brand, then the compatible brands (skipping the version).
    let brands =
        std::iter::once(&head[8..12]).chain(head.get(16..end).unwrap_or_default().chunks_exact(4));
    let brands: Vec<&[u8]> = brands.collect();
    if brands.iter().any(|b| matches!(*b, b"avif" | b"avis")) {
        return Sniffed::Unsupported("AVIF");
    }
    let heif = [
        b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1",
    ];
    if brands
        .iter()
        .any(|b| heif.iter().any(|h| *b == h.as_slice()))
    {
        return Sniffed::Heic;
    }
    Sniffed::Unsupported("video or other ISO media")
}

/// Bounds on what one image may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest width or height, in pixels.
    pub max_side: u32,
    /// Most bytes a decoder may allocate.
    pub max_decode_bytes: u64,
}

/// Why an upload is not accepted as a photo. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    #[error(
        "the uploaded bytes hash to sha256 {actual}, not the {expected} declared at creation; the file changed or was damaged in transit: upload it again"
    )]
    HashMismatch { expected: String, actual: String },
    #[error(
        "HEIC/HEIF photos are not accepted: convert the photo to JPEG before uploading (on an iPhone: Settings → Camera → Formats → Most Compatible, or share the photo as JPEG)"
    )]
    Heic,
    #[error("{0} files are not accepted: upload the photo as JPEG, PNG or WebP")]
    UnsupportedType(&'static str),
    #[error("the file is not a JPEG, PNG or WebP image: upload a photo")]
    NotAnImage,
    #[error(
        "the image is {width}×{height} pixels; at most {max} pixels a side are accepted: resize it and upload again"
    )]
    TooManyPixels { width: u32, height: u32, max: u32 },
    #[error(
        "decoding the image would need more than {max_mib} MiB of memory: resize it and upload again"
    )]
    TooMuchMemory { max_mib: u64 },
    #[error(
        "the image cannot be decoded ({0}); it may be truncated or damaged: upload the original photo again"
    )]
    Undecodable(String),
    #[error("cannot encode a rendition: {0}")]
    Encode(String),
}

/// Facts about a verified upload, before any decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    pub sha256: Sha256Hex,
    pub kind: ImageKind,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    pub exif: ExifFacts,
}

/// Hash, sniff, header size check and EXIF, without decoding pixels.
/// `expected` is the sha256 the client declared.
pub fn inspect(
    bytes: &[u8],
    expected: &Sha256Hex,
    limits: &Limits,
) -> Result<Inspected, PipelineError> {
    let actual = Sha256Hex::of(bytes);
    if &actual != expected {
        return Err(PipelineError::HashMismatch {
            expected: expected.as_str().to_owned(),
            actual: actual.as_str().to_owned(),
        });
    }
    let kind = match sniff(bytes) {
        Sniffed::Image(kind) => kind,
        Sniffed::Heic => return Err(PipelineError::Heic),
        Sniffed::Unsupported(name) => return Err(PipelineError::UnsupportedType(name)),
        Sniffed::Unknown => return Err(PipelineError::NotAnImage),
    };
    let (width, height) = header_dimensions(kind, bytes).ok_or_else(|| {
        PipelineError::Undecodable("no image size found in the file header".into())
    })?;
    check_dimensions(width, height, limits)?;
    Ok(Inspected {
        sha256: actual,
        kind,
        width,
        height,
        bytes: bytes.len() as u64,
        exif: exif::extract(bytes),
    })
}

fn check_dimensions(width: u32, height: u32, limits: &Limits) -> Result<(), PipelineError> {
    if width == 0 || height == 0 {
        return Err(PipelineError::Undecodable(format!(
            "it declares {width}×{height} pixels"
        )));
    }
    if width > limits.max_side || height > limits.max_side {
        return Err(PipelineError::TooManyPixels {
            width,
            height,
            max: limits.max_side,
        });
    }
    Ok(())
}

/// The pixel size a file's header declares, read without a decoder.
pub fn header_dimensions(kind: ImageKind, bytes: &[u8]) -> Option<(u32, u32)> {
    match kind {
        ImageKind::Png => png_dimensions(bytes),
        ImageKind::Jpeg => jpeg_dimensions(bytes),
        ImageKind::Webp => webp_dimensions(bytes),
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le24(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 3)?;
    Some(u32::from(s[0]) | u32::from(s[1]) << 8 | u32::from(s[2]) << 16)
}

/// IHDR is always the first chunk.
fn png_dimensions(b: &[u8]) -> Option<(u32, u32)> {
    (b.get(12..16)? == b"IHDR").then_some(())?;
    Some((be32(b, 16)?, be32(b, 20)?))
}

/// Walks the marker segments up to the first start-of-frame.
fn jpeg_dimensions(b: &[u8]) -> Option<(u32, u32)> {
    let mut i = 2;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while *b.get(i)? != 0xff {
            i += 1;
        }
        while *b.get(i)? == 0xff {
            i += 1;
        }
        let marker = *b.get(i)?;
        i += 1;
        match marker {
            // Standalone markers carry no length.
            0x01 | 0xd0..=0xd7 | 0xd8 => continue,
            // Start of scan or end of image before any frame header.
            0xd9 | 0xda => return None,
            // SOF0–SOF15 except DHT (C4), JPG (C8) and DAC (CC).
            0xc0..=0xcf if !matches!(marker, 0xc4 | 0xc8 | 0xcc) => {
                let height = be16(b, i + 3)?;
                let width = be16(b, i + 5)?;
                return Some((u32::from(width), u32::from(height)));
            }
            _ => {
                let len = usize::from(be16(b, i)?);
                if len < 2 {
                    return None;
                }
                i += len;
            }
        }
    }
}

/// The first chunk after the RIFF header: lossy, lossless or extended.
fn webp_dimensions(b: &[u8]) -> Option<(u32, u32)> {
    match b.get(12..16)? {
        b"VP8 " => {
            // Frame tag (3 bytes) and start code (3) precede the sizes.
            (b.get(23..26)? == [0x9d, 0x01, 0x2a]).then_some(())?;
            Some((
                u32::from(le16(b, 26)? & 0x3fff),
                u32::from(le16(b, 28)? & 0x3fff),
            ))
        }
        b"VP8L" => {
            (*b.get(20)? == 0x2f).then_some(())?;
            let bits = u32::from_le_bytes(b.get(21..25)?.try_into().ok()?);
            Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
        }
        b"VP8X" => Some((le24(b, 24)? + 1, le24(b, 27)? + 1)),
        _ => None,
    }
}

/// Decodes `bytes` (already [`inspect`]ed as `kind`) with `limits`, and
/// turns it upright as its EXIF orientation says.
pub fn decode(
    bytes: &[u8],
    kind: ImageKind,
    limits: &Limits,
) -> Result<DynamicImage, PipelineError> {
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_side);
    image_limits.max_image_height = Some(limits.max_side);
    image_limits.max_alloc = Some(limits.max_decode_bytes);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), kind.format());
    reader.limits(image_limits);
    let mut decoder = reader.into_decoder().map_err(|e| image_error(e, limits))?;
    if decoder.total_bytes() > limits.max_decode_bytes {
        return Err(PipelineError::TooMuchMemory {
            max_mib: limits.max_decode_bytes >> 20,
        });
    }
    // A broken orientation tag is not worth refusing the photo for.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| image_error(e, limits))?;
    img.apply_orientation(orientation);
    Ok(img)
}

fn image_error(e: ImageError, limits: &Limits) -> PipelineError {
    match e {
        ImageError::Limits(_) => PipelineError::TooMuchMemory {
            max_mib: limits.max_decode_bytes >> 20,
        },
        other => PipelineError::Undecodable(other.to_string()),
    }
}

/// A JPEG rendition whose longer side is at most `max_side` (never
/// enlarged). Transparency is flattened onto white, as on paper.
pub fn rendition(img: &DynamicImage, max_side: u32) -> Result<Vec<u8>, PipelineError> {
    encode_jpeg(&scaled(img, max_side))
}

/// Both renditions, `(thumb, preview)`. The thumbnail is scaled from the
/// preview, not from the full image: a fifth of the work for a 12-megapixel
/// photo, and no visible difference at thumbnail size.
pub fn renditions(
    img: &DynamicImage,
    thumb_px: u32,
    preview_px: u32,
) -> Result<(Vec<u8>, Vec<u8>), PipelineError> {
    let preview = scaled(img, preview_px);
    let thumb = encode_jpeg(&scaled(&preview, thumb_px))?;
    Ok((thumb, encode_jpeg(&preview)?))
}

/// `img` fitted into `max_side`×`max_side`, or a copy-free view of it.
fn scaled(img: &DynamicImage, max_side: u32) -> std::borrow::Cow<'_, DynamicImage> {
    if img.width() > max_side || img.height() > max_side {
        std::borrow::Cow::Owned(img.thumbnail(max_side, max_side))
    } else {
        std::borrow::Cow::Borrowed(img)
    }
}

fn encode_jpeg(img: &DynamicImage) -> Result<Vec<u8>, PipelineError> {
    let rgb = flatten(img);
    let mut out = Vec::with_capacity(64 * 1024);
    JpegEncoder::new_with_quality(&mut out, RENDITION_QUALITY)
        .encode_image(&rgb)
        .map_err(|e| PipelineError::Encode(e.to_string()))?;
    Ok(out)
}

fn flatten(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over_white =
            |c: u8| ((u16::from(c) * u16::from(a) + 255 * (255 - u16::from(a))) / 255) as u8;
        image::Rgb([over_white(r), over_white(g), over_white(b)])
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::fixtures;
    use super::*;

    const LIMITS: Limits = Limits {
        max_side: 8192,
        max_decode_bytes: 320 << 20,
    };

    #[test]
    fn sniffs_by_content() {
        assert_eq!(
            sniff(&fixtures::jpeg(8, 8)),
            Sniffed::Image(ImageKind::Jpeg)
        );
        assert_eq!(sniff(&fixtures::png(8, 8)), Sniffed::Image(ImageKind::Png));
        assert_eq!(
            sniff(&fixtures::webp(8, 8)),
            Sniffed::Image(ImageKind::Webp)
        );
        assert_eq!(sniff(&fixtures::heic_header()), Sniffed::Heic);
        assert_eq!(sniff(b"GIF89a......"), Sniffed::Unsupported("GIF"));
        assert_eq!(sniff(b"%PDF-1.7\n"), Sniffed::Unsupported("PDF"));
        assert_eq!(sniff(b"<html><body>"), Sniffed::Unknown);
        assert_eq!(sniff(b""), Sniffed::Unknown);
        let mut avif = fixtures::heic_header();
        avif[8..12].copy_from_slice(b"avif");
        assert_eq!(sniff(&avif), Sniffed::Unsupported("AVIF"));
    }

    #[test]
    fn reads_sizes_from_headers() {
        for (bytes, kind) in [
            (fixtures::jpeg(321, 123), ImageKind::Jpeg),
            (fixtures::png(321, 123), ImageKind::Png),
            (fixtures::webp(321, 123), ImageKind::Webp),
            (
                fixtures::jpeg_with_exif(321, 123, &fixtures::ExifSpec::default()),
                ImageKind::Jpeg,
            ),
        ] {
            assert_eq!(
                header_dimensions(kind, &bytes),
                Some((321, 123)),
                "{kind:?}"
            );
        }
        assert_eq!(
            header_dimensions(ImageKind::Png, &fixtures::png_header_only(60_000, 60_000)),
            Some((60_000, 60_000))
        );
        // Truncated headers give nothing, never a panic.
        let jpeg = fixtures::jpeg(10, 10);
        for n in 0..jpeg.len().min(700) {
            let _ = header_dimensions(ImageKind::Jpeg, &jpeg[..n]);
        }
        assert_eq!(header_dimensions(ImageKind::Jpeg, &jpeg[..4]), None);
        assert_eq!(
            header_dimensions(ImageKind::Webp, b"RIFF\0\0\0\0WEBPVP8 "),
            None
        );
    }

    #[test]
    fn inspect_checks_hash_type_and_size_in_that_order() {
        let jpeg = fixtures::jpeg(64, 32);
        let sha = Sha256Hex::of(&jpeg);
        let ok = inspect(&jpeg, &sha, &LIMITS).unwrap();
        assert_eq!((ok.kind, ok.width, ok.height), (ImageKind::Jpeg, 64, 32));
        assert_eq!(ok.bytes, jpeg.len() as u64);
        assert_eq!(ok.sha256, sha);

        let other = Sha256Hex::of(b"something else");
        assert!(matches!(
            inspect(&jpeg, &other, &LIMITS),
            Err(PipelineError::HashMismatch { .. })
        ));
        let text = b"hello, this is not a photo".to_vec();
        assert_eq!(
            inspect(&text, &Sha256Hex::of(&text), &LIMITS),
            Err(PipelineError::NotAnImage)
        );
        let heic = fixtures::heic_header();
        let err = inspect(&heic, &Sha256Hex::of(&heic), &LIMITS).unwrap_err();
        assert_eq!(err, PipelineError::Heic);
        assert!(
            err.to_string().contains("convert the photo to JPEG"),
            "{err}"
        );
        let bomb = fixtures::png_header_only(60_000, 60_000);
        let err = inspect(&bomb, &Sha256Hex::of(&bomb), &LIMITS).unwrap_err();
        assert_eq!(
            err,
            PipelineError::TooManyPixels {
                width: 60_000,
                height: 60_000,
                max: 8192
            }
        );
        assert!(err.to_string().contains("60000×60000"), "{err}");
    }

    #[test]
    fn decodes_and_makes_renditions() {
        for bytes in [
            fixtures::jpeg(600, 400),
            fixtures::png(600, 400),
            fixtures::webp(600, 400),
        ] {
            let sha = Sha256Hex::of(&bytes);
            let ins = inspect(&bytes, &sha, &LIMITS).unwrap();
            let img = decode(&bytes, ins.kind, &LIMITS).unwrap();
            assert_eq!((img.width(), img.height()), (600, 400));
            let thumb = rendition(&img, 256).unwrap();
            let t = image::load_from_memory_with_format(&thumb, ImageFormat::Jpeg).unwrap();
            assert_eq!((t.width(), t.height()), (256, 171));
            // Small images are not enlarged.
            let big = rendition(&img, 1280).unwrap();
            let b = image::load_from_memory_with_format(&big, ImageFormat::Jpeg).unwrap();
            assert_eq!((b.width(), b.height()), (600, 400));
        }
    }

    #[test]
    fn both_renditions_fit_their_boxes() {
        let bytes = fixtures::jpeg(3000, 2000);
        let img = decode(&bytes, ImageKind::Jpeg, &LIMITS).unwrap();
        let (thumb, preview) = renditions(&img, 256, 1280).unwrap();
        let t = image::load_from_memory_with_format(&thumb, ImageFormat::Jpeg).unwrap();
        let p = image::load_from_memory_with_format(&preview, ImageFormat::Jpeg).unwrap();
        assert_eq!((t.width(), t.height()), (256, 171));
        assert_eq!((p.width(), p.height()), (1280, 853));
    }

    #[test]
    fn transparency_is_flattened_onto_white() {
        let img = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            4,
            4,
            image::Rgba([0, 0, 0, 0]),
        ));
        let out = rendition(&img, 16).unwrap();
        let back = image::load_from_memory(&out).unwrap().to_rgb8();
        assert!(
            back.pixels().all(|p| p.0.iter().all(|&c| c > 240)),
            "{:?}",
            back.get_pixel(0, 0)
        );
    }

    #[test]
    fn decoding_respects_the_limits() {
        let bytes = fixtures::jpeg(300, 200);
        let tight = Limits {
            max_side: 8192,
            max_decode_bytes: 1000,
        };
        assert!(matches!(
            decode(&bytes, ImageKind::Jpeg, &tight),
            Err(PipelineError::TooMuchMemory { .. })
        ));
        let narrow = Limits {
            max_side: 100,
            max_decode_bytes: 320 << 20,
        };
        assert!(decode(&bytes, ImageKind::Jpeg, &narrow).is_err());
        // A truncated file is refused, not panicked on.
        let cut = &bytes[..bytes.len() / 3];
        let _ = decode(cut, ImageKind::Jpeg, &LIMITS);
        let garbage = [0xffu8, 0xd8, 0xff, 0xe0, 0, 2, 0xff, 0xc0, 0, 0];
        assert!(decode(&garbage, ImageKind::Jpeg, &LIMITS).is_err());
    }
}
