//! The broker's request path from raw bytes, handlers included: each input is what a
//! client wrote on one connection (size-prefixed frames), run through
//! `sluice_broker::fuzzing::FrameHarness::run_stream` against a real broker over a data
//! directory on tmpfs. Every response must be a well-formed answer to its request.
//!
//! The broker lives across inputs (opening one per input would dominate the run time);
//! it is replaced by a fresh one every `INPUTS_PER_BROKER` inputs so that the data
//! directory stays small. A finding that depends on earlier inputs may therefore not
//! reproduce alone; `cargo fuzz run` prints the input, and the crash is replayed with the
//! state that a fresh broker has.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use sluice_broker::fuzzing::FrameHarness;

/// The broker's allocator: `kafka-protocol` sizes a `Vec` by the array length on the
/// wire before reading elements; without the guard a 20-byte input aborts on OOM.
#[global_allocator]
static ALLOCATOR: sluice_broker::alloc_guard::GuardedAllocator =
    sluice_broker::alloc_guard::GuardedAllocator;

/// Inputs served by one broker before it is replaced with an empty one.
const INPUTS_PER_BROKER: usize = 1_000;

struct Fuzz {
    runtime: tokio::runtime::Runtime,
    root: tempfile::TempDir,
    current: Mutex<Option<(FrameHarness, PathBuf, usize)>>,
    generation: Mutex<usize>,
}

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

impl Fuzz {
    fn new() -> Fuzz {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let root = tempfile::Builder::new()
            .prefix("sluice-fuzz-broker-")
            .tempdir_in(scratch_root())
            .expect("a scratch directory");
        Fuzz {
            runtime,
            root,
            current: Mutex::new(None),
            generation: Mutex::new(0),
        }
    }

    fn open(&self) -> (FrameHarness, PathBuf, usize) {
        let mut generation = self.generation.lock().expect("not poisoned");
        *generation += 1;
        let dir = self.root.path().join(format!("data-{generation}"));
        let config = FrameHarness::fuzz_config(&dir).expect("valid fuzz settings");
        let _entered = self.runtime.enter();
        let harness = FrameHarness::open(config).expect("an empty data directory opens");
        (harness, dir, 0)
    }

    fn run(&self, data: &[u8]) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current
            .as_ref()
            .is_none_or(|(_, _, n)| *n >= INPUTS_PER_BROKER)
        {
            if let Some((old, dir, _)) = current.take() {
                old.close();
                let _ = std::fs::remove_dir_all(dir);
            }
            *current = Some(self.open());
        }
        let Some((harness, _, served)) = current.as_mut() else {
            return;
        };
        *served += 1;
        self.runtime.block_on(harness.run_stream(data));
    }
}

static FUZZ: OnceLock<Fuzz> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    FUZZ.get_or_init(Fuzz::new).run(data);
});
