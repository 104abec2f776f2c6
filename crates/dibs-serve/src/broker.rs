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

use dibs_core::contract::{self, ContractSet};
use dibs_core::engine::{Effect, Engine, EngineConfig, HolderAnswer, Input, MAX_QUOTES_PER_ANSWER, Timer};
use dibs_core::ledger::Event;
use dibs_core::queue::TimeQueue;
use dibs_core::request::RequestSpec;
use dibs_core::types::Offer;
use dibs_core::types::Timestamp;
use dibs_providers::protocol::calls_for;
use dibs_providers::{SimulatedProvider, call_in_process};
use dibs_store::{Batch, IdempotentAnswer, NewEntry, Row, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::remote::{Call, CallRecord, Dispatcher};

mod snapshot;

use crate::view::{self, RequestView};
pub use snapshot::SNAPSHOT_EVERY;
use snapshot::{SNAPSHOT_KIND, SNAPSHOT_TAKEN_KIND};

/// At most this many commands are decided per commit.
pub const MAX_BATCH: usize = 512;
/// At most this many due inputs one turn handles after its commands.
const MAX_CASCADE: usize = 100_000;
/// At most this many requests one list returns.
pub const MAX_LIST: usize = 500;

/// An error a client sees: an HTTP status, and the field at fault if any.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        Self { status, error: error.into(), field: None }
    }
    pub fn field(status: u16, field: &str, error: impl Into<String>) -> Self {
        Self { status, error: error.into(), field: Some(field.to_owned()) }
    }
}

/// A reply: status and JSON body.
pub type Reply = Result<(u16, serde_json::Value), ApiError>;

/// How far ahead a request may be placed: two years.
pub const MAX_HOURS_AHEAD: f64 = 2.0 * 365.0 * 24.0;

/// A reply with `body`, one of the API's own types (`view.rs`), as its JSON.
fn ok(status: u16, body: impl Serialize) -> Reply {
    Ok((status, serde_json::to_value(body).expect("the API's types serialize")))
}

/// The request body of a submission (the id is assigned by dibs). `Default` is not a valid
/// submission (no accelerator, no GPUs): it fills the optional fields of one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// Acceptable accelerators, in order of preference.
    pub accelerators: Vec<String>,
    pub gpus: u32,
    /// GPUs that must sit together: in one node when a node of the accelerator holds them,
    /// else a gang of whole nodes of one offer. Default 8 when `gpus` is a multiple of 8, else 1.
    #[serde(default)]
    pub block: Option<u32>,
    pub duration_hours: u32,
    /// RFC 3339; default: now.
    #[serde(default)]
    pub earliest_start: Option<String>,
    #[serde(default)]
    pub deliver_by: Option<String>,
    /// Provider-qualified locations (`aws/us-east-1`, `gcp/*`); a bare region only when one
    /// provider uses the name. Empty: anywhere.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Acceptable providers, in order of preference. Empty: any.
    #[serde(default)]
    pub providers: Vec<String>,
    #[serde(default)]
    pub exclude_providers: Vec<String>,
    pub workload: String,
    /// USD per GPU-hour, all-in.
    #[serde(default)]
    pub max_price: Option<f64>,
    /// `never` (default), `allow` or `only`.
    #[serde(default)]
    pub spot: Option<String>,
    /// All nodes identical and in one region.
    #[serde(default)]
    pub same_region: bool,
    /// `cost` (default) or `time`.
    #[serde(default)]
    pub objective: Option<String>,
    /// `any` (default), `fallback` or `premium:P`.
    #[serde(default)]
    pub preference: Option<String>,
    /// All capacity ready within this many hours of the service's now: `deliver_by` reckoned
    /// by the server's clock, which a client's clock may not agree with (a demo clock runs
    /// ahead of it). Give this or `deliver_by`, not both.
    #[serde(default)]
    pub deliver_within_hours: Option<u32>,
}

