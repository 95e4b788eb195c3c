//! Where a chunked body ends (RFC 9112 §7.1), found while its bytes are
//! relayed as they are: the fast path passes a chunked response on without
//! decoding and encoding it again, but must know where it ends to reuse the
//! upstream connection, and must refuse framing a downstream parser could
//! read differently.

/// Longest chunk size line (hex digits, extensions) accepted.
pub const MAX_LINE: usize = 4096;
/// Longest trailer section accepted.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A chunk size that is not hex, or has more than 16 digits.
    #[error("invalid chunk size")]
    Size,
    /// A line ended by a bare LF, or a CR not followed by LF.
    #[error("chunk framing line not ended by CRLF")]
    LineEnd,
    /// Chunk data not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    /// A size line or the trailers past their limit.
    #[error("chunk size line or trailers too long")]
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a size (`digits` so far).
    Size { digits: u8 },
    /// After the size: optional whitespace and extensions, up to CR.
    Extension,
    /// Saw CR ending a size line.
    SizeLf,
    /// In chunk data: bytes left.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer line, up to CR.
    Trailer,
    /// Saw CR ending a trailer line.
    TrailerLf,
    /// Saw CR of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// Tracks one chunked body through the bytes it is relayed in.
#[derive(Debug, Clone)]
pub struct ChunkTracker {
    state: State,
    size: u64,
    line: usize,
    trailers: usize,
}

impl Default for ChunkTracker {
    fn default() -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            trailers: 0,
        }
    }
}

