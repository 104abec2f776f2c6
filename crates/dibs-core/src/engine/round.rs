//! A round: `screening -> [first refusal] -> market -> [match] -> award | unfilled`, its
//! state ([`Round`], [`Phase`]), the steps that move it ([`Step`]) and the loop that runs
//! them ([`Engine::drive`]); a request's queue of rounds and its status once none runs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::first_refusal::{Offered, Taken, first_offer_room};
use super::screen::Screened;
use super::*;

/// Where a round stands. Each variant carries exactly the data of that state; a round is
/// `Screened` only between its screening and its first wait, inside one input's handling.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Phase {
    /// Screened; about to solicit the holder or ask the market.
    Screened,
    /// Waiting for the holder's answer to solicitation number `solicitation`.
    Holder {
        solicitation: u32,
        respond_by: Timestamp,
        /// GPUs put to the holder, and the price per GPU-hour.
        offered_gpus: u32,
        price: Price,
        /// What follows the answer.
        then: AfterHolder,
    },
    /// Waiting for the quotes of `asked` until `respond_by`.
    Quotes { respond_by: Timestamp, asked: BTreeSet<ProviderName>, answered: BTreeSet<ProviderName> },
}

/// What a round does once the holder has answered or let its window lapse.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum AfterHolder {
    /// Offer-first, first solicitation: the market has not been asked yet.
    AskMarket,
    /// A no-better-terms re-offer: the quotes are in hand; place what the holder leaves.
    Decide,
    /// Match mode: the holder was shown this market award; if it passes, the award stands.
    Match(Vec<PlannedAllocation>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Round {
    pub(super) number: u32,
    /// GPUs this round still has to place.
    pub(super) gpus: u32,
    pub(super) hours: u32,
    pub(super) screened: Screened,
    pub(super) phase: Phase,
    /// Every quote received in this round.
    pub(super) quotes: Vec<Offer>,
    /// The highest price the holder declined in this round.
    pub(super) declined_price: Option<f64>,
    pub(super) solicitations: u32,
    /// Providers asked in this round that gave no quote, and why (a failed call, no answer
    /// by the deadline): an unfilled round says so.
    pub(super) silent: BTreeMap<ProviderName, String>,
}

/// What the engine does next for one request. Each transition returns the next step and
/// [`Engine::drive`] runs them until the request waits for an input: no transition calls
/// back into the one that called it.
#[derive(Debug)]
pub(super) enum Step {
    /// Start the next queued round, if none runs.
    NextRound,
    /// Solicit the holder (offer-first) or ask the market.
    BeginRound,
    AskMarket,
    /// Place the round over the quotes in hand.
    Decide,
    HolderTakes(Taken),
    /// The holder declined or let its window lapse.
    HolderPassed,
    Unfilled(String),
    FinishRound,
    /// Waiting for an input.
    Wait,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    pub(super) purpose: Purpose,
    pub(super) gpus: u32,
    pub(super) hours: u32,
}

impl Engine {
    /// Runs a request's steps until it waits for an input.
    pub(super) fn drive(&mut self, out: &mut Out, id: &str, mut step: Step) {
        for _ in 0..MAX_STEPS_PER_INPUT {
            step = match step {
                Step::Wait => return,
                Step::NextRound => self.next_round(out, id),
                Step::BeginRound => self.begin_round(out, id),
                Step::AskMarket => self.ask_market(out, id),
                Step::Decide => self.decide(out, id),
                Step::HolderTakes(taken) => self.holder_takes(out, id, taken),
                Step::HolderPassed => self.holder_passed(out, id),
                Step::Unfilled(reason) => self.unfilled(out, id, reason),
                Step::FinishRound => self.finish_round(out, id),
            };
        }
        debug_assert!(false, "request {id} did not come to a wait within {MAX_STEPS_PER_INPUT} steps");
    }

    /// Starts the next queued round of a request, if none is running.
    pub(super) fn next_round(&mut self, out: &mut Out, id: &str) -> Step {
        let Some(state) = self.requests.get_mut(id) else { return Step::Wait };
        if state.round.is_some() || state.pending.is_empty() || state.status == Status::Cancelled {
            return Step::Wait;
        }
        if state.rounds_started >= MAX_ROUNDS_PER_REQUEST {
            // Out of rounds: everything still queued is unfilled, or the request would wait
            // for rounds that never start.
            let reason = format!("request reached the limit of {MAX_ROUNDS_PER_REQUEST} rounds");
            for pending in std::mem::take(&mut state.pending) {
                state.unfilled_gpus += pending.gpus;
                state.unfilled_reason = Some(reason.clone());
                out.ledger(
                    Some(id),
                    EventKind::Unfilled {
                        round: state.rounds_started,
                        gpus: pending.gpus,
                        hours: pending.hours,
                        reason: reason.clone(),
                    },
                );
            }
            self.settle_status(out, id);
            return Step::Wait;
        }
        let pending = state.pending.remove(0);
        state.rounds_started += 1;
        let number = state.rounds_started;
        let screened = self.screen(id, pending.purpose, out.now);
        let state = self.requests.get_mut(id).expect("request exists");
        let refusal_text = screened
            .refusal
            .as_ref()
            .map(|r| format!("{} held by {} ({})", r.mode.as_str(), r.holder, r.reference));
        out.ledger(
            Some(id),
            EventKind::Screened {
                round: number,
                purpose: pending.purpose.as_str().into(),
                gpus: pending.gpus,
                versions: self
                    .contracts
                    .in_force(out.now, &self.suspensions)
                    .versions
                    .iter()
                    .map(|(c, v)| format!("{c}@{v}"))
                    .collect(),
                exclusive_to: screened.rules.exclusive_to.as_ref().map(|(h, c)| format!("{h} ({c})")),
                first_refusal: refusal_text,
                caps: screened
                    .rules
                    .caps
                    .iter()
                    .map(|c| format!("{:.0}% by {:?} ({})", c.max_share * 100.0, c.basis, c.source))
                    .collect(),
            },
        );
        let round = Round {
            number,
            gpus: pending.gpus,
            hours: pending.hours,
            screened,
            phase: Phase::Screened,
            quotes: Vec::new(),
            declined_price: None,
            solicitations: 0,
            silent: BTreeMap::new(),
        };
        state.round = Some(Box::new(round));
        Step::BeginRound
    }

    pub(super) fn begin_round(&mut self, out: &mut Out, id: &str) -> Step {
        let Some(round_request) = self.round_request(id) else { return Step::Wait };
        let round = self.requests[id].round.as_ref().expect("round running");
        if let Some(why) = placement::min_providers_unmet(&round_request, round.gpus, &round.screened.rules) {
            return Step::Unfilled(why);
        }
        match round.screened.refusal.clone() {
            Some(refusal) if refusal.mode == RefusalMode::OfferFirst => {
                match self.holder_offer(&round_request, &refusal, &round.screened.rules, out.now) {
                    Ok(offer) => {
                        let room = first_offer_room(
                            &round.screened.rules,
                            &refusal.holder,
                            &round_request,
                            offer.node_gpus,
                        );
                        let offered = Offered { gpus: room, price: offer.price, basis: offer.basis };
                        self.solicit(out, id, &refusal, offered, AfterHolder::AskMarket);
                        Step::Wait
                    }
                    Err(evidence) => {
                        let number = round.number;
                        out.ledger(
                            Some(id),
                            EventKind::FirstRefusalSkipped {
                                round: number,
                                holder: refusal.holder.clone(),
                                evidence,
                            },
                        );
                        Step::AskMarket
                    }
                }
            }
            // In match mode the market goes first; the holder is shown the winning terms later.
            _ => Step::AskMarket,
        }
    }

    pub(super) fn unfilled(&mut self, out: &mut Out, id: &str, mut reason: String) -> Step {
        let state = self.requests.get_mut(id).expect("request exists");
        let round = state.round.as_ref().expect("round running");
        // Say who gave no quote and why; the exclusive holder first, by that name.
        let exclusive = round.screened.rules.exclusive_to.as_ref().map(|(holder, _)| holder);
        for (provider, why) in &round.silent {
            if Some(provider) == exclusive {
                reason = format!("the exclusive holder {provider} gave no quote: {why}; {reason}");
            } else {
                reason = format!("{reason}; no quote from {provider}: {why}");
            }
        }
        state.unfilled_gpus += round.gpus;
        state.unfilled_reason = Some(reason.clone());
        out.ledger(
            Some(id),
            EventKind::Unfilled { round: round.number, gpus: round.gpus, hours: round.hours, reason },
        );
        Step::FinishRound
    }

    pub(super) fn finish_round(&mut self, out: &mut Out, id: &str) -> Step {
        if let Some(state) = self.requests.get_mut(id) {
            state.round = None;
        }
        self.settle_status(out, id);
        Step::NextRound
    }

    /// Derives the request's status from its allocations once no round runs.
    pub(super) fn settle_status(&mut self, out: &mut Out, id: &str) {
        let Some(state) = self.requests.get(id) else { return };
        if state.round.is_some() || state.status == Status::Cancelled {
            return;
        }
        let states: Vec<AllocationState> =
            state.allocations.iter().map(|a| self.allocations[a].state).collect();
        let live = states
            .iter()
            .filter(|s| matches!(s, AllocationState::Reserved | AllocationState::Active))
            .count();
        let previous = state.status;
        let status = if live == 0 {
            if states.contains(&AllocationState::Released) {
                Status::Released
            } else if state.pending.is_empty() {
                Status::Unfilled
            } else {
                previous
            }
        } else if states.iter().all(|s| *s != AllocationState::Reserved) {
            Status::Active
        } else {
            Status::Provisioning
        };
        let state = self.requests.get_mut(id).expect("request exists");
        state.status = status;
        if status.is_final() && !previous.is_final() {
            self.open_requests -= 1;
            self.ending.push(id.to_owned());
        }
        if status != previous {
            match status {
                Status::Active => out.ledger(Some(id), EventKind::RequestActive {}),
                Status::Released => out.ledger(Some(id), EventKind::RequestReleased {}),
                _ => {}
            }
        }
    }

    pub(super) fn requeue(&mut self, out: &mut Out, id: &str, purpose: Purpose, gpus: u32, hours: u32) {
        if let Some(state) = self.requests.get_mut(id)
            && state.status != Status::Cancelled
            && hours > 0
        {
            state.pending.push(Pending { purpose, gpus, hours });
            self.drive(out, id, Step::NextRound);
        }
    }
}
