//! dataplane: the routing table the gateway reads once per request, and the
//! per-request decisions over it. Plain data and plain functions: no
//! Kubernetes type and no I/O; config-sync builds the table, the gateway's
//! request path reads it.
//!
//! - [`table`]: hosts, routes, splits, backends and their endpoints;
//! - [`resolve`]: a request's host, path and headers to a backend;
//! - [`select`]: a revision by weight or cookie, an endpoint by load;
//! - [`health`]: passive endpoint health and ejection;
//! - [`host`]: Host header normalisation;
//! - [`responses`]: per route and revision response counts and latency;
//! - [`affinity`]: sticky canaries' cookies;
//! - [`certs`] and [`trust`]: TLS in (certificates by SNI) and out
//!   (Knative's system-internal TLS to backends);
//! - [`endpoints`], [`key`], [`rejection`]: what the table is built from and
//!   what was left out.

pub mod affinity;
pub mod certs;
pub mod endpoints;
pub mod health;
pub mod host;
pub mod key;
pub mod rejection;
pub mod resolve;
pub mod responses;
pub mod select;
pub mod split;
pub mod table;
pub mod trust;

pub use key::{Kind, ObjectKey};
pub use table::Table;
