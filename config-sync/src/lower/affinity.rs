//! Sticky canaries, the annotations: `knative-gateway.dev/affinity: cookie`
//! on a Route or KIngress, with the cookie's name and lifetime, validated into
//! the [`Affinity`] the table's splits carry (how a request is kept on its
//! revision: `dataplane::affinity`).

use std::time::Duration;

use dataplane::affinity::{Affinity, DEFAULT_COOKIE, DEFAULT_MAX_AGE};

use crate::error::ObjectError;
use crate::model::ObjectMeta;

/// Turns affinity on: the value `cookie` (the only mode).
pub const AFFINITY_ANNOTATION: &str = "knative-gateway.dev/affinity";
/// The cookie's name; [`DEFAULT_COOKIE`] when absent.
pub const COOKIE_ANNOTATION: &str = "knative-gateway.dev/affinity-cookie";
/// The cookie's lifetime (`30m`, `12h`, `7d`); [`DEFAULT_MAX_AGE`] when absent.
pub const MAX_AGE_ANNOTATION: &str = "knative-gateway.dev/affinity-max-age";

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
}
