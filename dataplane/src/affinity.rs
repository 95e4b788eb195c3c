//! Sticky canaries: a Route or KIngress annotated
//! `knative-gateway.dev/affinity: cookie` keeps each user on the revision
//! the split first gave them. The first response sets a cookie naming it;
//! a later request carrying the cookie goes to that revision while it still
//! has a share of the split, and is picked afresh (and gets a new cookie)
//! when it does not. The cookie is checked against the table, so a client
//! can only name a revision the split serves now; and since only requests
//! without a valid cookie move the split's cursor, the share of *users* on
//! each revision follows the percents.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};

/// The cookie's name unless the route says otherwise.
pub const DEFAULT_COOKIE: &str = "knative-revision";
/// The cookie's lifetime unless the route says otherwise.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A route's affinity settings, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Affinity {
    /// Cookie name: an RFC 6265 token.
    pub cookie: String,
    /// Cookie lifetime, in whole seconds.
    pub max_age: u64,
}

/// A split's cookie: its name, and the `Set-Cookie` value of each way out.
#[derive(Debug)]
pub struct Sticky {
    /// Cookie name.
    pub cookie: Box<str>,
    /// Each way's cookie value (the revision's name), by pick index.
    pub values: Box<[Box<str>]>,
    /// Each way's `Set-Cookie` header, by pick index.
    pub set_cookie: Box<[HeaderValue]>,
}

impl Sticky {
    /// The cookie of `affinity` for ways out named `names` (cookie values:
    /// DNS names, valid as they are).
    pub fn new(affinity: &Affinity, names: Vec<Box<str>>) -> Self {
        let set_cookie = names
            .iter()
            .map(|name| {
                let text = format!(
                    "{}={name}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
                    affinity.cookie, affinity.max_age
                );
                HeaderValue::from_str(&text).expect("a token, a DNS name and digits")
            })
            .collect();
        Self {
            cookie: affinity.cookie.as_str().into(),
            values: names.into_boxed_slice(),
            set_cookie,
        }
    }

    /// The way out the request's cookie names, if it names one of ours.
    pub fn chosen(&self, headers: &HeaderMap) -> Option<usize> {
        let value = cookie(headers, &self.cookie)?;
        self.values.iter().position(|v| v.as_bytes() == value)
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (HTTP/2
/// may send several), if any.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (n, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (n == name.as_bytes()).then(|| v[1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_checked_against_the_split() {
        let affinity = Affinity {
            cookie: "rev".into(),
            max_age: 60,
        };
        let sticky = Sticky::new(&affinity, vec!["web-1".into(), "web-2".into()]);
        assert_eq!(
            sticky.set_cookie[1],
            "rev=web-2; Max-Age=60; Path=/; HttpOnly; SameSite=Lax"
        );
        let mut h = HeaderMap::new();
        assert_eq!(sticky.chosen(&h), None);
        h.append("cookie", HeaderValue::from_static("a=1; rev=web-2 ; b=3"));
        assert_eq!(sticky.chosen(&h), Some(1));
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("rev=web-1"));
        assert_eq!(sticky.chosen(&h), Some(0));
        // A revision the split does not serve, or a cookie of another name.
        for forged in ["rev=web-3", "reva=web-1", "rev", "xrev=web-1"] {
            let mut h = HeaderMap::new();
            h.append("cookie", HeaderValue::from_static(forged));
            assert_eq!(sticky.chosen(&h), None, "{forged}");
        }
    }
}
