//! The fuzz targets' bodies: each takes arbitrary bytes, feeds them to a
//! parser or decoder that reads input from outside the gateway, and checks
//! what must hold whatever the input. A panic or a failed check is a finding.
//!
//! `cargo fuzz run <target>` (fuzz_targets/) runs them coverage-guided; the
//! corpus under `corpus/<target>/` is replayed by `tests/corpus.rs` in the
//! regular test suite.

use std::sync::Arc;

use config_sync::model::kingress::{self, IngressSpec};
use config_sync::sources::file;
use config_sync::{build, BuildOptions, LastGood, Snapshot};
use dataplane::host::{self, MAX_HOST_LEN};

use wire::proxy_header::{self, Header, ParseError};
use wire::{chunked, response_head};

/// The Host normaliser (every request's Host header, every Route URL): a
/// host it accepts is short enough, lower case, and routes the same whatever
/// the client's case, port or choice of the copying or allocating variant.
pub fn host(data: &[u8]) {
    let mut buf = [0u8; MAX_HOST_LEN];
    let Some(h) = host::normalize(data, &mut buf) else {
        return;
    };
    let h = h.to_owned();
    assert!(!h.is_empty() && h.len() <= MAX_HOST_LEN, "{h:?}");
    assert!(!h.bytes().any(|b| b.is_ascii_uppercase()), "{h:?}");
    // The same host in upper case normalises to the same.
    let upper = data.to_ascii_uppercase();
    let mut buf2 = [0u8; MAX_HOST_LEN];
    assert_eq!(
        host::normalize(&upper, &mut buf2),
        Some(h.as_str()),
        "{data:?}"
    );
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(host::normalize_owned(text).as_deref(), Some(h.as_str()));
    }
    // A port on a host that had none changes nothing.
    let bare = !h.ends_with('.') && (h.starts_with('[') || !h.contains(':'));
    if bare && !data.contains(&b':') && !data.ends_with(b".") {
        let with_port = [data, b":8080"].concat();
        let mut buf3 = [0u8; MAX_HOST_LEN];
        assert_eq!(
            host::normalize(&with_port, &mut buf3),
            Some(h.as_str()),
            "{data:?}"
        );
    }
    // A Route URL with this authority routes as the Host header does.
    if let Ok(text) = std::str::from_utf8(data) {
        let plain = !text
            .bytes()
            .any(|b| b"/?#@".contains(&b) || b.is_ascii_whitespace() || b.is_ascii_control());
        if plain {
            let url = format!("http://{text}/");
            assert_eq!(host::of_url(&url).as_deref(), Some(h.as_str()), "{url}");
        }
    }
}

/// The snapshot decoder and the table builder: any text either fails to
/// parse with an error, or builds a table; a broken object is rejected with
/// a reason, never a panic; and building again on the result (as every
/// reload does, with the last good versions) gives the same routes.
pub fn snapshot(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let snapshot = match file::parse(text) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.message.is_empty(), "{e:?}");
            return;
        }
    };
    build_twice(snapshot);
}

