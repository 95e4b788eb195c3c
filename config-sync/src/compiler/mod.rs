//! The compiler: from the routed objects in the one intermediate form
//! ([`crate::ir`]) to a [`Table`](dataplane::Table). A full build
//! ([`build`]) takes a whole snapshot; a patch ([`update_kingresses`])
//! applies changed KIngresses to the live table. Both claim hosts and
//! assemble the table through the same [`assemble`] step.
//!
//! - [`options`]: the cluster settings a build needs;
//! - [`last_good`]: the last valid version of each routed object;
//! - [`endpoints`]: EndpointSlices indexed by the backends they feed;
//! - [`full`]: validation, lowering and the full build;
//! - [`assemble`]: host claiming, backends and table assembly;
//! - [`patch`]: KIngress changes applied to the live table.

pub mod assemble;
pub mod endpoints;
pub mod full;
pub mod last_good;
pub mod options;
pub mod patch;

pub use endpoints::{index_endpoints, slice_endpoints, slice_keys, EndpointIndex};
pub use full::build;
pub use last_good::LastGood;
pub use options::BuildOptions;
pub use patch::{update_kingresses, KIngressUpdate};
