//! The PROXY protocol header itself (v1 text, v2 binary): a pure parser;
//! gateway/src/proxy_protocol reads it off each external connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature (`\r\n\r\n\0\r\nQUIT\n`).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// The longest v2 header accepted: its fixed part, addresses and TLVs.
/// Load balancers send a few TLVs (an endpoint id, TLS details); more is refused.
pub const V2_MAX: usize = 16 + 2048;

/// What a PROXY header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection from `source` to `destination`.
    Proxied {
        /// The client.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// The load balancer's own connection (v2 `LOCAL`, v1 `UNKNOWN`, or an
    /// address family other than TCP over IPv4 or IPv6): keep the peer address.
    Local,
}

/// Why bytes are not a PROXY header (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A valid start: more bytes are needed.
    #[error("incomplete PROXY header")]
    Incomplete,
    /// Not a valid header.
    #[error("invalid PROXY header: {0}")]
    Invalid(&'static str),
}

/// Parse a PROXY header (v1 or v2) at the start of `buf`: what it says and
/// its length, after which the client's own bytes begin.
pub fn parse(buf: &[u8]) -> Result<(Header, usize), ParseError> {
    if buf.is_empty() {
        return Err(ParseError::Incomplete);
    }
    if buf[0] == b'P' {
        return parse_v1(buf);
    }
    if buf[0] == b'\r' {
        return parse_v2(buf);
    }
    Err(ParseError::Invalid("neither v1 (PROXY) nor v2 signature"))
}

fn parse_v1(buf: &[u8]) -> Result<(Header, usize), ParseError> {
    let prefix = b"PROXY ";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Err(ParseError::Invalid("v1 header does not start with PROXY"));
    }
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ParseError::Invalid("v1 header longer than 107 bytes"))
        } else {
            Err(ParseError::Incomplete)
        };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(ParseError::Invalid("v1 header does not end with CRLF"));
    }
    let line = std::str::from_utf8(&buf[prefix.len().min(end - 1)..end - 1])
        .map_err(|_| ParseError::Invalid("v1 header is not ASCII"))?;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // The rest of the line is to be ignored.
        return Ok((Header::Local, end + 1));
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(ParseError::Invalid(
                "v1 family is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let mut next = || {
        fields
            .next()
            .ok_or(ParseError::Invalid("v1 header has too few fields"))
    };
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(ParseError::Invalid("v1 header has too many fields"));
    }
    let ip = |s: &str| -> Result<IpAddr, ParseError> {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| ParseError::Invalid("v1 address is not an IP address"))?;
        if ip.is_ipv6() != v6 {
            return Err(ParseError::Invalid("v1 address does not match its family"));
        }
        Ok(ip)
    };
    let port = |s: &str| -> Result<u16, ParseError> {
        // Decimal without a sign or leading zeros, as the specification writes them.
        if s.is_empty() || s.len() > 5 || (s.len() > 1 && s.starts_with('0')) {
            return Err(ParseError::Invalid("v1 port is not a port number"));
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::Invalid("v1 port is not a port number"));
        }
        s.parse()
            .map_err(|_| ParseError::Invalid("v1 port is not a port number"))
    };
    let header = Header::Proxied {
        source: SocketAddr::new(ip(src)?, port(sport)?),
        destination: SocketAddr::new(ip(dst)?, port(dport)?),
    };
    Ok((header, end + 1))
}

