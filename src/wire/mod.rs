//! Pure byte formats: each takes values or bytes and returns bytes or a
//! value, with no I/O, so it can be tested byte for byte and fuzzed.

pub mod client_hello;
pub mod proxy_header;
