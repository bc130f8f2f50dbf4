//! Test images built in code (compiled only for tests and with the
//! `test-fixtures` feature): plain JPEG/PNG/WebP, JPEGs carrying an EXIF
//! segment assembled byte by byte, a PNG header that declares any size, and
//! an HEIC file's first box.
//!
//! Everything is deterministic: the same call gives the same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage, RgbaImage};

/// A smooth RGB gradient.
pub fn gradient(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 255 / width.max(1)) as u8,
            (y * 255 / height.max(1)) as u8,
            ((x + y) % 256) as u8,
        ])
    })
}

/// A gradient JPEG (quality 90).
pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    encode_jpeg(&gradient(width, height), 90)
}

/// Encodes `img` as JPEG.
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .expect("JPEG encoding of an in-memory image");
    out
}

/// A JPEG of pseudo-random noise, which compresses badly: the way to get
/// a large file from a small image.
pub fn noise_jpeg(width: u32, height: u32, quality: u8, seed: u64) -> Vec<u8> {
    textured_jpeg(width, height, quality, 255, seed)
}

/// A gradient with up to `noise` levels of pseudo-random grain per
/// channel: more grain, bigger file. A 4000×3000 image with grain 22 at
/// quality 90 is about the 4 MB of a 12-megapixel camera photo.
pub fn textured_jpeg(width: u32, height: u32, quality: u8, noise: u8, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let keep = 255 - u32::from(noise);
    let img = RgbImage::from_fn(width, height, |x, y| {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        let grain = |i: usize| u32::from(r[i]) * u32::from(noise) / 255;
        let base = [
            x * 255 / width.max(1),
            y * 255 / height.max(1),
            (x + y) * 255 / (width + height).max(1),
        ];
        image::Rgb([0, 1, 2].map(|i| (base[i] * keep / 255 + grain(i)).min(255) as u8))
    });
    encode_jpeg(&img, quality)
}

/// A gradient PNG with an alpha channel.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([
            (x % 256) as u8,
            (y % 256) as u8,
            128,
            if x < width / 2 { 255 } else { 64 },
        ])
    });
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(img.as_raw(), width, height, ExtendedColorType::Rgba8)
        .expect("PNG encoding of an in-memory image");
    out
}

/// A gradient WebP (lossless; the only WebP encoder `image` has).
pub fn webp(width: u32, height: u32) -> Vec<u8> {
    let img = gradient(width, height);
    let mut out = Vec::new();
    WebPEncoder::new_lossless(&mut out)
        .write_image(img.as_raw(), width, height, ExtendedColorType::Rgb8)
        .expect("WebP encoding of an in-memory image");
    out
}

/// A PNG that is only a signature, an IHDR declaring `width`×`height`
/// (with a valid CRC) and IEND: a decompression bomb's calling card.
pub fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // 8-bit RGBA, deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (IEEE), as PNG chunks use.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The start of an iPhone HEIC file: an `ftyp` box with brand `heic`,
/// followed by filler.
pub fn heic_header() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&24u32.to_be_bytes());
    out.extend_from_slice(b"ftypheic");
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(b"mif1heic");
    out.extend_from_slice(&[0u8; 200]);
    out
}

/// Degrees, minutes, seconds as numerator/denominator of the seconds.
pub type Dms = (u32, u32, u32, u32);

/// What [`jpeg_with_exif`] writes into the EXIF segment.
#[derive(Debug, Clone, Default)]
pub struct ExifSpec {
    /// `YYYY:MM:DD HH:MM:SS`
    pub date_time_original: Option<&'static str>,
    /// `+07:00`
    pub offset_time_original: Option<&'static str>,
    /// (latitude, `N`/`S`, longitude, `E`/`W`)
    pub gps: Option<(Dms, u8, Dms, u8)>,
}

