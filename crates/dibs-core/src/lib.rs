//! dibs-core: the deterministic, I/O-free heart of dibs.
//!
//! `state + input(now) -> new state + effects`. Nothing in this crate reads a
//! clock, a socket, a file handle it did not get from the caller, or a random
//! source; time arrives in inputs and effects leave as data.

pub mod accelerators;
pub mod allocation;
pub mod catalog;
pub mod commitments;
pub mod contract;
pub mod engine;
pub mod ledger;
pub mod names;
mod pairs;
pub mod placement;
pub mod queue;
pub mod request;
pub mod settlement;
pub mod types;
