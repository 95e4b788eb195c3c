//! Which requests the fast path serves, and the head it sends upstream.

use http::{header, Method, Version};
use pingora::http::RequestHeader;

/// Largest request body the fast path takes: it reads a body whole before
/// forwarding it (so a request can go again on another connection), as
/// nginx buffers bodies; longer ones stream through the general proxy.
pub const MAX_BODY: u64 = 64 * 1024;

/// Whether the fast path serves `req`, and the length of its body if so:
/// HTTP/1.1, not `CONNECT`, no body or one of at most [`MAX_BODY`] bytes by
/// `Content-Length` (no `Transfer-Encoding`), no `Expect` or `Upgrade`, and
/// no hop-by-hop field but a `Connection` of `keep-alive` or `close`; a
/// request target pingora would refuse to send upstream is left to it too.
/// Everything else (`None`) goes to the general proxy.
pub fn plain_body(req: &RequestHeader) -> Option<u64> {
    if req.version != Version::HTTP_11 || req.method == Method::CONNECT {
        return None;
    }
    if req
        .raw_path()
        .iter()
        .any(|&b| matches!(b, 0x00 | 0x0a | 0x0d | 0x20))
    {
        return None;
    }
    let mut length = 0;
    let plain = req.headers.iter().all(|(name, value)| {
        if name == header::CONNECTION {
            let v = value.as_bytes();
            return v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close");
        }
        if name == header::CONTENT_LENGTH {
            // pingora's reader has refused differing or malformed lengths;
            // anything but one plain number is left to its general path.
            return match std::str::from_utf8(value.as_bytes()).map(str::parse::<u64>) {
                Ok(Ok(n)) if n <= MAX_BODY && length == 0 => {
                    length = n;
                    true
                }
                _ => false,
            };
        }
        !(name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
            || name == header::TE
            || name == header::TRAILER
            || name == header::PROXY_AUTHENTICATE
            || name == header::PROXY_AUTHORIZATION
            || matches!(
                name.as_str(),
                "keep-alive" | "proxy-connection" | "http2-settings"
            ))
    });
    plain.then_some(length)
}

/// Drop what concerns the client's connection only (`Connection`), before
/// the gateway's headers are set: in the order pingora's proxy does it, so
/// the fields go upstream in the same order on both paths.
pub fn strip_hop_by_hop(req: &mut RequestHeader) {
    req.remove_header(&header::CONNECTION);
}

/// Append the head sent upstream for `req` (a plain one, stripped and its
/// headers set for upstream) to `out`: the same bytes pingora's HTTP/1
/// client writes for it.
pub fn write_head(req: &RequestHeader, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.raw_path());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    req.header_to_h1_wire(out);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn plain_requests_are_http11_with_short_bodies_and_no_hop_by_hop_fields() {
        let is_plain = |r: &RequestHeader| plain_body(r).is_some();
        assert_eq!(plain_body(&req("GET", "/", &[("host", "a")])), Some(0));
        assert!(is_plain(&req(
            "DELETE",
            "/x?y",
            &[("host", "a"), ("connection", "Keep-Alive")]
        )));
        assert!(is_plain(&req("GET", "/", &[("connection", "close")])));
        assert_eq!(
            plain_body(&req("POST", "/", &[("content-length", "0")])),
            Some(0)
        );
        assert_eq!(
            plain_body(&req("POST", "/", &[("content-length", "65536")])),
            Some(65536)
        );
        for refused in [
            ("connection", "upgrade"),
            ("connection", "keep-alive, x-secret"),
            ("content-length", "65537"),
            ("content-length", "5, 5"),
            ("transfer-encoding", "chunked"),
            ("expect", "100-continue"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("http2-settings", "AAMAAABkAAQAAP__"),
        ] {
            assert!(!is_plain(&req("GET", "/", &[refused])), "{refused:?}");
        }
        assert!(!is_plain(&req("CONNECT", "a:443", &[])));
        let mut old = req("GET", "/", &[]);
        old.set_version(Version::HTTP_10);
        assert!(!is_plain(&old));
    }

    #[test]
    fn the_upstream_head_is_pingoras_without_connection() {
        let mut r = req(
            "GET",
            "/p?q=1",
            &[
                ("host", "a.example"),
                ("connection", "keep-alive"),
                ("x-a", "1"),
            ],
        );
        let mut out = Vec::new();
        strip_hop_by_hop(&mut r);
        write_head(&r, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: a.example\r\nx-a: 1\r\n\r\n"
        );
    }
}
