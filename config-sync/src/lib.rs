//! config-sync: turns Knative Routes and revision EndpointSlices into the
//! gateway's routing table and hands each new table to it.
//!
//! - [`model`]: the objects, decoded one at a time;
//! - [`build`]: the pure table builder; [`table`]: what it builds;
//! - [`select`]: per-request picks over the table;
//! - [`publish`]: the `source → table → swap` seam;
//! - [`sources`]: where objects come from.

pub mod affinity;
pub mod build;
pub mod error;
pub mod health;
pub mod host;
pub mod ir;
pub mod kingress;
pub mod leader;
pub mod model;
pub mod publish;
pub mod resolve;
pub mod responses;
pub mod select;
pub mod sources;
pub mod status;
pub mod synth;
pub mod table;
pub mod tls;
pub mod trust;

pub use build::{build, BuildOptions, LastGood};
pub use error::{ObjectError, Outcome, Rejection, SourceError};
pub use model::{ObjectKey, Snapshot};
pub use publish::{Publisher, TableReader};
pub use table::Table;
