//! A small Kubernetes API server for tests, speaking the real wire protocol
//! so the real `kube` client can be driven against it:
//!
//! - `GET` lists with `resourceVersion`, label selectors and pages
//!   (`limit`, `continue`), namespaced
//!   (`/apis/G/V/namespaces/NS/PLURAL`) or cluster-wide (`/apis/G/V/PLURAL`);
//! - `watch=1` streams (chunked, one JSON event per line) of `ADDED`,
//!   `MODIFIED`, `DELETED` and, when asked for, `BOOKMARK` events, resumed from
//!   a `resourceVersion`;
//! - an `ERROR` event with a 410 `Expired` Status for a resourceVersion older
//!   than the retained history ([`ApiServer::compact`]);
//! - `PUT` of an object or its `/status`, with optimistic concurrency (409 on a
//!   stale `resourceVersion`);
//! - [`ApiServer::stop`] drops every connection and refuses new ones until
//!   [`ApiServer::restart`], on the same port;
//! - 403 for resources a test forbids ([`ApiServer::forbid`]), failures it
//!   queues ([`ApiServer::fail_next`]: 429, 500...), and a count of requests
//!   by verb and resource ([`ApiServer::requests`]).

pub mod population;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, Infallible>;

/// Where an object lives: `(group/version, plural, namespace, name)`.
type Key = (String, String, String, String);

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    kind: &'static str,
    api_version: String,
    plural: String,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Event>,
    /// Watches from a resourceVersion older than this get 410 Gone.
    oldest: u64,
    kinds: BTreeMap<String, String>,
}

struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    /// Bumped by `stop()`: a watch opened before sends nothing more, at once.
    /// (Aborting the server's tasks takes effect only at their next poll, so
    /// without it an object applied right after `stop()` could still reach an
    /// open watch.)
    epoch: AtomicU64,
    /// False between `stop()` and `restart()`: a connection not yet torn down
    /// answers 503, as a dead server would not answer at all.
    running: std::sync::atomic::AtomicBool,
    lists: AtomicU64,
    watches: AtomicU64,
    /// Resources (`leases`, `ingresses/status`) answered 403, as RBAC
    /// answers a permission not granted.
    forbidden: Mutex<Vec<String>>,
    /// Answers queued per resource: the next requests for it get these codes.
    failures: Mutex<BTreeMap<String, std::collections::VecDeque<u16>>>,
    /// Requests answered, by (verb, resource).
    requests: Mutex<BTreeMap<(String, String), u64>>,
}

/// A running test API server.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn plural_of(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if lower.ends_with("ss") {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    }
}

