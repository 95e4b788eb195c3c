//! Lowering: each kind of routed object, validated and turned into the one
//! intermediate form ([`crate::ir`]) the compiler ([`crate::build`]) reads.
//!
//! - [`route`]: a Route's `status` (the Route-status mode);
//! - [`kingress`]: a KIngress and the Services it names;
//! - [`affinity`]: the sticky-canary annotations either may carry.

pub mod affinity;
pub mod authz;
pub mod kingress;
pub mod route;

use http::HeaderValue;

use crate::error::ObjectError;
use crate::model::ObjectKey;

/// A header value from a name [`route::validate_route`] checked with [`is_dns_name`].
pub(crate) fn dns_header(name: &str) -> HeaderValue {
    HeaderValue::from_str(name).expect("DNS names are valid header values")
}

/// A DNS-1123 name as Kubernetes requires of namespaces, revisions and tags:
/// lower-case letters, digits, '-' and '.', at most 253 characters.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// An object's own namespace and name must be DNS-1123 names: they become
/// header values and endpoint index keys.
pub(crate) fn check_names(key: &ObjectKey) -> Result<(), ObjectError> {
    for (field, value) in [
        ("metadata.namespace", &key.namespace),
        ("metadata.name", &key.name),
    ] {
        if !is_dns_name(value) {
            return Err(ObjectError::BadName {
                field: field.into(),
                value: value.clone(),
            });
        }
    }
    Ok(())
}
