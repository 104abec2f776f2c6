//! The broker: the live shell around the engine.
//!
//! One thread owns the engine, the store and the providers. Commands arrive
//! on a channel; each turn of the loop takes every command waiting (up to
//! [`MAX_BATCH`]) and every input now due (timers, provider answers), feeds
//! the engine at the wall-clock instant, and commits everything the turn
//! recorded (the inputs, the engine's ledger events, the idempotency
//! answers) in one transaction. Only then are clients answered and
//! provider calls made: an acknowledged request is durable, and a provider
//! never hears of a decision the ledger does not hold.
//!
//! The ledger records every input with the instant it was handled. On
//! start, the broker replays those inputs through a fresh engine, checks
//! that the engine makes the decisions the ledger recorded (the ledger is
//! the source of truth; the engine's state is its projection), and re-arms
//! what is still outstanding: timers not yet fired, solicitations and quote
//! requests not yet answered, reservations not yet ready. That is the
//! outbox, derived from the ledger rather than kept beside it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use dibs_core::contract;
use dibs_core::engine::{Effect, Engine, EngineConfig, Input, Timer};
use dibs_core::ledger::Event;
use dibs_core::queue::TimeQueue;
use dibs_core::types::Offer;
use dibs_core::types::Timestamp;
use dibs_providers::protocol::calls_for;
use dibs_providers::{SimulatedProvider, call_in_process};
use dibs_store::{Batch, IdempotentAnswer, NewEntry, Row, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::remote::{Call, CallRecord, Dispatcher};

mod commands;
mod replay;
mod snapshot;

use commands::Held;
pub use commands::{
    BrokerError, Command, Delivery, MAX_FIELD_ERRORS, MAX_HOURS_AHEAD, ProviderReply, ReadView, Replier,
    SubmitBody, every_field_error,
};

use crate::view::{self, RequestView};
pub use snapshot::SNAPSHOT_EVERY;

/// At most this many commands are decided per commit.
pub const MAX_BATCH: usize = 512;
/// At most this many due inputs one turn handles after its commands.
const MAX_CASCADE: usize = 100_000;
/// At most this many requests one list returns.
pub const MAX_LIST: usize = 500;

pub use crate::clock::{Clock, wall_clock};

/// Identifies a timer or an outgoing call: the key of its row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
enum DueKey {
    Timer(Timer),
    HolderAnswer { request: String, round: u32 },
    Quotes { request: String, round: u32, provider: String },
    Ready { allocation: u64 },
}

fn due_key(key: &DueKey) -> String {
    serde_json::to_string(key).expect("keys serialize")
}

fn call_key(call: &Call) -> Option<DueKey> {
    match call {
        Call::Solicit(s) => Some(DueKey::HolderAnswer { request: s.ask.request.clone(), round: s.ask.round }),
        Call::Quote { provider, ask } => Some(DueKey::Quotes {
            request: ask.request.clone(),
            round: ask.round,
            provider: provider.to_string(),
        }),
        Call::Reserve { allocation, .. } => Some(DueKey::Ready { allocation: *allocation }),
        Call::Cancel { .. } | Call::Release { .. } => None,
    }
}

fn key_of(input: &Input) -> Option<DueKey> {
    match input {
        Input::Timer(timer) => Some(DueKey::Timer(timer.clone())),
        Input::HolderAnswer { request, round, .. } => {
            Some(DueKey::HolderAnswer { request: request.clone(), round: *round })
        }
        Input::Quotes { request, round, provider, .. }
        | Input::QuoteFailed { request, round, provider, .. } => {
            Some(DueKey::Quotes { request: request.clone(), round: *round, provider: provider.to_string() })
        }
        Input::AllocationReady { allocation } | Input::ReservationFailed { allocation, .. } => {
            Some(DueKey::Ready { allocation: *allocation })
        }
        _ => None,
    }
}

/// What a ledger entry recording an input holds.
#[derive(Serialize, Deserialize)]
pub(crate) struct RecordedInput {
    pub at: Timestamp,
    #[serde(flatten)]
    pub input: Input,
}

/// The entry kind of a recorded input.
pub(crate) const INPUT_KIND: &str = "input";
/// The entry kind of a recorded configuration.
const CONFIGURED_KIND: &str = "configured";

/// What the engine runs under: the contract files (name, contents) and the
/// offers providers publish. Recorded in the ledger whenever it changes, so
/// a replay runs each input under the configuration it was handled under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Configuration {
    pub contracts: Vec<(String, String)>,
    pub offers: Vec<Offer>,
    /// Where it came from: `command-line` (a start) or `api` (a contract load).
    pub origin: String,
    /// How many times faster than the wall clock the service's clock runs (`--time-speed`, a
    /// demo of simulated providers); absent at real time. Instants in the ledger are the
    /// service's, so this says how to read them; a replay feeds each input at its recorded
    /// instant and needs no clock at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_speed: Option<f64>,
}

