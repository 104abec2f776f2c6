//! Settlement: what the allocations cost, how commitments burn down, what
//! revenue share is owed, and which review triggers fire.
//!
//! The engine settles itself: a settlement tick is one of its timers, revenue reports and
//! declared events are inputs, and [`Settler`] (the engine's books between ticks) turns them
//! into a [`Settlement`] that the engine records in the ledger and acts on (a trigger's
//! suspension takes effect in the engine's own state). Both shells, the simulator and the
//! live service, get the same settlement because they run the same engine.
//!
//! * **Accrual.** An allocation bills its whole nodes at their all-in price
//!   (`PlannedAllocation::spend_per_hour`) per hour from the moment it was
//!   ready until it ended (released or cancelled), or until the "as of"
//!   instant, and never past its contracted hours. A part held for its request's other
//!   parts bills from delivery too, when its provider bills from delivery: its held hours
//!   come before its contracted hours. An allocation that was never delivered bills
//!   nothing. GPU-hours billed count every GPU of the nodes,
//!   over-bought ones included; the invariant that no request is billed more
//!   than it asked for counts the GPUs it carries for the request.
//! * **Commitments.** The one formula is in [`crate::commitments`]: burned within the
//!   period (accruals cut at its boundaries, counted classes only), projected (what live
//!   allocations will still bill in it), projected shortfall. Screening uses the same books.
//! * **Revenue share.** The caller supplies revenue per calendar month
//!   (`RevenueSeries`); each `revenue_share` clause in force owes
//!   `rate × revenue` for the months it was in force.
//! * **Review triggers.** Conditions are evaluated on [`Metrics`] built from
//!   the accruals and the revenue: `cumulative_spend`, `cumulative_revenue`,
//!   `cumulative_profit`, `gpus_active`, `days_elapsed`, plus declared
//!   events. A trigger fires once; a `suspend_clauses` action returns the
//!   suspensions for the engine to apply.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::allocation::{Allocation, Allocations};
use crate::commitments::CommitmentStatus;
use crate::contract::{ContractSet, Metrics, Suspension, TriggerAction};
use crate::types::{ProviderName, Timestamp, WorkloadClass};

/// Hours an allocation has billed as of `at`: its held hours, then its run's.
pub fn billed_hours(allocation: &Allocation, at: Timestamp) -> f64 {
    let Some(from) = allocation.billed_from() else { return 0.0 };
    let end = allocation.ended_at().unwrap_or(at).min(at);
    end.hours_since(from).clamp(0.0, most_hours(allocation))
}

/// The most hours an allocation can bill: its contracted hours, and those it was held
/// (unbounded until its run starts: reserved or held), none if it ended without a run.
fn most_hours(allocation: &Allocation) -> f64 {
    match allocation.state.run() {
        Some(run) => run.held_hours() + f64::from(allocation.hours),
        None if allocation.ended_at().is_some() => 0.0,
        None => f64::INFINITY,
    }
}

/// Hours of its run an allocation has billed as of `at`: what it carried for its request
/// (held hours carry nothing), at most its contracted hours.
pub fn run_hours(allocation: &Allocation, at: Timestamp) -> f64 {
    let Some(ready) = allocation.ready_at() else { return 0.0 };
    let end = allocation.ended_at().unwrap_or(at).min(at);
    end.hours_since(ready).clamp(0.0, f64::from(allocation.hours))
}

/// Spend accrued as of an instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Accruals {
    pub at: Option<Timestamp>,
    pub spend: BTreeMap<ProviderName, f64>,
    pub gpu_hours: BTreeMap<ProviderName, f64>,
    /// Per provider and workload class, for commitments that count only some classes.
    #[serde(with = "crate::pairs")]
    pub spend_by_class: BTreeMap<(ProviderName, WorkloadClass), f64>,
    /// GPU-hours per workload class (revenue is earned on inference and api hours).
    pub gpu_hours_by_class: BTreeMap<WorkloadClass, f64>,
    /// Spend per hour of the allocations running at `at`, per provider.
    pub spend_rate: BTreeMap<ProviderName, f64>,
    /// GPUs running at `at`, per provider.
    pub gpus_active_by_provider: BTreeMap<ProviderName, u64>,
    pub gpus_active: u64,
}

