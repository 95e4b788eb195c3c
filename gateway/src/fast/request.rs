//! Which requests the fast path serves, and the head it sends upstream.

use http::{header, Method, Version};
use pingora::http::RequestHeader;

/// Whether the fast path serves `req`: HTTP/1.1, not `CONNECT`, without a
/// body (no `Content-Length` or `Transfer-Encoding`), without `Expect` or
/// `Upgrade`, and with no hop-by-hop field but a `Connection` of
/// `keep-alive` or `close`; a request target pingora would refuse to send
/// upstream is left to it too. Everything else goes to the regular proxy.
pub fn is_plain(req: &RequestHeader) -> bool {
    if req.version != Version::HTTP_11 || req.method == Method::CONNECT {
        return false;
    }
    if req
        .raw_path()
        .iter()
        .any(|&b| matches!(b, 0x00 | 0x0a | 0x0d | 0x20))
    {
        return false;
    }
    req.headers.iter().all(|(name, value)| {
        if name == header::CONNECTION {
            let v = value.as_bytes();
            return v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close");
        }
        !(name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
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
    })
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
    fn plain_requests_are_bodiless_http11_without_hop_by_hop_fields() {
        assert!(is_plain(&req("GET", "/", &[("host", "a")])));
        assert!(is_plain(&req(
            "DELETE",
            "/x?y",
            &[("host", "a"), ("connection", "Keep-Alive")]
        )));
        assert!(is_plain(&req("GET", "/", &[("connection", "close")])));
        for refused in [
            ("connection", "upgrade"),
            ("connection", "keep-alive, x-secret"),
            ("content-length", "0"),
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
