//! Deterministic virtual-time execution of the engine.
//!
//! [`VirtualRun`] is the simulation shell of DESIGN.md's "one engine, two
//! clocks": it executes the engine's effects against simulated providers and
//! a virtual clock. Inputs wait in a priority queue ordered by (time,
//! sequence number), so equal times keep their insertion order and a run is a
//! pure function of its inputs. `dibs place` runs one request through it;
//! `dibs simulate` will replay whole traces.

pub mod incidents;
pub mod prices;
pub mod simulate;
pub mod trace;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use dibs_core::engine::{Effect, Engine, Input};
use dibs_core::ledger::{Chain, Event, EventKind};
use dibs_core::types::{ProviderName, Timestamp};
use dibs_providers::{Provider, SimulatedProvider};

/// A run stops after this many inputs, whatever is still queued.
pub const MAX_INPUTS_PER_RUN: usize = 10_000_000;

/// An input scheduled for a virtual instant.
struct Scheduled {
    at: Timestamp,
    sequence: u64,
    input: Input,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.sequence).cmp(&(other.at, other.sequence))
    }
}

/// The engine, its simulated providers and a virtual clock.
pub struct VirtualRun {
    pub engine: Engine,
    pub providers: BTreeMap<ProviderName, SimulatedProvider>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    sequence: u64,
    now: Timestamp,
    /// Every ledger event, in order.
    pub events: Vec<Event>,
    pub chain: Chain,
    pub inputs_processed: usize,
}

impl VirtualRun {
    pub fn new(
        engine: Engine,
        providers: BTreeMap<ProviderName, SimulatedProvider>,
        start: Timestamp,
    ) -> Self {
        Self {
            engine,
            providers,
            queue: BinaryHeap::new(),
            sequence: 0,
            now: start,
            events: Vec::new(),
            chain: Chain::default(),
            inputs_processed: 0,
        }
    }

    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Queues an input at a virtual instant (not before now).
    pub fn schedule(&mut self, at: Timestamp, input: Input) {
        self.sequence += 1;
        self.queue.push(Reverse(Scheduled { at: at.max(self.now), sequence: self.sequence, input }));
    }

    /// Processes queued inputs in time order until the queue is empty, the
    /// next input is after `until`, or the input bound is reached.
    pub fn run_until(&mut self, until: Option<Timestamp>) {
        while self.inputs_processed < MAX_INPUTS_PER_RUN {
            let Some(Reverse(next)) = self.queue.peek() else { break };
            if until.is_some_and(|u| next.at > u) {
                break;
            }
            let Reverse(next) = self.queue.pop().expect("peeked");
            self.now = next.at;
            self.inputs_processed += 1;
            let effects = self.engine.handle(self.now, next.input);
            self.execute(effects);
        }
    }

    fn execute(&mut self, effects: Vec<Effect>) {
        let now = self.now;
        for effect in effects {
            match effect {
                Effect::Ledger(event) => {
                    self.chain.append(&event);
                    if let EventKind::AllocationReleased { allocation, .. } = &event.kind {
                        self.release_capacity(*allocation);
                    }
                    self.events.push(event);
                }
                Effect::SetTimer { at, timer } => self.schedule(at, Input::Timer(timer)),
                Effect::Solicit(solicitation) => {
                    let Some(holder) = self.providers.get_mut(&solicitation.holder) else { continue };
                    let reply = holder.solicit(&solicitation, now);
                    if let Some(answer) = reply.answer {
                        let input = Input::HolderAnswer {
                            request: solicitation.ask.request.clone(),
                            round: solicitation.ask.round,
                            answer,
                        };
                        self.schedule(now.plus_hours(reply.after_hours), input);
                    }
                }
                Effect::RequestQuotes { providers, ask } => {
                    for name in providers {
                        let Some(provider) = self.providers.get_mut(&name) else { continue };
                        let (offers, after_hours) = provider.quote(&ask, now);
                        let input = Input::Quotes {
                            request: ask.request.clone(),
                            round: ask.round,
                            provider: name,
                            offers,
                        };
                        self.schedule(now.plus_hours(after_hours), input);
                    }
                }
                Effect::Reserve { allocation, plan, .. } => {
                    let Some(provider) = self.providers.get_mut(&plan.provider) else { continue };
                    if let Some(ready_at) = provider.reserve(allocation, &plan, now).ready_at {
                        self.schedule(ready_at, Input::AllocationReady { allocation });
                    }
                }
                Effect::Cancel { allocation, provider, .. } => {
                    if let Some(provider) = self.providers.get_mut(&provider) {
                        provider.cancel(allocation);
                    }
                }
            }
        }
    }

    fn release_capacity(&mut self, allocation: u64) {
        if let Some(a) = self.engine.allocation(allocation)
            && let Some(provider) = self.providers.get_mut(&a.plan.provider)
        {
            provider.cancel(allocation);
        }
    }
}

impl VirtualRun {
    /// Processes inputs in time order while `keep_going` holds after each one.
    pub fn run_while(&mut self, mut keep_going: impl FnMut(&Engine) -> bool) {
        while self.inputs_processed < MAX_INPUTS_PER_RUN && keep_going(&self.engine) {
            let Some(Reverse(next)) = self.queue.pop() else { break };
            self.now = next.at;
            self.inputs_processed += 1;
            let effects = self.engine.handle(self.now, next.input);
            self.execute(effects);
        }
    }
}

impl VirtualRun {
    /// The instant of the next queued input, if any.
    pub fn next_at(&self) -> Option<Timestamp> {
        self.queue.peek().map(|Reverse(next)| next.at)
    }
}