impl Accruals {
    pub fn total_spend(&self) -> f64 {
        // `+ 0.0`: the sum of nothing is -0.0, which prints as "-0".
        self.spend.values().sum::<f64>() + 0.0
    }

    /// Adds what one allocation has billed as of `at`; `running` also counts
    /// it in the spend rate and the active GPUs.
    fn add(&mut self, allocation: &Allocation, class: WorkloadClass, hours: f64, running: bool) {
        // Billed: whole nodes, over-bought GPUs included.
        let bought = allocation.plan.gpus_bought();
        let gpu_hours = hours * f64::from(bought);
        let spend = hours * allocation.plan.spend_per_hour();
        let provider = &allocation.plan.provider;
        add_to(&mut self.spend, provider, spend);
        add_to(&mut self.gpu_hours, provider, gpu_hours);
        if let Some(total) = self.spend_by_class.get_mut(&(provider.clone(), class)) {
            *total += spend;
        } else {
            self.spend_by_class.insert((provider.clone(), class), spend);
        }
        *self.gpu_hours_by_class.entry(class).or_default() += gpu_hours;
        if running {
            add_to(&mut self.spend_rate, provider, allocation.plan.spend_per_hour());
            self.gpus_active += u64::from(bought);
            if let Some(active) = self.gpus_active_by_provider.get_mut(provider) {
                *active += u64::from(bought);
            } else {
                self.gpus_active_by_provider.insert(provider.clone(), u64::from(bought));
            }
        }
    }
}

/// Adds to a per-provider total without cloning the name when it is already there.
fn add_to(totals: &mut BTreeMap<ProviderName, f64>, provider: &ProviderName, amount: f64) {
    if let Some(total) = totals.get_mut(provider) {
        *total += amount;
    } else {
        totals.insert(provider.clone(), amount);
    }
}

/// Whether an allocation is billing at `at`, given the hours it has billed.
fn running(allocation: &Allocation, hours: f64, at: Timestamp) -> bool {
    allocation.billed_from().is_some_and(|r| r <= at)
        && allocation.ended_at().is_none_or(|e| e > at)
        && hours < most_hours(allocation)
}

/// Whether an allocation's bill is final as of `at`: it ended, or it has
/// billed every hour it can. Nothing after `at` can change it.
fn settled(allocation: &Allocation, hours: f64, at: Timestamp) -> bool {
    allocation.ended_at().is_some_and(|e| e <= at) || hours >= most_hours(allocation)
}

/// Spend accrued by every allocation as of `at`, in one pass over all of them.
pub fn accrue(allocations: &Allocations, at: Timestamp) -> Accruals {
    let mut accruals = Accruals { at: Some(at), ..Accruals::default() };
    for allocation in allocations.values() {
        let hours = billed_hours(allocation, at);
        accruals.add(allocation, allocation.workload, hours, running(allocation, hours, at));
    }
    accruals
}

/// Keeps the accruals as of successive instants without revisiting settled
/// allocations: an allocation whose bill is final is folded into fixed
/// totals once, so each settlement walks only new and still-running
/// allocations. Instants must not go backwards. Gives the same figures as
/// [`accrue`] and [`check_billing`] at every instant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Accountant {
    /// Totals of settled allocations.
    settled: Accruals,
    /// GPU-hours of settled allocations, per request (for the no-double-billing check).
    settled_by_request: BTreeMap<String, f64>,
    /// Spend of settled allocations, summed allocation by allocation.
    settled_spend: f64,
    /// Allocations not yet settled, by id.
    open: Vec<u64>,
    /// The previous `open`, kept to reuse its memory.
    #[serde(skip)]
    spare: Vec<u64>,
    /// Allocations with ids below this have been seen.
    next_id: u64,
    last: Option<Timestamp>,
}

