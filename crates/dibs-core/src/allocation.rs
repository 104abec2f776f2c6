//! An allocation: one provider's part of an award, from reserved to released. A leaf: the
//! engine, settlement and the commitment books all read it, and it reads none of them.
//!
//! Its state carries the instants that state has: a reserved allocation has none, a held one
//! when it was delivered, an active one its run (billed from, ready at, due to end at), an
//! ended one its run (if it had started) and when it ended. No state can hold an instant it
//! does not have.
//!
//! A request's parts start together: a part delivered before the others is **held** until
//! the last is ready, and its nodes bill while held when its provider bills from delivery.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::placement::PlannedAllocation;
use crate::types::{Timestamp, WorkloadClass};

/// Every allocation, by id (ids only grow).
pub type Allocations = BTreeMap<u64, Allocation>;

/// When an allocation's capacity ran: from `ready_at` (its request's start, if later than
/// delivery) for its hours, until `ends_at`; billed from `billed_from` (its delivery, when
/// it was held for the request's other parts and bills from delivery; else `ready_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub billed_from: Timestamp,
    pub ready_at: Timestamp,
    pub ends_at: Timestamp,
}

impl Run {
    /// A run billed from its start.
    pub fn from_start(ready_at: Timestamp, ends_at: Timestamp) -> Self {
        Self { billed_from: ready_at, ready_at, ends_at }
    }

    /// Hours billed before its hours started: held, idle.
    pub fn held_hours(&self) -> f64 {
        self.ready_at.hours_since(self.billed_from).max(0.0)
    }
}

/// Where an allocation stands, with the instants of that state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocationState {
    /// Awarded; its nodes are not ready yet.
    Reserved,
    /// Delivered and waiting for the request's other parts; billed from `billed_from` if
    /// its provider bills from delivery (`None`: it bills from the start).
    Held { delivered_at: Timestamp, billed_from: Option<Timestamp> },
    /// Ready and running its hours.
    Active(Run),
    /// It ran its hours and the provider has its nodes back.
    Released { run: Run, ended_at: Timestamp },
    /// Cancelled by spillover, failover or the buyer at `ended_at`, before it was ready
    /// (`run: None`) or while it ran.
    Cancelled { run: Option<Run>, ended_at: Timestamp },
}

/// An allocation's state without its instants: what is compared, counted and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Reserved,
    Held,
    Active,
    Released,
    Cancelled,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Held => "held",
            Self::Active => "active",
            Self::Released => "released",
            Self::Cancelled => "cancelled",
        }
    }
}

impl AllocationState {
    pub fn stage(&self) -> Stage {
        match self {
            Self::Reserved => Stage::Reserved,
            Self::Held { .. } => Stage::Held,
            Self::Active(_) => Stage::Active,
            Self::Released { .. } => Stage::Released,
            Self::Cancelled { .. } => Stage::Cancelled,
        }
    }

    /// Reserved, held or active: it holds capacity (the fleet, caps and failover count it).
    pub fn is_live(&self) -> bool {
        matches!(self, Self::Reserved | Self::Held { .. } | Self::Active(_))
    }

    /// Its run, if it started.
    pub fn run(&self) -> Option<Run> {
        match *self {
            Self::Reserved | Self::Held { .. } => None,
            Self::Active(run) | Self::Released { run, .. } => Some(run),
            Self::Cancelled { run, .. } => run,
        }
    }

    /// Its run when it is cancelled at `at`: the one it had, or, for a part held and billed
    /// since delivery, a run of no hours that billed its held ones.
    pub fn ended_run(&self, at: Timestamp) -> Option<Run> {
        match *self {
            Self::Held { billed_from: Some(billed_from), .. } => {
                Some(Run { billed_from, ready_at: at.max(billed_from), ends_at: at.max(billed_from) })
            }
            _ => self.run(),
        }
    }

    /// When it ended (released or cancelled), if it has.
    pub fn ended_at(&self) -> Option<Timestamp> {
        match *self {
            Self::Reserved | Self::Held { .. } | Self::Active(_) => None,
            Self::Released { ended_at, .. } | Self::Cancelled { ended_at, .. } => Some(ended_at),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "StoredAllocation", from = "StoredAllocation")]
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
    pub state: AllocationState,
    /// The workload class of its request: the fleet and the commitment books count by it,
    /// also after the request has ended.
    pub workload: WorkloadClass,
    /// The GPU-hours its request asked for: no request bills more (see `settlement`).
    pub asked_gpu_hours: f64,
}

impl Allocation {
    /// When its hours started (or start), if they did.
    pub fn ready_at(&self) -> Option<Timestamp> {
        self.state.run().map(|run| run.ready_at)
    }