impl Configuration {
    pub const COMMAND_LINE: &str = "command-line";
    pub const API: &str = "api";

    /// What a start runs under: these contract files and offers, at real time.
    pub fn at_start(contracts: Vec<(String, String)>, offers: Vec<Offer>) -> Self {
        Self { contracts, offers, origin: Self::COMMAND_LINE.into(), time_speed: None }
    }

    /// The embedded default: the built-in `default` contracts and the bundled price table.
    pub fn builtin_default() -> Self {
        let contracts = contract::builtin_contract_texts("default").expect("the built-in contracts load");
        Self::at_start(contracts, dibs_core::catalog::bundled_catalog().offers)
    }

    /// The same contracts, offers and clock speed, wherever they came from.
    fn same_as(&self, other: &Configuration) -> bool {
        self.contracts == other.contracts
            && self.offers == other.offers
            && self.time_speed == other.time_speed
    }
}

fn configured_entry(now: Timestamp, configuration: &Configuration) -> NewEntry {
    NewEntry {
        at: now.to_string(),
        kind: CONFIGURED_KIND.into(),
        request: None,
        body: serde_json::to_string(configuration).expect("configurations serialize"),
    }
}

/// What the service keeps in memory of a request that has ended (the engine no longer
/// holds it): enough to count, filter and list it. Its full view is its `requests` row,
/// written in the turn it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finished {
    pub status: dibs_core::engine::Status,
    pub workload: dibs_core::types::WorkloadClass,
    pub gpus: u32,
    pub hours: u32,
    pub earliest_start: Timestamp,
    pub accelerators: Box<[dibs_core::types::Accelerator]>,
    pub allocations: Box<[u64]>,
    /// GPUs it ended without.
    pub unfilled_gpus: u32,
}

impl Finished {
    fn of(state: &dibs_core::engine::RequestState) -> Self {
        let r = &state.request;
        Self {
            status: state.status,
            workload: r.workload,
            gpus: r.gpus.get(),
            hours: r.duration_hours,
            earliest_start: r.earliest_start,
            accelerators: r.accelerators.clone().into_boxed_slice(),
            allocations: state.allocations.clone().into_boxed_slice(),
            unfilled_gpus: state.unfilled_gpus,
        }
    }
}

pub struct Broker {
    pub engine: Engine,
    /// Requests that have ended, by id (see [`Finished`]). Shared, never changed once
    /// inserted: a snapshot copies the map's entries, not the records.
    finished: BTreeMap<Arc<str>, Arc<Finished>>,
    /// Views of the requests that ended in this turn: its replies and its projection rows.
    ended_this_turn: BTreeMap<String, RequestView>,
    configuration: Option<Configuration>,
    store: Box<dyn Store>,
    providers: BTreeMap<dibs_core::types::ProviderName, SimulatedProvider>,
    due: TimeQueue<Input>,
    clock: Clock,
    next_request: u64,
    next_incident: u64,
    /// Idempotency answers recorded in this turn, not yet committed.
    turn_answers: Vec<IdempotentAnswer>,
    /// Providers reached over HTTP.
    remote: Option<Dispatcher>,
    /// Timer and outbox rows this turn adds and removes, committed with its entries.
    rows: Batch,
    /// Keys of the timer rows in the store.
    persisted: std::collections::HashSet<String>,
    /// This turn's timer changes in order: a row set (`Some`) or fired (`None`).
    timer_ops: Vec<(String, Option<Row>)>,
    /// How many times faster than the wall clock `clock` runs: the loop sleeps real time.
    time_speed: f64,
    /// Signs checkpoints of the head (none in tests that need none).
    signer: Option<crate::signing::HeadSigner>,
    /// The last checkpoint: its sequence number and when it was written.
    checkpointed: (u64, std::time::Instant),
    /// The queue length at which moot timers are next dropped.
    compact_at: usize,
    /// The configuration the last start recorded (`--` flags): a restart with the same ones
    /// records none.
    last_start: Option<Configuration>,
    /// The ledger's last entry.
    head: u64,
    /// When snapshots are taken, who writes them, and what a replay met of them.
    snapshots: snapshot::Snapshots,
}