impl Accountant {
    /// Accruals as of `at`, and the billing invariants checked for every
    /// request an open or newly settled allocation belongs to.
    pub fn settle(&mut self, allocations: &Allocations, at: Timestamp) -> (Accruals, Result<(), String>) {
        debug_assert!(self.last.is_none_or(|last| last <= at), "settlement instants go forwards");
        self.last = Some(at);
        for allocation in allocations.range(self.next_id..).map(|(_, a)| a) {
            self.open.push(allocation.id);
            self.next_id = allocation.id + 1;
        }
        let mut accruals = Accruals { at: Some(at), ..self.settled.clone() };
        accruals.spend_rate.clear();
        accruals.gpus_active_by_provider.clear();
        accruals.gpus_active = 0;
        let mut total = self.settled_spend;
        // Per request: GPU-hours of its open allocations, and the GPU-hours it asked for.
        let mut touched: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        let mut violation = None;
        // Walk last settlement's open list, rebuilding `open` in the spare buffer.
        let open = std::mem::replace(&mut self.open, std::mem::take(&mut self.spare));
        self.open.clear();
        for &id in &open {
            let Some(allocation) = allocations.get(&id) else { continue };
            let class = allocation.workload;
            let hours = billed_hours(allocation, at);
            if hours > most_hours(allocation) + 1e-9 && violation.is_none() {
                violation =
                    Some(format!("allocation {} billed {hours} h of {}", allocation.id, allocation.hours));
            }
            // The request's GPU-hours carried (not over-bought ones, not held ones), for the
            // invariant below.
            let gpu_hours = run_hours(allocation, at) * f64::from(allocation.plan.gpus);
            let spend = hours * allocation.plan.spend_per_hour();
            total += spend;
            // GPU-hours of this request's open allocations; settled ones are in `settled_by_request`.
            let (open_hours, _) =
                touched.entry(&allocation.request).or_insert((0.0, allocation.asked_gpu_hours));
            if settled(allocation, hours, at) {
                self.settled.add(allocation, class, hours, false);
                self.settled_spend += spend;
                *self.settled_by_request.entry(allocation.request.clone()).or_default() += gpu_hours;
                accruals.add(allocation, class, hours, false);
            } else {
                *open_hours += gpu_hours;
                accruals.add(allocation, class, hours, running(allocation, hours, at));
                self.open.push(id);
            }
        }
        self.spare = open;
        if violation.is_none() {
            for (request, (open_hours, asked)) in touched {
                let billed = open_hours + self.settled_by_request.get(request).copied().unwrap_or(0.0);
                if billed > asked + 1e-6 {
                    violation = Some(format!(
                        "request {request} billed {billed} GPU-hours of the {asked} it asked for"
                    ));
                    break;
                }
            }
        }
        let summed = accruals.total_spend();
        if violation.is_none() && (summed - total).abs() > 1e-6 * total.max(1.0) {
            violation = Some(format!("provider spend sums to {summed}, allocations to {total}"));
        }
        (accruals, violation.map_or(Ok(()), Err))
    }
}

/// Revenue per calendar month, keyed `YYYY-MM`.
pub type RevenueSeries = BTreeMap<String, f64>;

/// The calendar month of an instant, as `YYYY-MM`.
pub fn month_of(at: Timestamp) -> String {
    let text = at.to_string();
    text.get(..7).unwrap_or(&text).to_owned()
}

/// What a revenue-share clause owes for one month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevenueShareStatement {
    pub contract: String,
    pub clause: String,
    pub partner: String,
    pub month: String,
    pub revenue: f64,
    pub rate: f64,
    pub owed: f64,
}

/// Statements for each month of `revenue`, under the clauses in force on the month's `first_instant`.
pub fn revenue_share(
    set: &ContractSet,
    revenue: &RevenueSeries,
    first_instant: &BTreeMap<String, Timestamp>,
) -> Vec<RevenueShareStatement> {
    let mut statements = Vec::new();
    for (month, amount) in revenue {
        let Some(at) = first_instant.get(month) else { continue };
        for share in &set.in_force(*at, &[]).revenue_shares {
            statements.push(RevenueShareStatement {
                contract: share.contract.to_owned(),
                clause: share.clause.to_owned(),
                partner: share.terms.partner.clone(),
                month: month.clone(),
                revenue: *amount,
                rate: share.terms.rate,
                owed: amount * share.terms.rate,
            });
        }
    }
    statements
}

