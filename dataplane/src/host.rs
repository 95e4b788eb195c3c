//! Host normalisation, shared by the table builder and the request path so a
//! Host header and a Route URL meet in the same form: lower case, no port, no
//! trailing dot.

/// Longest host we route (a DNS name is at most 253 characters).
pub const MAX_HOST_LEN: usize = 255;

/// Normalise a Host header (or authority) without allocating: strips the port
/// and one trailing dot, and lowercases into `buf` only when needed.
/// `None` when the value cannot be a routable host.
pub fn normalize<'a>(raw: &'a [u8], buf: &'a mut [u8; MAX_HOST_LEN]) -> Option<&'a str> {
    let host = strip_port(raw)?;
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    if host.iter().any(u8::is_ascii_uppercase) {
        let out = &mut buf[..host.len()];
        out.copy_from_slice(host);
        out.make_ascii_lowercase();
        std::str::from_utf8(out).ok()
    } else {
        std::str::from_utf8(host).ok()
    }
}

/// [`normalize`] into an owned string, for building the table.
pub fn normalize_owned(raw: &str) -> Option<String> {
    let mut buf = [0u8; MAX_HOST_LEN];
    normalize(raw.as_bytes(), &mut buf).map(str::to_owned)
}

/// The host of an absolute `http` or `https` URL such as
/// `http://hello.default.example.com/`. Hand-parsed: building a table reads
/// tens of thousands of these, and a full URI parse was a third of the build.
pub fn of_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest
        .bytes()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return None;
    }
    normalize_owned(host)
}

fn strip_port(raw: &[u8]) -> Option<&[u8]> {
    if raw.first() == Some(&b'[') {
        // IPv6 literal: "[::1]" or "[::1]:8080".
        let end = raw.iter().position(|&b| b == b']')?;
        let rest = &raw[end + 1..];
        return (rest.is_empty() || is_port(rest)).then_some(&raw[..=end]);
    }
    match raw.iter().rposition(|&b| b == b':') {
        Some(i) if is_port(&raw[i..]) && !raw[..i].contains(&b':') => Some(&raw[..i]),
        Some(_) => None,
        None => Some(raw),
    }
}

/// `:` followed by 1 to 5 digits.
fn is_port(s: &[u8]) -> bool {
    s.len() >= 2 && s.len() <= 6 && s[0] == b':' && s[1..].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Option<String> {
        normalize_owned(s)
    }

    #[test]
    fn strips_port_trailing_dot_and_case() {
        assert_eq!(
            n("Hello.Default.Example.com").as_deref(),
            Some("hello.default.example.com")
        );
        assert_eq!(
            n("hello.default.example.com:8080").as_deref(),
            Some("hello.default.example.com")
        );
        assert_eq!(
            n("hello.default.example.com.").as_deref(),
            Some("hello.default.example.com")
        );
        assert_eq!(n("HELLO.default.:80").as_deref(), Some("hello.default"));
        assert_eq!(n("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(n("[::1]").as_deref(), Some("[::1]"));
    }

    #[test]
    fn rejects_what_cannot_be_a_host() {
        assert_eq!(n(""), None);
        assert_eq!(n(":80"), None);
        assert_eq!(n("."), None);
        assert_eq!(n("a:b:c"), None);
        assert_eq!(n("host:port"), None);
        assert_eq!(n("[::1"), None);
        assert_eq!(n(&"a".repeat(300)), None);
    }

    #[test]
    fn url_hosts() {
        assert_eq!(
            of_url("http://Hello.default.example.com").as_deref(),
            Some("hello.default.example.com")
        );
        assert_eq!(
            of_url("https://a.b.example.com:443/x").as_deref(),
            Some("a.b.example.com")
        );
        assert_eq!(of_url("hello.default.example.com"), None);
        assert_eq!(of_url("not a url"), None);
        assert_eq!(of_url("ftp://a.b"), None);
        assert_eq!(of_url("http://user@a.b?x"), Some("a.b".into()));
        assert_eq!(of_url("http:///path"), None);
        assert_eq!(of_url("http://a b.c/"), None);
    }
}
