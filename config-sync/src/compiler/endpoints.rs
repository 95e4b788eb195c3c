//! EndpointSlices indexed by the keys of the backends they feed (a
//! revision's, a Service's), owning their data so the slices can be freed
//! before the table is filled.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use dataplane::endpoints::{self, SliceEndpoints};

use crate::error::{ObjectError, Outcome, Rejection};
use crate::model::{
    self, EndpointSlice, Kind, REVISION_LABEL, SERVICE_NAME_LABEL, SERVICE_TYPE_LABEL,
};

/// The endpoint index keys a slice feeds: its revision's (a private revision
/// slice) and its Service's (`kubernetes.io/service-name`).
pub fn slice_keys(slice: &EndpointSlice) -> Vec<String> {
    let mut keys = Vec::with_capacity(2);
    each_slice_key(slice, &mut String::new(), |k| keys.push(k.to_owned()));
    keys
}

/// [`slice_keys`], each written into `buf` in turn: no allocation per key.
pub(crate) fn each_slice_key(slice: &EndpointSlice, buf: &mut String, mut f: impl FnMut(&str)) {
    let meta = &slice.metadata;
    let ns = meta.namespace.as_deref().unwrap_or("default");
    if let (Some(rev), Some("Private")) =
        (meta.label(REVISION_LABEL), meta.label(SERVICE_TYPE_LABEL))
    {
        f(endpoints::write_key(buf, true, ns, rev));
    }
    if let Some(svc) = meta.label(SERVICE_NAME_LABEL) {
        f(endpoints::write_key(buf, false, ns, svc));
    }
}

/// Whether a slice is a revision's private slice.
fn is_private_revision(slice: &EndpointSlice) -> bool {
    let meta = &slice.metadata;
    meta.label(REVISION_LABEL).is_some() && meta.label(SERVICE_TYPE_LABEL) == Some("Private")
}

/// The port named `http` (queue-proxy's), or else `http2` (a revision that
/// speaks h2c), if the slice has a valid one.
pub fn http_port(slice: &EndpointSlice) -> Option<u16> {
    let named = |want: &str| {
        slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(want))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p > 0)
    };
    named("http").or_else(|| named(endpoints::HTTP2_PORT))
}

/// The first address of every ready endpoint, on `port`. An address that is not
/// an IP is skipped and reported in `rejected`.
pub fn ready_addresses(
    slice: &EndpointSlice,
    port: u16,
    rejected: &mut Vec<Rejection>,
) -> Vec<SocketAddr> {
    ready_ips(slice, rejected)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

fn ready_ips(slice: &EndpointSlice, rejected: &mut Vec<Rejection>) -> Vec<IpAddr> {
    let mut addrs = Vec::new();
    for (index, ep) in slice.endpoints.iter().flatten().enumerate() {
        if !ep.is_ready() {
            continue;
        }
        let Some(first) = ep.addresses.first() else {
            continue;
        };
        match first.parse::<IpAddr>() {
            Ok(ip) => addrs.push(ip),
            Err(_) => rejected.push(Rejection {
                kind: Kind::EndpointSlice,
                object: model::key(&slice.metadata),
                error: ObjectError::BadAddress {
                    index,
                    address: first.clone(),
                },
                outcome: Outcome::PartlyServed,
            }),
        }
    }
    addrs
}

/// The endpoint index keys of one slice and what it contributes to them.
/// `Ok(None)` for a slice that feeds no key (not a revision's or a Service's).
/// Bad endpoints are skipped and reported in `rejected`.
pub fn slice_endpoints(
    slice: &EndpointSlice,
    rejected: &mut Vec<Rejection>,
) -> Result<Option<(Vec<String>, SliceEndpoints)>, ObjectError> {
    let keys = slice_keys(slice);
    if keys.is_empty() {
        return Ok(None);
    }
    let found = contribution(slice, rejected, &mut |name| name.into())?;
    Ok(Some((keys, found)))
}

/// What a slice that feeds some key contributes; `port_name` makes the shared
/// form of a port name.
fn contribution(
    slice: &EndpointSlice,
    rejected: &mut Vec<Rejection>,
    port_name: &mut dyn FnMut(&str) -> Arc<str>,
) -> Result<SliceEndpoints, ObjectError> {
    match slice.address_type.as_deref() {
        Some("IPv4") | Some("IPv6") | None => {}
        Some(other) => return Err(ObjectError::AddressType(other.into())),
    }
    if is_private_revision(slice) && http_port(slice).is_none() {
        return Err(ObjectError::NoHttpPort);
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let number = u16::try_from(p.port?).ok().filter(|&n| n > 0)?;
            Some((port_name(p.name.as_deref().unwrap_or_default()), number))
        })
        .collect();
    Ok(SliceEndpoints {
        ports,
        addrs: ready_ips(slice, rejected),
    })
}

/// Hash map with the fast hasher used throughout the build.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What each endpoint index key's slices contribute.
pub type EndpointIndex = FastMap<Box<str>, Vec<SliceEndpoints>>;

/// Index every slice by the keys it feeds. The index owns its data, so the
/// slices can be freed before the table is filled.
pub fn index_endpoints(slices: &[EndpointSlice], rejected: &mut Vec<Rejection>) -> EndpointIndex {
    let mut index = EndpointIndex::with_capacity_and_hasher(slices.len(), Default::default());
    // Port names repeat across slices (`http`, `http2`, ...): one copy each.
    let mut names: FastMap<Box<str>, Arc<str>> = FastMap::default();
    let mut port_name = |name: &str| match names.get(name) {
        Some(shared) => shared.clone(),
        None => {
            let shared: Arc<str> = name.into();
            names.insert(name.into(), shared.clone());
            shared
        }
    };
    let mut buf = String::new();
    let mut keys: Vec<Box<str>> = Vec::with_capacity(2);
    for slice in slices {
        keys.clear();
        each_slice_key(slice, &mut buf, |k| keys.push(k.into()));
        if keys.is_empty() {
            continue;
        }
        match contribution(slice, rejected, &mut port_name) {
            Ok(found) => {
                let last = keys.pop().expect("checked not empty");
                for key in keys.drain(..) {
                    index.entry(key).or_default().push(found.clone());
                }
                index.entry(last).or_default().push(found);
            }
            Err(error) => rejected.push(Rejection::new(
                Kind::EndpointSlice,
                model::key(&slice.metadata),
                error,
            )),
        }
    }
    index
}
