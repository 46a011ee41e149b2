//! Reading a range of a file at an offset without moving a shared cursor, so that threads can
//! read one open file at once.

use std::fs::File;

/// Whether this platform reads at an offset without a shared cursor (Unix, Windows). Elsewhere
/// [`read_exact_at`] moves the file's cursor, so only one thread may read a file at a time.
pub(crate) const PARALLEL_READS: bool = cfg!(any(unix, windows));

/// Reads exactly `buffer.len()` bytes at `offset` of `file`.
#[cfg(unix)]
pub(crate) fn read_exact_at(file: &File, buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buffer, offset)
}

/// Reads exactly `buffer.len()` bytes at `offset` of `file` (Windows' positioned read).
#[cfg(windows)]
pub(crate) fn read_exact_at(
    file: &File,
    mut buffer: &mut [u8],
    mut offset: u64,
) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buffer.is_empty() {
        match file.seek_read(buffer, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buffer = &mut buffer[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads exactly `buffer.len()` bytes at `offset` of `file`, moving its cursor (see
/// [`PARALLEL_READS`]).
#[cfg(not(any(unix, windows)))]
pub(crate) fn read_exact_at(
    mut file: &File,
    buffer: &mut [u8],
    offset: u64,
) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buffer)
}
