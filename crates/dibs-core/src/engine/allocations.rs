//! Allocations: awards become allocations; they are delivered, held until the request's
//! other parts are (its GPUs start together), run, are released, or are cancelled by
//! failover (an incident) or the buyer; the fleet's running totals follow.

use super::round::Round;
use super::timers::Undelivered;

/// Why a live allocation failed over.
enum Lost {
    /// An incident opened on its provider (or region).
    Incident(String),
    /// Its provider said its nodes are gone, and why.
    Gone(String),
}
use super::*;
use crate::allocation::Run;

/// Adds (`sign` 1) or removes (`sign` -1) an allocation's GPUs (bought, whole nodes) and spend rate.
pub(super) fn add_to_fleet(fleet: &mut Fleet, plan: &PlannedAllocation, sign: f64) {
    let gpus = f64::from(plan.gpus_bought());
    *fleet.gpus.entry(plan.provider.clone()).or_default() += sign * gpus;
    *fleet.spend_per_hour.entry(plan.provider.clone()).or_default() += sign * plan.spend_per_hour();
    if fleet.gpus.get(&plan.provider).is_some_and(|g| *g <= 0.0) {
        fleet.gpus.remove(&plan.provider);
        fleet.spend_per_hour.remove(&plan.provider);
    }
}

impl Engine {
    pub(super) fn award(
        &mut self,
        out: &mut Out,
        state: &mut RequestState,
        round: &Round,
        plans: Vec<PlannedAllocation>,
        via: &str,
    ) {
        let id = state.request.id.as_str();
        let mut records = Vec::new();
        for plan in plans {
            let allocation = self.next_allocation;
            self.next_allocation += 1;
            let promised = out.now.plus_hours(f64::from(plan.lead_time_hours));
            records.push(AllocationRecord {
                id: allocation,
                via: via.to_owned(),
                plan: plan.clone(),
                promised,
            });
            out.effects.push(Effect::Reserve {
                allocation,
                request: id.to_owned(),
                plan: plan.clone(),
                promised,
            });
            out.effects.push(Effect::SetTimer {
                at: promised.plus_hours(self.config.delivery_grace_hours),
                timer: Timer::DeliveryDue { allocation },
            });
            state.allocations.push(allocation);
            add_to_fleet(self.live_fleet.entry(state.request.workload).or_default(), &plan, 1.0);
            self.allocations.insert(
                allocation,
                Allocation {
                    id: allocation,
                    request: id.to_owned(),
                    round: round.number,
                    via: via.to_owned(),
                    plan,
                    hours: round.hours,
                    awarded_at: out.now,
                    promised,
                    state: AllocationState::Reserved,
                    workload: state.request.workload,
                    asked_gpu_hours: f64::from(state.request.gpus.get())
                        * f64::from(state.request.duration_hours),
                },
            );
            self.commitments.awarded(&self.allocations[&allocation], state.request.workload);
        }
        if !records.is_empty() {
            out.ledger(Some(id), EventKind::Awarded { round: round.number, allocations: records });
        }
    }

    /// Removes an allocation that stopped being live (released or cancelled) from the fleet.
    /// An allocation stopped being live (released or cancelled): it leaves the fleet, and its
    /// final bill is folded into the commitment books.
    pub(super) fn leave_fleet(&mut self, allocation: u64) {
        let Some(a) = self.allocations.get(&allocation) else { return };
        add_to_fleet(self.live_fleet.entry(a.workload).or_default(), &a.plan, -1.0);
        self.commitments.ended(a, a.workload);
    }

    /// A provider delivered an allocation. Capacity delivered before the request's earliest
    /// start waits for it, and its hours run (and bill) from that start. A part of a request
    /// whose parts start together is held until the last is ready ([`Engine::start_parts`]);
    /// a part of a request that runs apart starts at once.
    pub(super) fn allocation_ready(&mut self, out: &mut Out, allocation: u64) {
        let Some(a) = self.allocations.get(&allocation) else { return };
        if a.state != AllocationState::Reserved {
            return;
        }
        let (earliest, apart) = self
            .requests
            .get(&a.request)
            .map_or((out.now, true), |r| (r.request.earliest_start, r.request.apart));
        let start = out.now.max(earliest);
        let Some(a) = self.allocations.get_mut(&allocation) else { return };
        let request = a.request.clone();
        if apart {
            let ends_at = start.plus_hours(f64::from(a.hours));
            a.state = AllocationState::Active(Run::from_start(start, ends_at));
            out.effects.push(Effect::SetTimer { at: ends_at, timer: Timer::Release { allocation } });
        } else {
            let billed_from = a.plan.bills_from_delivery.then_some(start);
            a.state = AllocationState::Held { delivered_at: out.now, billed_from };
        }
        out.ledger(Some(&request), EventKind::AllocationReady { allocation });
        self.with_request(&request, |engine, state| engine.settle_status(out, state));
    }