/// The shortest queue worth looking through for moot timers.
const MIN_COMPACT_AT: usize = 1024;

/// What replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub entries: u64,
    pub inputs: u64,
    /// Configurations (contracts and catalog) the ledger records.
    pub configurations: u64,
    pub requests: usize,
    /// Timers queued by [`Broker::take_over`].
    pub outstanding: usize,
    /// The entry the snapshot the start loaded is as of (entries up to it were not
    /// replayed), if it loaded one.
    pub snapshot: Option<u64>,
    /// Why the stored snapshot was not used (the whole ledger was replayed instead).
    pub snapshot_refused: Option<String>,
    /// Snapshots the replay met and checked against the state it reached.
    pub snapshots_checked: u64,
    /// Entries that announce or record snapshots (neither inputs nor decisions).
    pub snapshot_entries: u64,
}

impl Broker {
    /// Writes a snapshot every `entries` ledger entries (0: never), and at shutdown.
    pub fn set_snapshot_every(&mut self, entries: u64) {
        self.snapshots.every = entries;
    }

    /// From now on, signs a checkpoint of the head every so many entries or seconds, and at
    /// shutdown (see [`crate::signing`]).
    pub fn sign_heads(&mut self, signer: crate::signing::HeadSigner) {
        self.signer = Some(signer);
    }

    /// Writes a signed checkpoint of entry `seq` (hashed to `hash`) if one is due, or always
    /// when `now_anyway`.
    fn checkpoint(&mut self, seq: u64, hash: [u8; 32], now_anyway: bool) -> Result<(), StoreError> {
        let Some(signer) = &self.signer else { return Ok(()) };
        let (last, when) = self.checkpointed;
        let due = seq >= last + crate::signing::CHECKPOINT_ENTRIES
            || when.elapsed() >= crate::signing::CHECKPOINT_EVERY
            || now_anyway;
        if seq == 0 || seq <= last || !due {
            return Ok(());
        }
        self.store.add_head(&signer.sign(seq, hash, (self.clock)().to_string()))?;
        self.checkpointed = (seq, std::time::Instant::now());
        Ok(())
    }

    /// Takes over from the last leader: what was due when it stopped (its
    /// timer rows, less those that would do nothing now) is queued, and its calls in the
    /// outbox are released to this leader's workers. Returns how many timers were queued. Only a leader
    /// about to serve does this; a read-only check must not.
    pub fn take_over(&mut self) -> Result<usize, StoreError> {
        for row in self.store.timers()? {
            let input: Input = serde_json::from_str(&row.body).map_err(|e| StoreError::Corrupt {
                seq: 0,
                problem: format!("timer {}: an unreadable input: {e}", row.key),
            })?;
            self.persisted.insert(row.key.clone());
            // A timer that would do nothing when it fires (its request decided, its
            // allocation no longer waiting) is not re-armed: its row goes with the first commit.
            if let Input::Timer(timer) = &input
                && !self.engine.timer_matters(timer)
            {
                self.timer_ops.push((row.key, None));
                continue;
            }
            self.due.push(Timestamp::from_unix(row.due), input);
        }
        self.store.release_calls()?;
        Ok(self.due.len())
    }

    /// Tells the loop that the clock runs `speed` times faster than the wall clock, so it
    /// sleeps until the next due input in real time.
    pub fn set_time_speed(&mut self, speed: f64) {
        self.time_speed = speed.max(1.0);
    }

    fn note_request_id(&mut self, id: &str) {
        if let Some(n) = id.strip_prefix("r-").and_then(|n| n.parse::<u64>().ok()) {
            self.next_request = self.next_request.max(n + 1);
        }
    }

