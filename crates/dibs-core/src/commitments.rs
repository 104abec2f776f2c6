//! Commitment burn-down: the one formula, used by screening (the credit the optimizer gives a
//! committed provider) and by settlement (what the buyer has burned and will owe).
//!
//! For a commitment to spend `amount` with `provider` over `[period_start, period_end)`,
//! counting the workload classes in `counts` (all when empty), as of an instant `at`:
//!
//! * **burned** = the spend of the provider's counted allocations billed within the period up
//!   to `at`: each allocation bills its whole nodes at their all-in price
//!   (`PlannedAllocation::spend_per_hour`) from when it started billing (delivery, for a part
//!   held for its request's other parts) until it ended, or its awarded hours ran out, or
//!   `at`; that interval is cut at the period's boundaries, so spend before the
//!   period started or after it ended never counts.
//! * **projected** = what the live allocations (reserved, held or active) will still bill
//!   within the period: an active one until its end, a held one for its hours from now, a
//!   reserved one for its hours from its promised ready time; all cut at the period's end.
//! * **projected shortfall** = `max(0, amount - burned - projected)`: what the buyer will owe for
//!   capacity it did not use if nothing changes. Spend inside it costs the buyer nothing extra.
//!
//! Keeping this cheap on the millionth request: each commitment has a book of the settled
//! burn (allocations that ended, folded in once) and the ids of the open (not yet ended)
//! allocations that can count toward it; screening walks only the provider's open ones.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::allocation::{Allocation, AllocationState};
use crate::contract::{Commitment, ContractSet};
use crate::types::{ProviderName, Timestamp, WorkloadClass};

/// Identifies a commitment: the contract, version and clause it is written in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommitmentKey {
    pub contract: String,
    pub version: String,
    pub clause: String,
}

/// A commitment's burn-down as of an instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitmentStatus {
    pub contract: String,
    pub clause: String,
    pub provider: ProviderName,
    pub amount: f64,
    pub burned: f64,
    pub projected: f64,
    pub projected_shortfall: f64,
}

/// The spend of `allocation` billed within `[from, to)` as of `at`.
pub fn billed_within(allocation: &Allocation, from: Timestamp, to: Timestamp, at: Timestamp) -> f64 {
    let Some(billed_from) = allocation.billed_from() else { return 0.0 };
    let awarded_end = match allocation.state.run() {
        Some(run) => run.ready_at.plus_hours(f64::from(allocation.hours)),
        // Held: billing, its hours not yet started.
        None => at,
    };
    let end = allocation.ended_at().unwrap_or(awarded_end).min(awarded_end).min(at).min(to);
    let start = billed_from.max(from);
    if end <= start { 0.0 } else { end.hours_since(start) * allocation.plan.spend_per_hour() }
}

/// What a live allocation will still bill within `[from, to)` after `at`.
pub fn projected_within(allocation: &Allocation, from: Timestamp, to: Timestamp, at: Timestamp) -> f64 {
    let (start, end) = match allocation.state {
        AllocationState::Active(run) => (run.ready_at, run.ready_at.plus_hours(f64::from(allocation.hours))),
        AllocationState::Reserved => {
            (allocation.promised, allocation.promised.plus_hours(f64::from(allocation.hours)))
        }
        AllocationState::Held { .. } => (at, at.plus_hours(f64::from(allocation.hours))),
        AllocationState::Released { .. } | AllocationState::Cancelled { .. } => return 0.0,
    };
    let start = start.max(at).max(from);
    let end = end.min(to);
    if end <= start { 0.0 } else { end.hours_since(start) * allocation.plan.spend_per_hour() }
}

/// One commitment's terms and book.
#[derive(Debug, Clone)]
struct Book {
    commitment: Commitment,
    /// Burn of allocations that ended, folded in once.
    settled: f64,
    /// Allocations not yet ended that count toward it, by id.
    open: Vec<u64>,
}

impl Book {
    fn counts(&self, allocation: &Allocation, class: WorkloadClass) -> bool {
        let c = &self.commitment;
        allocation.plan.provider == c.provider && (c.counts.is_empty() || c.counts.contains(&class))
    }
}

