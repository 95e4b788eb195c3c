//! The `Server` header of responses (`--server-header`): the backend's as it
//! sent it, none, or one name on every response, whichever path and whoever
//! answered (a backend, the activator, or the gateway itself).

use http::HeaderValue;
use pingora::http::ResponseHeader;

/// What responses carry as `Server`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServerHeader {
    /// The backend's, if any; the gateway's own answers send none.
    #[default]
    Pass,
    /// Never one.
    Strip,
    /// This value on every response.
    Set(HeaderValue),
}

/// `pass`, `strip`, or a value to set.
pub fn parse(s: &str) -> Result<ServerHeader, String> {
    match s {
        "pass" => Ok(ServerHeader::Pass),
        "strip" => Ok(ServerHeader::Strip),
        "" => Err("empty: use `strip` for no Server header".into()),
        value => HeaderValue::from_str(value)
            .map(ServerHeader::Set)
            .map_err(|_| format!("{value:?} is not a valid header value")),
    }
}

impl ServerHeader {
    /// The form the fast path's head relay takes.
    pub fn relay(&self) -> wire::response_head::Server<'_> {
        match self {
            ServerHeader::Pass => wire::response_head::Server::Pass,
            ServerHeader::Strip => wire::response_head::Server::Strip,
            ServerHeader::Set(v) => wire::response_head::Server::Set(v.as_bytes()),
        }
    }

    /// Apply to a response head about to be sent.
    pub fn apply(&self, resp: &mut ResponseHeader) {
        match self {
            ServerHeader::Pass => {}
            ServerHeader::Strip => {
                resp.remove_header(&http::header::SERVER);
            }
            ServerHeader::Set(v) => {
                resp.insert_typed_header(http::header::SERVER, v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_strip_or_a_value() {
        assert_eq!(parse("pass"), Ok(ServerHeader::Pass));
        assert_eq!(parse("strip"), Ok(ServerHeader::Strip));
        assert_eq!(
            parse("edge"),
            Ok(ServerHeader::Set(HeaderValue::from_static("edge")))
        );
        assert!(parse("").unwrap_err().contains("strip"));
        assert!(parse("a\nb")
            .unwrap_err()
            .contains("not a valid header value"));

        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("server", "app").unwrap();
        ServerHeader::Pass.apply(&mut resp);
        assert_eq!(resp.headers["server"], "app");
        parse("edge").unwrap().apply(&mut resp);
        assert_eq!(resp.headers.get_all("server").iter().count(), 1);
        assert_eq!(resp.headers["server"], "edge");
        ServerHeader::Strip.apply(&mut resp);
        assert!(resp.headers.get("server").is_none());
    }
}
