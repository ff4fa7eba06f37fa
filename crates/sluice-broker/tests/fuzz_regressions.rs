//! Every input the `request_frame` fuzz target found a problem with (saved in
//! `tests/fuzz_regressions/request_frame/`) runs through the same entry point the fuzzer
//! uses, `FrameHarness::run_stream`, against a fresh broker; so does the seed corpus of
//! real client traffic (`fuzz/corpus/request_frame/`). `run_stream` panics when a response
//! is malformed; the test also checks that the seeds are answered, not refused.

use std::path::{Path, PathBuf};

use sluice_broker::fuzzing::{FrameHarness, FrameOutcome};

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    sluice_log::testing::fuzz_inputs(dir)
}

fn harness(dir: &Path) -> FrameHarness {
    FrameHarness::open(FrameHarness::fuzz_config(dir).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_fuzz_findings_are_handled() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions/request_frame");
    for (path, input) in inputs(&dir) {
        let data = tempfile::tempdir().unwrap();
        let harness = harness(data.path());
        let outcomes = harness.run_stream(&input).await;
        eprintln!("{}: {outcomes:?}", path.display());
        harness.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_corpus_of_real_clients_is_answered() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/request_frame");
    let seeds = inputs(&dir);
    assert!(seeds.len() > 50, "seed corpus missing at {}", dir.display());
    let data = tempfile::tempdir().unwrap();
    let harness = harness(data.path());
    let mut responses = 0;
    for (path, input) in &seeds {
        for outcome in harness.run_stream(input).await {
            match outcome {
                FrameOutcome::Response(_) => responses += 1,
                // Real clients send nothing the broker must refuse.
                FrameOutcome::Closed(reason) => panic!("{}: closed: {reason}", path.display()),
                FrameOutcome::NoResponse | FrameOutcome::Pending => {}
            }
        }
    }
    assert!(
        responses >= seeds.len(),
        "{responses} responses to {} seeds",
        seeds.len()
    );
    harness.close();
}
