//! wire: the gateway's byte-level parsers, each a pure function (or a small
//! state machine) over bytes from outside, with no pingora and no I/O, so
//! that tests and fuzz targets (fuzz/) use them as they are.
//!
//! - [`response_head`]: an upstream response head, parsed with `httparse`,
//!   its framing decided and written for the client as received, less the
//!   hop-by-hop fields (the fast path, gateway/src/fast/);
//! - [`chunked`]: where a chunked body ends, found while it is relayed;
//! - [`body`]: where a relayed response body ends, whatever its framing;
//! - [`proxy_header`]: the PROXY protocol v1 and v2 header.

pub mod body;
pub mod chunked;
pub mod proxy_header;
pub mod response_head;
