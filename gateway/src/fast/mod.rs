//! Parts of the fast path for plain HTTP/1.1 (docs/fast-path.md): pure
//! functions over bytes, each tested on its own before the loop that uses
//! them exists.

pub mod chunked;
pub mod response_head;
