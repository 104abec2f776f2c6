//! Timers: the holder's window, the quote deadline, delivery (spillover), release and the
//! settlement tick, and whether a timer would still do anything.

use super::round::{Phase, RoundInput, Step};
use super::*;
use crate::allocation::Stage;

/// Why a reserved allocation was not delivered.
pub(super) enum Undelivered {
    /// Not ready by its promised time plus grace.
    Late,
    /// Its provider said it cannot deliver, and why.
    Failed(String),
}

impl Engine {
    /// A reservation that will not be delivered: it is cancelled, its provider is left out
    /// of the request's next rounds, and its GPUs go back to the market for their hours.
    pub(super) fn not_delivered(&mut self, out: &mut Out, allocation: u64, why: Undelivered) {
        let Some(a) = self.allocations.get_mut(&allocation) else { return };
        if a.state != AllocationState::Reserved {
            return;
        }
        a.state = AllocationState::Cancelled { run: None, ended_at: out.now };
        let (request, gpus, hours, promised, provider) =
            (a.request.clone(), a.plan.gpus, a.hours, a.promised, a.plan.provider.clone());
        let (failed, event, cancel) = match why {
            Undelivered::Late => (
                format!("did not deliver allocation {allocation} on time"),
                EventKind::Spillover { allocation, gpus, promised },
                "not ready by its promised time plus grace".to_owned(),
            ),
            Undelivered::Failed(reason) => (
                format!("could not deliver allocation {allocation}: {reason}"),
                EventKind::ReservationFailed { allocation, gpus, reason: reason.clone() },
                format!("the provider could not deliver it: {reason}"),
            ),
        };
        if let Some(state) = self.requests.get_mut(&request) {
            state.failed_providers.insert(provider.clone(), failed);
        }
        self.leave_fleet(allocation);
        out.ledger(Some(&request), event);
        // Whatever the provider started for it (a cloud's half-launched nodes) is stopped.
        out.effects.push(Effect::Cancel { allocation, provider, why: cancel });
        self.requeue(out, &request, Purpose::Spillover, gpus, hours);
    }

    /// Whether `timer` would do anything if it fired now. A timer whose moment has passed
    /// (the holder answered, every quote is in, the allocation is no longer waiting) does
    /// nothing when it fires, so a shell may drop it instead of keeping it until then.
    pub fn timer_matters(&self, timer: &Timer) -> bool {
        let round_of = |request: &str, number: u32| {
            self.requests.get(request).and_then(|s| s.round.as_ref()).filter(|r| r.round.number == number)
        };
        let allocation_in = |allocation: &u64, stage: Stage| {
            self.allocations.get(allocation).is_some_and(|a| a.state.stage() == stage)
        };
        match timer {
            Timer::HolderWindow { request, round, solicitation } => round_of(request, *round).is_some_and(
                |r| matches!(r.phase, Phase::Holder { solicitation: s, .. } if s == *solicitation),
            ),
            Timer::QuoteDeadline { request, round } => round_of(request, *round).is_some_and(
                |r| matches!(&r.phase, Phase::Quotes { asked, answered, .. } if answered != asked),
            ),
            Timer::DeliveryDue { allocation } => allocation_in(allocation, Stage::Reserved),
            Timer::Release { allocation } => allocation_in(allocation, Stage::Active),
            Timer::Settle => true,
        }
    }

    pub(super) fn timer(&mut self, out: &mut Out, timer: Timer) {
        if !self.timer_matters(&timer) {
            return;
        }
        match timer {
            Timer::HolderWindow { request, round, .. } => {
                self.drive(out, &request, Step::Input(RoundInput::HolderLapsed { round }));
            }
            Timer::QuoteDeadline { request, .. } => {
                self.drive(out, &request, Step::Input(RoundInput::QuoteDeadline));
            }
            Timer::DeliveryDue { allocation } => self.not_delivered(out, allocation, Undelivered::Late),
            Timer::Settle => self.settle(out),
            Timer::Release { allocation } => {
                let Some(a) = self.allocations.get_mut(&allocation) else { return };
                // Only an active allocation is released (`timer_matters`): it has run.
                let Some(run) = a.state.run() else { return };
                a.state = AllocationState::Released { run, ended_at: out.now };
                let request = a.request.clone();
                // Its bill: its hours, and the hours it was held for its request's other parts.
                let billed = f64::from(a.hours) + run.held_hours();
                let gpu_hours = f64::from(a.plan.gpus_bought()) * billed;
                let spend = a.plan.spend_per_hour() * billed;
                let provider = a.plan.provider.clone();
                out.ledger(Some(&request), EventKind::AllocationReleased { allocation, gpu_hours, spend });
                out.effects.push(Effect::Release { allocation, provider });
                self.leave_fleet(allocation);
                self.with_request(&request, |engine, state| engine.settle_status(out, state));
            }
        }
    }
}
