//! An upstream response head, read and passed on without a header map:
//! parsed with `httparse`, its framing decided (RFC 9112 §6.3), and written
//! for the client as received, less the hop-by-hop fields.

/// Most header fields in a response head passed on (one fewer is accepted
/// from upstream).
pub const MAX_HEADERS: usize = 128;
/// Largest response head, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a HEAD request, 1xx, 204 or 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding, relayed as is.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// A 1xx other than 101: the final response follows it.
    pub informational: bool,
    /// How its body is delimited.
    pub framing: Framing,
    /// The upstream connection can take another request after this response.
    pub reusable: bool,
    /// Length of the head in the input.
    pub len: usize,
}

/// Why a response head is refused (the client gets 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x syntax.
    #[error("malformed response head: {0}")]
    Syntax(httparse::Error),
    /// Longer than [`MAX_HEAD`] without ending.
    #[error("response head longer than {MAX_HEAD} bytes")]
    TooLarge,
    /// A status outside 100–599, or 101 (no upgrade was asked for).
    #[error("unexpected response status {0}")]
    Status(u16),
    /// `Content-Length` values that are not one decimal number.
    #[error("invalid Content-Length")]
    ContentLength,
    /// `Transfer-Encoding` in an HTTP/1.0 response.
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncoding,
}

/// What becomes of the upstream's `Server` field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Server<'a> {
    /// Passed on as received (none if none).
    #[default]
    Pass,
    /// Never passed on.
    Strip,
    /// Replaced by this value (set when the upstream sent none).
    Set(&'a [u8]),
}

/// How a head is passed on, beside what the upstream sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay<'a> {
    /// The request was a HEAD: no body follows, whatever the fields say.
    pub head_request: bool,
    /// The client connection closes after this response.
    pub close: bool,
    /// `Date` for a response without one (RFC 9110 §6.6.1).
    pub date: &'a [u8],
    /// The `Server` field.
    pub server: Server<'a>,
}

/// Fields that concern one connection only, never passed on.
pub const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
];