/// A gradient JPEG with an APP1 EXIF segment built from `spec`.
pub fn jpeg_with_exif(width: u32, height: u32, spec: &ExifSpec) -> Vec<u8> {
    let plain = jpeg(width, height);
    let tiff = exif_tiff(spec);
    let mut app1 = vec![0xff, 0xe1];
    let len = 2 + 6 + tiff.len();
    app1.extend_from_slice(&(len as u16).to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend_from_slice(&tiff);
    // Right after SOI, where cameras put it.
    let mut out = plain[..2].to_vec();
    out.extend_from_slice(&app1);
    out.extend_from_slice(&plain[2..]);
    out
}

const ASCII: u16 = 2;
const LONG: u16 = 4;
const RATIONAL: u16 = 5;

struct Entry {
    tag: u16,
    kind: u16,
    count: u32,
    data: Vec<u8>,
}

fn ascii_entry(tag: u16, text: &str) -> Entry {
    let mut data = text.as_bytes().to_vec();
    data.push(0);
    Entry {
        tag,
        kind: ASCII,
        count: data.len() as u32,
        data,
    }
}

fn rational_entry(tag: u16, (d, m, s_num, s_den): Dms) -> Entry {
    let mut data = Vec::new();
    for (num, den) in [(d, 1), (m, 1), (s_num, s_den)] {
        data.extend_from_slice(&num.to_le_bytes());
        data.extend_from_slice(&den.to_le_bytes());
    }
    Entry {
        tag,
        kind: RATIONAL,
        count: 3,
        data,
    }
}

/// One little-endian IFD starting at `start` (offset from the TIFF
/// header), with out-of-line values right after it.
fn ifd(mut entries: Vec<Entry>, start: u32) -> Vec<u8> {
    entries.sort_by_key(|e| e.tag);
    let table_len = 2 + 12 * entries.len() as u32 + 4;
    let mut table = Vec::new();
    let mut data = Vec::new();
    table.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for e in &entries {
        table.extend_from_slice(&e.tag.to_le_bytes());
        table.extend_from_slice(&e.kind.to_le_bytes());
        table.extend_from_slice(&e.count.to_le_bytes());
        if e.data.len() <= 4 {
            let mut inline = e.data.clone();
            inline.resize(4, 0);
            table.extend_from_slice(&inline);
        } else {
            let offset = start + table_len + data.len() as u32;
            table.extend_from_slice(&offset.to_le_bytes());
            data.extend_from_slice(&e.data);
            if data.len() % 2 == 1 {
                data.push(0);
            }
        }
    }
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&data);
    table
}

fn exif_tiff(spec: &ExifSpec) -> Vec<u8> {
    let mut exif_entries = Vec::new();
    if let Some(dt) = spec.date_time_original {
        exif_entries.push(ascii_entry(0x9003, dt));
    }
    if let Some(off) = spec.offset_time_original {
        exif_entries.push(ascii_entry(0x9011, off));
    }
    let mut gps_entries = Vec::new();
    if let Some((lat, lat_ref, lon, lon_ref)) = spec.gps {
        gps_entries.push(ascii_entry(0x0001, &char::from(lat_ref).to_string()));
        gps_entries.push(rational_entry(0x0002, lat));
        gps_entries.push(ascii_entry(0x0003, &char::from(lon_ref).to_string()));
        gps_entries.push(rational_entry(0x0004, lon));
    }
    let pointers = usize::from(!exif_entries.is_empty()) + usize::from(!gps_entries.is_empty());
    let ifd0_len = 2 + 12 * pointers as u32 + 4;
    let exif_start = 8 + ifd0_len;
    let exif_ifd = if exif_entries.is_empty() {
        Vec::new()
    } else {
        ifd(exif_entries, exif_start)
    };
    let gps_start = exif_start + exif_ifd.len() as u32;
    let gps_ifd = if gps_entries.is_empty() {
        Vec::new()
    } else {
        ifd(gps_entries, gps_start)
    };
    let mut ifd0_entries = Vec::new();
    if !exif_ifd.is_empty() {
        ifd0_entries.push(Entry {
            tag: 0x8769,
            kind: LONG,
            count: 1,
            data: exif_start.to_le_bytes().to_vec(),
        });
    }
    if !gps_ifd.is_empty() {
        ifd0_entries.push(Entry {
            tag: 0x8825,
            kind: LONG,
            count: 1,
            data: gps_start.to_le_bytes().to_vec(),
        });
    }
    let mut out = b"II\x2a\x00".to_vec();
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend_from_slice(&ifd(ifd0_entries, 8));
    out.extend_from_slice(&exif_ifd);
    out.extend_from_slice(&gps_ifd);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_png_reference_value() {
        // The CRC of an IEND chunk is fixed by the PNG specification.
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
    }

    #[test]
    fn fixtures_are_what_they_claim() {
        for (bytes, format) in [
            (jpeg(40, 30), image::ImageFormat::Jpeg),
            (png(40, 30), image::ImageFormat::Png),
            (webp(40, 30), image::ImageFormat::WebP),
        ] {
            let img = image::load_from_memory_with_format(&bytes, format).unwrap();
            assert_eq!((img.width(), img.height()), (40, 30));
        }
        let exif = jpeg_with_exif(20, 10, &ExifSpec::default());
        let img = image::load_from_memory(&exif).unwrap();
        assert_eq!((img.width(), img.height()), (20, 10));
    }
}
