//! Where Routes and EndpointSlices come from. Each source ends in
//! [`crate::Publisher::publish`].

pub mod file;
pub mod kube;
mod store;
