//! Every input the `record_batch` and `log_recovery` fuzz targets found a problem with
//! (saved in `tests/fuzz_regressions/<target>/`) runs through the same entry points the
//! fuzzer uses (`sluice_log::fuzzing`), which panic when a property fails; so does the
//! seed corpus of real client traffic (`fuzz/corpus/<target>/`).

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    sluice_log::testing::fuzz_inputs(dir)
}

fn manifest(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn saved_record_batch_findings_are_handled() {
    for (path, input) in inputs(&manifest("tests/fuzz_regressions/record_batch")) {
        let result = sluice_log::fuzzing::record_batch(&input);
        eprintln!("{}: {:?}", path.display(), result.map(|p| p.header));
    }
}

#[test]
fn saved_log_recovery_findings_are_handled() {
    for (path, input) in inputs(&manifest("tests/fuzz_regressions/log_recovery")) {
        let dir = tempfile::tempdir().unwrap();
        let result = sluice_log::fuzzing::log_recovery(dir.path(), &input);
        eprintln!("{}: {result:?}", path.display());
    }
}

#[test]
fn every_seed_batch_from_real_clients_is_accepted() {
    let seeds = inputs(&manifest("../../fuzz/corpus/record_batch"));
    assert!(seeds.len() > 20, "seed corpus missing");
    for (path, input) in seeds {
        if let Err(error) = sluice_log::fuzzing::record_batch(&input) {
            panic!(
                "{}: a batch the broker stored is refused: {error}",
                path.display()
            );
        }
    }
}

#[test]
fn every_seed_segment_recovers() {
    let seeds = inputs(&manifest("../../fuzz/corpus/log_recovery"));
    assert!(seeds.len() > 5, "seed corpus missing");
    for (path, input) in seeds {
        let dir = tempfile::tempdir().unwrap();
        if let Err(error) = sluice_log::fuzzing::log_recovery(dir.path(), &input) {
            panic!("{}: {error}", path.display());
        }
    }
}
