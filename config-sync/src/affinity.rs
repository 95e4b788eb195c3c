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

use crate::error::ObjectError;
use crate::model::ObjectMeta;

/// Turns affinity on: the value `cookie` (the only mode).
pub const AFFINITY_ANNOTATION: &str = "knative-gateway.dev/affinity";
/// The cookie's name; [`DEFAULT_COOKIE`] when absent.
pub const COOKIE_ANNOTATION: &str = "knative-gateway.dev/affinity-cookie";
/// The cookie's lifetime (`30m`, `12h`, `7d`); [`DEFAULT_MAX_AGE`] when absent.
pub const MAX_AGE_ANNOTATION: &str = "knative-gateway.dev/affinity-max-age";
/// The cookie's name unless the annotation says otherwise.
pub const DEFAULT_COOKIE: &str = "knative-revision";
/// The cookie's lifetime unless the annotation says otherwise.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A route's affinity settings, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Affinity {
    /// Cookie name: an RFC 6265 token.
    pub cookie: String,
    /// Cookie lifetime, in whole seconds.
    pub max_age: u64,
}

/// The affinity `meta`'s annotations ask for: `None` without the
/// `knative-gateway.dev/affinity` annotation, an error naming the
/// annotation for a value that cannot be used.
pub fn of(meta: &ObjectMeta) -> Result<Option<Affinity>, ObjectError> {
    let get = |key| meta.annotations.as_ref().and_then(|a| a.get(key));
    let bad = |key: &str, value: &str, why: &str| ObjectError::BadAnnotation {
        key: key.to_owned(),
        value: value.to_owned(),
        why: why.to_owned(),
    };
    match get(AFFINITY_ANNOTATION) {
        None => return Ok(None),
        Some("cookie") => {}
        Some(other) => {
            return Err(bad(
                AFFINITY_ANNOTATION,
                other,
                "the only mode is \"cookie\"",
            ))
        }
    }
    let cookie = get(COOKIE_ANNOTATION).unwrap_or(DEFAULT_COOKIE);
    if cookie.is_empty() || cookie.len() > 64 || !cookie.bytes().all(is_token) {
        return Err(bad(
            COOKIE_ANNOTATION,
            cookie,
            "a cookie name is 1 to 64 letters, digits or !#$%&'*+-.^_`|~",
        ));
    }
    let max_age = match get(MAX_AGE_ANNOTATION) {
        None => DEFAULT_MAX_AGE,
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| bad(MAX_AGE_ANNOTATION, text, &format!("not a duration: {e}")))?,
    };
    if max_age < Duration::from_secs(1) {
        let text = get(MAX_AGE_ANNOTATION).unwrap_or_default();
        return Err(bad(MAX_AGE_ANNOTATION, text, "a lifetime is at least 1s"));
    }
    Ok(Some(Affinity {
        cookie: cookie.to_owned(),
        max_age: max_age.as_secs(),
    }))
}

/// RFC 9110 token characters (a cookie name is a token).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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
    use crate::model::Annotations;

    fn meta(pairs: &[(&str, &str)]) -> ObjectMeta {
        let mut annotations = Annotations::default();
        for (k, v) in pairs {
            annotations.insert(k, v.to_string());
        }
        ObjectMeta {
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn defaults_overrides_and_errors_naming_the_annotation() {
        assert_eq!(of(&meta(&[])).unwrap(), None);
        assert_eq!(
            of(&meta(&[(AFFINITY_ANNOTATION, "cookie")])).unwrap(),
            Some(Affinity {
                cookie: DEFAULT_COOKIE.into(),
                max_age: 86_400
            })
        );
        let custom = meta(&[
            (AFFINITY_ANNOTATION, "cookie"),
            (COOKIE_ANNOTATION, "canary"),
            (MAX_AGE_ANNOTATION, "30m"),
        ]);
        assert_eq!(
            of(&custom).unwrap(),
            Some(Affinity {
                cookie: "canary".into(),
                max_age: 1800
            })
        );
        for (pairs, says) in [
            (&[(AFFINITY_ANNOTATION, "header")][..], "the only mode"),
            (
                &[(AFFINITY_ANNOTATION, "cookie"), (COOKIE_ANNOTATION, "a b")],
                "cookie name",
            ),
            (
                &[
                    (AFFINITY_ANNOTATION, "cookie"),
                    (MAX_AGE_ANNOTATION, "soon"),
                ],
                "not a duration",
            ),
            (
                &[(AFFINITY_ANNOTATION, "cookie"), (MAX_AGE_ANNOTATION, "0s")],
                "at least 1s",
            ),
        ] {
            let e = of(&meta(pairs)).unwrap_err().to_string();
            assert!(
                e.contains(says) && e.contains("knative-gateway.dev/"),
                "{e}"
            );
        }
    }

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