/// What the HTTP side asks of the broker.
pub enum Command {
    Submit {
        body: Box<SubmitBody>,
        /// (scope, key, digest of the body) when the client sent an Idempotency-Key.
        idempotency: Option<(String, String, String)>,
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    Cancel {
        id: String,
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    Get {
        id: String,
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    List {
        status: Option<String>,
        after: Option<String>,
        limit: usize,
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// A provider's answer, from a worker calling it over HTTP; due at `at`
    /// (`None`: now); `call` is the outbox row it answers.
    Input {
        at: Option<Timestamp>,
        input: Box<Input>,
        call: Option<String>,
    },
    /// Report an incident on a provider (or one of its regions).
    OpenIncident {
        provider: String,
        region: Option<String>,
        idempotency: Option<(String, String, String)>,
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    ResolveIncident {
        id: String,
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// Revenue earned, reported to dibs (for revenue share and review triggers).
    ReportRevenue {
        amount: f64,
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// An event declared for review-trigger conditions.
    DeclareEvent {
        name: String,
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// The latest settlement.
    Settlement {
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    Incidents {
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// Allocations in id order after `after`, of one provider if given.
    Allocations {
        provider: Option<String>,
        after: u64,
        limit: usize,
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// A provider answering over the API (the pull side of the provider
    /// protocol): its answer to a solicitation, or its quotes.
    ProviderAnswer {
        provider: String,
        request: String,
        answer: ProviderReply,
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// Load a contract set (file name, contents): it applies from now on.
    LoadContracts {
        files: Vec<(String, String)>,
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// The contracts the engine runs under; with `id`, one of them with its clauses.
    Contracts {
        id: Option<String>,
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// The providers requests may ask, how each is reached, and its open incidents.
    Providers {
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// How many requests are in each status.
    Stats {
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// A look at the engine's state that decides nothing (the dashboard's pages): `read` runs
    /// on the broker thread during a turn, and what it returns is called once that turn has
    /// committed, so a page shows only what is durable.
    Read {
        read: Box<dyn FnOnce(&ReadView<'_>) -> Delivery + Send>,
    },
    /// Stop after the current turn.
    Shutdown,
}

/// What a [`Command::Read`] sees.
pub struct ReadView<'a> {
    pub engine: &'a Engine,
    /// Requests that have ended: the engine no longer holds them.
    pub finished: &'a BTreeMap<Arc<str>, Arc<Finished>>,
    /// The broker's instant for this turn (a demo clock's, under `--time-speed`).
    pub now: Timestamp,
    /// What the engine runs under.
    pub configuration: Option<&'a Configuration>,
    remote: Option<&'a Dispatcher>,
}

impl ReadView<'_> {
    /// How a provider is reached: `in-process`, `pull`, or its URL.
    pub fn reached(&self, provider: &dibs_core::types::ProviderName) -> String {
        reached(self.remote, provider)
    }
}

/// Hands a read's answer over once the turn that computed it has committed.
pub type Delivery = Box<dyn FnOnce() + Send>;

fn reached(remote: Option<&Dispatcher>, provider: &dibs_core::types::ProviderName) -> String {
    match remote.and_then(|r| r.url(provider)) {
        Some(url) if url == crate::remote::PULL => "pull".to_owned(),
        Some(url) => url.to_owned(),
        None => "in-process".to_owned(),
    }
}

/// What a provider sends through the API.
#[derive(Debug, Clone)]
pub enum ProviderReply {
    /// To a solicitation: `{"answer": "decline"}` or `{"answer": "accept", ...}`.
    Holder(HolderAnswer),
    /// To a quote request: `{"offers": [...]}`.
    Quotes { offers: Vec<Offer> },
}

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
        Input::AllocationReady { allocation } => Some(DueKey::Ready { allocation: *allocation }),
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
    /// While replaying, effects rebuild the in-process providers' state but
    /// schedule nothing: what is due comes from the timer rows.
    replaying: bool,
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
    /// The entry recording the last snapshot, and how many entries may follow it before
    /// the next (0: never; see `snapshot`).
    snapshot_at: u64,
    snapshot_every: u64,
    /// The size of the last snapshot.
    snapshot_bytes: u64,
    /// Writes snapshots beside the broker (none: the broker writes them).
    snapshot_writer: Option<snapshot::SnapshotWriter>,
    /// While replaying: the digests of the states at the snapshots announced, by entry.
    announced: BTreeMap<u64, String>,
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
            replaying: true,
            rows: Batch::default(),
            persisted: std::collections::HashSet::new(),
            timer_ops: Vec::new(),
            time_speed: 1.0,
            signer: None,
            checkpointed: (0, std::time::Instant::now()),
            compact_at: MIN_COMPACT_AT,
            last_start: None,
            head: 0,
            snapshot_at: 0,
            snapshot_every: SNAPSHOT_EVERY,
            snapshot_bytes: 0,
            snapshot_writer: None,
            announced: BTreeMap::new(),
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
        let mut expected: std::collections::VecDeque<String> = std::collections::VecDeque::new();
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
                    if let Some(body) = expected.front() {
                        return Err(StoreError::Corrupt {
                            seq: entry.seq,
                            problem: format!("replay decides {body}, which the ledger does not record"),
                        });
                    }
                    recovery.snapshot_entries += 1;
                    if entry.kind == SNAPSHOT_TAKEN_KIND {
                        broker.snapshot_announced(entry.seq, &entry.body)?;
                    } else if broker.snapshot_recorded(entry.seq, &entry.body)? {
                        recovery.snapshots_checked += 1;
                    }
                    continue;
                }
                if entry.kind == CONFIGURED_KIND {
                    if let Some(body) = expected.front() {
                        return Err(StoreError::Corrupt {
                            seq: entry.seq,
                            problem: format!("replay decides {body}, which the ledger does not record"),
                        });
                    }
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
                    match expected.pop_front() {
                        Some(body) if body == entry.body => continue,
                        Some(body) => {
                            return Err(StoreError::Corrupt {
                                seq: entry.seq,
                                problem: format!(
                                    "the ledger records {} but replaying its inputs decides {body}",
                                    entry.body
                                ),
                            });
                        }
                        None => {
                            return Err(StoreError::Corrupt {
                                seq: entry.seq,
                                problem: "a decision no recorded input explains".into(),
                            });
                        }
                    }
                }
                if let Some(body) = expected.front() {
                    return Err(StoreError::Corrupt {
                        seq: entry.seq,
                        problem: format!("replay decides {body}, which the ledger does not record"),
                    });
                }
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
                    broker.execute(recorded.at, &effect);
                    if let Effect::Ledger(event) = effect {
                        expected.push_back(event_body(&event));
                    }
                }
                broker.note_finished(false);
            }
        }
        if let Some(body) = expected.front() {
            return Err(StoreError::Corrupt {
                seq: recovery.entries + 1,
                problem: format!("replay decides {body}, which the ledger does not record"),
            });
        }
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
        broker.replaying = false;
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
        self.snapshot_at = 0;
        self.snapshot_bytes = 0;
    }

    /// Writes a snapshot every `entries` ledger entries (0: never), and at shutdown.
    pub fn set_snapshot_every(&mut self, entries: u64) {
        self.snapshot_every = entries;
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
    /// timer rows) is queued, and its calls in the outbox are released to this
    /// leader's workers. Returns how many timers were queued. Only a leader
    /// about to serve does this; a read-only check must not.
    pub fn take_over(&mut self) -> Result<usize, StoreError> {
        for row in self.store.timers()? {
            let input: Input = serde_json::from_str(&row.body).map_err(|e| StoreError::Corrupt {
                seq: 0,
                problem: format!("timer {}: an unreadable input: {e}", row.key),
            })?;
            self.due.push(Timestamp::from_unix(row.due), input);
            self.persisted.insert(row.key);
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

    /// Queues an input due at an instant, and (outside replay) records it as
    /// a timer row in this turn's commit.
    fn schedule(&mut self, at: Timestamp, input: Input) {
        if self.replaying {
            return;
        }
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
    /// While replaying, only the in-process providers' state is rebuilt.
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
                if let Call::Reserve { allocation, plan } = &call {
                    let ready = Input::AllocationReady { allocation: *allocation };
                    self.schedule(now.plus_hours(f64::from(plan.lead_time_hours)), ready);
                }
                continue;
            }
            if self.replaying {
                continue;
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
        if let Some(key) = key_of(&input)
            && !self.replaying
        {
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

    /// One turn: due inputs and commands, one commit, then replies and provider calls.
    pub fn turn(&mut self, commands: Vec<Command>) -> Result<(), StoreError> {
        let now = (self.clock)();
        let mut entries = Vec::new();
        while let Some((_, input)) = self.due.pop_due(now) {
            self.apply(now, input, &mut entries);
        }
        let mut replies = Vec::new();
        let mut deliveries: Vec<Delivery> = Vec::new();
        for command in commands {
            match command {
                Command::Submit { body, idempotency, reply } => {
                    let answer = self.submit(now, *body, idempotency, &mut entries);
                    replies.push((reply, answer));
                }
                Command::Cancel { id, reply } => {
                    // Cancelling twice changes nothing (and records nothing); a request that
                    // ended otherwise cannot be cancelled.
                    let status = self
                        .engine
                        .request(&id)
                        .map(|r| r.status)
                        .or_else(|| self.finished.get(id.as_str()).map(|f| f.status));
                    let answer = match status {
                        None => Err(ApiError::new(404, format!("no request {id:?}"))),
                        Some(dibs_core::engine::Status::Cancelled) => self.any_view(&id).map(|v| (200, v)),
                        Some(status) if status.is_final() => Err(ApiError::new(
                            409,
                            format!("{id} is {} and cannot be cancelled", status.as_str()),
                        )),
                        Some(_) => {
                            self.apply(now, Input::Cancel { request: id.clone() }, &mut entries);
                            Ok((200, self.view(&id)))
                        }
                    };
                    replies.push((reply, answer));
                }
                Command::Get { id, reply } => {
                    let answer = self.any_view(&id).map(|v| (200, v));
                    replies.push((reply, answer));
                }
                Command::List { status, after, limit, reply } => {
                    let answer = self.list(status.as_deref(), after.as_deref(), limit.min(MAX_LIST));
                    replies.push((reply, answer));
                }
                Command::Stats { reply } => {
                    let mut requests: BTreeMap<String, usize> = BTreeMap::new();
                    for state in self.engine.requests() {
                        *requests.entry(state.status.as_str().to_owned()).or_default() += 1;
                    }
                    for ended in self.finished.values() {
                        *requests.entry(ended.status.as_str().to_owned()).or_default() += 1;
                    }
                    let stats = view::StatsView { requests, pending_inputs: self.due.len() };
                    replies.push((reply, ok(200, stats)));
                }
                Command::OpenIncident { provider, region, idempotency, reply } => {
                    let answer = match self.first_answer(&idempotency) {
                        Ok(Some(first)) => Ok(first),
                        Err(e) => Err(e),
                        Ok(None) => self.open_incident(now, provider, region, &mut entries).inspect(
                            |(status, value)| {
                                self.remember(idempotency, *status, value);
                            },
                        ),
                    };
                    replies.push((reply, answer));
                }
                Command::ResolveIncident { id, reply } => {
                    // Resolving twice changes nothing (and records nothing), as cancelling does.
                    let issued = id
                        .strip_prefix("inc-")
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|n| n >= 1 && n < self.next_incident && id == format!("inc-{n}"));
                    let answer = if self.engine.open_incidents().any(|(open, ..)| open == id) {
                        self.apply(now, Input::IncidentResolved { id: id.clone() }, &mut entries);
                        ok(200, view::IncidentResolvedView { id, resolved: true })
                    } else if issued {
                        ok(200, view::IncidentResolvedView { id, resolved: true })
                    } else {
                        Err(ApiError::new(404, format!("no incident {id:?}")))
                    };
                    replies.push((reply, answer));
                }
                Command::ReportRevenue { amount, reply } => {
                    self.apply(now, Input::RevenueReported { amount }, &mut entries);
                    let body = crate::view::RevenueReportedView {
                        amount,
                        month: dibs_core::settlement::month_of(now),
                    };
                    replies.push((reply, ok(201, body)));
                }
                Command::DeclareEvent { name, reply } => {
                    self.apply(now, Input::EventDeclared { name: name.clone() }, &mut entries);
                    let body = crate::view::EventDeclaredView { name, at: now.to_string() };
                    replies.push((reply, ok(201, body)));
                }
                Command::Settlement { reply } => {
                    replies.push((reply, ok(200, crate::view::settlement(&self.engine))));
                }
                Command::Incidents { reply } => {
                    let incidents = self
                        .engine
                        .open_incidents()
                        .map(|(id, provider, region)| view::IncidentView {
                            id: id.to_owned(),
                            provider: provider.to_string(),
                            region: region.map(|r| r.to_string()),
                        })
                        .collect();
                    replies.push((reply, ok(200, view::IncidentList { incidents })));
                }
                Command::Allocations { provider, after, limit, reply } => {
                    let list: Vec<view::AllocationView> = self
                        .engine
                        .allocations_from(after + 1)
                        .filter(|a| provider.as_deref().is_none_or(|p| a.plan.provider.as_str() == p))
                        .take(limit.min(MAX_LIST))
                        .map(view::allocation)
                        .collect();
                    let next =
                        (list.len() == limit.min(MAX_LIST)).then(|| list.last().map(|a| a.id)).flatten();
                    replies
                        .push((reply, ok(200, view::AllocationPage { allocations: list, next_after: next })));
                }
                Command::ProviderAnswer { provider, request, answer, reply } => {
                    let answer = self.provider_answer(now, &provider, request, answer, &mut entries);
                    replies.push((reply, answer));
                }
                Command::LoadContracts { files, reply } => {
                    let offers = self.configuration.as_ref().map(|c| c.offers.clone()).unwrap_or_default();
                    let time_speed = self.configuration.as_ref().and_then(|c| c.time_speed);
                    let configuration = Configuration {
                        contracts: files,
                        offers,
                        origin: Configuration::API.into(),
                        time_speed,
                    };
                    let entry = configured_entry(now, &configuration);
                    // Parsing changes nothing when the files are wrong.
                    let answer = match self.configure(configuration) {
                        Err(e) => Err(ApiError::field(422, "files", e)),
                        Ok(()) => {
                            entries.push(entry);
                            let loaded =
                                self.engine.contracts().contracts.iter().map(|c| c.id.clone()).collect();
                            ok(200, view::ContractsLoaded { loaded, from: now.to_string() })
                        }
                    };
                    replies.push((reply, answer));
                }
                Command::Contracts { id, reply } => {
                    let contracts = &self.engine.contracts().contracts;
                    let answer = match id {
                        None => {
                            let contracts = contracts.iter().map(|c| view::contract(c, false)).collect();
                            ok(200, view::ContractList { contracts })
                        }
                        Some(id) => match contracts.iter().find(|c| c.id == id) {
                            Some(c) => ok(200, view::contract(c, true)),
                            None => Err(ApiError::new(404, format!("no contract {id:?}"))),
                        },
                    };
                    replies.push((reply, answer));
                }
                Command::Providers { reply } => {
                    let list: Vec<_> = self
                        .engine
                        .published_providers()
                        .map(|name| {
                            let reached = reached(self.remote.as_ref(), name);
                            let open_incidents = self
                                .engine
                                .open_incidents()
                                .filter(|(_, p, _)| *p == name)
                                .map(|(id, ..)| id.to_owned())
                                .collect();
                            view::ProviderView {
                                name: name.to_string(),
                                reached,
                                open_incidents,
                                healthy: None,
                            }
                        })
                        .collect();
                    replies.push((reply, ok(200, view::ProviderList { providers: list })));
                }
                Command::Input { at, input, call } => {
                    // The answered call leaves the outbox with this turn's commit.
                    if let Some(call) = call {
                        self.rows.outbox_done.push(call);
                    }
                    match at {
                        Some(at) if at > now => self.schedule(at, *input),
                        _ => self.apply(now, *input, &mut entries),
                    }
                }
                Command::Read { read } => {
                    let view = ReadView {
                        engine: &self.engine,
                        finished: &self.finished,
                        now,
                        configuration: self.configuration.as_ref(),
                        remote: self.remote.as_ref(),
                    };
                    // A read only borrows the engine, so a panic in one (a page's bug) leaves
                    // nothing half-changed: it is dropped, its page says the broker did not
                    // answer, and the broker goes on.
                    if let Ok(delivery) =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&view)))
                    {
                        deliveries.push(delivery);
                    }
                }
                Command::Shutdown => {}
            }
        }
        let answers = std::mem::take(&mut self.turn_answers);
        // Inputs the turn made due by now (an in-process provider's immediate
        // answer, a timer already past) are handled in the same turn, so they
        // need no timer row at all.
        let mut cascaded = 0;
        while cascaded < MAX_CASCADE
            && let Some((_, input)) = self.due.pop_due(now)
        {
            self.apply(now, input, &mut entries);
            cascaded += 1;
        }
        self.drop_moot_timers();
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
                self.snapshot_bytes = record.bytes;
            }
            if let Some(last) = stored.last() {
                self.head = last.seq;
                self.checkpoint(last.seq, last.hash, false)?;
            }
        }
        self.ended_this_turn.clear();
        for (reply, answer) in replies {
            let _ = reply.send(answer);
        }
        for deliver in deliveries {
            deliver();
        }
        if let Some(remote) = &self.remote {
            remote.wake(calls);
        }
        // After the replies: a snapshot delays the next turn, not this one's answers.
        self.snapshot(now, false)
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

    fn provider_answer(
        &mut self,
        now: Timestamp,
        provider: &str,
        request: String,
        answer: ProviderReply,
        entries: &mut Vec<NewEntry>,
    ) -> Reply {
        let name =
            dibs_core::types::ProviderName::new(provider).map_err(|e| ApiError::new(403, e.to_string()))?;
        // Only a provider that calls in answers here; the others answer the calls dibs makes
        // to them (in process, or over HTTP), and an answer from anyone else is a spoof.
        if self.remote.as_ref().and_then(|r| r.url(&name)) != Some(crate::remote::PULL) {
            return Err(ApiError::new(
                403,
                format!(
                    "{name} is not a pull provider: dibs calls it, and only its answers to those calls count"
                ),
            ));
        }
        let input = match answer {
            ProviderReply::Holder(answer) => {
                let round = self.engine.awaiting_holder(&request, &name).ok_or_else(|| {
                    ApiError::new(409, format!("{request} is not waiting for {name}'s first-refusal answer"))
                })?;
                Input::HolderAnswer { request: request.clone(), round, answer }
            }
            ProviderReply::Quotes { mut offers } => {
                let round = self.engine.awaiting_quotes(&request, &name).ok_or_else(|| {
                    ApiError::new(409, format!("{request} is not waiting for quotes from {name}"))
                })?;
                if offers.len() > MAX_QUOTES_PER_ANSWER {
                    return Err(ApiError::field(
                        422,
                        "offers",
                        format!("at most {MAX_QUOTES_PER_ANSWER} offers per answer"),
                    ));
                }
                for (i, offer) in offers.iter().enumerate() {
                    if let Err(problem) = self.engine.names().check_quoted(&name, offer) {
                        let field = format!("offers[{i}].{}", problem.field);
                        return Err(ApiError::field(422, &field, problem.message));
                    }
                }
                offers.iter_mut().for_each(|o| o.valid_until = o.valid_until.or(Some(now.plus_hours(24.0))));
                Input::Quotes { request: request.clone(), round, provider: name, offers }
            }
        };
        self.apply(now, input, entries);
        ok(200, view::AnswerTaken { request, accepted: true })
    }

    fn open_incident(
        &mut self,
        now: Timestamp,
        provider: String,
        region: Option<String>,
        entries: &mut Vec<NewEntry>,
    ) -> Reply {
        let provider = dibs_core::types::ProviderName::new(&provider)
            .map_err(|e| ApiError::field(422, "provider", e.to_string()))?;
        if !self.engine.publishes(&provider) {
            return Err(ApiError::field(422, "provider", format!("{provider} publishes no offers here")));
        }
        let region = region
            .map(|r| {
                // A region of that provider's, as `aws/us-east-1` or `us-east-1`.
                let text = if r.contains('/') { r } else { format!("{provider}/{r}") };
                match self.engine.names().location(&text) {
                    Ok(location) if location.provider == provider => location.region.ok_or_else(|| {
                        ApiError::field(422, "region", "name one region, or leave it out for all of them")
                    }),
                    Ok(location) => Err(ApiError::field(
                        422,
                        "region",
                        format!("{text} is {}'s, not {provider}'s", location.provider),
                    )),
                    Err(e) => Err(ApiError::field(422, "region", e)),
                }
            })
            .transpose()?;
        let id = format!("inc-{}", self.next_incident);
        self.next_incident += 1;
        let input =
            Input::IncidentOpened { id: id.clone(), provider: provider.clone(), region: region.clone() };
        self.apply(now, input, entries);
        ok(
            201,
            view::IncidentView { id, provider: provider.to_string(), region: region.map(|r| r.to_string()) },
        )
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

    /// The first answer to a create made before with the same Idempotency-Key
    /// (scope, key, body digest), if any; an error if the body differs.
    fn first_answer(
        &mut self,
        idempotency: &Option<(String, String, String)>,
    ) -> Result<Option<(u16, serde_json::Value)>, ApiError> {
        let Some((scope, key, digest)) = idempotency else { return Ok(None) };
        let earlier = match self.turn_answers.iter().find(|a| &a.scope == scope && &a.key == key) {
            Some(answer) => Some(answer.clone()),
            None => self.store.answer(scope, key).map_err(|e| ApiError::new(503, e.to_string()))?,
        };
        let Some(answer) = earlier else { return Ok(None) };
        if &answer.request_digest != digest {
            return Err(ApiError::field(
                422,
                "Idempotency-Key",
                format!("key {key:?} was used with a different request body"),
            ));
        }
        let value = serde_json::from_str(&answer.response).unwrap_or(serde_json::Value::Null);
        Ok(Some((answer.status, value)))
    }

    /// Keeps a create's answer under its Idempotency-Key, committed with the turn.
    fn remember(
        &mut self,
        idempotency: Option<(String, String, String)>,
        status: u16,
        value: &serde_json::Value,
    ) {
        if let Some((scope, key, digest)) = idempotency {
            self.turn_answers.push(IdempotentAnswer {
                scope,
                key,
                request_digest: digest,
                status,
                response: value.to_string(),
            });
        }
    }

    /// The view of a request the engine holds or that ended in this turn.
    fn view(&self, id: &str) -> serde_json::Value {
        match self.engine.request(id) {
            Some(state) => serde_json::to_value(view::request(&self.engine, state)),
            None => serde_json::to_value(self.ended_this_turn.get(id).expect("checked by the caller")),
        }
        .expect("views serialize")
    }

    /// A request's view wherever it is: in the engine, ended in this turn, or stored.
    fn any_view(&mut self, id: &str) -> Result<serde_json::Value, ApiError> {
        if self.engine.request(id).is_some() || self.ended_this_turn.contains_key(id) {
            Ok(self.view(id))
        } else if self.finished.contains_key(id) {
            self.stored_view(id)
        } else {
            Err(ApiError::new(404, format!("no request {id:?}")))
        }
    }

    /// A page of requests in id order, open ones from the engine and ended ones from the
    /// `requests` table.
    fn list(&mut self, status: Option<&str>, after: Option<&str>, limit: usize) -> Reply {
        let wanted = |id: &str, s: dibs_core::engine::Status| {
            status.is_none_or(|want| s.as_str() == want) && after.is_none_or(|a| view::id_order(id, a))
        };
        let mut page: Vec<(String, bool)> = Vec::new();
        {
            let open = self.engine.requests().map(|s| (s.request.id.as_str(), s.status, true));
            let ended = self.finished.iter().map(|(id, f)| (&**id, f.status, false));
            let mut open = open.filter(|(id, s, _)| wanted(id, *s)).peekable();
            let mut ended = ended.filter(|(id, s, _)| wanted(id, *s)).peekable();
            while page.len() < limit {
                let next = match (open.peek(), ended.peek()) {
                    (Some(a), Some(b)) if a.0 <= b.0 => open.next(),
                    (Some(_), Some(_)) | (None, Some(_)) => ended.next(),
                    (Some(_), None) => open.next(),
                    (None, None) => None,
                };
                let Some((id, _, held)) = next else { break };
                page.push((id.to_owned(), held));
            }
        }
        let mut requests = Vec::with_capacity(page.len());
        for (id, held) in &page {
            let view = if *held { self.view(id) } else { self.any_view(id)? };
            requests.push(view);
        }
        let next_after = (page.len() == limit).then(|| page.last().map(|(id, _)| id.clone())).flatten();
        ok(200, view::RequestPage { requests, next_after })
    }

    /// The stored view of a request that ended in an earlier turn.
    fn stored_view(&mut self, id: &str) -> Result<serde_json::Value, ApiError> {
        match self.store.request_view(id) {
            Ok(Some(view)) => serde_json::from_str(&view).map_err(|e| ApiError::new(500, e.to_string())),
            Ok(None) => Err(ApiError::new(500, format!("{id} ended but has no row in the requests table"))),
            Err(e) => Err(ApiError::new(503, e.to_string())),
        }
    }

    fn submit(
        &mut self,
        now: Timestamp,
        body: SubmitBody,
        idempotency: Option<(String, String, String)>,
        entries: &mut Vec<NewEntry>,
    ) -> Reply {
        if let Some(first) = self.first_answer(&idempotency)? {
            return Ok(first);
        }
        // Instants within a year before now (a start in the past means now) and
        // MAX_HOURS_AHEAD after it: a date of 0000 or 9999 is a typo, not a plan.
        let (earliest, latest) = (now.plus_hours(-24.0 * 365.0), now.plus_hours(MAX_HOURS_AHEAD));
        let instant = |field: &str, text: &Option<String>| -> Result<Option<Timestamp>, ApiError> {
            let Some(text) = text.as_deref() else { return Ok(None) };
            let at = Timestamp::parse(text).map_err(|e| ApiError::field(422, field, e.to_string()))?;
            if at < earliest || at > latest {
                return Err(ApiError::field(
                    422,
                    field,
                    format!("{at} is not between {earliest} and {latest} (a year back, two years ahead)"),
                ));
            }
            Ok(Some(at))
        };
        if body.deliver_within_hours.is_some_and(|h| f64::from(h) > MAX_HOURS_AHEAD) {
            return Err(ApiError::field(
                422,
                "deliver_within_hours",
                format!("at most {MAX_HOURS_AHEAD} hours"),
            ));
        }
        let spec = RequestSpec {
            id: format!("r-{}", self.next_request),
            accelerators: body.accelerators,
            gpus: body.gpus,
            // Whole 8-GPU nodes unless the request says otherwise or cannot be.
            block: body.block.or(Some(if body.gpus.is_multiple_of(8) { 8 } else { 1 })),
            duration_hours: body.duration_hours,
            earliest_start: instant("earliest_start", &body.earliest_start)?.unwrap_or(now).max(now),
            deliver_by: match (instant("deliver_by", &body.deliver_by)?, body.deliver_within_hours) {
                (Some(_), Some(_)) => {
                    return Err(ApiError::field(
                        422,
                        "deliver_within_hours",
                        "give deliver_by or deliver_within_hours, not both",
                    ));
                }
                (by, within) => by.or(within.map(|hours| now.plus_hours(f64::from(hours)))),
            },
            // A region list in one string splits around region names that hold commas.
            regions: body.regions.iter().flat_map(|r| self.engine.names().split_locations(r)).collect(),
            providers: body.providers,
            exclude_providers: body.exclude_providers,
            workload: body.workload,
            max_price: body.max_price,
            spot: body.spot,
            same_region: body.same_region,
            objective: body.objective,
            preference: body.preference,
        };
        let request =
            spec.validate(self.engine.names()).map_err(|e| ApiError::field(422, e.field, e.to_string()))?;
        self.next_request += 1;
        let id = request.id.clone();
        self.apply(now, Input::Submit(request), entries);
        if self.engine.request(&id).is_none() && !self.ended_this_turn.contains_key(&id) {
            // The engine refused it (recorded in the ledger): it holds the most open requests
            // it takes.
            return Err(ApiError::new(
                503,
                format!(
                    "dibs holds the most open requests it takes ({}); submit again when some have ended",
                    dibs_core::engine::MAX_OPEN_REQUESTS
                ),
            ));
        }
        let view = self.view(&id);
        self.remember(idempotency, 201, &view);
        Ok((201, view))
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
