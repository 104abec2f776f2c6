//! Recovery: a start replays the ledger (from the latest snapshot that checks out, or from
//! the beginning) through a fresh engine, which must make exactly the decisions the
//! ledger records, and hands over a broker in the state the ledger gives.
//!
//! A replay decides nothing new and calls no one: timers and provider calls still
//! outstanding come from the `timers` and `outbox` rows ([`Broker::take_over`]); only the
//! in-process providers' state (reservations, random streams) is rebuilt from the effects.

use std::collections::VecDeque;

use dibs_core::contract::ContractSet;

use super::snapshot::{SNAPSHOT_KIND, SNAPSHOT_TAKEN_KIND};
use super::*;

/// The decisions the replayed engine made that the ledger has not shown yet, in order.
#[derive(Default)]
struct Expected {
    decided: VecDeque<String>,
}

impl Expected {
    /// The ledger's decision at `seq` must be the next one the replay made.
    fn meet(&mut self, seq: u64, recorded: &str) -> Result<(), StoreError> {
        match self.decided.pop_front() {
            Some(body) if body == recorded => Ok(()),
            Some(body) => Err(StoreError::Corrupt {
                seq,
                problem: format!("the ledger records {recorded} but replaying its inputs decides {body}"),
            }),
            None => Err(StoreError::Corrupt { seq, problem: "a decision no recorded input explains".into() }),
        }
    }

    /// Before the entry at `seq` (an input, a configuration, a snapshot, or the end), the
    /// ledger must have shown every decision the replay made so far.
    fn all_met(&self, seq: u64) -> Result<(), StoreError> {
        match self.decided.front() {
            Some(body) => Err(StoreError::Corrupt {
                seq,
                problem: format!("replay decides {body}, which the ledger does not record"),
            }),
            None => Ok(()),
        }
    }
}

impl Broker {
    /// Rebuilds the engine from the store's ledger and re-arms what is outstanding.
    /// Replays the ledger, then, when `configuration` differs from the one
    /// the ledger last recorded, records it and runs under it from now on.
    pub fn recover(
        store: Box<dyn Store>,
        providers: BTreeMap<dibs_core::types::ProviderName, SimulatedProvider>,
        remote: Option<Dispatcher>,
        clock: Clock,
        configuration: Option<Configuration>,
    ) -> Result<(Self, Recovery), StoreError> {
        Self::recover_with(store, providers, remote, clock, configuration, engine_config())
    }

