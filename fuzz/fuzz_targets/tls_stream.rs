//! Raw bytes where records belong, after a real TLS 1.3 handshake.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wssify::fuzzing::tls_stream(data));