impl ApiServer {
    /// Start on a free loopback port.
    pub async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test apiserver");
        let addr = listener.local_addr().unwrap();
        let (events, _) = broadcast::channel(4096);
        let server = ApiServer {
            addr,
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                events,
                epoch: AtomicU64::new(0),
                running: std::sync::atomic::AtomicBool::new(true),
                lists: AtomicU64::new(0),
                watches: AtomicU64::new(0),
                forbidden: Mutex::new(Vec::new()),
                failures: Mutex::default(),
                requests: Mutex::default(),
            }),
            task: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Write a kubeconfig pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"{}\"}}\nusers:\n- name: test\n  user: {{token: test}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test, namespace: default}}\ncurrent-context: test\n",
            self.url()
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// List requests served so far.
    pub fn lists(&self) -> u64 {
        self.shared.lists.load(Ordering::Relaxed)
    }

    /// Watch requests served so far.
    pub fn watches(&self) -> u64 {
        self.shared.watches.load(Ordering::Relaxed)
    }

    /// Create or replace an object (`apiVersion`, `kind`, `metadata.name` and
    /// `metadata.namespace` required). Returns its new resourceVersion. An object
    /// sent without `status` keeps the stored one, as with a status subresource.
    pub fn apply(&self, mut object: Value) -> u64 {
        let api_version = object["apiVersion"]
            .as_str()
            .expect("apiVersion")
            .to_owned();
        let kind = object["kind"].as_str().expect("kind").to_owned();
        let plural = plural_of(&kind);
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_owned();
        let mut st = self.shared.state.lock().unwrap();
        st.kinds.insert(plural.clone(), kind);
        let key = (api_version.clone(), plural.clone(), ns, name);
        if object.get("status").is_none() {
            if let Some(status) = st.objects.get(&key).and_then(|o| o.get("status")).cloned() {
                object["status"] = status;
            }
        }
        put(
            &mut st,
            &self.shared.events,
            key,
            object,
            &api_version,
            &plural,
        )
    }

    /// Delete an object; a no-op if absent.
    pub fn delete(&self, api_version: &str, kind: &str, ns: &str, name: &str) {
        let plural = plural_of(kind);
        let key = (
            api_version.to_owned(),
            plural.clone(),
            ns.to_owned(),
            name.to_owned(),
        );
        let mut st = self.shared.state.lock().unwrap();
        if let Some(mut obj) = st.objects.remove(&key) {
            st.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            let ev = Event {
                rv: st.rv,
                kind: "DELETED",
                api_version: api_version.into(),
                plural,
                object: obj,
            };
            st.history.push(ev.clone());
            let _ = self.shared.events.send(ev);
        }
    }

    /// The stored object, if any.
    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let key = (
            api_version.to_owned(),
            plural_of(kind),
            ns.to_owned(),
            name.to_owned(),
        );
        self.shared.state.lock().unwrap().objects.get(&key).cloned()
    }

    /// Forget the event history: watches resuming from before now get 410 Gone.
    /// Answer every request for `resource` (a plural, or `plural/status`)
    /// with 403 Forbidden, as RBAC does for a permission not granted.
    pub fn forbid(&self, resource: &str) {
        self.shared
            .forbidden
            .lock()
            .unwrap()
            .push(resource.to_owned());
    }

    /// Answer the next requests for `resource` (a plural, or
    /// `plural/status`) with these codes, one each (429 TooManyRequests,
    /// 500 InternalError, 409 Conflict...), then as usual again.
    pub fn fail_next(&self, resource: &str, codes: &[u16]) {
        self.shared
            .failures
            .lock()
            .unwrap()
            .entry(resource.to_owned())
            .or_default()
            .extend(codes);
    }

    /// Requests for `resource` with `verb` (`get`, `list`, `watch`,
    /// `update`, `create`, `patch`, `delete`) so far, failed ones included.
    pub fn requests(&self, verb: &str, resource: &str) -> u64 {
        let key = (verb.to_owned(), resource.to_owned());
        self.shared
            .requests
            .lock()
            .unwrap()
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    /// Grant what [`ApiServer::forbid`] took away.
    pub fn allow(&self, resource: &str) {
        self.shared
            .forbidden
            .lock()
            .unwrap()
            .retain(|r| r != resource);
    }

    pub fn compact(&self) {
        let mut st = self.shared.state.lock().unwrap();
        st.history.clear();
        st.oldest = st.rv + 1;
    }

    /// Drop every connection and stop listening (the API server "dies").
    pub fn stop(&self) {
        self.shared.running.store(false, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listen again on the same port.
    pub async fn restart(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.shared.running.store(true, Ordering::SeqCst);
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in the set: aborting the server ends them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let stream = tokio::select! {
                    Ok((s, _)) = listener.accept() => s,
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                // As Go's net/http does: no Nagle delay on watch events.
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }
}

fn put(
    st: &mut State,
    events: &broadcast::Sender<Event>,
    key: Key,
    mut object: Value,
    api_version: &str,
    plural: &str,
) -> u64 {
    st.rv += 1;
    let rv = st.rv;
    let existed = st.objects.contains_key(&key);
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    if object["metadata"]["uid"].is_null() {
        object["metadata"]["uid"] = json!(format!("uid-{}-{}", key.2, key.3));
    }
    st.objects.insert(key, object.clone());
    let ev = Event {
        rv,
        kind: if existed { "MODIFIED" } else { "ADDED" },
        api_version: api_version.into(),
        plural: plural.into(),
        object,
    };
    st.history.push(ev.clone());
    let _ = events.send(ev);
    rv
}

/// `/_test/stats`: KIngresses and how many are Ready for their generation,
/// and the requests served by "verb resource".
fn stats(shared: &Shared) -> Value {
    let (mut kingresses, mut ready) = (0u64, 0u64);
    {
        let st = shared.state.lock().unwrap();
        for ((_, plural, _, _), obj) in &st.objects {
            if plural != "ingresses" {
                continue;
            }
            kingresses += 1;
            let status = &obj["status"];
            let current = status["observedGeneration"] == obj["metadata"]["generation"];
            let is_ready = status["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if current && is_ready {
                ready += 1;
            }
        }
    }
    let requests: serde_json::Map<String, Value> = shared
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|((verb, resource), n)| (format!("{verb} {resource}"), json!(n)))
        .collect();
    json!({"kingresses": kingresses, "ready": ready, "requests": requests})
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    r
}

fn status(code: u16, reason: &str, message: String) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": message, "metadata": {}})
}

/// A label selector: `k`, `!k`, `k=v`, `k==v`, `k!=v`, comma-separated.
fn matches_selector(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k.trim()].as_str() == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels[k.trim()].is_null()
        } else {
            !labels[term.trim()].is_null()
        }
    })
}

