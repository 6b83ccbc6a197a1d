//! The textual IR (`.kir`): parse, verify, print (the printed text must parse back to the same
//! text), compile at -O0.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(g) = kiln_ir::text::parse(text) {
        if kiln_ir::verify::verify(&g).is_err() {
            return;
        }
        let printed = kiln_ir::text::print(&g);
        let again = kiln_ir::text::parse(&printed).expect("printed IR parses");
        assert_eq!(kiln_ir::text::print(&again), printed);
        kiln_fuzz::compile_small(&g);
    }
});
