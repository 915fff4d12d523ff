//! Untrusted blueprint YAML: parsing must answer with an error naming the place, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(yaml) = std::str::from_utf8(data) {
        let _ = latchkey_core::blueprint::parse("fuzz.yaml", yaml);
    }
});
