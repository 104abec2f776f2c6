//! A snapshot of the engine's state: what a long-running service writes down now and then,
//! so that a start loads it instead of replaying every input before it.
//!
//! A snapshot is canonical: the same state gives the same bytes whether or not the engine
//! keeps the requests that ended (`forget_finished`). Only open requests are written, and
//! every ended one as the digest of its id (what refuses a reused id). So a replay that
//! keeps everything (`dibs ledger verify`) can check the snapshots a forgetting service
//! wrote, byte for byte.
//!
//! What the configuration gives (contracts, published offers, and the names and node sizes
//! derived from them) is not in it: a snapshot is restored into an engine that already runs
//! under the configuration it was taken under.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Allocation, Engine, Incident, RequestState, id_digest};
use crate::commitments::CommitmentKey;
use crate::contract::Suspension;
use crate::placement::Fleet;
use crate::settlement::Settler;
use crate::types::WorkloadClass;

/// The engine's state between inputs ([`Engine::snapshot`], [`Engine::restore`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSnapshot {
    /// Open requests, by id.
    requests: Vec<RequestState>,
    /// The digests of the ids of ended requests, sorted.
    ended: Vec<u64>,
    /// Every allocation, with what its API form leaves out (workload, GPU-hours asked).
    allocations: Vec<(Allocation, WorkloadClass, f64)>,
    next_allocation: u64,
    incidents: BTreeMap<String, Incident>,
    suspensions: Vec<Suspension>,
    commitments: Vec<(CommitmentKey, f64, Vec<u64>)>,
    settler: Settler,
    settle_armed: bool,
    live_fleet: BTreeMap<WorkloadClass, Fleet>,
    open_requests: usize,
}

impl Engine {
    /// A copy of the engine's state between inputs, to serialize while the engine goes on.
    pub fn snapshot(&self) -> EngineSnapshot {
        let (open, ended): (Vec<&RequestState>, Vec<&RequestState>) =
            self.requests.values().partition(|state| !state.status.is_final());
        let mut digests: Vec<u64> = self.forgotten.iter().copied().collect();
        digests.extend(ended.iter().map(|state| id_digest(&state.request.id)));
        digests.sort_unstable();
        digests.dedup();
        EngineSnapshot {
            requests: open.into_iter().cloned().collect(),
            ended: digests,
            allocations: self
                .allocations
                .values()
                .map(|a| (a.clone(), a.workload, a.asked_gpu_hours))
                .collect(),
            next_allocation: self.next_allocation,
            incidents: self.incidents.clone(),
            suspensions: self.suspensions.clone(),
            commitments: self
                .commitments
                .figures()
                .into_iter()
                .map(|(key, settled, open)| (key.clone(), settled, open.to_vec()))
                .collect(),
            settler: self.settler.clone(),
            settle_armed: self.settle_armed,
            live_fleet: self.live_fleet.clone(),
            open_requests: self.open_requests,
        }
    }

    /// Puts back the state of a snapshot into an engine that runs under the configuration
    /// it was taken under and has handled no input. Only an engine that forgets ended
    /// requests can take one: the snapshot holds no more of them than their ids' digests.
    pub fn restore(&mut self, snapshot: EngineSnapshot) -> Result<(), String> {
        if !self.config.forget_finished {
            return Err("only an engine that forgets ended requests can start from a snapshot".into());
        }
        if !self.requests.is_empty() || !self.allocations.is_empty() {
            return Err("a snapshot is restored into a fresh engine".into());
        }
        let EngineSnapshot {
            requests,
            ended,
            allocations,
            next_allocation,
            incidents,
            suspensions,
            commitments,
            settler,
            settle_armed,
            live_fleet,
            open_requests,
        } = snapshot;
        if requests.len() != open_requests {
            return Err(format!("{} open requests, the count says {open_requests}", requests.len()));
        }
        self.commitments.restore_figures(commitments)?;
        self.requests = requests.into_iter().map(|state| (state.request.id.clone(), state)).collect();
        self.forgotten = ended.into_iter().collect();
        self.allocations = allocations
            .into_iter()
            .map(|(mut allocation, workload, asked_gpu_hours)| {
                allocation.workload = workload;
                allocation.asked_gpu_hours = asked_gpu_hours;
                (allocation.id, allocation)
            })
            .collect();
        self.next_allocation = next_allocation;
        self.incidents = incidents;
        self.suspensions = suspensions;
        self.settler = settler;
        self.settle_armed = settle_armed;
        self.live_fleet = live_fleet;
        self.open_requests = open_requests;
        Ok(())
    }
}