    /// When its provider delivered it: held since then, or its run's start.
    pub fn delivered_at(&self) -> Option<Timestamp> {
        match self.state {
            AllocationState::Held { delivered_at, .. } => Some(delivered_at),
            _ => self.ready_at(),
        }
    }

    /// When it starts billing, if it has: from delivery while held (if it bills from
    /// delivery), else from its run's `billed_from`.
    pub fn billed_from(&self) -> Option<Timestamp> {
        match self.state {
            AllocationState::Held { billed_from, .. } => billed_from,
            _ => self.state.run().map(|run| run.billed_from),
        }
    }

    /// When it is (or was) due to end: ready time plus its hours.
    pub fn ends_at(&self) -> Option<Timestamp> {
        self.state.run().map(|run| run.ends_at)
    }

    /// When it actually ended: released, or cancelled by spillover, failover or the buyer.
    pub fn ended_at(&self) -> Option<Timestamp> {
        self.state.ended_at()
    }
}

/// An allocation as snapshots have always written it: its instants as optional fields
/// beside a state name (the bytes are hashed into the ledger). The workload class and the
/// GPU-hours asked are written beside it by the snapshot, so they are not here.
#[derive(Serialize, Deserialize)]
struct StoredAllocation {
    id: u64,
    request: String,
    round: u32,
    via: String,
    plan: PlannedAllocation,
    hours: u32,
    awarded_at: Timestamp,
    promised: Timestamp,
    ready_at: Option<Timestamp>,
    ends_at: Option<Timestamp>,
    ended_at: Option<Timestamp>,
    /// When it was delivered, if it was held before its run (written only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delivered_at: Option<Timestamp>,
    /// When it started billing, if before its run (held hours billed; written only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    billed_from: Option<Timestamp>,
    state: Stage,
    #[serde(skip, default = "placeholder_workload")]
    workload: WorkloadClass,
    #[serde(skip)]
    asked_gpu_hours: f64,
}

impl From<Allocation> for StoredAllocation {
    fn from(a: Allocation) -> Self {
        let run = a.state.run();
        let (delivered_at, billed_from) = match a.state {
            AllocationState::Held { delivered_at, billed_from } => (Some(delivered_at), billed_from),
            _ => (None, run.map(|r| r.billed_from).filter(|b| run.is_some_and(|r| r.ready_at != *b))),
        };
        Self {
            delivered_at,
            billed_from,
            ready_at: run.map(|r| r.ready_at),
            ends_at: run.map(|r| r.ends_at),
            ended_at: a.state.ended_at(),
            state: a.state.stage(),
            id: a.id,
            request: a.request,
            round: a.round,
            via: a.via,
            plan: a.plan,
            hours: a.hours,
            awarded_at: a.awarded_at,
            promised: a.promised,
            workload: a.workload,
            asked_gpu_hours: a.asked_gpu_hours,
        }
    }
}

impl From<StoredAllocation> for Allocation {
    fn from(s: StoredAllocation) -> Self {
        let run = s.ready_at.map(|ready_at| Run {
            billed_from: s.billed_from.unwrap_or(ready_at),
            ready_at,
            ends_at: s.ends_at.unwrap_or_else(|| ready_at.plus_hours(f64::from(s.hours))),
        });
        // A stored state missing an instant it needs takes the one it implies: a snapshot
        // written by this code always has them (its digest is checked before it is read).
        let ended_at = s.ended_at.unwrap_or(s.awarded_at);
        let state = match (s.state, run) {
            (Stage::Reserved, _) => AllocationState::Reserved,
            (Stage::Held, _) => AllocationState::Held {
                delivered_at: s.delivered_at.unwrap_or(s.awarded_at),
                billed_from: s.billed_from,
            },
            (Stage::Active, Some(run)) => AllocationState::Active(run),
            (Stage::Active, None) => AllocationState::Reserved,
            (Stage::Released, Some(run)) => AllocationState::Released { run, ended_at },
            (Stage::Released, None) | (Stage::Cancelled, _) => AllocationState::Cancelled { run, ended_at },
        };
        Self {
            id: s.id,
            request: s.request,
            round: s.round,
            via: s.via,
            plan: s.plan,
            hours: s.hours,
            awarded_at: s.awarded_at,
            promised: s.promised,
            state,
            workload: s.workload,
            asked_gpu_hours: s.asked_gpu_hours,
        }
    }
}

/// What a deserialized allocation holds until its stored workload class is put back.
fn placeholder_workload() -> WorkloadClass {
    WorkloadClass::Training
}