/// Parse the response head at the start of `buf`, sent in answer to a
/// request that was (`relay.head_request`) a HEAD, and append the head the
/// client gets to `out`: the status line as HTTP/1.1, every field but the
/// hop-by-hop ones (and those `Connection` names), the framing field that
/// applies, `Server` as `relay.server` says, `Date: relay.date` when the
/// response has no `Date`, and `Connection: close` when `relay.close` or
/// when the body runs to the close, else `Connection: keep-alive` (an
/// HTTP/1.0 client needs it to keep the connection). `Ok(None)`: the head is
/// not complete yet.
pub fn parse(buf: &[u8], relay: &Relay<'_>, out: &mut Vec<u8>) -> Result<Option<Head>, HeadError> {
    let Relay {
        head_request,
        close,
        date,
        server,
    } = *relay;
    // Three fields fewer than the limit: room for the `Server`, `Date` and
    // `Connection` that may be added, so the head passed on is within the
    // limit too.
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS - 3];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HeadError::Syntax(e)),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let status = resp.code.unwrap_or(0);
    if !(100..=599).contains(&status) || status == 101 {
        return Err(HeadError::Status(status));
    }
    let http10 = resp.version == Some(0);
    let informational = status < 200;

    // Framing fields and connection tokens, in one pass.
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close_token = false;
    let mut keep_alive_token = false;
    // Other fields `Connection` names: hop-by-hop too (RFC 9110 §7.6.1).
    let mut named: Vec<&[u8]> = Vec::new();
    let mut has_date = false;
    for f in resp.headers.iter() {
        if f.name.eq_ignore_ascii_case("date") {
            has_date = true;
        } else if f.name.eq_ignore_ascii_case("content-length") {
            for part in f.value.split(|&b| b == b',') {
                let n = digits(trim(part)).ok_or(HeadError::ContentLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::ContentLength);
                }
                length = Some(n);
            }
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            // Only the final coding decides: chunked or not.
            if let Some(last) = f.value.split(|&b| b == b',').map(trim).next_back() {
                chunked = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if f.name.eq_ignore_ascii_case("connection") {
            for token in f.value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    close_token = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if !token.is_empty() {
                    named.push(token);
                }
            }
        }
    }
    if transfer_encoding && http10 {
        return Err(HeadError::TransferEncoding);
    }
    let framing = if head_request || informational || status == 204 || status == 304 {
        Framing::Empty
    } else if transfer_encoding {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3, 3).
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let reusable = framing != Framing::UntilClose && !close_token && (!http10 || keep_alive_token);

    // The head the client gets.
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for f in resp.headers.iter() {
        let name = f.name;
        if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            continue;
        }
        if server != Server::Pass && name.eq_ignore_ascii_case("server") {
            continue;
        }
        let is_te = name.eq_ignore_ascii_case("transfer-encoding");
        let is_cl = name.eq_ignore_ascii_case("content-length");
        // Only the field that frames the body as relayed is passed on: a body
        // read to the close keeps neither (a Content-Length beside another
        // coding would have the client stop early). A response without a
        // body (to HEAD, say) keeps the one a body would have had.
        let keep_te = framing == Framing::Chunked || (framing == Framing::Empty && chunked);
        let keep_cl = matches!(framing, Framing::Length(_))
            || (framing == Framing::Empty && !transfer_encoding);
        if (is_te && !keep_te) || (is_cl && !keep_cl) {
            continue;
        }
        // A field `Connection` names is hop-by-hop, but for the framing field
        // the body is relayed by: without it the client could not tell where
        // the body ends (a sender must not name it: RFC 9110 §7.6.1).
        if !(is_te || is_cl)
            && named
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    if !informational && !has_date {
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    // After a `Date` added here, so that a head passed on twice (the second
    // time with that `Date` among its fields) comes out the same.
    if let Server::Set(value) = server {
        out.extend_from_slice(b"Server: ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !informational {
        if close || framing == Framing::UntilClose {
            out.extend_from_slice(b"Connection: close\r\n");
        } else {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Head {
        status,
        informational,
        framing,
        reusable,
        len,
    }))
}

/// Add the field `name: value` as the last of the head `parse` wrote to
/// `out`, which must end there (at its empty line).
pub fn append_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    debug_assert!(out.ends_with(b"\r\n\r\n"), "a head written by parse");
    out.truncate(out.len() - 2);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n\r\n");
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// A decimal number of 1 to 19 digits, nothing else.
fn digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(
        raw: &str,
        head_request: bool,
        close: bool,
    ) -> (Result<Option<Head>, HeadError>, String) {
        let mut out = Vec::new();
        let relay = Relay {
            head_request,
            close,
            date: DATE.as_bytes(),
            server: Server::Pass,
        };
        let r = parse(raw.as_bytes(), &relay, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    const DATE: &str = "Sun, 29 Nov 2026 18:00:00 GMT";

    #[test]
    fn a_field_is_appended_as_the_heads_last() {
        let (r, mut out) = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
            false,
        );
        assert!(r.unwrap().is_some());
        let mut bytes = std::mem::take(&mut out).into_bytes();
        append_field(&mut bytes, b"Set-Cookie", b"rev=a");
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.ends_with("Connection: keep-alive\r\nSet-Cookie: rev=a\r\n\r\n"),
            "{text}"
        );
        // The head still parses, with the field in it.
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut fields);
        assert_eq!(
            resp.parse(text.as_bytes()).unwrap(),
            httparse::Status::Complete(text.len())
        );
        assert!(resp
            .headers
            .iter()
            .any(|f| f.name == "Set-Cookie" && f.value == b"rev=a"));
    }

    #[test]
    fn the_server_field_is_passed_stripped_or_set() {
        let with = "HTTP/1.1 200 OK\r\nServer: app\r\nContent-Length: 0\r\n\r\n";
        let without = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let relayed = |raw: &str, server| {
            let relay = Relay {
                head_request: false,
                close: false,
                date: DATE.as_bytes(),
                server,
            };
            let mut out = Vec::new();
            parse(raw.as_bytes(), &relay, &mut out).unwrap().unwrap();
            String::from_utf8(out).unwrap()
        };
        let tail = format!("Date: {DATE}\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(
            relayed(with, Server::Pass),
            format!("HTTP/1.1 200 OK\r\nServer: app\r\nContent-Length: 0\r\n{tail}")
        );
        assert_eq!(
            relayed(with, Server::Strip),
            format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n{tail}")
        );
        for raw in [with, without] {
            assert_eq!(
                relayed(raw, Server::Set(b"edge")),
                format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nDate: {DATE}\r\nServer: edge\r\nConnection: keep-alive\r\n\r\n")
            );
        }
        // Passed on twice, the same head (the fuzz target's check).
        let once = relayed(with, Server::Set(b"edge"));
        assert_eq!(relayed(&once, Server::Set(b"edge")), once);
    }

    fn ok(raw: &str) -> (Head, String) {
        let (r, out) = head(raw, false, false);
        (r.unwrap().unwrap(), out)
    }

    #[test]
    fn a_plain_response_passes_on_less_its_hop_by_hop_fields() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: 1\r\nServer: app\r\n\r\nhello";
        let (h, out) = ok(raw);
        assert_eq!(h.framing, Framing::Length(5));
        assert_eq!(h.len, raw.len() - 5);
        assert!(h.reusable);
        assert_eq!(
            out,
            format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: app\r\nDate: {DATE}\r\nConnection: keep-alive\r\n\r\n")
        );
        // The backend's own Date is passed on, not replaced.
        let (_, out) = ok("HTTP/1.1 204 No Content\r\ndate: Mon, 30 Nov 2026 00:00:00 GMT\r\n\r\n");
        assert_eq!(
            out,
            "HTTP/1.1 204 No Content\r\ndate: Mon, 30 Nov 2026 00:00:00 GMT\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn the_framing_field_passes_on_even_when_connection_names_it() {
        // A backend naming its framing field as a connection option (which
        // RFC 9110 §7.6.1 forbids): the client still learns where the body
        // ends, as the gateway relays it.
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Content-Length, X-Secret\r\nX-Secret: 1\r\n\r\nhello";
        let (h, out) = ok(raw);
        assert_eq!(h.framing, Framing::Length(5));
        assert_eq!(
            out,
            format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: {DATE}\r\nConnection: keep-alive\r\n\r\n")
        );
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n\r\n";
        let (h, out) = ok(raw);
        assert_eq!(h.framing, Framing::Chunked);
        assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Framing::UntilClose,
                false,
            ),
            // Found by the fuzzer: no length may survive beside another coding.
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chun\r\nContent-Length: 9\r\n\r\n",
                Framing::UntilClose,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", Framing::UntilClose, false),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
                Framing::Length(5),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
                Framing::Length(5),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n",
                Framing::Length(5),
                true,
            ),
        ];
        for (raw, framing, reusable) in cases {
            let (h, out) = ok(raw);
            assert_eq!((h.framing, h.reusable), (framing, reusable), "{raw}");
            // The client hears one framing, and that the connection closes
            // when the body runs to the close.
            let framed_twice = out.contains("Content-Length") && out.contains("Transfer-Encoding");
            assert!(!framed_twice, "{out}");
            if framing == Framing::UntilClose {
                assert!(!out.contains("Content-Length"), "{out}");
            }
            assert_eq!(
                out.contains("Connection: close"),
                framing == Framing::UntilClose,
                "{out}"
            );
        }
        let (r, _) = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false);
        assert_eq!(r.unwrap().unwrap().framing, Framing::Empty);
        let (r, out) = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, true);
        assert_eq!(r.unwrap().unwrap().framing, Framing::Length(5));
        assert!(out.ends_with("Connection: close\r\n\r\n"), "{out}");
    }

    #[test]
    fn informational_responses_come_before_the_final_one() {
        let (h, out) = ok("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n");
        assert!(h.informational);
        assert_eq!(h.framing, Framing::Empty);
        assert!(
            !out.contains("Connection") && !out.contains("Date"),
            "{out}"
        );
    }

    #[test]
    fn heads_a_client_could_misread_are_refused() {
        for (raw, why) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                HeadError::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
                HeadError::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
                HeadError::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
                HeadError::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
                HeadError::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
                HeadError::ContentLength,
            ),
            (
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::TransferEncoding,
            ),
            (
                "HTTP/1.1 101 Switching Protocols\r\n\r\n",
                HeadError::Status(101),
            ),
            ("HTTP/1.1 600 Odd\r\n\r\n", HeadError::Status(600)),
        ] {
            assert_eq!(head(raw, false, false).0, Err(why), "{raw}");
        }
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", false, false).0,
            Err(HeadError::Syntax(_))
        ));
        assert!(matches!(
            head("HTTP/2 200\r\n\r\n", false, false).0,
            Err(HeadError::Syntax(_))
        ));
    }

    #[test]
    fn an_incomplete_head_waits_and_an_endless_one_is_refused() {
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Le", false, false).0,
            Ok(None)
        );
        let endless = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(head(&endless, false, false).0, Err(HeadError::TooLarge));
    }
}
