//! config-sync: the control plane. It turns what Knative writes (Routes'
//! status, or KIngresses with their Services) and EndpointSlices into the
//! gateway's routing table ([`dataplane::Table`]) and hands each new table to
//! it; with a cluster, it also reports KIngress status.
//!
//! The config flow, in order:
//! - [`sources`]: where objects come from (a snapshot file, an API server);
//! - [`model`]: the objects, decoded one at a time;
//! - [`lower`]: each kind of routed object into the one intermediate form
//!   ([`ir`]), with [`tls`] and [`trust`] for certificates in and out;
//! - [`compiler`]: the intermediate form into a table, in full or as a patch;
//! - [`change`]: what a source changed, typed, and what it holds;
//! - [`publish`]: the `source → table → swap` seam, and the one place that
//!   chooses a full build, a patch or an endpoint swap for a change;
//! - [`status`]: probing the gateway's replicas and marking KIngresses Ready
//!   ([`served`], [`leader`]).

pub mod change;
pub mod compiler;
pub mod error;
pub mod ir;
pub mod leader;
pub mod lower;
pub mod model;
pub mod publish;
pub mod served;
pub mod sources;
pub mod status;
pub mod synth;
pub mod tls;
pub mod trust;

pub use compiler::{build, BuildOptions, LastGood};
pub use dataplane::table::Table;
pub use error::{ObjectError, Outcome, Rejection, SourceError};
pub use model::{ObjectKey, Snapshot};
pub use publish::{Publisher, TableReader};
