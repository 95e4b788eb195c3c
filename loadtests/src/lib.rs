//! The load-test harness: hyper backends, a closed-loop load generator, the
//! gateway and its peers (nginx, HAProxy, Envoy) as processes on loopback,
//! the scenarios, the malformed-request cases, and the report.

pub mod activator;
pub mod authz;
pub mod backend;
pub mod callgrind;
pub mod handshakes;
pub mod hostile;
pub mod load;
pub mod peers;
pub mod procstat;
pub mod report;
pub mod scenarios;
pub mod topology;
