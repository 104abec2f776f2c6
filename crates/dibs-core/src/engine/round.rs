//! A round: `screening -> [first refusal] -> market -> [match] -> award | unfilled`, its
//! state ([`Round`], [`Phase`]), the steps that move it ([`Step`]) and the loop that runs
//! them ([`Engine::drive`]); a request's queue of rounds and its status once none runs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::first_refusal::{Offered, Taken, first_offer_room};
use super::screen::Screened;
use super::*;
use crate::allocation::Stage;

/// What a running round waits for. Each variant carries exactly the data of that wait; a
/// round between two waits (being screened, decided, or told the holder's answer) has no
/// phase: it travels in a [`Step`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Phase {
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

/// What the holder was asked in the solicitation it answered (or let lapse).
#[derive(Debug)]
pub(super) struct HolderAsked {
    pub(super) holder: ProviderName,
    /// Per GPU-hour.
    pub(super) price: Price,
    pub(super) then: AfterHolder,
}

/// A round's own data, fixed at its screening or gathered while it runs.
#[derive(Debug, Clone)]
pub(super) struct Round {
    pub(super) number: u32,
    /// GPUs this round still has to place.
    pub(super) gpus: u32,
    pub(super) hours: u32,
    pub(super) screened: Screened,
    /// Every quote received in this round.
    pub(super) quotes: Vec<Offer>,
    /// The highest price the holder declined in this round.
    pub(super) declined_price: Option<f64>,
    pub(super) solicitations: u32,
    /// Providers asked in this round that gave no quote, and why (a failed call, no answer
    /// by the deadline): an unfilled round says so.
    pub(super) silent: BTreeMap<ProviderName, String>,
}

/// A round waiting for an input: what a request holds between inputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(into = "StoredRound", from = "StoredRound")]
pub(super) struct Running {
    pub(super) round: Box<Round>,
    pub(super) phase: Phase,
}

/// A running round as snapshots write it: one object, its fields in the order snapshots
/// have always had (their bytes are hashed into the ledger).
#[derive(Serialize, Deserialize)]
struct StoredRound {
    number: u32,
    gpus: u32,
    hours: u32,
    screened: Screened,
    phase: Phase,
    quotes: Vec<Offer>,
    declined_price: Option<f64>,
    solicitations: u32,
    silent: BTreeMap<ProviderName, String>,
}

impl From<Running> for StoredRound {
    fn from(Running { round, phase }: Running) -> Self {
        let Round { number, gpus, hours, screened, quotes, declined_price, solicitations, silent } = *round;
        Self { number, gpus, hours, screened, phase, quotes, declined_price, solicitations, silent }
    }
}

impl From<StoredRound> for Running {
    fn from(stored: StoredRound) -> Self {
        let StoredRound {
            number,
            gpus,
            hours,
            screened,
            phase,
            quotes,
            declined_price,
            solicitations,
            silent,
        } = stored;
        let round = Round { number, gpus, hours, screened, quotes, declined_price, solicitations, silent };
        Self { round: Box::new(round), phase }
    }
}

/// An input for a request's running round.
#[derive(Debug)]
pub(super) enum RoundInput {
    HolderAnswer {
        round: u32,
        answer: HolderAnswer,
    },
    Quotes {
        round: u32,
        provider: ProviderName,
        offers: Vec<Offer>,
    },
    QuoteFailed {
        round: u32,
        provider: ProviderName,
        error: String,
    },
    /// The holder's window closed with no answer (the timer checked it still waits).
    HolderLapsed {
        round: u32,
    },
    /// The quote deadline passed with quotes missing (the timer checked it).
    QuoteDeadline,
}

