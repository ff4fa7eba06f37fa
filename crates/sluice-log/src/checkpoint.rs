//! Atomic small-file writes (temp file, fsync, rename, fsync directory) and the
//! `recovery-point` checkpoint.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::LogError;

/// File name of the recovery point checkpoint inside a partition directory.
pub const RECOVERY_POINT_FILE: &str = "recovery-point";
const TEMP_SUFFIX: &str = ".tmp";

/// Replaces `dir/name` with `bytes` atomically: write `name.tmp`, fsync, rename, fsync `dir`.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), LogError> {
    let temp_path = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let mut temp = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp_path)?;
    temp.write_all(bytes)?;
    temp.sync_all()?;
    drop(temp);
    fs::rename(&temp_path, dir.join(name))?;
    sync_dir(dir)?;
    Ok(())
}

/// fsyncs a directory so that file creations, renames and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Reads the recovery point; a missing or unreadable checkpoint means "scan everything" (0).
pub fn read_recovery_point(dir: &Path) -> Result<i64, LogError> {
    let path = dir.join(RECOVERY_POINT_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            tracing::warn!(dir = %dir.display(), "recovery point checkpoint is not text; recovering from 0");
            return Ok(0);
        }
        Err(error) => return Err(error.into()),
    };
    match text.trim().parse::<i64>() {
        Ok(offset) if offset >= 0 => Ok(offset),
        _ => {
            tracing::warn!(dir = %dir.display(), content = %text.trim(), "recovery point checkpoint is malformed; recovering from 0");
            Ok(0)
        }
    }
}

/// Writes the recovery point atomically.
pub fn write_recovery_point(dir: &Path, recovery_point: i64) -> Result<(), LogError> {
    write_atomically(
        dir,
        RECOVERY_POINT_FILE,
        format!("{recovery_point}\n").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_point_round_trips_and_tolerates_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_recovery_point(dir.path()).unwrap(), 0);
        write_recovery_point(dir.path(), 42).unwrap();
        assert_eq!(read_recovery_point(dir.path()).unwrap(), 42);
        fs::write(dir.path().join(RECOVERY_POINT_FILE), b"x\xff").unwrap();
        assert_eq!(read_recovery_point(dir.path()).unwrap(), 0);
        fs::write(dir.path().join(RECOVERY_POINT_FILE), b"-5").unwrap();
        assert_eq!(read_recovery_point(dir.path()).unwrap(), 0);
    }
}
