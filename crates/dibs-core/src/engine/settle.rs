//! Settlement ticks: arming the engine's own settlement timer, and acting on a tick.

use super::*;

impl Engine {
    /// Sets the next settlement tick: `settle_every_hours` after the first input, and every
    /// as many hours after the last tick.
    pub(super) fn arm_settlement(&mut self, out: &mut Out) {
        let step = Timestamp::HOUR.max((self.config.settle_every_hours * Timestamp::HOUR as f64) as i64);
        let started = *self.settler.started.get_or_insert(out.now);
        let elapsed = out.now.unix() - started.unix();
        let at = started.plus_seconds((elapsed / step + 1) * step);
        self.settle_armed = true;
        out.effects.push(Effect::SetTimer { at, timer: Timer::Settle });
    }

    /// A settlement tick: accrue, burn commitments down, evaluate review triggers, and act on
    /// a trigger's suspension in the engine's own state. Re-arms while anything is open.
    pub(super) fn settle(&mut self, out: &mut Out) {
        self.settle_armed = false;
        let commitments = self.commitment_statuses(out.now);
        let suspended = self.suspensions.clone();
        let mut settler = std::mem::take(&mut self.settler);
        let settlement =
            settler.settle(&self.allocations, &self.contracts, commitments, &suspended, out.now).clone();
        self.settler = settler;
        out.ledger(None, EventKind::Settled(crate::ledger::SettledFigures::of(&settlement)));
        for fired in &settlement.triggers_fired {
            out.ledger(
                None,
                EventKind::TriggerFired {
                    contract: fired.contract.clone(),
                    clause: fired.clause.clone(),
                    condition: fired.condition.clone(),
                    action: fired.action.clone(),
                },
            );
        }
        for suspension in settlement.suspensions {
            if !self.suspensions.contains(&suspension) {
                out.ledger(
                    None,
                    EventKind::ClauseSuspended {
                        contract: suspension.contract.clone(),
                        clause: suspension.clause.clone(),
                        from: suspension.from,
                    },
                );
                self.suspensions.push(suspension);
            }
        }
        let live = self.allocations.values().any(|a| a.state.is_live());
        if self.open_requests > 0 || live {
            self.arm_settlement(out);
        }
    }
}