/// The metrics review-trigger conditions read.
pub fn metrics(
    accruals: &Accruals,
    cumulative_revenue: f64,
    days_elapsed: f64,
    events: &BTreeSet<String>,
) -> Metrics {
    let spend = accruals.total_spend();
    let mut metrics = Metrics::default();
    for (name, value) in [
        ("cumulative_spend", spend),
        ("cumulative_revenue", cumulative_revenue),
        ("cumulative_profit", cumulative_revenue - spend),
        ("gpus_active", accruals.gpus_active as f64),
        ("days_elapsed", days_elapsed),
    ] {
        metrics.metrics.insert(name.to_owned(), value);
    }
    metrics.events = events.clone();
    metrics
}

/// A review trigger that fired, and what it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerFired {
    pub contract: String,
    pub clause: String,
    pub at: Timestamp,
    pub condition: String,
    pub action: TriggerAction,
}

/// Evaluates the triggers in force at `at` that have not fired yet. Returns
/// those that fire now, the suspensions their actions ask for, and any
/// evaluation errors (a condition that reads a metric nobody records is
/// reported, not fatal).
pub fn evaluate_triggers(
    set: &ContractSet,
    at: Timestamp,
    suspended: &[Suspension],
    metrics: &Metrics,
    already_fired: &BTreeSet<(String, String)>,
) -> (Vec<TriggerFired>, Vec<Suspension>, Vec<String>) {
    let (mut fired, mut suspensions, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for trigger in &set.in_force(at, suspended).review_triggers {
        let key = (trigger.contract.to_owned(), trigger.clause.to_owned());
        if already_fired.contains(&key) {
            continue;
        }
        match trigger.terms.condition.evaluate(metrics) {
            Ok(true) => {
                if let TriggerAction::SuspendClauses { clauses, from } = &trigger.terms.action {
                    for clause in clauses {
                        suspensions.push(Suspension {
                            contract: trigger.contract.to_owned(),
                            clause: clause.clone(),
                            from: (*from).max(at),
                        });
                    }
                }
                fired.push(TriggerFired {
                    contract: key.0,
                    clause: key.1,
                    at,
                    condition: trigger.terms.condition.source().to_owned(),
                    action: trigger.terms.action.clone(),
                });
            }
            Ok(false) => {}
            Err(error) => errors.push(format!("{}/{}: {error}", trigger.contract, trigger.clause)),
        }
    }
    (fired, suspensions, errors)
}

/// Checks the billing invariants as of `at`: no allocation bills more hours
/// than it was awarded, no request bills more GPU-hours than it asked for
/// (no GPU-hour billed twice across failovers), and per-provider spend sums
/// to the total of the allocations. Returns the first violation.
pub fn check_billing(allocations: &Allocations, accruals: &Accruals, at: Timestamp) -> Result<(), String> {
    let mut per_request: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut total = 0.0;
    for allocation in allocations.values() {
        let hours = billed_hours(allocation, at);
        if hours > most_hours(allocation) + 1e-9 {
            return Err(format!("allocation {} billed {hours} h of {}", allocation.id, allocation.hours));
        }
        per_request.entry(&allocation.request).or_insert((0.0, allocation.asked_gpu_hours)).0 +=
            run_hours(allocation, at) * f64::from(allocation.plan.gpus);
        total += hours * allocation.plan.spend_per_hour();
    }
    for (request, (gpu_hours, asked)) in per_request {
        if gpu_hours > asked + 1e-6 {
            return Err(format!(
                "request {request} billed {gpu_hours} GPU-hours of the {asked} it asked for"
            ));
        }
    }
    let summed = accruals.total_spend();
    if (summed - total).abs() > 1e-6 * total.max(1.0) {
        return Err(format!("provider spend sums to {summed}, allocations to {total}"));
    }
    Ok(())
}

/// What one settlement found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settlement {
    pub at: Option<Timestamp>,
    pub accruals: Accruals,
    /// Every commitment in force, as of the settlement.
    pub commitments: Vec<CommitmentStatus>,
    /// Revenue-share statements for every month with reported revenue.
    pub revenue_share: Vec<RevenueShareStatement>,
    pub cumulative_revenue: f64,
    /// Triggers that fired at this settlement, and the suspensions they ask for.
    pub triggers_fired: Vec<TriggerFired>,
    pub suspensions: Vec<Suspension>,
    /// Conditions that could not be evaluated (a metric nobody records); not fatal.
    pub trigger_errors: Vec<String>,
    /// A billing invariant that failed, if one did: a bug, reported, never silenced.
    pub violation: Option<String>,
}

