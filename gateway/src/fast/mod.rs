//! The fast path for plain HTTP/1.1 (docs/fast-path.md): the request loop in
//! [`app`], and its parts, pure functions over bytes where they can be.

pub mod app;
pub mod body;
pub mod buffers;
pub mod chunked;
pub mod pool;
pub mod request;
pub mod response_head;