    /// Starts a request's held parts together, once nothing more is coming: no round is
    /// open and no part is still reserved. Their hours run from now (or the request's
    /// earliest start) for the same duration; a part held since its delivery has billed
    /// from then.
    pub(super) fn start_parts(&mut self, out: &mut Out, state: &RequestState) {
        if state.round.is_some() || state.request.apart {
            return;
        }
        let mut held = Vec::new();
        for id in &state.allocations {
            match self.allocations[id].state {
                AllocationState::Reserved => return,
                AllocationState::Held { .. } => held.push(*id),
                _ => {}
            }
        }
        if held.is_empty() {
            return;
        }
        let start = out.now.max(state.request.earliest_start);
        for &allocation in &held {
            let a = self.allocations.get_mut(&allocation).expect("a part of the request");
            let AllocationState::Held { billed_from, .. } = a.state else { continue };
            let ends_at = start.plus_hours(f64::from(a.hours));
            a.state = AllocationState::Active(Run {
                billed_from: billed_from.unwrap_or(start),
                ready_at: start,
                ends_at,
            });
            out.effects.push(Effect::SetTimer { at: ends_at, timer: Timer::Release { allocation } });
        }
        out.ledger(Some(&state.request.id), EventKind::PartsStarted { allocations: held, starts_at: start });
    }

    pub(super) fn incident_opened(
        &mut self,
        out: &mut Out,
        id: String,
        provider: ProviderName,
        region: Option<Region>,
    ) {
        out.ledger(
            None,
            EventKind::IncidentOpened { id: id.clone(), provider: provider.clone(), region: region.clone() },
        );
        self.incidents.insert(id.clone(), Incident { provider: provider.clone(), region: region.clone() });
        let affected: Vec<u64> = self
            .allocations
            .values()
            .filter(|a| {
                a.state.is_live()
                    && a.plan.provider == provider
                    && region.as_ref().is_none_or(|r| r == &a.plan.region)
            })
            .map(|a| a.id)
            .collect();
        for allocation in affected {
            self.fail_over(out, allocation, Lost::Incident(id.clone()));
        }
    }

    /// The provider says a live allocation's nodes are gone (a spot interruption, nodes
    /// terminated under it): it fails over as an incident's would, for the hours left. One
    /// not yet delivered failed its reservation.
    pub(super) fn allocation_lost(&mut self, out: &mut Out, allocation: u64, reason: String) {
        match self.allocations.get(&allocation).map(|a| a.state) {
            Some(AllocationState::Reserved) => {
                self.not_delivered(out, allocation, Undelivered::Failed(reason))
            }
            Some(AllocationState::Held { .. } | AllocationState::Active(_)) => {
                self.fail_over(out, allocation, Lost::Gone(reason))
            }
            _ => {}
        }
    }

    /// A live allocation ends before its time: cancelled, its GPUs back to the market for
    /// the whole hours it has left (rounded down, so a replacement never bills an hour twice).
    fn fail_over(&mut self, out: &mut Out, allocation: u64, why: Lost) {
        let Some(a) = self.allocations.get_mut(&allocation) else { return };
        let remaining = match a.ends_at() {
            Some(ends) => (ends.hours_since(out.now).floor().max(0.0) as u32).min(a.hours),
            None => a.hours,
        };
        a.state = AllocationState::Cancelled { run: a.state.ended_run(out.now), ended_at: out.now };
        let (request, gpus, provider) = (a.request.clone(), a.plan.gpus, a.plan.provider.clone());
        self.leave_fleet(allocation);
        let (event, cancel) = match why {
            Lost::Incident(incident) => {
                let cancel = format!("incident {incident}");
                (EventKind::Failover { allocation, incident, gpus, remaining_hours: remaining }, cancel)
            }
            Lost::Gone(reason) => {
                let cancel = format!("its nodes are gone: {reason}");
                (EventKind::AllocationLost { allocation, reason, gpus, remaining_hours: remaining }, cancel)
            }
        };
        out.ledger(Some(&request), event);
        out.effects.push(Effect::Cancel { allocation, provider, why: cancel });
        self.requeue(out, &request, Purpose::Failover, gpus, remaining);
        self.with_request(&request, |engine, state| engine.settle_status(out, state));
    }

    pub(super) fn cancel(&mut self, out: &mut Out, id: &str) {
        let Some(state) = self.requests.get_mut(id) else { return };
        if state.status.is_final() {
            return;
        }
        state.status = Status::Cancelled;
        state.round = None;
        state.pending.clear();
        self.open_requests -= 1;
        self.ending.push(id.to_owned());
        let allocations = state.allocations.clone();
        out.ledger(Some(id), EventKind::RequestCancelled {});
        for allocation in allocations {
            let a = self.allocations.get_mut(&allocation).expect("exists");
            if a.state.is_live() {
                a.state = AllocationState::Cancelled { run: a.state.ended_run(out.now), ended_at: out.now };
                out.effects.push(Effect::Cancel {
                    allocation,
                    provider: a.plan.provider.clone(),
                    why: "request cancelled".into(),
                });
                self.leave_fleet(allocation);
            }
        }
    }
}
