//! The textual IR (`.kir`): parse, verify, print (the printed text must parse back to the same
//! The body is `kiln_fuzz::kir` (fuzz/src/lib.rs), which the smoke test also runs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kiln_fuzz::kir(data));