    /// [`Broker::recover`] with an engine configuration: `dibs ledger verify` and
    /// `rebuild` keep every request (`forget_finished: false`), to compare or rewrite
    /// the whole `requests` table.
    pub fn recover_with(
        store: Box<dyn Store>,
        providers: BTreeMap<dibs_core::types::ProviderName, SimulatedProvider>,
        remote: Option<Dispatcher>,
        clock: Clock,
        configuration: Option<Configuration>,
        config: EngineConfig,
    ) -> Result<(Self, Recovery), StoreError> {
        let mut broker = Self {
            engine: Engine::new(ContractSet::default(), Vec::new(), config),
            finished: BTreeMap::new(),
            ended_this_turn: BTreeMap::new(),
            configuration: None,
            store,
            providers,
            due: TimeQueue::default(),
            clock,
            next_request: 1,
            next_incident: 1,
            turn_answers: Vec::new(),
            remote,
            rows: Batch::default(),
            persisted: std::collections::HashSet::new(),
            timer_ops: Vec::new(),
            time_speed: 1.0,
            signer: None,
            checkpointed: (0, std::time::Instant::now()),
            compact_at: MIN_COMPACT_AT,
            last_start: None,
            head: 0,
            snapshots: snapshot::Snapshots::default(),
        };
        let mut recovery = Recovery {
            entries: 0,
            inputs: 0,
            configurations: 0,
            requests: 0,
            outstanding: 0,
            snapshot: None,
            snapshot_refused: None,
            snapshots_checked: 0,
            snapshot_entries: 0,
        };
        let mut expected = Expected::default();
        // A service starts from its latest snapshot; a check (`verify`, `rebuild`) keeps
        // every request and replays everything.
        if config.forget_finished {
            match broker.load_snapshot() {
                Ok(loaded) => {
                    recovery.snapshot = loaded;
                    recovery.entries = broker.head;
                }
                Err(why) => {
                    broker.forget_replay(config);
                    recovery.snapshot_refused = Some(why);
                }
            }
        }
        let mut after = broker.head;
        loop {
            let page = broker.store.entries(after, dibs_store::MAX_PAGE)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for entry in page {
                recovery.entries += 1;
                broker.head = entry.seq;
                if entry.kind == SNAPSHOT_TAKEN_KIND || entry.kind == SNAPSHOT_KIND {
                    expected.all_met(entry.seq)?;
                    recovery.snapshot_entries += 1;
                    if entry.kind == SNAPSHOT_TAKEN_KIND {
                        broker.snapshot_announced(entry.seq, &entry.body)?;
                    } else if broker.snapshot_recorded(entry.seq, &entry.body)? {
                        recovery.snapshots_checked += 1;
                    }
                    continue;
                }
                if entry.kind == CONFIGURED_KIND {
                    expected.all_met(entry.seq)?;
                    let configuration: Configuration =
                        serde_json::from_str(&entry.body).map_err(|e| StoreError::Corrupt {
                            seq: entry.seq,
                            problem: format!("an unreadable configuration: {e}"),
                        })?;
                    if configuration.origin == Configuration::COMMAND_LINE {
                        broker.last_start = Some(configuration.clone());
                    }
                    broker
                        .configure(configuration)
                        .map_err(|e| StoreError::Corrupt { seq: entry.seq, problem: e })?;
                    recovery.configurations += 1;
                    continue;
                }
                if entry.kind == dibs_store::ACKNOWLEDGED_KIND {
                    // The store's record of an idempotency answer: checked by `verify`.
                    continue;
                }
                if entry.kind != INPUT_KIND {
                    // A decision: it must be the next one the replayed engine made.
                    expected.meet(entry.seq, &entry.body)?;
                    continue;
                }
                expected.all_met(entry.seq)?;
                let recorded: RecordedInput = serde_json::from_str(&entry.body).map_err(|e| {
                    StoreError::Corrupt { seq: entry.seq, problem: format!("an unreadable input: {e}") }
                })?;
                recovery.inputs += 1;
                if let Input::Submit(request) = &recorded.input {
                    broker.note_request_id(&request.id);
                }
                if let Input::IncidentOpened { id, .. } = &recorded.input
                    && let Some(n) = id.strip_prefix("inc-").and_then(|n| n.parse::<u64>().ok())
                {
                    broker.next_incident = broker.next_incident.max(n + 1);
                }
                let effects = broker.engine.handle(recorded.at, recorded.input);
                for effect in effects {
                    broker.rebuild_providers(recorded.at, &effect);
                    if let Effect::Ledger(event) = effect {
                        expected.decided.push_back(event_body(&event));
                    }
                }
                broker.note_finished(false);
            }
        }
        expected.all_met(recovery.entries + 1)?;
        if let Some(configuration) = configuration
            && !broker.last_start.as_ref().is_some_and(|last| last.same_as(&configuration))
        {
            let now = (broker.clock)();
            let entry = configured_entry(now, &configuration);
            broker.configure(configuration.clone()).map_err(StoreError::Invalid)?;
            broker.last_start = Some(configuration);
            let stored = broker.store.append(&Batch { entries: vec![entry], ..Batch::default() })?;
            broker.head = stored.last().map_or(broker.head, |e| e.seq);
        }
        recovery.requests = broker.engine.requests().count() + broker.finished.len();
        Ok((broker, recovery))
    }

    /// A snapshot that could not be loaded may have changed part of the broker: back to
    /// nothing replayed, to replay the whole ledger.
    fn forget_replay(&mut self, config: EngineConfig) {
        self.engine = Engine::new(ContractSet::default(), Vec::new(), config);
        self.finished.clear();
        self.configuration = None;
        self.last_start = None;
        self.next_request = 1;
        self.next_incident = 1;
        self.head = 0;
        self.snapshots.at = 0;
        self.snapshots.bytes = 0;
    }

    /// A replayed effect: the in-process providers answer calls as they did (their state is
    /// part of the broker's), and nothing is scheduled, recorded or sent.
    fn rebuild_providers(&mut self, now: Timestamp, effect: &Effect) {
        for call in calls_for(effect) {
            if !self.remote.as_ref().is_some_and(|r| r.is_remote(call.provider())) {
                let _ = call_in_process(&mut self.providers, &call, now);
            }
        }
    }
}