#[derive(Clone)]
struct Target {
    api_version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
    /// `fieldSelector` of a list or watch: `path.to.field=value` terms.
    fields: String,
}

/// Whether `obj` matches a field selector (`type=kubernetes.io/tls`,
/// `metadata.name!=x`): each term's dotted path is read as a string.
fn matches_fields(obj: &Value, selector: &str) -> bool {
    let field = |path: &str| {
        path.trim()
            .split('.')
            .try_fold(obj, |v, k| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            field(k) != v.trim()
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            field(k) == v.trim()
        } else {
            false
        }
    })
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    match rest {
        [plural] => Some(Target {
            api_version,
            plural: plural.to_string(),
            namespace,
            name: None,
            status: false,
            fields: String::new(),
        }),
        [plural, name] => Some(Target {
            api_version,
            plural: plural.to_string(),
            namespace,
            name: Some(name.to_string()),
            status: false,
            fields: String::new(),
        }),
        [plural, name, "status"] => Some(Target {
            api_version,
            plural: plural.to_string(),
            namespace,
            name: Some(name.to_string()),
            status: true,
            fields: String::new(),
        }),
        _ => None,
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if !shared.running.load(Ordering::SeqCst) {
        return Ok(json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &status(
                503,
                "ServiceUnavailable",
                "the API server is stopped".into(),
            ),
        ));
    }
    if req.uri().path() == "/_test/stats" {
        return Ok(json_response(StatusCode::OK, &stats(&shared)));
    }
    let Some(target) = parse_path(req.uri().path()) else {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", format!("no route {}", req.uri().path())),
        ));
    };
    let resource = if target.status {
        format!("{}/status", target.plural)
    } else {
        target.plural.clone()
    };
    let watching = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=1" || kv == "watch=true"));
    let verb = match *req.method() {
        Method::GET if target.name.is_none() && watching => "watch",
        Method::GET if target.name.is_none() => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "use",
    };
    *shared
        .requests
        .lock()
        .unwrap()
        .entry((verb.to_owned(), resource.clone()))
        .or_default() += 1;
    let injected = shared
        .failures
        .lock()
        .unwrap()
        .get_mut(&resource)
        .and_then(|q| q.pop_front());
    if let Some(code) = injected {
        let reason = match code {
            409 => "Conflict",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        };
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(json_response(
            code,
            &status(
                code.as_u16(),
                reason,
                format!("injected {code} for {resource}"),
            ),
        ));
    }
    if shared.forbidden.lock().unwrap().contains(&resource) {
        let message = format!(
            "{resource} is forbidden: User \"system:serviceaccount:test:gateway\" cannot {verb} resource \"{resource}\" in namespace \"{}\"",
            target.namespace.as_deref().unwrap_or_default()
        );
        return Ok(json_response(
            StatusCode::FORBIDDEN,
            &status(403, "Forbidden", message),
        ));
    }
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    match (req.method().clone(), target.name.is_some()) {
        (Method::GET, false)
            if matches!(query.get("watch").map(String::as_str), Some("1" | "true")) =>
        {
            shared.watches.fetch_add(1, Ordering::Relaxed);
            Ok(watch(shared, target, query))
        }
        (Method::GET, false) => {
            shared.lists.fetch_add(1, Ordering::Relaxed);
            Ok(list(&shared, &target, &query))
        }
        (Method::GET, true) => {
            let st = shared.state.lock().unwrap();
            let key = (
                target.api_version,
                target.plural,
                target.namespace.unwrap_or_default(),
                target.name.unwrap(),
            );
            Ok(match st.objects.get(&key) {
                Some(o) => json_response(StatusCode::OK, o),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &status(404, "NotFound", format!("{} not found", key.3)),
                ),
            })
        }
        (Method::PUT, true) | (Method::POST, false) => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok(write(&shared, target, &body))
        }
        _ => Ok(json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(405, "MethodNotAllowed", "not supported".into()),
        )),
    }
}

