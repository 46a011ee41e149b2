//! Downloading a missing file from the mirror into burn-dataset's cache, atomically.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::read::MultiGzDecoder;

use super::idx::{self, IdxKind};

/// Largest response body, and largest decompressed file, accepted (the biggest MNIST file,
/// the training images, is 47 MB uncompressed).
const MAX_BYTES: u64 = 64 << 20;

/// Longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP agent with `timeout` for each whole request.
pub(crate) fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout.min(CONNECT_TIMEOUT)))
        .build()
        .new_agent()
}

/// Downloads `url` (gzipped, or already decoded by the transport), checks it is a valid IDX
/// file of `kind`, and stores it uncompressed as `dir/name`; returns that path or why it failed.
///
/// The bytes go to a temporary file in `dir` that is renamed at the end, so a failure never
/// leaves a partial file under the final name.
pub(crate) fn fetch(
    agent: &ureq::Agent,
    url: &str,
    kind: IdxKind,
    dir: &Path,
    name: &str,
) -> Result<PathBuf, String> {
    let body = agent
        .get(url)
        .call()
        .map_err(|error| error.to_string())?
        .into_body()
        .into_with_config()
        .limit(MAX_BYTES)
        .read_to_vec()
        .map_err(|error| error.to_string())?;
    let bytes = if body.starts_with(&[0x1f, 0x8b]) {
        let mut decoded = Vec::new();
        MultiGzDecoder::new(body.as_slice())
            .take(MAX_BYTES + 1)
            .read_to_end(&mut decoded)
            .map_err(|error| format!("gzip stream failed to decode: {error}"))?;
        if decoded.len() as u64 > MAX_BYTES {
            return Err(format!("decompresses to more than {MAX_BYTES} bytes"));
        }
        decoded
    } else {
        body
    };
    idx::parse(bytes.as_slice(), kind, url, false).map_err(|error| error.to_string())?;
    write_atomically(dir, name, &bytes)
}

/// Writes `bytes` to `dir/name` through a temporary file in `dir` and a rename.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let target = dir.join(name);
    let show = |error: std::io::Error| format!("{}: {error}", target.display());
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(show)?;
    std::io::Write::write_all(&mut file, bytes).map_err(show)?;
    file.persist(&target).map_err(|error| show(error.error))?;
    Ok(target)
}