impl ChunkTracker {
    /// A tracker at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feed the next bytes of the stream. Returns how many of them belong to
    /// the body: all of them, or fewer when the body ends inside `data`
    /// (the rest is not the body's).
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < data.len() {
            if self.state == State::Done {
                return Ok(i);
            }
            // Chunk data is skipped in one step, not byte by byte.
            if let State::Data(left) = self.state {
                let take = left.min((data.len() - i) as u64);
                i += take as usize;
                self.state = if take == left {
                    State::DataCr
                } else {
                    State::Data(left - take)
                };
                continue;
            }
            self.byte(data[i])?;
            i += 1;
        }
        Ok(i)
    }

    fn byte(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match self.state {
            State::Size { digits } => match hex(b) {
                Some(d) => {
                    if digits == 16 {
                        return Err(ChunkError::Size);
                    }
                    self.size = self.size << 4 | u64::from(d);
                    self.line += 1;
                    State::Size { digits: digits + 1 }
                }
                None if digits == 0 => return Err(ChunkError::Size),
                None => return self.size_end(b),
            },
            State::Extension => {
                self.line += 1;
                if self.line > MAX_LINE {
                    return Err(ChunkError::TooLong);
                }
                match b {
                    b'\r' => State::SizeLf,
                    b'\n' => return Err(ChunkError::LineEnd),
                    _ => State::Extension,
                }
            }
            State::SizeLf if b == b'\n' => {
                self.line = 0;
                if self.size == 0 {
                    State::TrailerStart
                } else {
                    let size = std::mem::take(&mut self.size);
                    State::Data(size)
                }
            }
            State::SizeLf => return Err(ChunkError::LineEnd),
            State::Data(_) => unreachable!("chunk data is skipped in feed"),
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataCr => return Err(ChunkError::DataEnd),
            State::DataLf if b == b'\n' => State::Size { digits: 0 },
            State::DataLf => return Err(ChunkError::DataEnd),
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                b'\n' => return Err(ChunkError::LineEnd),
                _ => self.trailer_byte(State::Trailer)?,
            },
            State::Trailer => match b {
                b'\r' => self.trailer_byte(State::TrailerLf)?,
                b'\n' => return Err(ChunkError::LineEnd),
                _ => self.trailer_byte(State::Trailer)?,
            },
            State::TrailerLf if b == b'\n' => self.trailer_byte(State::TrailerStart)?,
            State::TrailerLf => return Err(ChunkError::LineEnd),
            State::EndLf if b == b'\n' => State::Done,
            State::EndLf => return Err(ChunkError::LineEnd),
            State::Done => State::Done,
        };
        Ok(())
    }

    /// The first byte after a size's digits.
    fn size_end(&mut self, b: u8) -> Result<(), ChunkError> {
        self.line += 1;
        self.state = match b {
            b'\r' => State::SizeLf,
            // Extensions (`;name=value`), possibly after whitespace (RFC 9112 §7.1.1).
            b';' | b' ' | b'\t' => State::Extension,
            b'\n' => return Err(ChunkError::LineEnd),
            _ => return Err(ChunkError::Size),
        };
        Ok(())
    }

    fn trailer_byte(&mut self, next: State) -> Result<State, ChunkError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError::TooLong);
        }
        Ok(next)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `body` whole, and again split at every point: the same answer.
    /// `Some(n)`: the body ended after `n` bytes; `None`: not yet.
    fn track(body: &[u8]) -> Result<Option<usize>, ChunkError> {
        let mut whole = ChunkTracker::new();
        let expected = whole.feed(body).map(|n| whole.is_done().then_some(n));
        for split in 0..=body.len() {
            let mut t = ChunkTracker::new();
            let got = match t.feed(&body[..split]) {
                Ok(n) if t.is_done() => Ok(Some(n)),
                Ok(n) => t.feed(&body[split..]).map(|m| t.is_done().then_some(n + m)),
                Err(e) => Err(e),
            };
            assert_eq!(got, expected, "split at {split} of {body:?}");
        }
        expected
    }

    #[test]
    fn a_body_ends_after_its_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        assert_eq!(track(body), Ok(Some(body.len())));
        let with_trailers = b"1\r\na\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n";
        assert_eq!(track(with_trailers), Ok(Some(with_trailers.len())));
        // What follows the body is not counted.
        let then_more = b"0\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert_eq!(track(then_more), Ok(Some(5)));
        assert_eq!(track(b"5\r\nhel"), Ok(None));
        // Upper-case hex, leading zeros, whitespace before an extension.
        let hexes = b"0A\r\n0123456789\r\n00 ;x\r\n\r\n";
        assert_eq!(track(hexes), Ok(Some(hexes.len())));
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let mut t = ChunkTracker::new();
        assert_eq!(t.feed(b"5\r\nhel"), Ok(6));
        assert!(!t.is_done());
        assert_eq!(t.feed(b"lo\r\n0\r\n"), Ok(7));
        assert!(!t.is_done());
        assert_eq!(t.feed(b"\r\n"), Ok(2));
        assert!(t.is_done());
        assert_eq!(t.feed(b"more"), Ok(0));
    }

    #[test]
    fn framing_a_parser_could_read_differently_is_refused() {
        for (body, why) in [
            (&b"x\r\n"[..], ChunkError::Size),
            (b"\r\n", ChunkError::Size),
            (b"-1\r\n", ChunkError::Size),
            (b"0x5\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"11111111111111111\r\n", ChunkError::Size),
            (b"5\nhello\r\n0\r\n\r\n", ChunkError::LineEnd),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::DataEnd),
            (b"5\r\nhelloX\r\n0\r\n\r\n", ChunkError::DataEnd),
            (b"5;x\n", ChunkError::LineEnd),
            (b"0\r\nX: 1\n\r\n", ChunkError::LineEnd),
            (b"0\r\n\n", ChunkError::LineEnd),
            (b"0\r\n\rX", ChunkError::LineEnd),
        ] {
            assert_eq!(track(body), Err(why), "{:?}", String::from_utf8_lossy(body));
        }
        let long_ext = [b"1;".as_slice(), &[b'e'; MAX_LINE], b"\r\n"].concat();
        assert_eq!(track(&long_ext), Err(ChunkError::TooLong));
        let long_trailer = [b"0\r\nX: ".as_slice(), &[b't'; MAX_TRAILERS], b"\r\n\r\n"].concat();
        assert_eq!(
            ChunkTracker::new().feed(&long_trailer),
            Err(ChunkError::TooLong)
        );
    }

    #[test]
    fn a_16_digit_size_is_the_largest() {
        let mut t = ChunkTracker::new();
        assert_eq!(t.feed(b"ffffffffffffffff\r\n"), Ok(18));
        assert_eq!(t.state, State::Data(u64::MAX));
    }
}
