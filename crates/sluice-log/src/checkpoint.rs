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
/// File name of the high watermark checkpoint inside a partition directory (format
/// `0\n<offset>\n`: a version line, then the offset). Kafka keeps one
/// `replication-offset-checkpoint` per data directory; one file per partition keeps a
/// partition's state in its own directory, like every other checkpoint here.
pub const HIGH_WATERMARK_FILE: &str = "high-watermark-checkpoint";
/// Extension of the temporary file [`write_atomically`] renames into place.
pub const TEMP_EXTENSION: &str = "tmp";

/// Replaces `dir/name` with `bytes` atomically: write `name.tmp`, fsync, rename, fsync `dir`.
/// A crash leaves the old or the new content. A failed write (a full disk) removes its
/// temporary file again, so failures do not pile up files; one left by a crash is removed
/// when the log is next opened.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temp_path = dir.join(format!("{name}.{TEMP_EXTENSION}"));
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp_path)
        .and_then(|mut temp| {
            temp.write_all(bytes)?;
            temp.sync_all()
        });
    if let Err(error) = written {
        // Best effort: the write failed already, and this is what it reports.
        let _ = fs::remove_file(&temp_path);
        return Err(error);
    }
    if let Err(error) = fs::rename(&temp_path, dir.join(name)) {
        let _ = fs::remove_file(&temp_path);
        return Err(error);
    }
    File::open(dir)?.sync_all()
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
    )?;
    Ok(())
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
    )?;
    Ok(())
}

/// Reads the high watermark checkpoint. Missing means None; unreadable or malformed is
/// logged and also None: the high watermark is only a hint for a restarting replica (it
/// relearns the value from the leader), so it never makes opening a log fail.
pub fn read_high_watermark(dir: &Path) -> Option<i64> {
    let path = dir.join(HIGH_WATERMARK_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "high watermark checkpoint is unreadable; ignoring it");
            return None;
        }
    };
    let parsed = std::str::from_utf8(&bytes).ok().and_then(|text| {
        let mut lines = text.lines();
        let version = lines.next()?;
        let offset = lines.next()?.trim().parse::<i64>().ok()?;
        let rest_empty = lines.all(|line| line.trim().is_empty());
        (version.trim() == "0" && offset >= 0 && rest_empty).then_some(offset)
    });
    if parsed.is_none() {
        tracing::warn!(path = %path.display(), "high watermark checkpoint is malformed; ignoring it");
    }
    parsed
}

/// Writes the high watermark checkpoint atomically.
pub fn write_high_watermark(dir: &Path, high_watermark: i64) -> Result<(), LogError> {
    write_atomically(
        dir,
        HIGH_WATERMARK_FILE,
        format!("0\n{high_watermark}\n").as_bytes(),
    )?;
    Ok(())
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
    fn failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails: the target is a non-empty directory.
        fs::create_dir(dir.path().join("target")).unwrap();
        fs::write(dir.path().join("target").join("inside"), b"x").unwrap();
        assert!(write_atomically(dir.path(), "target", b"new").is_err());
        assert!(!dir.path().join("target.tmp").exists());
        // The write fails: the temporary name is taken by a directory.
        fs::create_dir(dir.path().join("other.tmp")).unwrap();
        assert!(write_atomically(dir.path(), "other", b"new").is_err());
        assert!(!dir.path().join("other").exists());
    }

    #[test]
    fn high_watermark_round_trips_and_tolerates_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_high_watermark(dir.path()), None);
        write_high_watermark(dir.path(), 12).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(HIGH_WATERMARK_FILE)).unwrap(),
            "0\n12\n"
        );
        assert_eq!(read_high_watermark(dir.path()), Some(12));
        for garbage in [
            &b"\xff\xfe"[..],
            b"0\n",
            b"1\n12\n",
            b"0\n-4\n",
            b"0\nabc\n",
            b"0\n12\n13\n",
            b"",
        ] {
            fs::write(dir.path().join(HIGH_WATERMARK_FILE), garbage).unwrap();
            assert_eq!(read_high_watermark(dir.path()), None, "{garbage:?}");
        }
        // A directory where the file should be: unreadable, still no error.
        fs::remove_file(dir.path().join(HIGH_WATERMARK_FILE)).unwrap();
        fs::create_dir(dir.path().join(HIGH_WATERMARK_FILE)).unwrap();
        assert_eq!(read_high_watermark(dir.path()), None);
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
