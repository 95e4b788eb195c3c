//! The fast path for plain HTTP/1.1 (docs/fast-path.md): the request loop in
//! [`app`], and its parts; the byte-level parsers it relays with (response
//! head, chunked framing, where a body ends) are the `wire` crate's.

pub mod app;
pub mod buffers;
pub mod request;
