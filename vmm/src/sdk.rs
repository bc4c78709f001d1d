//! `owvmm sdk DIR`: writes the crash-procedure SDK for guest programs (the C header and
//! its example) into DIR (docs/crash-procedures.md).

use std::path::{Path, PathBuf};

use clap::Args;

/// The files written, relative to DIR, and their contents.
const FILES: &[(&str, &str)] = &[
    ("include/owvmm.h", include_str!("../../sdk/include/owvmm.h")),
    (
        "examples/kvserver.c",
        include_str!("../../sdk/examples/kvserver.c"),
    ),
];

#[derive(Args)]
pub struct SdkArgs {
    /// Directory to write into (made if missing)
    dir: PathBuf,
    /// Overwrite files that differ from owvmm's
    #[arg(long)]
    force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error("{0} exists and differs from owvmm's; --force overwrites it")]
    Differs(PathBuf),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

impl SdkError {
    /// Whether nothing was tried: the arguments were refused.
    pub fn refused(&self) -> bool {
        matches!(self, SdkError::Differs(_))
    }
}

impl SdkArgs {
    /// Writes the files into `dir` and returns their paths. Without `force` nothing is
    /// written when one of them exists with other contents (an identical file is fine).
    pub fn write(&self) -> Result<Vec<PathBuf>, SdkError> {
        write(&self.dir, self.force)
    }
}

fn write(dir: &Path, force: bool) -> Result<Vec<PathBuf>, SdkError> {
    let paths: Vec<PathBuf> = FILES.iter().map(|(rel, _)| dir.join(rel)).collect();
    if !force {
        for (p, (_, text)) in paths.iter().zip(FILES) {
            match std::fs::read(p) {
                Ok(old) if old != text.as_bytes() => return Err(SdkError::Differs(p.clone())),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SdkError::Write(p.clone(), e)),
            }
        }
    }
    for (p, (_, text)) in paths.iter().zip(FILES) {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| SdkError::Write(parent.into(), e))?;
        }
        std::fs::write(p, text).map_err(|e| SdkError::Write(p.clone(), e))?;
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_refuses_a_different_file_and_forces() {
        let d = std::env::temp_dir().join(format!("owvmm-sdk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let paths = write(&d, false).expect("write");
        assert_eq!(
            paths,
            [d.join("include/owvmm.h"), d.join("examples/kvserver.c")]
        );
        let header = std::fs::read_to_string(&paths[0]).expect("read");
        assert!(header.contains("ow_set_crash_procedure") && header.contains("OW_SIGNAL 63"));
        // Identical files are fine.
        write(&d, false).expect("again");
        std::fs::write(&paths[1], "mine").expect("edit");
        let e = write(&d, false).expect_err("a different file");
        assert!(matches!(&e, SdkError::Differs(p) if p == &paths[1]) && e.refused());
        assert_eq!(std::fs::read_to_string(&paths[1]).expect("read"), "mine");
        write(&d, true).expect("force");
        assert!(std::fs::read_to_string(&paths[1])
            .expect("read")
            .contains("kvserver"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
