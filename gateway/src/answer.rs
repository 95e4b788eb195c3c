//! What the gateway answers itself instead of forwarding, decided once for
//! both request paths: a request with no usable Host, a host or path no route
//! serves, Knative's probe, the redirect of an HTTP request to HTTPS, an
//! ExternalName that loops back, an authorization server's denial.
//! [`refused`] decides (plain data in, plain data out); [`send`] writes the
//! answer on either path's session.

use bytes::Bytes;
use dataplane::resolve::{Miss, HASH_HEADER};
use http::header::{CONTENT_LENGTH, LOCATION};
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;

/// Why a request is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No Host header (nor authority): 400.
    NoHost,
    /// A Host that cannot name a route: 400.
    BadHost,
    /// What [`dataplane::resolve`] said.
    Miss(Miss),
}

/// An answer the gateway gives itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// A status with a short text body; the connection closes after it, as
    /// after any error pingora answers.
    Text { status: u16, body: &'static str },
    /// A status with one header and no body (the probe's hash, a redirect's
    /// `Location`); the connection stays open.
    Header {
        status: u16,
        name: HeaderName,
        value: HeaderValue,
    },
    /// What an authorization server answered a request it denied; the
    /// connection stays open, unless the request's body is still coming.
    Denied(crate::authz::Denial),
}

impl Answer {
    /// Its status code.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Answer::Text { status, .. } | Answer::Header { status, .. } => *status,
            Answer::Denied(denial) => denial.status,
        }
    }

    /// The body bytes it sends.
    pub(crate) fn body_len(&self) -> usize {
        match self {
            Answer::Text { body, .. } => body.len(),
            Answer::Header { .. } => 0,
            Answer::Denied(denial) => denial.body.len(),
        }
    }
}

/// The answer to a request routing refused. `host` is its normalised Host
/// (empty when it had none), `path_and_query` its target, and `probe_hash`
/// the hash the probe map holds for a host, if any.
pub(crate) fn refused(
    refusal: Refusal,
    host: &str,
    path_and_query: Option<&http::uri::PathAndQuery>,
    probe_hash: impl FnOnce(&str) -> Option<String>,
) -> Answer {
    let text = |status, body| Answer::Text { status, body };
    match refusal {
        Refusal::NoHost => text(400, "request has no Host header\n"),
        Refusal::BadHost => text(400, "invalid Host header\n"),
        Refusal::Miss(Miss::Probe) => match probe_hash(host).map(HeaderValue::try_from) {
            Some(Ok(value)) => Answer::Header {
                status: 200,
                name: HASH_HEADER,
                value,
            },
            _ => text(404, "no KIngress served for this host yet\n"),
        },
        Refusal::Miss(Miss::NoRoute) => text(404, "no route for this host\n"),
        Refusal::Miss(Miss::NoPath) => text(404, "no path of this host matches\n"),
        Refusal::Miss(Miss::Redirect) => {
            let location = format!(
                "https://{host}{}",
                path_and_query.map_or("/", |p| p.as_str())
            );
            match HeaderValue::try_from(location) {
                Ok(value) => Answer::Header {
                    status: 301,
                    name: LOCATION,
                    value,
                },
                Err(_) => text(400, "invalid Host header\n"),
            }
        }
        Refusal::Miss(Miss::Loop) => text(508, "ExternalName Services loop back to the gateway\n"),
    }
}

/// Write `answer` to the client of `session` (either path's).
pub(crate) async fn send(session: &mut ServerSession, answer: Answer) -> pingora::Result<()> {
    match answer {
        Answer::Text { status, body } => {
            session
                .respond_error_with_body(status, Bytes::from_static(body.as_bytes()))
                .await
        }
        Answer::Header {
            status,
            name,
            value,
        } => {
            let mut resp = ResponseHeader::build(status, Some(3))?;
            resp.insert_header(name, value)?;
            own_fields(&mut resp, 0)?;
            session.write_response_header(Box::new(resp)).await
        }
        Answer::Denied(denial) => {
            let mut resp = ResponseHeader::build(denial.status, Some(denial.headers.len() + 2))?;
            for (name, value) in denial.headers {
                resp.append_header(name, value)?;
            }
            own_fields(&mut resp, denial.body.len())?;
            // The connection stays open, as Envoy keeps it, unless the
            // client is still sending a body no one will read.
            if !session.is_body_done() {
                session.set_keepalive(None);
            }
            session.write_response_header(Box::new(resp)).await?;
            if !denial.body.is_empty() {
                session.write_response_body(denial.body, true).await?;
            }
            session.finish_body().await.map(|_| ())
        }
    }
}

/// The fields the gateway sets last on a head of its own, over any of the
/// same name: the body's `Content-Length`, and the `Server` of the answers
/// pingora builds (`--server-header`).
fn own_fields(resp: &mut ResponseHeader, body: usize) -> pingora::Result<()> {
    resp.insert_header(CONTENT_LENGTH, body)?;
    if let Some(server) = pingora::protocols::http::server_name() {
        resp.insert_header(http::header::SERVER, server)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_answer() {
        let none = |_: &str| None;
        let path: http::uri::PathAndQuery = "/a?b=1".parse().unwrap();
        assert_eq!(refused(Refusal::NoHost, "", None, none).status(), 400);
        assert_eq!(refused(Refusal::BadHost, "", None, none).status(), 400);
        assert_eq!(
            refused(Refusal::Miss(Miss::NoRoute), "x", None, none),
            Answer::Text {
                status: 404,
                body: "no route for this host\n"
            }
        );
        assert_eq!(
            refused(Refusal::Miss(Miss::NoPath), "x", None, none).status(),
            404
        );
        assert_eq!(
            refused(Refusal::Miss(Miss::Loop), "x", None, none).status(),
            508
        );
        // The probe: the hash the probe map holds for the host, or a 404.
        let hash = |h: &str| (h == "web.example.com").then(|| "abc".to_owned());
        assert_eq!(
            refused(Refusal::Miss(Miss::Probe), "web.example.com", None, hash),
            Answer::Header {
                status: 200,
                name: HASH_HEADER,
                value: HeaderValue::from_static("abc")
            }
        );
        let other = refused(Refusal::Miss(Miss::Probe), "other.example.com", None, hash);
        assert_eq!((other.status(), other.body_len()), (404, 37));
        // The redirect keeps the path and query.
        assert_eq!(
            refused(
                Refusal::Miss(Miss::Redirect),
                "web.example.com",
                Some(&path),
                none
            ),
            Answer::Header {
                status: 301,
                name: LOCATION,
                value: HeaderValue::from_static("https://web.example.com/a?b=1")
            }
        );
        let bare = refused(Refusal::Miss(Miss::Redirect), "web.example.com", None, none);
        assert!(
            matches!(bare, Answer::Header { value, .. } if value == "https://web.example.com/")
        );
    }
}
