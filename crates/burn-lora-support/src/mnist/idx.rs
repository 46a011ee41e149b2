//! Reading IDX files (the MNIST format), plain or gzip-compressed.
//!
//! Every header field is checked against the data actually present before anything is kept:
//! the payload is read through a `take(expected + 1)` limit, so a lying header can neither cause
//! a large allocation nor hide trailing bytes.

use std::fs::File;
use std::io::{self, BufRead, BufReader, ErrorKind, Read};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;

use super::{IMAGE_SIDE, PIXELS};
use crate::error::{DataError, Result};

/// The first two bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The two kinds of IDX file MNIST uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdxKind {
    /// `idx3-ubyte`: `n` images of 28 × 28 bytes.
    Images,
    /// `idx1-ubyte`: `n` labels of one byte, each a digit 0–9.
    Labels,
}

impl IdxKind {
    /// The magic number in the first four bytes.
    const fn magic(self) -> u32 {
        match self {
            Self::Images => 0x0000_0803,
            Self::Labels => 0x0000_0801,
        }
    }

    /// Bytes before the payload: magic and count, plus rows and columns for images.
    const fn header_len(self) -> usize {
        match self {
            Self::Images => 16,
            Self::Labels => 8,
        }
    }

    /// Payload bytes per item.
    const fn item_len(self) -> u64 {
        match self {
            Self::Images => PIXELS as u64,
            Self::Labels => 1,
        }
    }

    /// The plural noun for messages.
    const fn noun(self) -> &'static str {
        match self {
            Self::Images => "images",
            Self::Labels => "labels",
        }
    }

    /// The other kind, to recognise swapped files.
    const fn other(self) -> Self {
        match self {
            Self::Images => Self::Labels,
            Self::Labels => Self::Images,
        }
    }
}

/// Whether the bytes being read come out of a gzip decoder (decides how read errors are named).
#[derive(Clone, Copy)]
enum Encoding {
    Plain,
    Gzip,
}

/// Reads and validates one IDX file; returns its payload (pixels or labels, header removed).
///
/// The file is decoded as gzip when its name ends in `.gz` or its content starts with the gzip
/// magic; otherwise it is read as a plain IDX file.
pub(crate) fn read_file(path: &Path, kind: IdxKind) -> Result<Vec<u8>> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|error| io_error(&shown, &error))?;
    let named_gz = path.extension().is_some_and(|extension| extension == "gz");
    parse(BufReader::new(file), kind, &shown, named_gz)
}

/// Validates IDX bytes, gzipped or not, read from `reader`; `shown` names the source in errors.
pub(crate) fn parse<R: BufRead>(
    mut reader: R,
    kind: IdxKind,
    shown: &str,
    force_gzip: bool,
) -> Result<Vec<u8>> {
    let starts_gzip = reader
        .fill_buf()
        .map_err(|error| io_error(shown, &error))?
        .starts_with(&GZIP_MAGIC);
    if force_gzip || starts_gzip {
        parse_decoded(MultiGzDecoder::new(reader), kind, shown, Encoding::Gzip)
    } else {
        parse_decoded(reader, kind, shown, Encoding::Plain)
    }
}

/// Validates the uncompressed IDX stream.
fn parse_decoded<R: Read>(
    mut reader: R,
    kind: IdxKind,
    shown: &str,
    encoding: Encoding,
) -> Result<Vec<u8>> {
    let mut header = [0u8; 16];
    let header_len = kind.header_len();
    let got = read_up_to(&mut reader, &mut header[..header_len])
        .map_err(|error| read_error(shown, encoding, &error))?;
    let [m0, m1, m2, m3, n0, n1, n2, n3, r0, r1, r2, r3, c0, c1, c2, c3] = header;
    let magic = u32::from_be_bytes([m0, m1, m2, m3]);
    // The magic number first (when present): it says most about a wrong file.
    if got >= 4 && magic != kind.magic() {
        let hint = if magic == kind.other().magic() {
            format!(
                " (that is the magic number of an IDX {} file: are the files swapped?)",
                kind.other().noun()
            )
        } else {
            String::new()
        };
        return Err(invalid(
            shown,
            format!(
                "wrong magic number 0x{magic:08x}, expected 0x{:08x} for IDX {}{hint}",
                kind.magic(),
                kind.noun()
            ),
        ));
    }
    if got < header_len {
        return Err(invalid(
            shown,
            format!(
                "truncated: {got} bytes, shorter than the {header_len}-byte header of an IDX {} file",
                kind.noun()
            ),
        ));
    }
    if kind == IdxKind::Images {
        let rows = u32::from_be_bytes([r0, r1, r2, r3]);
        let cols = u32::from_be_bytes([c0, c1, c2, c3]);
        if (rows, cols) != (IMAGE_SIDE as u32, IMAGE_SIDE as u32) {
            return Err(invalid(
                shown,
                format!("images are {rows}x{cols}, expected {IMAGE_SIDE}x{IMAGE_SIDE}"),
            ));
        }
    }
    let count = u32::from_be_bytes([n0, n1, n2, n3]);
    // At most (2^32 - 1) * 784 < 2^42: no overflow.
    let expected = u64::from(count) * kind.item_len();
    let mut payload = Vec::new();
    reader
        .take(expected + 1)
        .read_to_end(&mut payload)
        .map_err(|error| read_error(shown, encoding, &error))?;
    let found = payload.len() as u64;
    if found < expected {
        return Err(invalid(
            shown,
            format!(
                "truncated: the header announces {count} {} ({expected} bytes after the header) \
                 but only {found} bytes follow",
                kind.noun()
            ),
        ));
    }
    if found > expected {
        return Err(invalid(
            shown,
            format!(
                "trailing bytes: the header announces {count} {} ({expected} bytes after the \
                 header) but more data follows",
                kind.noun()
            ),
        ));
    }
    if kind == IdxKind::Labels {
        if let Some((index, label)) = payload.iter().enumerate().find(|(_, &label)| label > 9) {
            return Err(invalid(
                shown,
                format!("label {label} at index {index} is not a digit 0-9"),
            ));
        }
    }
    Ok(payload)
}

/// Fills `buf` as far as the stream allows; returns how many bytes were read.
fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// A read error: corrupt gzip data is invalid data, anything else an I/O error.
fn read_error(shown: &str, encoding: Encoding, error: &io::Error) -> DataError {
    let corrupt = matches!(
        error.kind(),
        ErrorKind::InvalidInput | ErrorKind::InvalidData | ErrorKind::UnexpectedEof
    );
    match encoding {
        Encoding::Gzip if corrupt => {
            invalid(shown, format!("gzip stream failed to decode: {error}"))
        }
        _ => io_error(shown, error),
    }
}

/// [`DataError::InvalidData`] for `shown`.
pub(crate) fn invalid(shown: &str, reason: String) -> DataError {
    DataError::InvalidData {
        path: shown.to_string(),
        reason,
    }
}

/// [`DataError::Io`] for `shown`.
fn io_error(shown: &str, error: &io::Error) -> DataError {
    DataError::Io {
        path: shown.to_string(),
        message: error.to_string(),
    }
}
