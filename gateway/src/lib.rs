//! The gateway: a pingora proxy in front of Knative revisions.
//!
//! What a request means is in [`exchange`], written once for both request
//! paths ([`fast`] and [`proxy`]); the table it reads comes from
//! `config_sync`. [`server`] assembles the services, [`demo`] runs a
//! self-contained cluster stand-in on loopback.

pub mod access_log;
pub mod activator;
pub mod admin;
pub mod alloc;
pub(crate) mod answer;
pub mod authz;
pub mod cli;
pub mod demo;
pub mod drain;
pub mod exchange;
pub mod external;
pub mod fast;
pub mod forwarded;
pub mod limits;
pub mod metrics;
pub mod otlp;
pub mod proxy;
pub mod proxy_protocol;
pub mod serve;
pub mod server;
pub mod server_header;
pub mod tls;
pub mod trace_context;
pub mod ui;
