//! W3C Trace Context (`traceparent`): reading the client's, writing ours.

/// A valid `traceparent` (`version-traceid-parentid-flags`), borrowed from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent<'a> {
    /// 32 lower-case hex digits, not all zero.
    pub trace_id: &'a str,
    /// 16 lower-case hex digits, not all zero: the caller's span.
    pub parent_id: &'a str,
    /// The caller sampled (records) this trace.
    pub sampled: bool,
}

/// Parse a `traceparent` value; anything malformed gives `None`.
pub fn parse(value: &[u8]) -> Option<TraceParent<'_>> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version ff is invalid; version 00 has exactly four fields, later
    // versions may append more.
    if !is_hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !is_hex(trace_id, 32) || !is_hex(parent_id, 16) || !is_hex(flags, 2) {
        return None;
    }
    if is_zero(trace_id) || is_zero(parent_id) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceParent {
        trace_id,
        parent_id,
        sampled: flags & 1 == 1,
    })
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_zero(s: &str) -> bool {
    s.bytes().all(|b| b == b'0')
}

/// Lower-case hex digits into bytes; `None` unless `N * 2` valid digits.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let bytes = s.as_bytes();
    if bytes.len() != N * 2 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// `00-<trace id>-<span id>-01`: a sampled context whose parent is `span_id`.
pub fn format(trace_id: &[u8; 16], span_id: &[u8; 8]) -> String {
    // Per traced request: nibbles through a table, not `core::fmt`.
    fn hex(out: &mut String, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &b in bytes {
            out.push(HEX[usize::from(b >> 4)].into());
            out.push(HEX[usize::from(b & 0x0f)].into());
        }
    }
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    hex(&mut out, trace_id);
    out.push('-');
    hex(&mut out, span_id);
    out.push_str("-01");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn valid_traceparents_parse_with_their_sampled_flag() {
        let sampled = format!("00-{ID}-00f067aa0ba902b7-01");
        assert_eq!(
            parse(sampled.as_bytes()),
            Some(TraceParent {
                trace_id: ID,
                parent_id: "00f067aa0ba902b7",
                sampled: true
            })
        );
        let not = format!("00-{ID}-00f067aa0ba902b7-00");
        assert!(!parse(not.as_bytes()).unwrap().sampled);
        // A later version may append fields, and set other flag bits.
        let v1 = format!("01-{ID}-00f067aa0ba902b7-03-extra");
        assert!(parse(v1.as_bytes()).unwrap().sampled);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            String::new(),
            "garbage".into(),
            format!("00-{ID}-00f067aa0ba902b7-01-extra"),
            format!("ff-{ID}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", ID.to_uppercase()),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{ID}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", &ID[1..]),
            format!("00-{ID}-00f067aa0ba902b7"),
            format!("00-{ID}-00f067aa0ba902b7-1"),
            format!("00-{ID}-00f067aa0ba902b7-0g"),
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn ids_go_to_bytes_and_back() {
        let trace: [u8; 16] = from_hex(ID).unwrap();
        let span: [u8; 8] = from_hex("00f067aa0ba902b7").unwrap();
        assert_eq!(
            format(&trace, &span),
            format!("00-{ID}-00f067aa0ba902b7-01")
        );
        assert_eq!(from_hex::<8>("00f067aa0ba902b"), None);
        assert_eq!(from_hex::<8>("00f067aa0ba902bX"), None);
    }
}
