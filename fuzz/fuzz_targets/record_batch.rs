//! RecordBatch v2 validation and shaping as the broker runs it on a produced batch:
//! see `sluice_log::fuzzing::record_batch` for the input layout and the properties.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_log::fuzzing::record_batch(data);
});
