//! Atomic small-file writes (temp file, fsync, rename, fsync directory) and the
//! `recovery-point` and `log-start-offset` checkpoints.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::LogError;

/// File name of the recovery point checkpoint inside a partition directory.
pub const RECOVERY_POINT_FILE: &str = "recovery-point";
/// File name of the log start offset checkpoint inside a partition directory. Only needed
/// when the start sits inside the first segment (DeleteRecords); otherwise the first
/// segment's base offset is the start.
pub const LOG_START_OFFSET_FILE: &str = "log-start-offset";
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

/// Reads the log start offset checkpoint; missing or malformed means "none" (the caller
/// then uses the first segment's base offset, which only ever loses a DeleteRecords advance
/// inside the first segment, never data).
pub fn read_log_start_offset(dir: &Path) -> Result<Option<i64>, LogError> {
    let text = match fs::read(dir.join(LOG_START_OFFSET_FILE)) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let parsed = std::str::from_utf8(&text)
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .filter(|offset| *offset >= 0);
    if parsed.is_none() {
        tracing::warn!(dir = %dir.display(), "log start offset checkpoint is malformed; using the first segment");
    }
    Ok(parsed)
}

/// Writes the log start offset atomically (temp, fsync, rename, fsync dir).
pub fn write_log_start_offset(dir: &Path, log_start_offset: i64) -> Result<(), LogError> {
    write_atomically(
        dir,
        LOG_START_OFFSET_FILE,
        format!("{log_start_offset}\n").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_start_offset_round_trips_and_tolerates_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_log_start_offset(dir.path()).unwrap(), None);
        write_log_start_offset(dir.path(), 17).unwrap();
        assert_eq!(read_log_start_offset(dir.path()).unwrap(), Some(17));
        assert!(!dir.path().join("log-start-offset.tmp").exists());
        fs::write(dir.path().join(LOG_START_OFFSET_FILE), b"\xff\xfe").unwrap();
        assert_eq!(read_log_start_offset(dir.path()).unwrap(), None);
        fs::write(dir.path().join(LOG_START_OFFSET_FILE), b"-3\n").unwrap();
        assert_eq!(read_log_start_offset(dir.path()).unwrap(), None);
    }

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