fn in_scope(target: &Target, api_version: &str, plural: &str, obj: &Value, selector: &str) -> bool {
    api_version == target.api_version
        && plural == target.plural
        && target
            .namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str().unwrap_or("default") == ns)
        && matches_selector(obj, selector)
        && matches_fields(obj, &target.fields)
}

fn list(shared: &Shared, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
    use std::ops::Bound;
    let with_fields;
    let target = match query.get("fieldSelector") {
        Some(f) => {
            with_fields = Target {
                fields: f.clone(),
                ..target.clone()
            };
            &with_fields
        }
        None => target,
    };
    let selector = query.get("labelSelector").map(String::as_str).unwrap_or("");
    let st = shared.state.lock().unwrap();
    // Pages, as a real API server serves them (`limit`, `continue`): the
    // token carries the first page's resourceVersion and the last key sent.
    // Later pages are read from the current state; the list's
    // resourceVersion stays the first page's, so a watch from it replays
    // whatever changed meanwhile. A token older than the history is 410.
    let (snapshot_rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        None => (st.rv, None),
        Some(token) => {
            let mut parts = token.splitn(3, '|');
            let rv = parts.next().and_then(|r| r.parse::<u64>().ok());
            let (Some(rv), Some(ns), Some(name)) = (rv, parts.next(), parts.next()) else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &status(
                        400,
                        "BadRequest",
                        format!("invalid continue token {token:?}"),
                    ),
                );
            };
            if rv < st.oldest {
                return json_response(
                    StatusCode::GONE,
                    &status(410, "Expired", "the continue token is too old".into()),
                );
            }
            (rv, Some((ns.to_owned(), name.to_owned())))
        }
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    // A range read from where the last page ended, as etcd serves a page:
    // a paged list of n objects costs n, not n per page.
    let (av, pl) = (target.api_version.clone(), target.plural.clone());
    let start = match &after {
        Some((ns, name)) => Bound::Excluded((av.clone(), pl.clone(), ns.clone(), name.clone())),
        None => Bound::Included((av.clone(), pl.clone(), String::new(), String::new())),
    };
    let mut matching = st
        .objects
        .range((start, Bound::Unbounded))
        .take_while(|((a, p, _, _), _)| *a == av && *p == pl)
        .filter(|((av, pl, _, _), o)| in_scope(target, av, pl, o, selector));
    let mut items: Vec<&Value> = Vec::new();
    let mut last = None;
    for ((_, _, ns, name), o) in matching.by_ref().take(limit) {
        items.push(o);
        last = Some((ns, name));
    }
    let more = matching.next().is_some();
    let mut metadata = json!({"resourceVersion": snapshot_rv.to_string()});
    if let (true, Some((ns, name))) = (more, last) {
        metadata["continue"] = json!(format!("{snapshot_rv}|{ns}|{name}"));
    }
    let kind = st
        .kinds
        .get(&target.plural)
        .cloned()
        .unwrap_or_else(|| "Object".into());
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": target.api_version, "kind": format!("{kind}List"),
                "metadata": metadata, "items": items}),
    )
}