/// Every commitment of a contract set, with its book.
#[derive(Debug, Clone, Default)]
pub struct CommitmentBooks {
    books: BTreeMap<CommitmentKey, Book>,
}

fn ended(allocation: &Allocation) -> bool {
    !allocation.state.is_live()
}

impl CommitmentBooks {
    /// Books for every commitment clause of `contracts` (every version), filled from the
    /// allocations so far (when contracts are loaded into a running engine).
    pub fn new<'a>(
        contracts: &ContractSet,
        allocations: impl Iterator<Item = (&'a Allocation, WorkloadClass)> + Clone,
    ) -> Self {
        let mut books = BTreeMap::new();
        for contract in &contracts.contracts {
            for version in &contract.versions {
                for clause in &version.clauses {
                    let crate::contract::ClauseKind::Commitment(commitment) = &clause.kind else { continue };
                    let key = CommitmentKey {
                        contract: contract.id.clone(),
                        version: version.id.clone(),
                        clause: clause.name.clone(),
                    };
                    books
                        .insert(key, Book { commitment: commitment.clone(), settled: 0.0, open: Vec::new() });
                }
            }
        }
        let mut this = Self { books };
        for (allocation, class) in allocations {
            this.awarded(allocation, class);
            if ended(allocation) {
                this.ended(allocation, class);
            }
        }
        this
    }

    /// Each book's running figures, for a snapshot: its key, the burn of ended allocations
    /// folded in, and the allocations still open in it.
    pub fn figures(&self) -> Vec<(&CommitmentKey, f64, &[u64])> {
        self.books.iter().map(|(key, book)| (key, book.settled, book.open.as_slice())).collect()
    }

    /// Puts back figures [`CommitmentBooks::figures`] gave, into books made for the same
    /// contracts. A book these do not have, or one left without figures, is an error.
    pub fn restore_figures(&mut self, figures: Vec<(CommitmentKey, f64, Vec<u64>)>) -> Result<(), String> {
        if figures.len() != self.books.len() {
            return Err(format!(
                "{} commitment books, the contracts have {}",
                figures.len(),
                self.books.len()
            ));
        }
        for (key, settled, open) in figures {
            let book = self.books.get_mut(&key).ok_or_else(|| {
                format!(
                    "a book for {}/{}/{}, which the contracts do not have",
                    key.contract, key.version, key.clause
                )
            })?;
            book.settled = settled;
            book.open = open;
        }
        Ok(())
    }

    /// A new allocation opens in the books it counts toward.
    pub fn awarded(&mut self, allocation: &Allocation, class: WorkloadClass) {
        for book in self.books.values_mut() {
            if book.counts(allocation, class) {
                book.open.push(allocation.id);
            }
        }
    }

    /// An allocation that ended (released, or cancelled by spillover, failover or the buyer)
    /// folds its final in-period spend into the books it counted toward.
    pub fn ended(&mut self, allocation: &Allocation, class: WorkloadClass) {
        for book in self.books.values_mut() {
            if !book.counts(allocation, class) {
                continue;
            }
            if let Some(position) = book.open.iter().position(|id| *id == allocation.id) {
                book.open.swap_remove(position);
                let c = &book.commitment;
                // An ended allocation bills nothing after its end, whatever `at` is.
                book.settled +=
                    billed_within(allocation, c.period_start, c.period_end, Timestamp::from_unix(i64::MAX));
            }
        }
    }

    /// The status of one commitment as of `at`.
    pub fn status(
        &self,
        key: &CommitmentKey,
        allocations: &BTreeMap<u64, Allocation>,
        at: Timestamp,
    ) -> Option<CommitmentStatus> {
        let book = self.books.get(key)?;
        let c = &book.commitment;
        let (mut burned, mut projected) = (book.settled, 0.0);
        for id in &book.open {
            let Some(allocation) = allocations.get(id) else { continue };
            burned += billed_within(allocation, c.period_start, c.period_end, at);
            projected += projected_within(allocation, c.period_start, c.period_end, at);
        }
        Some(CommitmentStatus {
            contract: key.contract.clone(),
            clause: key.clause.clone(),
            provider: c.provider.clone(),
            amount: c.amount,
            burned,
            projected,
            projected_shortfall: (c.amount - burned - projected).max(0.0),
        })
    }
}
