//! External authorization per object: `knative-gateway.dev/ext-authz:
//! disabled` on a Route or KIngress keeps its requests from the
//! authorization server (`--extauthz-host`); `enabled`, or no annotation,
//! sends them.

use crate::error::ObjectError;
pub use crate::model::meta::EXT_AUTHZ_ANNOTATION;
use crate::model::ObjectMeta;

/// Whether `meta`'s requests are authorized, or an error naming the
/// annotation for another value.
pub fn enabled(meta: &ObjectMeta) -> Result<bool, ObjectError> {
    match meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXT_AUTHZ_ANNOTATION))
    {
        None | Some("enabled") => Ok(true),
        Some("disabled") => Ok(false),
        Some(other) => Err(ObjectError::BadAnnotation {
            key: EXT_AUTHZ_ANNOTATION.to_owned(),
            value: other.to_owned(),
            why: "\"enabled\" or \"disabled\"".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(value: Option<&str>) -> ObjectMeta {
        let mut json = serde_json::json!({"name": "web", "namespace": "ns"});
        if let Some(v) = value {
            json["annotations"] = serde_json::json!({ EXT_AUTHZ_ANNOTATION: v });
        }
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn on_unless_disabled_and_a_bad_value_is_named() {
        assert!(enabled(&meta(None)).unwrap());
        assert!(enabled(&meta(Some("enabled"))).unwrap());
        assert!(!enabled(&meta(Some("disabled"))).unwrap());
        let e = enabled(&meta(Some("off"))).unwrap_err().to_string();
        assert!(e.contains(EXT_AUTHZ_ANNOTATION) && e.contains("off"), "{e}");
    }
}