fn write(shared: &Shared, target: Target, body: &[u8]) -> Response<Body> {
    let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &status(400, "BadRequest", "invalid JSON".into()),
        );
    };
    let mut st = shared.state.lock().unwrap();
    let name = target
        .name
        .clone()
        .or_else(|| obj["metadata"]["name"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let key = (
        target.api_version.clone(),
        target.plural.clone(),
        target.namespace.clone().unwrap_or_default(),
        name.clone(),
    );
    let current = st.objects.get(&key).cloned();
    match (&current, target.name.is_some()) {
        (None, true) => {
            return json_response(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", format!("{name} not found")),
            )
        }
        (Some(_), false) => {
            return json_response(
                StatusCode::CONFLICT,
                &status(409, "AlreadyExists", format!("{name} already exists")),
            )
        }
        _ => {}
    }
    if let Some(cur) = &current {
        let sent = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !sent.is_empty() && Some(sent) != cur["metadata"]["resourceVersion"].as_str() {
            return json_response(
                StatusCode::CONFLICT,
                &status(
                    409,
                    "Conflict",
                    format!("{name}: the object has been modified"),
                ),
            );
        }
        if target.status {
            // A status write changes only status.
            let mut merged = cur.clone();
            merged["status"] = obj["status"].take();
            obj = merged;
        } else {
            obj["status"] = cur["status"].clone();
        }
    }
    if let Some(kind) = obj["kind"].as_str() {
        st.kinds.insert(target.plural.clone(), kind.to_owned());
    }
    put(
        &mut st,
        &shared.events,
        key.clone(),
        obj,
        &target.api_version,
        &target.plural,
    );
    let stored = st.objects.get(&key).cloned().unwrap_or_default();
    json_response(
        if current.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        &stored,
    )
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch(
    shared: Arc<Shared>,
    mut target: Target,
    query: BTreeMap<String, String>,
) -> Response<Body> {
    target.fields = query.get("fieldSelector").cloned().unwrap_or_default();
    let selector = query.get("labelSelector").cloned().unwrap_or_default();
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(290));
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let epoch = shared.epoch.load(Ordering::SeqCst);
    let alive = {
        let shared = shared.clone();
        move || shared.epoch.load(Ordering::SeqCst) == epoch
    };

    // Backlog and subscription under one lock, so no event falls between them.
    let (backlog, mut live, gone, kind) = {
        let st = shared.state.lock().unwrap();
        let gone = from != 0 && from < st.oldest;
        let backlog: Vec<Event> = st.history.iter().filter(|e| e.rv > from).cloned().collect();
        let kind = st
            .kinds
            .get(&target.plural)
            .cloned()
            .unwrap_or_else(|| "Object".into());
        (backlog, shared.events.subscribe(), gone, kind)
    };
    tokio::spawn(async move {
        if gone {
            let st = status(410, "Expired", format!("too old resource version: {from}"));
            let _ = tx.send(event_line("ERROR", &st)).await;
            return;
        }
        let mut last = from;
        for e in backlog {
            last = e.rv;
            if !alive() {
                return;
            }
            if in_scope(&target, &e.api_version, &e.plural, &e.object, &selector)
                && tx.send(event_line(e.kind, &e.object)).await.is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    if !alive() { return; }
                    let bm = json!({"kind": kind, "apiVersion": target.api_version,
                                    "metadata": {"resourceVersion": last.to_string()}});
                    if tx.send(event_line("BOOKMARK", &bm)).await.is_err() { return; }
                }
                ev = live.recv() => match ev {
                    Ok(e) if e.rv <= last => {}
                    // The server "died" since this watch opened: nothing more.
                    Ok(_) if !alive() => return,
                    Ok(e) => {
                        last = e.rv;
                        if in_scope(&target, &e.api_version, &e.plural, &e.object, &selector)
                            && tx.send(event_line(e.kind, &e.object)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Open a raw watch on Routes from `rv` and return the connection.
    async fn open_watch(addr: SocketAddr, rv: u64) -> tokio::net::TcpStream {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /apis/serving.knative.dev/v1/routes?watch=1&resourceVersion={rv} HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        s
    }

    /// Everything the connection delivers within `wait`.
    async fn drain(s: &mut tokio::net::TcpStream, wait: Duration) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// GET `path` and the JSON body of the answer.
    async fn get_json(addr: SocketAddr, path: &str) -> Value {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
        // The body may be chunked: the JSON is between the first `{` and the last `}`.
        let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
        serde_json::from_str(json).unwrap()
    }

    #[tokio::test]
    async fn a_paged_list_returns_every_object_of_its_kind_once_in_order() {
        let api = ApiServer::start().await;
        let cm = |ns: &str, name: &str| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": name, "namespace": ns}})
        };
        let mut want = Vec::new();
        for i in 0..1_050 {
            let (ns, name) = (format!("ns-{}", i % 7), format!("cm-{i:04}"));
            api.apply(cm(&ns, &name));
            want.push(format!("{ns}/{name}"));
        }
        // Objects of other kinds, before and after ConfigMaps in key order.
        api.apply(route("r"));
        api.apply(json!({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": "s", "namespace": "ns-0"}}));
        want.sort();
        let mut got = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = get_json(
                api.addr,
                &format!("/api/v1/configmaps?limit=500&continue={token}"),
            )
            .await;
            pages += 1;
            for item in page["items"].as_array().unwrap() {
                let m = &item["metadata"];
                got.push(format!(
                    "{}/{}",
                    m["namespace"].as_str().unwrap(),
                    m["name"].as_str().unwrap()
                ));
            }
            match page["metadata"]["continue"].as_str() {
                Some(next) => token = next.replace('|', "%7C"),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(got, want);
    }

    fn route(name: &str) -> Value {
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route",
               "metadata": {"name": name, "namespace": "ns"}})
    }

    #[test]
    fn field_selectors_compare_dotted_paths_as_strings() {
        let secret = json!({"type": "kubernetes.io/tls", "metadata": {"name": "a"}});
        assert!(matches_fields(&secret, "type=kubernetes.io/tls"));
        assert!(matches_fields(
            &secret,
            "type==kubernetes.io/tls,metadata.name=a"
        ));
        assert!(matches_fields(&secret, "metadata.name!=b"));
        assert!(!matches_fields(&secret, "type=Opaque"));
        assert!(!matches_fields(
            &json!({"metadata": {}}),
            "type=kubernetes.io/tls"
        ));
        assert!(matches_fields(&secret, ""));
    }

    /// A change made after `stop()` never reaches a watch opened before it:
    /// the client has to relist after `restart()`, as with a real outage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_open_at_stop_delivers_nothing_after_it() {
        let api = ApiServer::start().await;
        let rv = api.apply(route("before"));
        for _ in 0..20 {
            let mut w = open_watch(api.addr, rv).await;
            // The watch is live: a change before the stop arrives.
            api.apply(route("live"));
            assert!(drain(&mut w, Duration::from_millis(200))
                .await
                .contains("\"live\""));
            api.stop();
            api.apply(route("after-stop"));
            let seen = drain(&mut w, Duration::from_millis(200)).await;
            assert!(
                !seen.contains("after-stop"),
                "delivered after stop(): {seen}"
            );
            // Back for the next round.
            api.restart().await;
        }
    }
}