    /// Runs under a configuration from now on.
    fn configure(&mut self, configuration: Configuration) -> Result<(), String> {
        let contracts =
            contract::contract_set_from_texts(&configuration.contracts).map_err(|e| e.to_string())?;
        self.engine.reconfigure(contracts, configuration.offers.clone());
        self.configuration = Some(configuration);
        Ok(())
    }

    /// This turn's row changes, reduced to what must reach the store: per
    /// timer key only the last change counts, and a key with no row in the
    /// store needs no delete.
    fn compact_rows(&mut self) -> Batch {
        let mut rows = std::mem::take(&mut self.rows);
        let mut last: BTreeMap<String, Option<Row>> = BTreeMap::new();
        for (key, op) in self.timer_ops.drain(..) {
            last.insert(key, op);
        }
        for (key, op) in last {
            match op {
                Some(row) => {
                    self.persisted.insert(key);
                    rows.timers_set.push(row);
                }
                None => {
                    if self.persisted.remove(&key) {
                        rows.timers_fired.push(key);
                    }
                }
            }
        }
        rows
    }

    /// Queues an input due at an instant, and records it as a timer row in this turn's
    /// commit.
    fn schedule(&mut self, at: Timestamp, input: Input) {
        if let Some(key) = key_of(&input) {
            let body = serde_json::to_string(&input).expect("inputs serialize");
            let key = due_key(&key);
            self.timer_ops.push((key.clone(), Some(Row { key, due: at.unix(), body })));
        }
        self.due.push(at, input);
    }

    /// Carries out one effect, before the turn commits: the in-process
    /// providers answer (their answers become timer rows), calls to remote
    /// providers become outbox rows for the workers to make after the commit.
    /// (A replay only rebuilds the in-process providers' state: `replay.rs`.)
    fn execute(&mut self, now: Timestamp, effect: &Effect) {
        if let Effect::SetTimer { at, timer } = effect {
            self.schedule(*at, Input::Timer(timer.clone()));
            return;
        }
        let mut calls = Vec::new();
        for call in calls_for(effect) {
            if self.remote.as_ref().is_some_and(|r| r.is_remote(call.provider())) {
                calls.push(call);
            } else if let Some((at, input)) = call_in_process(&mut self.providers, &call, now) {
                self.schedule(at, input);
            }
        }
        for call in calls {
            let pull = self.remote.as_ref().and_then(|r| r.url(call.provider())) == Some(crate::remote::PULL);
            if pull {
                // A pull provider finds solicitations and quote requests in its feed.
                // It has no way to confirm a reservation: the capacity counts as
                // ready after the lead time it quoted.
                if let Call::Reserve { allocation, plan, .. } = &call {
                    let ready = Input::AllocationReady { allocation: *allocation };
                    self.schedule(now.plus_hours(f64::from(plan.lead_time_hours)), ready);
                }
                continue;
            }
            if let Call::Cancel { allocation, .. } = &call {
                // A reservation not yet made is not made at all: a cloud would launch nodes
                // for an allocation that no longer wants them (one under way finishes, and
                // the cancellation after it terminates what it launched).
                self.rows.outbox_done.push(due_key(&DueKey::Ready { allocation: *allocation }));
            }
            let key = match call_key(&call) {
                Some(key) => due_key(&key),
                None => format!("{}:{}", call.path(), call.allocation().unwrap_or(0)),
            };
            let body = serde_json::to_string(&CallRecord { at: now, call }).expect("calls serialize");
            self.rows.outbox_add.push(Row { key, due: now.unix(), body });
        }
    }

    /// Feeds one input to the engine: records it, and the decisions it
    /// causes, in `entries`, and carries out its effects.
    fn apply(&mut self, now: Timestamp, input: Input, entries: &mut Vec<NewEntry>) {
        if let Some(key) = key_of(&input) {
            // If it was waiting as a timer row, it is no longer waiting.
            self.timer_ops.push((due_key(&key), None));
        }
        let recorded = RecordedInput { at: now, input };
        entries.push(NewEntry {
            at: now.to_string(),
            kind: INPUT_KIND.into(),
            request: request_of(&recorded.input),
            body: serde_json::to_string(&recorded).expect("inputs serialize"),
        });
        let effects = self.engine.handle(now, recorded.input);
        for effect in &effects {
            if let Effect::Ledger(event) = effect {
                entries.push(NewEntry {
                    at: event.at.to_string(),
                    kind: event.kind.name().to_owned(),
                    request: event.request.clone(),
                    body: event_body(event),
                });
            }
            self.execute(now, effect);
        }
        self.note_finished(true);
    }

