//! Where a relayed response body ends, whatever its framing: the fast path
//! passes each read on up to that end, and no further.

use crate::chunked::{ChunkError, ChunkTracker};
use crate::response_head::Framing;

/// The rest of a response body being relayed.
#[derive(Debug, Clone)]
pub enum BodyEnd {
    /// This many bytes are left (none for a body-less response).
    Length(u64),
    /// Chunks, tracked to the last one and its trailers.
    Chunks(ChunkTracker),
    /// Everything until the upstream closes the connection.
    Close,
}

impl BodyEnd {
    /// The start of the body a head with `framing` announced.
    pub fn of(framing: Framing) -> Self {
        match framing {
            Framing::Empty => BodyEnd::Length(0),
            Framing::Length(n) => BodyEnd::Length(n),
            Framing::Chunked => BodyEnd::Chunks(ChunkTracker::new()),
            Framing::UntilClose => BodyEnd::Close,
        }
    }

    /// Whether the whole body has been relayed (never, before the close, for
    /// a body that runs to it).
    pub fn is_done(&self) -> bool {
        match self {
            BodyEnd::Length(left) => *left == 0,
            BodyEnd::Chunks(chunks) => chunks.is_done(),
            BodyEnd::Close => false,
        }
    }

    /// How many of `data`, the next bytes from upstream, belong to the body:
    /// all of them, or fewer when it ends inside `data`.
    pub fn take(&mut self, data: &[u8]) -> Result<usize, ChunkError> {
        match self {
            BodyEnd::Length(left) => {
                let now = data.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= now as u64;
                Ok(now)
            }
            BodyEnd::Chunks(chunks) => chunks.feed(data),
            BodyEnd::Close => Ok(data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_framing_takes_its_body_and_no_more() {
        let mut empty = BodyEnd::of(Framing::Empty);
        assert!(empty.is_done());
        assert_eq!(empty.take(b"extra"), Ok(0));

        let mut length = BodyEnd::of(Framing::Length(7));
        assert_eq!(length.take(b"hell"), Ok(4));
        assert!(!length.is_done());
        assert_eq!(length.take(b"o, world"), Ok(3));
        assert!(length.is_done());

        let mut chunks = BodyEnd::of(Framing::Chunked);
        assert_eq!(chunks.take(b"2\r\nhi\r\n0\r\n\r\nGET"), Ok(12));
        assert!(chunks.is_done());
        assert!(BodyEnd::of(Framing::Chunked).take(b"z\r\n").is_err());

        let mut close = BodyEnd::of(Framing::UntilClose);
        assert_eq!(close.take(b"anything"), Ok(8));
        assert!(!close.is_done());
    }
}
