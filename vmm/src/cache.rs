//! Where owvmm keeps what it builds once and reuses: the default guest image, crash-kernel
//! standbys, the demo's snapshot.

use std::path::PathBuf;

/// The cache root cannot be found.
#[derive(Debug, thiserror::Error)]
#[error("no cache directory: set OWVMM_CACHE or HOME")]
pub struct NoCache;

/// The cache root: `$OWVMM_CACHE`, else `~/.cache/owvmm`.
pub fn cache_dir() -> Result<PathBuf, NoCache> {
    if let Some(d) = std::env::var_os("OWVMM_CACHE") {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME").ok_or(NoCache)?;
    Ok(PathBuf::from(home).join(".cache/owvmm"))
}