    /// Takes the requests the engine let go of (they ended) into `finished`; `with_views`
    /// keeps their last views for this turn's replies and projection rows.
    fn note_finished(&mut self, with_views: bool) {
        for state in self.engine.take_finished() {
            if with_views {
                self.ended_this_turn.insert(state.request.id.clone(), view::request(&self.engine, &state));
            }
            self.finished.insert(state.request.id.as_str().into(), Arc::new(Finished::of(&state)));
        }
    }

    /// Runs until a `Shutdown` command or the channel closes.
    pub fn run(mut self, commands: Receiver<Command>) -> Result<(), StoreError> {
        loop {
            let now = (self.clock)();
            let wait = self.due.next_at().map_or(Duration::from_millis(500), |at| {
                // Virtual seconds to wait, in real ones, and at least once a second.
                let seconds = at.unix().saturating_sub(now.unix()).max(0) as f64 / self.time_speed;
                Duration::from_secs_f64(seconds.min(1.0))
            });
            let mut commands_now = Vec::new();
            match commands.recv_timeout(wait) {
                Ok(command) => commands_now.push(command),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            while commands_now.len() < MAX_BATCH {
                match commands.try_recv() {
                    Ok(command) => commands_now.push(command),
                    Err(_) => break,
                }
            }
            let shutdown = commands_now.iter().any(|c| matches!(c, Command::Shutdown));
            self.turn(commands_now)?;
            if shutdown {
                let now = (self.clock)();
                self.finish_snapshots(now)?;
                self.snapshot(now, true)?;
                let (seq, hash) = self.store.head()?;
                self.checkpoint(seq, hash, true)?;
                return Ok(());
            }
        }
    }

    /// When the next input is due (a timer, an in-process provider's answer), if any.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.due.next_at()
    }

    /// One turn: the inputs due now, the commands, what they made due at once (the
    /// cascade), one commit, then the answers and the provider calls.
    pub fn turn(&mut self, commands: Vec<Command>) -> Result<(), StoreError> {
        let now = (self.clock)();
        let mut entries = Vec::new();
        while let Some((_, input)) = self.due.pop_due(now) {
            self.apply(now, input, &mut entries);
        }
        let mut held = Held::default();
        for command in commands {
            self.command(now, command, &mut entries, &mut held);
        }
        self.cascade(now, &mut entries);
        self.drop_moot_timers();
        let calls = self.commit(now, entries)?;
        held.send();
        if let Some(remote) = &self.remote {
            remote.wake(calls);
        }
        // After the answers: a snapshot delays the next turn, not this one's answers.
        self.snapshot(now, false)
    }

    /// Inputs the turn made due by now (an in-process provider's immediate answer, a timer
    /// already past) are handled in the same turn, so they need no timer row at all.
    fn cascade(&mut self, now: Timestamp, entries: &mut Vec<NewEntry>) {
        let mut cascaded = 0;
        while cascaded < MAX_CASCADE
            && let Some((_, input)) = self.due.pop_due(now)
        {
            self.apply(now, input, entries);
            cascaded += 1;
        }
    }

    /// Commits the turn: its entries, idempotency answers, projection rows, timer and outbox
    /// rows, in one transaction. Returns how many provider calls it queued.
    fn commit(&mut self, now: Timestamp, mut entries: Vec<NewEntry>) -> Result<usize, StoreError> {
        let answers = std::mem::take(&mut self.turn_answers);
        // A snapshot the writer has finished is recorded by this turn's last entry.
        let written = self.snapshot_written();
        if let Some(record) = &written {
            entries.push(Self::snapshot_entry(now, record));
        }
        let rows = self.compact_rows();
        let calls = rows.outbox_add.len();
        if !entries.is_empty() || !answers.is_empty() || rows != Batch::default() {
            // The requests this turn touched, as the projection will show them.
            let touched: std::collections::BTreeSet<&str> =
                entries.iter().filter_map(|e| e.request.as_deref()).collect();
            let requests = touched.into_iter().filter_map(|id| self.projected(id)).collect();
            // The commit that makes this turn's decisions durable. If it fails,
            // the engine holds decisions the ledger does not: stop, and let the
            // restart replay the ledger.
            let snapshot_recorded = written.as_ref().map(|record| record.taken);
            let stored =
                self.store.append(&Batch { entries, answers, requests, snapshot_recorded, ..rows })?;
            if let Some(record) = &written {
                self.snapshots.bytes = record.bytes;
            }
            if let Some(last) = stored.last() {
                self.head = last.seq;
                self.checkpoint(last.seq, last.hash, false)?;
            }
        }
        self.ended_this_turn.clear();
        Ok(calls)
    }