/// One KIngress as JSON (what the API server sends): decoded, or refused
/// with a reason; decoded, its hash is a SHA-256 in hex, its hosts are
/// computed, and the table is built from it.
pub fn kingress(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let ing = match kingress::decode(value) {
        Ok(ing) => ing,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert_hex_sha256(&ing.hash);
    let key = ing.key();
    assert_eq!(
        ing.hash,
        kingress::hash(&ing.spec, &key.namespace, &key.name).into()
    );
    let _ = config_sync::lower::kingress::hosts(&ing, "cluster.local");
    let mut snapshot = Snapshot::default();
    snapshot.kingresses.push(Arc::new(ing));
    build_twice(snapshot);
}

/// The probe hash's encoder (Go's `json.Marshal` of a KIngress spec, byte
/// for byte): its output is JSON holding the same spec, with `<`, `>` and
/// `&` escaped as Go escapes them, and the hash over it is a SHA-256 in hex.
pub fn probe_hash(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<IngressSpec>(data) else {
        return;
    };
    let encoded = kingress::go_json(&spec);
    let text = std::str::from_utf8(&encoded).expect("Go's JSON is UTF-8");
    assert!(
        !text.contains(['<', '>', '&', '\u{2028}', '\u{2029}']),
        "{text}"
    );
    let back: IngressSpec = serde_json::from_slice(&encoded).expect("the encoding is JSON");
    assert_eq!(back, spec, "{text}");
    // Encoding what was decoded from the encoding gives the same bytes.
    assert_eq!(kingress::go_json(&back), encoded);
    assert_hex_sha256(&kingress::hash(&spec, "ns", "name"));
}

fn assert_hex_sha256(hash: &str) {
    assert_eq!(hash.len(), 64, "{hash}");
    assert!(
        hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{hash}"
    );
}

fn build_twice(snapshot: Snapshot) {
    let opts = BuildOptions::default();
    let (table, last_good) = build(snapshot.clone(), &opts, &LastGood::default(), None, 1);
    for r in table.rejected() {
        assert!(!r.error.to_string().is_empty(), "{r:?}");
    }
    let (again, _) = build(snapshot, &opts, &last_good, Some(&table), 2);
    assert_eq!(again.route_count(), table.route_count());
    assert_eq!(again.host_count(), table.host_count());
}

/// The PROXY protocol header (the first bytes of every connection to an
/// external listener with `--proxy-protocol`): a header it accepts ends
/// within the input, parses the same alone, and is incomplete in every
/// shorter prefix (so a header split across reads is never misread);
/// source and destination share a family.
pub fn proxy_header(data: &[u8]) {
    match proxy_header::parse(data) {
        Ok((header, len)) => {
            assert!(len > 0 && len <= data.len(), "{len} of {}", data.len());
            assert_eq!(proxy_header::parse(&data[..len]), Ok((header, len)));
            for n in 0..len {
                assert_eq!(
                    proxy_header::parse(&data[..n]),
                    Err(ParseError::Incomplete),
                    "prefix of {n}"
                );
            }
            if let Header::Proxied {
                source,
                destination,
            } = header
            {
                assert_eq!(source.is_ipv4(), destination.is_ipv4());
            }
        }
        Err(ParseError::Incomplete) => assert!(data.len() < proxy_header::V2_MAX),
        Err(ParseError::Invalid(why)) => assert!(!why.is_empty()),
    }
}

/// The fast path's reading of an upstream response head: an accepted head
/// ends within the input, and the head written for the client is itself a
/// valid head with the same status and framing, one framing field at most,
/// and no hop-by-hop field.
pub fn response_head(data: &[u8]) {
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    let server = match (flags >> 2) & 3 {
        1 => response_head::Server::Strip,
        2 => response_head::Server::Set(b"gw"),
        _ => response_head::Server::Pass,
    };
    let relay = response_head::Relay {
        head_request: flags & 1 == 1,
        close: flags & 2 == 2,
        date: b"Sun, 29 Nov 2026 18:00:00 GMT",
        server,
    };
    let mut out = Vec::new();
    let Ok(Some(head)) = response_head::parse(buf, &relay, &mut out) else {
        return;
    };
    assert!(head.len <= buf.len());
    // Valid, and within the limit of fields.
    let mut fields = [httparse::EMPTY_HEADER; response_head::MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let parsed = resp.parse(&out);
    assert!(
        matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()),
        "{parsed:?}: {}",
        String::from_utf8_lossy(&out)
    );
    let has = |name: &str| {
        resp.headers
            .iter()
            .any(|f| f.name.eq_ignore_ascii_case(name))
    };
    assert!(!(has("content-length") && has("transfer-encoding")));
    for hop in ["keep-alive", "proxy-connection", "te", "upgrade"] {
        assert!(!has(hop), "{hop} passed on");
    }
    // A final response says whether the connection stays, and when it was sent.
    if !head.informational {
        assert!(has("connection") && has("date"));
    }
    // `Server` as asked: none, or exactly the value set.
    let servers: Vec<&[u8]> = resp
        .headers
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("server"))
        .map(|f| f.value)
        .collect();
    match server {
        response_head::Server::Strip => assert!(servers.is_empty()),
        response_head::Server::Set(v) => assert_eq!(servers, [v]),
        response_head::Server::Pass => {}
    }
    // Read again (when it leaves room for a field added), the same head.
    if resp.headers.len() <= response_head::MAX_HEADERS - 3 {
        let mut again = Vec::new();
        let reread = response_head::parse(&out, &relay, &mut again)
            .expect("the head written for the client parses")
            .expect("and is complete");
        assert_eq!(reread.status, head.status);
        assert_eq!(
            reread.framing,
            head.framing,
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(again, out, "passing a head on twice changes nothing");
    }
}

/// The chunk tracker: the same answer whether the bytes come at once or in
/// two reads split anywhere, and a finished body never counts more bytes
/// than it was given.
pub fn chunked(data: &[u8]) {
    let Some((&at, body)) = data.split_first() else {
        return;
    };
    let mut whole = chunked::ChunkTracker::new();
    let expected = whole.feed(body).map(|n| (n, whole.is_done()));
    if let Ok((n, _)) = expected {
        assert!(n <= body.len());
    }
    let split = usize::from(at) * body.len() / 255;
    let mut parts = chunked::ChunkTracker::new();
    let got = match parts.feed(&body[..split]) {
        Ok(n) if parts.is_done() => Ok((n, true)),
        Ok(n) => parts.feed(&body[split..]).map(|m| (n + m, parts.is_done())),
        Err(e) => Err(e),
    };
    assert_eq!(got, expected);
}
