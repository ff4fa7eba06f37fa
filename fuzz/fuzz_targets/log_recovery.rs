//! Log recovery from arbitrary segment (and index) bytes: see
//! `sluice_log::fuzzing::log_recovery` for the input layout and the properties.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;

/// Directories on tmpfs when there is one (or in $SLUICE_FUZZ_SCRATCH, which
/// `scripts/fuzz.sh` sets and removes afterwards): recovery fsyncs, and a disk would make every
/// input cost milliseconds.
fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_FUZZ_SCRATCH") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::Builder::new()
        .prefix("sluice-fuzz-recovery-")
        .tempdir_in(scratch_root())
        .expect("a scratch directory");
    let _ = sluice_log::fuzzing::log_recovery(dir.path(), data);
});