    /// Drops the timers that would do nothing when they fire (see
    /// [`Engine::timer_matters`]), and their rows, once the queue has doubled since the
    /// last look. Otherwise a request decided early keeps its holder window and quote
    /// deadline queued, in memory and in the store, for up to 72 hours, and each adds a
    /// ledger entry that changes nothing when it fires.
    fn drop_moot_timers(&mut self) {
        if self.due.len() < self.compact_at {
            return;
        }
        let engine = &self.engine;
        let dropped = self.due.retain(|input| match input {
            Input::Timer(timer) => engine.timer_matters(timer),
            _ => true,
        });
        for input in dropped {
            if let Some(key) = key_of(&input) {
                self.timer_ops.push((due_key(&key), None));
            }
        }
        self.compact_at = (2 * self.due.len()).max(MIN_COMPACT_AT);
    }

    /// A request's row in the `requests` projection.
    fn projected(&self, id: &str) -> Option<(String, String)> {
        let view = match self.engine.request(id) {
            Some(state) => view::request(&self.engine, state),
            None => self.ended_this_turn.get(id)?.clone(),
        };
        Some((id.to_owned(), serde_json::to_string(&view).expect("views serialize")))
    }

    /// The whole projection as the engine's state gives it.
    pub fn projection(&self) -> Vec<(String, String)> {
        self.engine.requests().filter_map(|s| self.projected(&s.request.id)).collect()
    }

    /// Compares the stored `requests` projection with the engine's state;
    /// names the first request that differs. Returns the rows compared.
    pub fn check_projection(&mut self) -> Result<usize, String> {
        let expected = self.projection();
        let mut stored = Vec::new();
        let mut after = String::new();
        loop {
            let page =
                self.store.projected_requests(&after, dibs_store::MAX_PAGE).map_err(|e| e.to_string())?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            stored.extend(page);
        }
        for (i, (id, view)) in expected.iter().enumerate() {
            match stored.get(i) {
                Some((stored_id, stored_view)) if stored_id == id && stored_view == view => {}
                Some((stored_id, _)) if stored_id == id => {
                    return Err(format!(
                        "request {id}: the projection holds another state than the ledger gives"
                    ));
                }
                _ => return Err(format!("request {id}: missing from the projection")),
            }
        }
        if let Some((id, _)) = stored.get(expected.len()) {
            return Err(format!("request {id}: in the projection but not in the ledger"));
        }
        Ok(expected.len())
    }

    /// Replaces the stored projection with the engine's state.
    pub fn rebuild_projection(&mut self) -> Result<usize, StoreError> {
        let rows = self.projection();
        self.store.replace_projection(&rows)?;
        Ok(rows.len())
    }
}

fn event_body(event: &Event) -> String {
    serde_json::to_string(event).expect("ledger events serialize")
}

fn request_of(input: &Input) -> Option<String> {
    match input {
        Input::Submit(r) => Some(r.id.clone()),
        Input::HolderAnswer { request, .. }
        | Input::Quotes { request, .. }
        | Input::QuoteFailed { request, .. }
        | Input::Cancel { request } => Some(request.clone()),
        Input::Timer(Timer::HolderWindow { request, .. } | Timer::QuoteDeadline { request, .. }) => {
            Some(request.clone())
        }
        _ => None,
    }
}

/// The engine configuration the service runs with.
/// The live engine settles hourly: spend, commitments and triggers stay current. It
/// forgets requests that have ended: the broker keeps a small record of each
/// ([`Finished`]) and their views are in the `requests` table.
pub fn engine_config() -> EngineConfig {
    EngineConfig { settle_every_hours: 1.0, forget_finished: true, ..EngineConfig::default() }
}
