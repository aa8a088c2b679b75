//! The PROXY protocol encoder, round trip: whatever addresses and TLS
//! facts the input makes, the header carries exactly them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wssify::fuzzing::proxy_header(data));