fn parse_v2(buf: &[u8]) -> Result<(Header, usize), ParseError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ParseError::Invalid("not the v2 signature"));
    }
    if buf.len() < 16 {
        return Err(ParseError::Incomplete);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(ParseError::Invalid("v2 header version is not 2"));
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Err(ParseError::Invalid("v2 header longer than accepted"));
    }
    if buf.len() < len {
        return Err(ParseError::Incomplete);
    }
    let body = &buf[16..len];
    let header = match command {
        0 => Header::Local,
        1 => match buf[13] {
            // TCP over IPv4
            0x11 => {
                if body.len() < 12 {
                    return Err(ParseError::Invalid("v2 IPv4 addresses are cut short"));
                }
                let ip = |at: usize| {
                    IpAddr::V4(Ipv4Addr::new(
                        body[at],
                        body[at + 1],
                        body[at + 2],
                        body[at + 3],
                    ))
                };
                let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
                Header::Proxied {
                    source: SocketAddr::new(ip(0), port(8)),
                    destination: SocketAddr::new(ip(4), port(10)),
                }
            }
            // TCP over IPv6
            0x21 => {
                if body.len() < 36 {
                    return Err(ParseError::Invalid("v2 IPv6 addresses are cut short"));
                }
                let ip = |at: usize| {
                    let octets: [u8; 16] = body[at..at + 16].try_into().expect("16 bytes");
                    IpAddr::V6(Ipv6Addr::from(octets))
                };
                let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
                Header::Proxied {
                    source: SocketAddr::new(ip(0), port(32)),
                    destination: SocketAddr::new(ip(16), port(34)),
                }
            }
            // UNSPEC, UDP, Unix sockets: nothing to replace the peer with.
            _ => Header::Local,
        },
        _ => return Err(ParseError::Invalid("v2 command is neither LOCAL nor PROXY")),
    };
    Ok((header, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn proxied(source: &str, destination: &str) -> Header {
        Header::Proxied {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        let h = [&line[..], b"GET / HTTP/1.1\r\n"].concat();
        assert_eq!(
            parse(&h),
            Ok((proxied("192.0.2.1:56324", "198.51.100.2:443"), line.len()))
        );
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
        assert_eq!(
            parse(h),
            Ok((proxied("[2001:db8::1]:1", "[2001:db8::2]:65535"), h.len()))
        );
        let h = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nrest";
        assert_eq!(parse(h), Ok((Header::Local, h.len() - 4)));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok((Header::Local, 15)));
    }

    #[test]
    fn v1_needs_more_until_its_line_ends() {
        let whole = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        for n in 0..whole.len() {
            assert_eq!(parse(&whole[..n]), Err(ParseError::Incomplete), "{n}");
        }
    }

    #[test]
    fn v1_refuses_what_the_specification_does_not_allow() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n",
            b"PROXY TCP5 192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 056324 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +5 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 extra\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY \xff\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ParseError::Invalid(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
        // No line end within 107 bytes.
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat();
        assert!(matches!(parse(&long), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn v2_ipv4_ipv6_local_and_tlvs() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        let h = v2(1, 0x11, &body);
        assert_eq!(
            parse(&h),
            Ok((proxied("192.0.2.1:56324", "198.51.100.2:443"), 28))
        );
        // TLVs after the addresses are skipped with the header.
        let mut with_tlv = body.clone();
        with_tlv.extend_from_slice(&[0x05, 0, 3, b'a', b'b', b'c']);
        let h = [v2(1, 0x11, &with_tlv), b"GET".to_vec()].concat();
        assert_eq!(
            parse(&h),
            Ok((proxied("192.0.2.1:56324", "198.51.100.2:443"), 34))
        );

        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut body = [src.octets(), dst.octets()].concat();
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&2u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &body)),
            Ok((proxied("[2001:db8::1]:1", "[2001:db8::2]:2"), 52))
        );
        // LOCAL (a health check), and families with no TCP address.
        assert_eq!(parse(&v2(0, 0x00, &[])), Ok((Header::Local, 16)));
        assert_eq!(parse(&v2(1, 0x00, &[])), Ok((Header::Local, 16)));
        assert_eq!(parse(&v2(1, 0x12, &[0; 12])), Ok((Header::Local, 28)));
    }

    #[test]
    fn v2_needs_more_until_its_length_and_refuses_bad_ones() {
        let h = v2(1, 0x11, &[1; 12]);
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Err(ParseError::Incomplete), "{n}");
        }
        let mut bad_version = h.clone();
        bad_version[12] = 0x11;
        let bad_command = v2(2, 0x11, &[1; 12]);
        let short_v4 = v2(1, 0x11, &[1; 11]);
        let short_v6 = v2(1, 0x21, &[1; 35]);
        let mut bad_signature = h.clone();
        bad_signature[6] = b'X';
        let mut too_long = v2(0, 0, &[]);
        too_long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        for bad in [
            bad_version,
            bad_command,
            short_v4,
            short_v6,
            bad_signature,
            too_long,
        ] {
            assert!(
                matches!(parse(&bad), Err(ParseError::Invalid(_))),
                "{bad:?}: {:?}",
                parse(&bad)
            );
        }
    }
}