/// The engine's settlement books between ticks: the incremental accountant, revenue reported
/// per month, events declared, triggers already fired, and the latest settlement.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settler {
    accountant: Accountant,
    revenue: RevenueSeries,
    month_start: BTreeMap<String, Timestamp>,
    cumulative_revenue: f64,
    declared: BTreeSet<String>,
    fired: BTreeSet<(String, String)>,
    /// The instant settlement began (the engine's first input): `days_elapsed` counts from it.
    pub started: Option<Timestamp>,
    /// The latest settlement.
    pub last: Settlement,
}

impl Settler {
    /// Revenue reported at `at`, for the calendar month of `at`.
    pub fn report_revenue(&mut self, at: Timestamp, amount: f64) -> String {
        let month = month_of(at);
        *self.revenue.entry(month.clone()).or_default() += amount;
        self.month_start.entry(month.clone()).or_insert(at);
        self.cumulative_revenue += amount;
        month
    }

    /// An event declared (for review-trigger conditions); true when it is new.
    pub fn declare(&mut self, name: &str) -> bool {
        self.declared.insert(name.to_owned())
    }

    /// The events declared so far.
    pub fn declared(&self) -> &BTreeSet<String> {
        &self.declared
    }

    /// Whether the trigger `clause` of `contract` has fired (a trigger fires once).
    pub fn has_fired(&self, contract: &str, clause: &str) -> bool {
        self.fired.contains(&(contract.to_owned(), clause.to_owned()))
    }

    /// Revenue-share statements for the revenue reported so far, under `set` (what the next
    /// settlement will state).
    pub fn statements(&self, set: &ContractSet) -> Vec<RevenueShareStatement> {
        revenue_share(set, &self.revenue, &self.month_start)
    }

    /// The metrics a trigger condition would read if the engine settled at `at` (a preview:
    /// nothing is recorded), and the accruals they come from.
    pub fn metrics_at(&self, allocations: &Allocations, at: Timestamp) -> (Metrics, Accruals) {
        let accruals = accrue(allocations, at);
        let days = self.started.map_or(0.0, |started| at.hours_since(started).max(0.0) / 24.0);
        (metrics(&accruals, self.cumulative_revenue, days, &self.declared), accruals)
    }

    /// Settles as of `at`: accruals, commitments, revenue share, triggers. Instants must not
    /// go backwards (the engine's settlement timer guarantees it).
    pub fn settle(
        &mut self,
        allocations: &Allocations,
        contracts: &ContractSet,
        commitments: Vec<CommitmentStatus>,
        suspended: &[Suspension],
        at: Timestamp,
    ) -> &Settlement {
        let started = *self.started.get_or_insert(at);
        let (accruals, billing) = self.accountant.settle(allocations, at);
        let days = at.hours_since(started) / 24.0;
        let metrics = metrics(&accruals, self.cumulative_revenue, days, &self.declared);
        let (fired, suspensions, trigger_errors) =
            evaluate_triggers(contracts, at, suspended, &metrics, &self.fired);
        for f in &fired {
            self.fired.insert((f.contract.clone(), f.clause.clone()));
        }
        self.last = Settlement {
            at: Some(at),
            accruals,
            commitments,
            revenue_share: self.statements(contracts),
            cumulative_revenue: self.cumulative_revenue,
            triggers_fired: fired,
            suspensions,
            trigger_errors,
            violation: billing.err(),
        };
        &self.last
    }
}
