//! The first bytes of a connection: the classifier, the plain-HTTP answer,
//! the start of the TLS handshake and the ClientHello SNI reader.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wssify::fuzzing::first_bytes(data));
