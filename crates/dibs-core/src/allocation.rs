//! An allocation: one provider's part of an award, from reserved to released. A leaf: the
//! engine, settlement and the commitment books all read it, and it reads none of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::placement::PlannedAllocation;
use crate::types::{Timestamp, WorkloadClass};

/// Every allocation, by id (ids only grow).
pub type Allocations = BTreeMap<u64, Allocation>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationState {
    Reserved,
    Active,
    Released,
    /// Cancelled by spillover, failover or the buyer.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub id: u64,
    pub request: String,
    pub round: u32,
    /// `first_refusal` or `market`.
    pub via: String,
    pub plan: PlannedAllocation,
    pub hours: u32,
    pub awarded_at: Timestamp,
    pub promised: Timestamp,
    pub ready_at: Option<Timestamp>,
    /// When it is due to end: ready time plus `hours`.
    pub ends_at: Option<Timestamp>,
    /// When it actually ended: released, or cancelled by spillover, failover or the buyer.
    pub ended_at: Option<Timestamp>,
    pub state: AllocationState,
    /// The workload class of its request: the fleet and the commitment books count by it,
    /// also after the request has ended.
    #[serde(skip, default = "placeholder_workload")]
    pub workload: WorkloadClass,
    /// The GPU-hours its request asked for: no request bills more (see `settlement`).
    #[serde(skip)]
    pub asked_gpu_hours: f64,
}

/// What a deserialized allocation holds until its stored workload class is put back.
pub(crate) fn placeholder_workload() -> WorkloadClass {
    WorkloadClass::Training
}