/// What the engine does next for one request: each transition takes the round by value (in
/// its step) and returns the next step, and [`Engine::drive`] runs them until the request
/// waits for an input. No transition calls back into the one that called it, and none looks
/// its request or its round up again.
#[derive(Debug)]
pub(super) enum Step {
    /// An input for the running round: [`Engine::drive`] hands it the round it holds.
    Input(RoundInput),
    /// Start the next queued round, if none runs.
    NextRound,
    /// Solicit the holder (offer-first) or ask the market.
    Begin(Box<Round>),
    AskMarket(Box<Round>),
    /// Place the round over the quotes in hand.
    Decide(Box<Round>),
    HolderTakes(Box<Round>, HolderAsked, Taken),
    /// The holder declined or let its window lapse.
    HolderPassed(Box<Round>, HolderAsked),
    Unfilled(Box<Round>, String),
    /// The round is over (awarded or unfilled).
    Finish,
    /// The round waits for an input.
    Await(Box<Round>, Phase),
    /// Nothing to do until an input comes.
    Wait,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    pub(super) purpose: Purpose,
    pub(super) gpus: u32,
    pub(super) hours: u32,
}

impl Engine {
    /// Runs a request's steps until it waits for an input. The request is out of the map
    /// while its steps run: each transition gets it, and the round in its step, by hand.
    pub(super) fn drive(&mut self, out: &mut Out, id: &str, step: Step) {
        self.with_request(id, |engine, state| {
            let mut step = step;
            for _ in 0..MAX_STEPS_PER_INPUT {
                step = match step {
                    Step::Wait => return,
                    Step::Await(round, phase) => {
                        state.round = Some(Box::new(Running { round, phase }));
                        return;
                    }
                    Step::Input(input) => match state.round.take() {
                        Some(running) => engine.round_input(out, state, *running, input),
                        // No round runs: there is nothing for the input to move.
                        None => Step::Wait,
                    },
                    Step::NextRound => engine.next_round(out, state),
                    Step::Begin(round) => engine.begin_round(out, state, round),
                    Step::AskMarket(round) => engine.ask_market(out, state, round),
                    Step::Decide(round) => engine.decide(out, state, round),
                    Step::HolderTakes(round, asked, taken) => {
                        engine.holder_takes(out, state, round, asked, taken)
                    }
                    Step::HolderPassed(round, asked) => engine.holder_passed(out, state, round, asked),
                    Step::Unfilled(round, reason) => engine.unfilled(out, state, round, reason),
                    Step::Finish => engine.finish_round(out, state),
                };
            }
            debug_assert!(
                false,
                "request {} did not come to a wait within {MAX_STEPS_PER_INPUT} steps",
                state.request.id
            );
        });
    }

    /// Runs `f` on a request taken out of the map, and puts it back; nothing if it is unknown.
    pub(super) fn with_request(&mut self, id: &str, f: impl FnOnce(&mut Self, &mut RequestState)) {
        let Some((id, mut state)) = self.requests.remove_entry(id) else { return };
        f(self, &mut state);
        self.requests.insert(id, state);
    }

    /// An input for the running round.
    fn round_input(
        &mut self,
        out: &mut Out,
        state: &mut RequestState,
        running: Running,
        input: RoundInput,
    ) -> Step {
        match input {
            RoundInput::HolderAnswer { round, answer } => {
                self.holder_answer(out, state, running, round, answer)
            }
            RoundInput::Quotes { round, provider, offers } => {
                self.quotes(out, state, running, round, provider, offers)
            }
            RoundInput::QuoteFailed { round, provider, error } => {
                self.quote_failed(out, state, running, round, provider, error)
            }
            RoundInput::HolderLapsed { round } => self.holder_lapsed(out, state, running, round),
            RoundInput::QuoteDeadline => match running {
                Running { mut round, phase: Phase::Quotes { asked, answered, .. } } => {
                    for provider in asked.difference(&answered) {
                        round
                            .silent
                            .entry(provider.clone())
                            .or_insert_with(|| "it did not answer by the deadline".into());
                    }
                    Step::Decide(round)
                }
                Running { round, phase } => Step::Await(round, phase),
            },
        }
    }

