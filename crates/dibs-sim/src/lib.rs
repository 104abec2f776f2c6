//! Deterministic virtual-time execution of the engine.
//!
//! [`VirtualRun`] is the simulation shell of DESIGN.md's "one engine, two
//! clocks": it executes the engine's effects against simulated providers and
//! a virtual clock. Inputs wait in a priority queue ordered by (time,
//! sequence number), so equal times keep their insertion order and a run is a
//! pure function of its inputs. `dibs place` runs one request through it;
//! `dibs simulate` will replay whole traces.

pub mod csv_input;
pub mod incidents;
pub mod prices;
pub mod simulate;
pub mod trace;

use std::collections::BTreeMap;

use dibs_core::engine::{Effect, Engine, Input};
use dibs_core::ledger::{Chain, Event};
use dibs_core::queue::TimeQueue;
use dibs_core::types::{ProviderName, Timestamp};
use dibs_providers::{SimulatedProvider, carry_out};

/// A run stops after this many inputs, whatever is still queued.
pub const MAX_INPUTS_PER_RUN: usize = 10_000_000;

/// The engine, its simulated providers and a virtual clock.
pub struct VirtualRun {
    pub engine: Engine,
    pub providers: BTreeMap<ProviderName, SimulatedProvider>,
    queue: TimeQueue<Input>,
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
            queue: TimeQueue::default(),
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
        self.queue.push(at.max(self.now), input);
    }

    /// Processes queued inputs in time order until the queue is empty, the
    /// next input is after `until`, or the input bound is reached.
    pub fn run_until(&mut self, until: Option<Timestamp>) {
        while self.inputs_processed < MAX_INPUTS_PER_RUN {
            let next = match until {
                Some(until) => self.queue.pop_due(until),
                None => self.queue.pop(),
            };
            let Some((at, input)) = next else { break };
            self.now = at;
            self.inputs_processed += 1;
            let effects = self.engine.handle(self.now, input);
            self.execute(effects);
        }
    }

    fn execute(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            for (at, input) in carry_out(&mut self.providers, self.now, &effect) {
                self.schedule(at, input);
            }
            if let Effect::Ledger(event) = effect {
                self.chain.append(&event);
                self.events.push(event);
            }
        }
    }
}

impl VirtualRun {
    /// Processes inputs in time order while `keep_going` holds after each one.
    pub fn run_while(&mut self, mut keep_going: impl FnMut(&Engine) -> bool) {
        while self.inputs_processed < MAX_INPUTS_PER_RUN && keep_going(&self.engine) {
            let Some((at, input)) = self.queue.pop() else { break };
            self.now = at;
            self.inputs_processed += 1;
            let effects = self.engine.handle(self.now, input);
            self.execute(effects);
        }
    }
}

impl VirtualRun {
    /// The instant of the next queued input, if any.
    pub fn next_at(&self) -> Option<Timestamp> {
        self.queue.next_at()
    }
}
