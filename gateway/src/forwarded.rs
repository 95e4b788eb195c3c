//! `X-Forwarded-For`: who the client is, and what goes upstream.
//!
//! Without trusted hops (the default) the client is the TCP peer (or the
//! PROXY protocol's source) and the peer is appended to whatever the client
//! sent, as Envoy does for Kourier. With `--trusted-hops N` the gateway sits
//! behind N proxies that each append the address they were reached from: the
//! client is the N-th address from the right (Envoy's
//! `xff_num_trusted_hops`), and only the entries from it rightwards go
//! upstream, since anything further left was written by the client itself.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};

/// The header's name, parsed once.
pub const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The client a request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the peer's, or the one the trusted hops saw.
    pub ip: IpAddr,
    /// Where in `X-Forwarded-For` the trusted part starts (counted in
    /// entries from the left), when the client was taken from it.
    trusted_from: Option<usize>,
}

impl Client {
    /// The client of a request from `peer` with `headers` (every
    /// `X-Forwarded-For` line counts, in order), behind `hops` trusted proxies.
    /// Fewer entries than `hops`, or an entry there that is not an address,
    /// leaves the peer as the client: the request did not come through every
    /// trusted proxy, so nothing in the header can be believed.
    pub fn of(headers: &HeaderMap, peer: IpAddr, hops: u8) -> Self {
        let untrusted = Client {
            ip: peer,
            trusted_from: None,
        };
        if hops == 0 {
            return untrusted;
        }
        let entries: Vec<&[u8]> = entries(headers).collect();
        let Some(at) = entries.len().checked_sub(hops.into()) else {
            return untrusted;
        };
        match parse_ip(entries[at]) {
            Some(ip) => Client {
                ip,
                trusted_from: Some(at),
            },
            None => untrusted,
        }
    }

    /// Whether the client was taken from `X-Forwarded-For`, not the peer.
    pub fn forwarded(&self) -> bool {
        self.trusted_from.is_some()
    }
}

/// Every comma-separated entry of every line, trimmed, in order.
fn entries(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(X_FORWARDED_FOR)
        .into_iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(|e| e.trim_ascii())
        .filter(|e| !e.is_empty())
}

/// An address as a proxy writes it: bare, or IPv6 in brackets.
fn parse_ip(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?;
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    s.parse().ok()
}

/// The `X-Forwarded-For` sent upstream: what the client sent (from the
/// trusted part on, when `client` was taken from it) with `peer` appended.
pub fn upstream_value(headers: &HeaderMap, client: &Client, peer: IpAddr) -> HeaderValue {
    use std::io::Write;
    let sent = headers.get_all(X_FORWARDED_FOR);
    if sent.iter().next().is_none() {
        return peer_address(peer);
    }
    let mut value = Vec::with_capacity(64);
    match client.trusted_from {
        None => {
            for prior in sent {
                value.extend_from_slice(prior.as_bytes());
                value.extend_from_slice(b", ");
            }
        }
        Some(from) => {
            for entry in entries(headers).skip(from) {
                value.extend_from_slice(entry);
                value.extend_from_slice(b", ");
            }
        }
    }
    write!(value, "{peer}").expect("writing to a Vec cannot fail");
    HeaderValue::from_bytes(&value).expect("header values and an IP address stay valid")
}

thread_local! {
    /// The last peer address formatted on this worker thread: keep-alive
    /// connections and load balancers send many requests from one address,
    /// and formatting an address costs more than the rest of the header work.
    static LAST_PEER: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// `peer` as a header value.
fn peer_address(peer: IpAddr) -> HeaderValue {
    LAST_PEER.with_borrow_mut(|last| match last {
        Some((ip, value)) if *ip == peer => value.clone(),
        _ => {
            let value = HeaderValue::from_str(&peer.to_string())
                .expect("an IP address is a valid header value");
            *last = Some((peer, value.clone()));
            value
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn sent(lines: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("x-forwarded-for", HeaderValue::from_static(line));
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn without_trusted_hops_the_peer_is_appended_to_every_value_sent() {
        let header = |sent: &HeaderMap, peer| {
            let client = Client::of(sent, peer, 0);
            assert_eq!(client.ip, peer);
            assert!(!client.forwarded());
            upstream_value(sent, &client, peer)
        };
        let (v4, v6) = (ip("10.1.2.3"), ip("fd00::7"));
        assert_eq!(header(&sent(&[]), v4), "10.1.2.3");
        // The per-thread cache of the last address must follow the address.
        assert_eq!(header(&sent(&[]), v6), "fd00::7");
        assert_eq!(header(&sent(&[]), v4), "10.1.2.3");
        let two_lines = sent(&["1.1.1.1, 2.2.2.2", "3.3.3.3"]);
        assert_eq!(
            header(&two_lines, v4),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3"
        );
    }

    #[test]
    fn the_client_is_the_nth_address_from_the_right() {
        let peer = ip("10.0.0.9");
        // A client forged "6.6.6.6"; the front proxy appended the real one.
        let headers = sent(&["6.6.6.6", "203.0.113.7"]);
        let one = Client::of(&headers, peer, 1);
        assert_eq!(one.ip, ip("203.0.113.7"));
        assert!(one.forwarded());
        assert_eq!(
            upstream_value(&headers, &one, peer),
            "203.0.113.7, 10.0.0.9"
        );
        // Two trusted hops: the second proxy appended the first's view.
        let two = Client::of(&headers, peer, 2);
        assert_eq!(two.ip, ip("6.6.6.6"));
        assert_eq!(
            upstream_value(&headers, &two, peer),
            "6.6.6.6, 203.0.113.7, 10.0.0.9"
        );
    }

    #[test]
    fn too_few_entries_or_a_non_address_leave_the_peer_as_the_client() {
        let peer = ip("10.0.0.9");
        let short = sent(&["203.0.113.7"]);
        let client = Client::of(&short, peer, 2);
        assert_eq!(client.ip, peer);
        assert!(!client.forwarded());
        // Nothing is dropped when nothing is trusted.
        assert_eq!(
            upstream_value(&short, &client, peer),
            "203.0.113.7, 10.0.0.9"
        );
        let junk = sent(&["unknown"]);
        assert_eq!(Client::of(&junk, peer, 1).ip, peer);
        assert_eq!(Client::of(&sent(&[]), peer, 1).ip, peer);
    }

    #[test]
    fn ipv6_entries_are_read_bare_or_in_brackets() {
        let peer = ip("10.0.0.9");
        for entry in ["2001:db8::1", "[2001:db8::1]"] {
            let headers = sent(&[entry]);
            let client = Client::of(&headers, peer, 1);
            assert_eq!(client.ip, ip("2001:db8::1"), "{entry}");
        }
        // Empty entries (",,") are not counted.
        let headers = sent(&["198.51.100.1,, 203.0.113.7 ,"]);
        let client = Client::of(&headers, peer, 2);
        assert_eq!(client.ip, ip("198.51.100.1"));
    }
}