    /// Starts the next queued round of a request, if none is running.
    pub(super) fn next_round(&mut self, out: &mut Out, state: &mut RequestState) -> Step {
        if state.round.is_some() || state.pending.is_empty() || state.status == Status::Cancelled {
            return Step::Wait;
        }
        let id = state.request.id.clone();
        if state.rounds_started >= MAX_ROUNDS_PER_REQUEST {
            // Out of rounds: everything still queued is unfilled, or the request would wait
            // for rounds that never start.
            let reason = format!("request reached the limit of {MAX_ROUNDS_PER_REQUEST} rounds");
            for pending in std::mem::take(&mut state.pending) {
                state.unfilled_gpus += pending.gpus;
                state.unfilled_reason = Some(reason.clone());
                out.ledger(
                    Some(&id),
                    EventKind::Unfilled {
                        round: state.rounds_started,
                        gpus: pending.gpus,
                        hours: pending.hours,
                        reason: reason.clone(),
                    },
                );
            }
            self.settle_status(out, state);
            return Step::Wait;
        }
        let pending = state.pending.remove(0);
        state.rounds_started += 1;
        let number = state.rounds_started;
        let screened = self.screen(state, pending.purpose, out.now);
        let refusal_text = screened
            .refusal
            .as_ref()
            .map(|r| format!("{} held by {} ({})", r.mode.as_str(), r.holder, r.reference));
        out.ledger(
            Some(&id),
            EventKind::Screened {
                round: number,
                purpose: pending.purpose,
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
                    .map(|c| {
                        format!("{:.0}% by {} ({})", c.max_share * 100.0, c.basis.ledger_name(), c.source)
                    })
                    .collect(),
            },
        );
        Step::Begin(Box::new(Round {
            number,
            gpus: pending.gpus,
            hours: pending.hours,
            screened,
            quotes: Vec::new(),
            declined_price: None,
            solicitations: 0,
            silent: BTreeMap::new(),
        }))
    }

    pub(super) fn begin_round(&mut self, out: &mut Out, state: &mut RequestState, round: Box<Round>) -> Step {
        let round_request = round_request(state, &round);
        if let Some(why) = placement::min_providers_unmet(&round_request, round.gpus, &round.screened.rules) {
            return Step::Unfilled(round, why);
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
                        self.solicit(out, state, round, &refusal, offered, AfterHolder::AskMarket)
                    }
                    Err(evidence) => {
                        out.ledger(
                            Some(&state.request.id),
                            EventKind::FirstRefusalSkipped {
                                round: round.number,
                                holder: refusal.holder.clone(),
                                evidence,
                            },
                        );
                        Step::AskMarket(round)
                    }
                }
            }
            // In match mode the market goes first; the holder is shown the winning terms later.
            _ => Step::AskMarket(round),
        }
    }

    pub(super) fn unfilled(
        &mut self,
        out: &mut Out,
        state: &mut RequestState,
        round: Box<Round>,
        mut reason: String,
    ) -> Step {
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
            Some(&state.request.id),
            EventKind::Unfilled { round: round.number, gpus: round.gpus, hours: round.hours, reason },
        );
        Step::Finish
    }

    pub(super) fn finish_round(&mut self, out: &mut Out, state: &mut RequestState) -> Step {
        state.round = None;
        self.settle_status(out, state);
        Step::NextRound
    }

    /// Derives the request's status from its allocations once no round runs.
    pub(super) fn settle_status(&mut self, out: &mut Out, state: &mut RequestState) {
        if state.round.is_some() || state.status == Status::Cancelled {
            return;
        }
        self.start_parts(out, state);
        let states: Vec<Stage> =
            state.allocations.iter().map(|a| self.allocations[a].state.stage()).collect();
        let live =
            states.iter().filter(|s| matches!(s, Stage::Reserved | Stage::Held | Stage::Active)).count();
        let previous = state.status;
        let status = if live == 0 {
            if states.contains(&Stage::Released) {
                Status::Released
            } else if state.pending.is_empty() {
                Status::Unfilled
            } else {
                previous
            }
        } else if states.iter().all(|s| !matches!(s, Stage::Reserved | Stage::Held)) {
            Status::Active
        } else {
            Status::Provisioning
        };
        state.status = status;
        let id = &state.request.id;
        if status.is_final() && !previous.is_final() {
            self.open_requests -= 1;
            self.ending.push(id.clone());
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

/// The request as a round sees it: the round's GPUs and hours.
pub(super) fn round_request(state: &RequestState, round: &Round) -> Request {
    let mut request = state.request.clone();
    // A round always has GPUs to place: a round whose GPUs are all placed finishes.
    request.gpus = GpuCount::new(round.gpus).unwrap_or(request.gpus);
    request.duration_hours = round.hours;
    request
}
