//! The ClientHello reader on arbitrary bytes, against rustls' own reading
//! of them: no panic, consistent prefixes, and agreement with rustls on the
//! server name and ALPN whenever rustls accepts the hello.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wssify::fuzzing::client_hello(data));
