//! Genuine sealed records mixed with raw bytes, key updates and
//! close_notify, after a real TLS 1.3 handshake.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wssify::fuzzing::tls_records(data));
