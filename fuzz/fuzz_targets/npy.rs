//! `.npy` reading (the runtime's reader behind `kiln run --input`, `--freeze` and executables'
//! Rust callers); an accepted array must write back and read again identically.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = kiln_runtime::npy::from_bytes(data) {
        let b = kiln_runtime::npy::from_bytes(&a.to_bytes()).expect("round trip");
        assert_eq!((a.dtype, &a.shape, &a.data), (b.dtype, &b.shape, &b.data));
    }
});
