//! The engine: `state + input(now) -> new state + effects`.
//!
//! The engine owns the lifecycle of every request (DESIGN.md, "Request
//! lifecycle") and nothing else. It performs no I/O: each input carries the
//! instant it happened, and everything the engine wants done leaves as an
//! [`Effect`]: solicit a holder, ask for quotes, reserve, cancel, set a timer,
//! append to the ledger. The live service executes effects over HTTP and a
//! database; the simulator executes them against simulated providers and a
//! virtual clock. The same code decides in both.
//!
//! A request is worked in *rounds*. The first round places the whole request;
//! spillover (an allocation late past its promised time plus grace) and
//! failover (an incident on the allocation's provider or region) each queue
//! a new round for the GPUs lost, for the hours that remain. One round runs
//! at a time per request; each round has the same shape:
//!
//! ```text
//! screening -> [first refusal] -> market -> [match] -> award | unfilled
//! ```
//!
//! A round's state is one enum, [`Phase`]: screened, waiting for the holder (with what it
//! was offered and what follows its answer, [`AfterHolder`]), or waiting for quotes (who was
//! asked, who answered). An input moves a request by one transition; each transition returns
//! the next [`Step`] and [`Engine::drive`] runs them until the request waits again, so no
//! transition calls back into the one that called it.
//!
//! The engine also settles itself: `Timer::Settle` every `settle_every_hours` accrues spend,
//! burns commitments down ([`crate::commitments`], the one formula screening shares),
//! evaluates review triggers over reported revenue and declared events (both inputs), and
//! applies a trigger's suspension to its own state. Everything it decides is in the ledger.
//!
//! First refusal applies to a round when a `first_refusal` clause in force
//! covers the request (and, for spillover and failover rounds, the clause
//! says it covers them). Its holder may be skipped only when none of its
//! published offers meets the hard requirements; the skip records why each
//! offer fails. The *no-better-terms* rule: after the holder declined at a
//! price, a market award at a higher price goes back to the holder first
//! (at most `MAX_RESOLICITATIONS` times per round).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::commitments::{CommitmentBooks, CommitmentKey, CommitmentStatus};
use crate::contract::{ContractSet, HolderTerms, NoBetterTerms, RefusalMode, ShareBasis, Suspension};
use crate::ledger::{AllocationRecord, Event, EventKind};
use crate::names::Names;
use crate::placement::{self, Cap, Demand, Fleet, PlannedAllocation, Rules, SolverConfig};
use crate::request::{Request, SpotPolicy};
use crate::settlement::Settler;
use crate::types::{
    Accelerator, GpuCount, Location, NodePrice, Offer, OfferKind, Price, ProviderName, Region, Timestamp,
    WorkloadClass,
};

mod snapshot;

pub use snapshot::EngineSnapshot;

/// A round re-solicits the holder at most this often under the no-better-terms rule.
pub const MAX_RESOLICITATIONS: u32 = 2;
/// A request is worked in at most this many rounds (initial, spillovers, failovers).
pub const MAX_ROUNDS_PER_REQUEST: u32 = 32;
/// The engine holds at most this many requests that are not finished.
pub const MAX_OPEN_REQUESTS: usize = 1_000_000;
/// A provider's answer may carry at most this many quotes.
pub const MAX_QUOTES_PER_ANSWER: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    /// How long providers have to quote in a market round.
    pub quote_window_hours: f64,
    /// Grace after an allocation's promised ready time before it spills over.
    pub delivery_grace_hours: f64,
    /// How often the engine settles (accrues spend, burns commitments down, evaluates review
    /// triggers), counted from its first input.
    pub settle_every_hours: f64,
    pub solver: SolverConfig,
    /// Hand each request that ends (released, unfilled, cancelled) to the shell
    /// ([`Engine::take_finished`]) instead of keeping it: a long-running service keeps its
    /// memory to the requests still open. Decisions are the same either way: an ended
    /// request takes no further part in any (its allocations stay).
    pub forget_finished: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            quote_window_hours: 1.0,
            delivery_grace_hours: 2.0,
            settle_every_hours: 24.0,
            solver: SolverConfig::default(),
            forget_finished: false,
        }
    }
}

/// What a first-refusal holder says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum HolderAnswer {
    /// Takes `gpus` (all of the solicited GPUs, or part) on the solicited terms, as whole nodes
    /// of `instance_type` (`gpus_per_node` GPUs each) in `region`.
    Accept {
        gpus: u32,
        region: Region,
        accelerator: Accelerator,
        instance_type: String,
        gpus_per_node: GpuCount,
        lead_time_hours: u32,
    },
    Decline,
}

/// Something that happened, at the instant the shell passes to [`Engine::handle`].
/// Inputs serialize so a durable shell can record them in its ledger and
/// rebuild the engine by replaying them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    Submit(Request),
    HolderAnswer {
        request: String,
        round: u32,
        answer: HolderAnswer,
    },
    Quotes {
        request: String,
        round: u32,
        provider: ProviderName,
        offers: Vec<Offer>,
    },
    /// A call for quotes that got no usable answer by its deadline (errors, timeouts, a
    /// provider down): the provider quoted nothing, and the round knows why.
    QuoteFailed {
        request: String,
        round: u32,
        provider: ProviderName,
        error: String,
    },
    Timer(Timer),
    AllocationReady {
        allocation: u64,
    },
    IncidentOpened {
        id: String,
        provider: ProviderName,
        region: Option<Region>,
    },
    IncidentResolved {
        id: String,
    },
    Cancel {
        request: String,
    },
    /// Revenue the buyer earned (reported to dibs), counted in the month of the instant.
    RevenueReported {
        amount: f64,
    },
    /// An event declared for review-trigger conditions (`"agi_declared" in events`).
    EventDeclared {
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "timer", rename_all = "snake_case")]
pub enum Timer {
    HolderWindow {
        request: String,
        round: u32,
        solicitation: u32,
    },
    QuoteDeadline {
        request: String,
        round: u32,
    },
    DeliveryDue {
        allocation: u64,
    },
    Release {
        allocation: u64,
    },
    /// The engine's own settlement tick.
    Settle,
}

/// The terms put to a first-refusal holder: the capacity asked for, and a price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Solicitation {
    pub holder: ProviderName,
    pub mode: RefusalMode,
    /// The price per GPU-hour offered (offer-first) or to match (match).
    pub price: Price,
    #[serde(flatten)]
    pub ask: Ask,
}

/// The capacity a round asks a provider for, in a solicitation or a quote request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ask {
    pub request: String,
    pub round: u32,
    pub gpus: u32,
    /// GPUs that must sit together (see `Request::block`).
    pub block: u32,
    pub accelerators: Vec<String>,
    /// Where the capacity may be; empty means anywhere. A provider reads its own locations.
    pub regions: Vec<Location>,
    pub spot: SpotPolicy,
    pub duration_hours: u32,
    pub deliver_by: Option<Timestamp>,
    pub respond_by: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    Solicit(Solicitation),
    RequestQuotes {
        providers: Vec<ProviderName>,
        ask: Ask,
    },
    Reserve {
        allocation: u64,
        plan: PlannedAllocation,
        promised: Timestamp,
    },
    Cancel {
        allocation: u64,
        provider: ProviderName,
        why: String,
    },
    /// The allocation ran its hours: the provider takes its nodes back.
    Release {
        allocation: u64,
        provider: ProviderName,
    },
    SetTimer {
        at: Timestamp,
        timer: Timer,
    },
    Ledger(Event),
}

impl Ask {
    fn new(id: &str, round: u32, request: &Request, gpus: u32, hours: u32, respond_by: Timestamp) -> Self {
        Self {
            request: id.to_owned(),
            round,
            gpus,
            block: request.block.get(),
            accelerators: request.accelerators.iter().map(|a| a.to_string()).collect(),
            regions: request.regions.clone(),
            spot: request.spot,
            duration_hours: hours,
            deliver_by: request.deliver_by,
            respond_by,
        }
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Screening,
    FirstRefusal,
    Market,
    Provisioning,
    Active,
    Released,
    Unfilled,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Screening => "screening",
            Self::FirstRefusal => "first_refusal",
            Self::Market => "market",
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Released => "released",
            Self::Unfilled => "unfilled",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Released | Self::Unfilled | Self::Cancelled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationState {
    Reserved,
    Active,
    Released,
    /// Cancelled by spillover, failover or the buyer.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub id: u64,
    pub request: String,
    pub round: u32,
    /// `first_refusal` or `market`.
    pub via: String,
    pub plan: PlannedAllocation,
    pub hours: u32,
    pub awarded_at: Timestamp,
    pub promised: Timestamp,
    pub ready_at: Option<Timestamp>,
    /// When it is due to end: ready time plus `hours`.
    pub ends_at: Option<Timestamp>,
    /// When it actually ended: released, or cancelled by spillover, failover or the buyer.
    pub ended_at: Option<Timestamp>,
    pub state: AllocationState,
    /// The workload class of its request: the fleet and the commitment books count by it,
    /// also after the request has ended.
    #[serde(skip, default = "snapshot::placeholder_workload")]
    pub workload: WorkloadClass,
    /// The GPU-hours its request asked for: no request bills more (see `settlement`).
    #[serde(skip)]
    pub asked_gpu_hours: f64,
}

/// Why a round exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Initial,
    Spillover,
    Failover,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Spillover => "spillover",
            Self::Failover => "failover",
        }
    }
}

/// The first-refusal terms that apply to a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RefusalTerms {
    holder: ProviderName,
    mode: RefusalMode,
    terms: HolderTerms,
    window_hours: u32,
    no_better_terms: NoBetterTerms,
    reference: String,
}

/// The rules screening derived for a round, fixed for its life.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Screened {
    refusal: Option<RefusalTerms>,
    rules: Rules,
    /// The minimum-provider rule as written; `rules.min_providers` is what is left of it
    /// once the providers the request already uses are counted.
    min_providers: Option<(u32, String)>,
}

/// Where a round stands. Each variant carries exactly the data of that state; a round is
/// `Screened` only between its screening and its first wait, inside one input's handling.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Phase {
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
enum AfterHolder {
    /// Offer-first, first solicitation: the market has not been asked yet.
    AskMarket,
    /// A no-better-terms re-offer: the quotes are in hand; place what the holder leaves.
    Decide,
    /// Match mode: the holder was shown this market award; if it passes, the award stands.
    Match(Vec<PlannedAllocation>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Round {
    number: u32,
    /// GPUs this round still has to place.
    gpus: u32,
    hours: u32,
    screened: Screened,
    phase: Phase,
    /// Every quote received in this round.
    quotes: Vec<Offer>,
    /// The highest price the holder declined in this round.
    declined_price: Option<f64>,
    solicitations: u32,
    /// Providers asked in this round that gave no quote, and why (a failed call, no answer
    /// by the deadline): an unfilled round says so.
    silent: BTreeMap<ProviderName, String>,
}

/// What the engine does next for one request. Each transition returns the next step and
/// [`Engine::drive`] runs them until the request waits for an input: no transition calls
/// back into the one that called it.
#[derive(Debug)]
enum Step {
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

/// A provider's failure is recorded in at most this many characters.
const MAX_FAILURE_TEXT: usize = 300;

/// One input drives a request through at most this many steps; more is a bug.
const MAX_STEPS_PER_INPUT: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    purpose: Purpose,
    gpus: u32,
    hours: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestState {
    pub request: Request,
    pub status: Status,
    pub allocations: Vec<u64>,
    pub unfilled_gpus: u32,
    pub unfilled_reason: Option<String>,
    /// Providers that failed to deliver for this request; later rounds do not ask them.
    failed_providers: BTreeMap<ProviderName, String>,
    rounds_started: u32,
    /// Boxed: a request waits most of its life, and ends, with no round running, and an
    /// unboxed round would make every request as large as one.
    round: Option<Box<Round>>,
    pending: Vec<Pending>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Incident {
    provider: ProviderName,
    region: Option<Region>,
}

/// The engine's whole state. Cloning it is a snapshot.
#[derive(Debug, Clone)]
pub struct Engine {
    contracts: ContractSet,
    config: EngineConfig,
    /// Offers providers have published (a catalog), by provider: the evidence
    /// for holder skips, and the set of providers a market round asks.
    published: BTreeMap<ProviderName, Vec<Offer>>,
    /// The largest node of each accelerator among the published offers: a block up to this
    /// size must sit in one node (see `placement`).
    largest_node: BTreeMap<Accelerator, u32>,
    /// The names the published offers use: what a request may name.
    names: Names,
    requests: BTreeMap<String, RequestState>,
    allocations: BTreeMap<u64, Allocation>,
    next_allocation: u64,
    incidents: BTreeMap<String, Incident>,
    suspensions: Vec<Suspension>,
    /// Commitment burn-down books: the one formula screening and settlement share.
    commitments: CommitmentBooks,
    /// Settlement's books between ticks, and the latest settlement.
    settler: Settler,
    /// Whether a settlement tick is due (a `Timer::Settle` is set).
    settle_armed: bool,
    /// Live (reserved or active) allocations per workload class: the fleet caps are measured against.
    /// Kept as running totals so screening costs the same on the millionth request as on the first.
    live_fleet: BTreeMap<WorkloadClass, Fleet>,
    open_requests: usize,
    /// Requests that ended during the input being handled; with `forget_finished`, they
    /// move to `finished` when it is done.
    ending: Vec<String>,
    finished: Vec<RequestState>,
    /// The ids of requests handed over (`forget_finished`), as the first 8 bytes of their
    /// SHA-256 (one flat table, no allocation per id): a submission reusing one is refused
    /// as a duplicate, as it would be were the request still held. A new id mistaken for
    /// an old one takes two ids of 2^32 handed over.
    forgotten: std::collections::HashSet<u64>,
}

/// The effects of one input, in order.
pub type Effects = Vec<Effect>;

impl Engine {
    pub fn new(contracts: ContractSet, published: Vec<Offer>, config: EngineConfig) -> Self {
        Self {
            commitments: CommitmentBooks::new(&contracts, std::iter::empty()),
            contracts,
            config,
            largest_node: placement::largest_nodes(&published),
            names: Names::from_offers(&published),
            published: by_provider(published),
            requests: BTreeMap::new(),
            allocations: BTreeMap::new(),
            next_allocation: 1,
            incidents: BTreeMap::new(),
            suspensions: Vec::new(),
            settler: Settler::default(),
            settle_armed: false,
            live_fleet: BTreeMap::new(),
            open_requests: 0,
            ending: Vec::new(),
            finished: Vec::new(),
            forgotten: std::collections::HashSet::new(),
        }
    }

    /// The requests that ended since the last call, with `forget_finished`: the engine no
    /// longer holds them.
    pub fn take_finished(&mut self) -> Vec<RequestState> {
        std::mem::take(&mut self.finished)
    }

    pub fn request(&self, id: &str) -> Option<&RequestState> {
        self.requests.get(id)
    }

    pub fn requests(&self) -> impl Iterator<Item = &RequestState> {
        self.requests.values()
    }

    pub fn allocation(&self, id: u64) -> Option<&Allocation> {
        self.allocations.get(&id)
    }

    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    /// Allocations with an id at or above `first`, in id order (ids only grow).
    pub fn allocations_from(&self, first: u64) -> impl Iterator<Item = &Allocation> {
        self.allocations.range(first..).map(|(_, a)| a)
    }

    /// The round of `request` waiting for `provider`'s answer as first-refusal holder, if any.
    pub fn awaiting_holder(&self, request: &str, provider: &ProviderName) -> Option<u32> {
        let round = self.requests.get(request)?.round.as_ref()?;
        let holder = &round.screened.refusal.as_ref()?.holder;
        (matches!(round.phase, Phase::Holder { .. }) && holder == provider).then_some(round.number)
    }

    /// The round of `request` waiting for `provider`'s quotes, if any.
    pub fn awaiting_quotes(&self, request: &str, provider: &ProviderName) -> Option<u32> {
        let round = self.requests.get(request)?.round.as_ref()?;
        match &round.phase {
            Phase::Quotes { asked, answered, .. } => {
                (asked.contains(provider) && !answered.contains(provider)).then_some(round.number)
            }
            Phase::Screened | Phase::Holder { .. } => None,
        }
    }

    /// Open incidents: id, provider, and region (`None`: the whole provider).
    pub fn open_incidents(&self) -> impl Iterator<Item = (&str, &ProviderName, Option<&Region>)> {
        self.incidents.iter().map(|(id, i)| (id.as_str(), &i.provider, i.region.as_ref()))
    }

    /// Replaces the contracts and the published offers from now on: an
    /// amendment loaded into a running service. Rounds already under way keep
    /// the terms they were screened under.
    pub fn reconfigure(&mut self, contracts: ContractSet, published: Vec<Offer>) {
        let allocations = self.allocations.values().map(|a| (a, a.workload));
        self.commitments = CommitmentBooks::new(&contracts, allocations);
        self.contracts = contracts;
        self.largest_node = placement::largest_nodes(&published);
        self.names = Names::from_offers(&published);
        self.published = by_provider(published);
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The names the published offers use: requests are validated against them.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The providers that published offers, by name.
    pub fn published_providers(&self) -> impl Iterator<Item = &ProviderName> {
        self.published.keys()
    }

    /// Whether a provider published offers (so requests may ask it).
    pub fn publishes(&self, provider: &ProviderName) -> bool {
        self.published.contains_key(provider)
    }

    pub fn contracts(&self) -> &ContractSet {
        &self.contracts
    }

    /// The latest settlement (spend, commitments, revenue share, triggers).
    pub fn settlement(&self) -> &crate::settlement::Settlement {
        &self.settler.last
    }

    /// The settlement books: events declared, triggers fired, the metrics triggers read.
    pub fn settler(&self) -> &crate::settlement::Settler {
        &self.settler
    }

    /// Clauses suspended by review triggers, from their instants.
    pub fn suspensions(&self) -> &[Suspension] {
        &self.suspensions
    }

    /// Every commitment in force at `at`, as the one formula gives it now.
    pub fn commitment_statuses(&self, at: Timestamp) -> Vec<CommitmentStatus> {
        self.contracts
            .in_force(at, &self.suspensions)
            .commitments
            .iter()
            .filter_map(|c| self.commitments.status(&commitment_key(c), &self.allocations, at))
            .collect()
    }

    /// Applies one input at `now`, returning the effects in order.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Effects {
        let mut out = Out { now, effects: Vec::new() };
        if !self.settle_armed && !matches!(input, Input::Timer(Timer::Settle)) {
            self.arm_settlement(&mut out);
        }
        match input {
            Input::Submit(request) => self.submit(&mut out, request),
            Input::HolderAnswer { request, round, answer } => {
                let step = self.holder_answer(&mut out, &request, round, answer);
                self.drive(&mut out, &request, step);
            }
            Input::Quotes { request, round, provider, offers } => {
                let step = self.quotes(&mut out, &request, round, provider, offers);
                self.drive(&mut out, &request, step);
            }
            Input::QuoteFailed { request, round, provider, error } => {
                let step = self.quote_failed(&mut out, &request, round, provider, error);
                self.drive(&mut out, &request, step);
            }
            Input::Timer(timer) => self.timer(&mut out, timer),
            Input::AllocationReady { allocation } => self.allocation_ready(&mut out, allocation),
            Input::IncidentOpened { id, provider, region } => {
                self.incident_opened(&mut out, id, provider, region)
            }
            Input::IncidentResolved { id } => {
                if self.incidents.remove(&id).is_some() {
                    out.ledger(None, EventKind::IncidentResolved { id });
                }
            }
            Input::Cancel { request } => self.cancel(&mut out, &request),
            Input::RevenueReported { amount } => {
                if amount.is_finite() {
                    let month = self.settler.report_revenue(now, amount);
                    out.ledger(None, EventKind::RevenueReported { month, amount });
                }
            }
            Input::EventDeclared { name } => {
                if self.settler.declare(&name) {
                    out.ledger(None, EventKind::EventDeclared { name });
                }
            }
        }
        for id in std::mem::take(&mut self.ending) {
            if self.config.forget_finished
                && let Some(state) = self.requests.remove(&id)
            {
                self.forgotten.insert(id_digest(&id));
                self.finished.push(state);
            }
        }
        out.effects
    }

    /// Sets the next settlement tick: `settle_every_hours` after the first input, and every
    /// as many hours after the last tick.
    fn arm_settlement(&mut self, out: &mut Out) {
        let step = Timestamp::HOUR.max((self.config.settle_every_hours * Timestamp::HOUR as f64) as i64);
        let started = *self.settler.started.get_or_insert(out.now);
        let elapsed = out.now.unix() - started.unix();
        let at = started.plus_seconds((elapsed / step + 1) * step);
        self.settle_armed = true;
        out.effects.push(Effect::SetTimer { at, timer: Timer::Settle });
    }

    /// A settlement tick: accrue, burn commitments down, evaluate review triggers, and act on
    /// a trigger's suspension in the engine's own state. Re-arms while anything is open.
    fn settle(&mut self, out: &mut Out) {
        self.settle_armed = false;
        let commitments = self.commitment_statuses(out.now);
        let suspended = self.suspensions.clone();
        let mut settler = std::mem::take(&mut self.settler);
        let settlement = settler.settle(self, commitments, &suspended, out.now).clone();
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
        let live = self
            .allocations
            .values()
            .any(|a| matches!(a.state, AllocationState::Reserved | AllocationState::Active));
        if self.open_requests > 0 || live {
            self.arm_settlement(out);
        }
    }

    fn submit(&mut self, out: &mut Out, request: Request) {
        let id = request.id.clone();
        if self.requests.contains_key(&id) || self.forgotten.contains(&id_digest(&id)) {
            out.ledger(Some(&id), EventKind::RequestRejected { reason: "duplicate request id".into() });
            return;
        }
        if self.open_requests >= MAX_OPEN_REQUESTS {
            out.ledger(Some(&id), EventKind::RequestRejected { reason: "too many open requests".into() });
            return;
        }
        out.ledger(
            Some(&id),
            EventKind::RequestSubmitted {
                gpus: request.gpus.get(),
                accelerators: request.accelerators.iter().map(|a| a.to_string()).collect(),
                workload: request.workload.to_string(),
                duration_hours: request.duration_hours,
            },
        );
        self.open_requests += 1;
        let pending = vec![Pending {
            purpose: Purpose::Initial,
            gpus: request.gpus.get(),
            hours: request.duration_hours,
        }];
        self.requests.insert(
            id.clone(),
            RequestState {
                request,
                status: Status::Screening,
                allocations: Vec::new(),
                unfilled_gpus: 0,
                unfilled_reason: None,
                failed_providers: BTreeMap::new(),
                rounds_started: 0,
                round: None,
                pending,
            },
        );
        self.drive(out, &id, Step::NextRound);
    }

    /// Runs a request's steps until it waits for an input.
    fn drive(&mut self, out: &mut Out, id: &str, mut step: Step) {
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
    fn next_round(&mut self, out: &mut Out, id: &str) -> Step {
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

    /// Derives the rules for a round from the contracts and policy in force now.
    fn screen(&self, id: &str, purpose: Purpose, now: Timestamp) -> Screened {
        let request = &self.requests[id].request;
        let terms = self.contracts.in_force(now, &self.suspensions);
        let policy = &self.contracts.policy;
        let mut rules = Rules {
            policy_regions: policy.allowed_regions.clone(),
            largest_node: self.largest_node.clone(),
            ..Rules::default()
        };

        // Exclusivity narrows the field to the holder, unless it is down and the clause releases in emergencies.
        for exclusive in &terms.exclusivities {
            if exclusive.terms.workloads.contains(&request.workload) {
                let holder = exclusive.terms.holder.clone();
                let released = purpose == Purpose::Failover
                    && exclusive.terms.emergency_release
                    && self.provider_down(&holder, None).is_some();
                if !released {
                    rules.exclusive_to = Some((
                        holder,
                        format!("{}/{}/{}", exclusive.contract, exclusive.version, exclusive.clause),
                    ));
                }
            }
        }

        // Price ceiling: the lower of the request's and the policy's for each acceptable accelerator.
        let policy_ceiling = request
            .accelerators
            .iter()
            .filter_map(|a| policy.price_ceiling(a))
            .map(Price::get)
            .fold(None, |acc: Option<f64>, p| Some(acc.map_or(p, |a| a.max(p))));
        rules.price_ceiling = match (request.max_price.map(Price::get), policy_ceiling) {
            (Some(a), Some(b)) => Price::new(a.min(b)).ok(),
            (Some(a), None) | (None, Some(a)) => Price::new(a).ok(),
            (None, None) => None,
        };

        // Diversification: the policy's rules and the contracts' clauses that cover this request.
        let diversifications = policy
            .diversification
            .iter()
            .map(|d| (d, format!("policy:{}", policy.source.as_deref().unwrap_or("policy"))))
            .chain(
                terms
                    .diversifications
                    .iter()
                    .map(|d| (d.terms, format!("{}/{}/{}", d.contract, d.version, d.clause))),
            );
        for (rule, source) in diversifications {
            if rule.scope.covers(request.workload, &request.accelerators, &request.regions)
                && rule.max_share < 1.0
            {
                rules.caps.push(Cap { max_share: rule.max_share, basis: rule.basis, source: source.clone() });
            }
            for (class, k) in &rule.min_providers {
                if *class == request.workload && rules.min_providers.as_ref().is_none_or(|(m, _)| *k > *m) {
                    rules.min_providers = Some((*k, source.clone()));
                }
            }
        }
        if !rules.caps.is_empty() {
            rules.fleet = self.fleet(request.workload);
        }

        // Commitments: the projected shortfall is spend the buyer owes anyway (the one formula,
        // `commitments`, that settlement uses too).
        for commitment in &terms.commitments {
            let c = commitment.terms;
            let counts = c.counts.is_empty() || c.counts.contains(&request.workload);
            if counts
                && c.period_start <= now
                && now < c.period_end
                && let Some(status) =
                    self.commitments.status(&commitment_key(commitment), &self.allocations, now)
            {
                *rules.credits.entry(c.provider.clone()).or_default() += status.projected_shortfall;
            }
        }

        // The buyer's policy on providers: the market only (a first-refusal holder is still
        // solicited; its own rules, below, decide that).
        for provider in &policy.excluded_providers {
            rules.excluded.insert(provider.clone(), "excluded by the buyer's policy".into());
        }
        if !policy.allowed_providers.is_empty() {
            for provider in self.published.keys().filter(|p| !policy.allowed_providers.contains(p)) {
                rules
                    .excluded
                    .insert(provider.clone(), "not among the providers the buyer's policy allows".into());
            }
        }
        // Providers that failed this request before are not asked again.
        for (provider, why) in &self.requests[id].failed_providers {
            rules.excluded.insert(provider.clone(), why.clone());
        }
        // Providers that are down may not be used.
        for (incident_id, incident) in &self.incidents {
            let why = format!("down (incident {incident_id})");
            match &incident.region {
                None => {
                    rules.excluded.insert(incident.provider.clone(), why);
                }
                Some(region) => {
                    rules.excluded_regions.insert((incident.provider.clone(), region.clone()), why);
                }
            }
        }

        // First refusal applies when a clause in force covers the request and this kind of round.
        let refusal = terms
            .first_refusals
            .iter()
            .find(|f| {
                f.terms.scope.covers(request.workload, &request.accelerators, &request.regions)
                    && match purpose {
                        Purpose::Initial => true,
                        Purpose::Spillover => f.terms.covers_spillover,
                        Purpose::Failover => f.terms.covers_failover,
                    }
            })
            .map(|f| RefusalTerms {
                holder: f.terms.holder.clone(),
                mode: f.terms.mode,
                terms: f.terms.terms,
                window_hours: f.terms.window_hours,
                no_better_terms: f.terms.no_better_terms,
                reference: format!("{}/{}/{}", f.contract, f.version, f.clause),
            });
        // In match mode the holder must be shown the market's terms whatever the buyer's
        // policy says of it (it is never asked for market quotes in that mode anyway).
        if let Some(r) = refusal.as_ref().filter(|r| r.mode == RefusalMode::Match)
            && rules.excluded.get(&r.holder).is_some_and(|why| why.contains("policy"))
        {
            rules.excluded.remove(&r.holder);
        }
        let min_providers = rules.min_providers.clone();
        rules.min_providers = remaining_min_providers(&min_providers, &self.providers_in_use(id));
        Screened { refusal, rules, min_providers }
    }

    /// The providers of the request's live (reserved or active) allocations.
    fn providers_in_use(&self, id: &str) -> BTreeSet<ProviderName> {
        let Some(state) = self.requests.get(id) else { return BTreeSet::new() };
        state
            .allocations
            .iter()
            .filter_map(|a| self.allocations.get(a))
            .filter(|a| matches!(a.state, AllocationState::Reserved | AllocationState::Active))
            .map(|a| a.plan.provider.clone())
            .collect()
    }

    /// Live allocations of requests of one workload class, per provider.
    fn fleet(&self, workload: WorkloadClass) -> Fleet {
        self.live_fleet.get(&workload).cloned().unwrap_or_default()
    }

    /// Removes an allocation that stopped being live (released or cancelled) from the fleet.
    /// An allocation stopped being live (released or cancelled): it leaves the fleet, and its
    /// final bill is folded into the commitment books.
    fn leave_fleet(&mut self, allocation: u64) {
        let Some(a) = self.allocations.get(&allocation) else { return };
        add_to_fleet(self.live_fleet.entry(a.workload).or_default(), &a.plan, -1.0);
        self.commitments.ended(a, a.workload);
    }

    fn provider_down(&self, provider: &ProviderName, region: Option<&Region>) -> Option<&str> {
        self.incidents
            .iter()
            .find(|(_, i)| &i.provider == provider && (i.region.is_none() || i.region.as_ref() == region))
            .map(|(id, _)| id.as_str())
    }

    /// The request as this round sees it: the round's GPUs and hours.
    fn round_request(&self, id: &str) -> Option<Request> {
        let state = self.requests.get(id)?;
        let round = state.round.as_ref()?;
        let mut request = state.request.clone();
        request.gpus = GpuCount::new(round.gpus).ok()?;
        request.duration_hours = round.hours;
        Some(request)
    }

    fn begin_round(&mut self, out: &mut Out, id: &str) -> Step {
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

    /// What the holder is offered, by the clause's terms (its list price, a fixed price, a
    /// discount off list, or the market reference), capped at the price ceiling; or the
    /// evidence that no offer of the holder's meets the hard requirements (accelerator, spot
    /// policy, the request's providers and regions, node size, deliver-by).
    fn holder_offer(
        &self,
        request: &Request,
        refusal: &RefusalTerms,
        rules: &Rules,
        now: Timestamp,
    ) -> Result<HolderOffer, Vec<String>> {
        if let Some(incident) = self.provider_down(&refusal.holder, None) {
            return Err(vec![format!("holder is down (incident {incident})")]);
        }
        let holder_offers: &[Offer] = self.published.get(&refusal.holder).map_or(&[], Vec::as_slice);
        if holder_offers.is_empty() {
            return Err(vec![format!("{} publishes no offers", refusal.holder)]);
        }
        // Hard requirements only: no price ceiling, no caps, no exclusions.
        let hard = self.hard_rules(rules);
        let mut one_block = request.clone();
        one_block.gpus = request.block;
        let demand = Demand { request: &one_block, gpus: one_block.gpus.get(), now };
        let check = placement::place(demand, holder_offers, &hard, self.config.solver);
        let mut evidence = Vec::new();
        let mut best: Option<f64> = None;
        let mut node_gpus = request.block.get();
        for (verdict, offer) in check.verdicts.iter().zip(holder_offers) {
            match &verdict.outcome {
                placement::Outcome::Rejected(reason) if reason.is_hard_requirement() => {
                    evidence.push(format!("{}: {reason}", verdict.offer_id))
                }
                _ => {
                    best = Some(best.map_or(verdict.price, |b: f64| b.min(verdict.price)));
                    node_gpus = node_gpus.max(offer.gpus_per_node.get());
                }
            }
        }
        let Some(list) = best else { return Err(evidence) };
        let (price, mut basis) = match refusal.terms {
            HolderTerms::List => (list, format!("the holder's list price ${list:.4}/GPU-h")),
            HolderTerms::Fixed { price } => {
                (price.get(), format!("the fixed price ${:.4}/GPU-h", price.get()))
            }
            HolderTerms::Discount { off } => (
                list * (1.0 - off),
                format!("{:.0}% off the holder's list price ${list:.4}/GPU-h", off * 100.0),
            ),
            HolderTerms::Market => match self.market_reference(request, &refusal.holder, &hard, now) {
                Some(reference) => (reference, format!("the market reference ${reference:.4}/GPU-h")),
                None => (
                    list,
                    format!(
                        "the holder's list price ${list:.4}/GPU-h (the market cannot supply the same capacity)"
                    ),
                ),
            },
        };
        let price = match rules.price_ceiling {
            Some(ceiling) if ceiling.get() < price => {
                basis.push_str(&format!(", capped at the ceiling ${:.4}", ceiling.get()));
                ceiling.get()
            }
            _ => price,
        };
        Ok(HolderOffer {
            price: Price::new(price).expect("a published price is a valid price"),
            basis,
            node_gpus,
        })
    }

    /// The request's hard requirements and the policy's regions; nothing else.
    fn hard_rules(&self, rules: &Rules) -> Rules {
        Rules {
            policy_regions: rules.policy_regions.clone(),
            largest_node: self.largest_node.clone(),
            ..Rules::default()
        }
    }

    /// The best price per GPU-hour the rest of the market's published offers give the same
    /// capacity now: the cheapest award of the request's GPUs among providers other than the
    /// holder, under the hard requirements, its list cost spread over the GPU-hours asked.
    fn market_reference(
        &self,
        request: &Request,
        holder: &ProviderName,
        hard: &Rules,
        now: Timestamp,
    ) -> Option<f64> {
        let market: Vec<Offer> = self
            .published
            .iter()
            .filter(|(provider, _)| *provider != holder)
            .flat_map(|(_, offers)| offers.iter().cloned())
            .collect();
        let demand = Demand { request, gpus: request.gpus.get(), now };
        let placement = placement::place(demand, &market, hard, self.config.solver);
        let gpu_hours = f64::from(request.gpus.get()) * f64::from(request.duration_hours);
        (placement.infeasible.is_none() && gpu_hours > 0.0).then(|| placement.list_cost / gpu_hours)
    }

    /// Puts `offered` to the holder and waits for its answer; `then` says what follows it.
    fn solicit(
        &mut self,
        out: &mut Out,
        id: &str,
        refusal: &RefusalTerms,
        offered: Offered,
        then: AfterHolder,
    ) {
        let Offered { gpus, price, basis } = offered;
        let respond_by = out.now.plus_hours(f64::from(refusal.window_hours));
        let state = self.requests.get_mut(id).expect("request exists");
        state.status = Status::FirstRefusal;
        let request = state.request.clone();
        let round = state.round.as_mut().expect("round running");
        round.solicitations += 1;
        round.phase =
            Phase::Holder { solicitation: round.solicitations, respond_by, offered_gpus: gpus, price, then };
        let (number, solicitation, hours, round_gpus) =
            (round.number, round.solicitations, round.hours, round.gpus);
        out.ledger(
            Some(id),
            EventKind::Solicited {
                round: number,
                holder: refusal.holder.clone(),
                mode: refusal.mode.as_str().into(),
                gpus,
                of_gpus: round_gpus,
                price,
                terms: basis,
                respond_by,
            },
        );
        out.effects.push(Effect::Solicit(Solicitation {
            holder: refusal.holder.clone(),
            mode: refusal.mode,
            price,
            ask: Ask::new(id, number, &request, gpus, hours, respond_by),
        }));
        out.effects.push(Effect::SetTimer {
            at: respond_by,
            timer: Timer::HolderWindow { request: id.to_owned(), round: number, solicitation },
        });
    }

    /// The holder's answer: it takes all, part or nothing of what it was offered.
    fn holder_answer(&mut self, out: &mut Out, id: &str, round_number: u32, answer: HolderAnswer) -> Step {
        let Some(state) = self.requests.get(id) else { return Step::Wait };
        let Some(round) = state.round.as_ref() else { return Step::Wait };
        let Some(refusal) = round.screened.refusal.clone() else { return Step::Wait };
        let offered_gpus = match &round.phase {
            Phase::Holder { respond_by, offered_gpus, .. }
                if out.now <= *respond_by && round.number == round_number =>
            {
                *offered_gpus
            }
            _ => {
                out.ledger(
                    Some(id),
                    EventKind::LateAnswerIgnored { round: round_number, from: refusal.holder },
                );
                return Step::Wait;
            }
        };
        match answer {
            HolderAnswer::Decline => {
                out.ledger(
                    Some(id),
                    EventKind::HolderAnswered {
                        round: round_number,
                        holder: refusal.holder.clone(),
                        outcome: "declined".into(),
                        gpus: 0,
                    },
                );
                Step::HolderPassed
            }
            HolderAnswer::Accept {
                gpus,
                region,
                accelerator,
                instance_type,
                gpus_per_node,
                lead_time_hours,
            } => {
                if !state.request.accelerators.contains(&accelerator) {
                    out.ledger(
                        Some(id),
                        EventKind::HolderAnswered {
                            round: round_number,
                            holder: refusal.holder.clone(),
                            outcome: format!("invalid: accelerator {accelerator} not requested"),
                            gpus: 0,
                        },
                    );
                    return Step::HolderPassed;
                }
                let block = state.request.block.get();
                let taken = (gpus.min(offered_gpus) / block) * block;
                let outcome = if taken == 0 {
                    "declined"
                } else if taken == offered_gpus {
                    "accepted"
                } else {
                    "accepted_part"
                };
                out.ledger(
                    Some(id),
                    EventKind::HolderAnswered {
                        round: round_number,
                        holder: refusal.holder.clone(),
                        outcome: outcome.into(),
                        gpus: taken,
                    },
                );
                if taken == 0 {
                    return Step::HolderPassed;
                }
                Step::HolderTakes(Taken {
                    gpus: taken,
                    region,
                    accelerator,
                    instance_type,
                    gpus_per_node,
                    lead_time_hours,
                })
            }
        }
    }

    /// The holder takes `gpus` of the round on the solicited terms.
    fn holder_takes(&mut self, out: &mut Out, id: &str, taken: Taken) -> Step {
        let Taken { gpus, region, accelerator, instance_type, gpus_per_node, lead_time_hours } = taken;
        let state = &self.requests[id];
        let round = state.round.as_ref().expect("round running");
        let holder = round.screened.refusal.as_ref().expect("first refusal").holder.clone();
        // The holder takes the terms it was offered: the buyer's (offer-first) or the market's (match),
        // per GPU-hour, in whole nodes of its instance type.
        let Phase::Holder { price, then, .. } = round.phase.clone() else {
            unreachable!("an answer is taken only while the holder is asked")
        };
        debug_assert!(state.request.accelerators.contains(&accelerator));
        let block = state.request.block.get();
        let g = gpus_per_node.get();
        let nodes =
            if block <= g { (gpus / block).div_ceil(g / block) } else { (gpus / block) * block.div_ceil(g) };
        let plan = PlannedAllocation {
            offer_id: format!("{holder}/{region}/{instance_type}/first-refusal"),
            provider: holder.clone(),
            region,
            zone: None,
            instance_type,
            accelerator,
            gpus_per_node,
            nodes,
            gpus,
            node_price: NodePrice::from_gpu_price(price, gpus_per_node),
            lead_time_hours,
            kind: OfferKind::OnDemand,
        };
        self.award(out, id, vec![plan], "first_refusal");
        let state = self.requests.get_mut(id).expect("request exists");
        let round = state.round.as_mut().expect("round running");
        round.gpus -= gpus;
        round.screened.rules.excluded.insert(holder, "took its part in first refusal".into());
        if round.gpus > 0 && !matches!(then, AfterHolder::Match(_)) {
            // Taking part is declining the rest at these terms: the no-better-terms rule covers the remainder.
            round.declined_price = Some(round.declined_price.map_or(price.get(), |d| d.max(price.get())));
        }
        match then {
            _ if round.gpus == 0 => Step::FinishRound,
            // Match mode or a re-solicitation: the quotes are in hand; place the rest.
            AfterHolder::Match(_) | AfterHolder::Decide => Step::Decide,
            AfterHolder::AskMarket => Step::AskMarket,
        }
    }

    /// The holder declined or let the window lapse.
    fn holder_passed(&mut self, out: &mut Out, id: &str) -> Step {
        let state = self.requests.get_mut(id).expect("request exists");
        let round = state.round.as_mut().expect("round running");
        let holder = round.screened.refusal.as_ref().expect("first refusal").holder.clone();
        let Phase::Holder { price, then, .. } = std::mem::replace(&mut round.phase, Phase::Screened) else {
            unreachable!("the holder passes only while it is asked")
        };
        round.declined_price = Some(round.declined_price.map_or(price.get(), |d| d.max(price.get())));
        round.screened.rules.excluded.insert(holder, "declined in first refusal".into());
        match then {
            // Match mode: the market award the holder was shown stands.
            AfterHolder::Match(plan) => {
                self.award(out, id, plan, "market");
                Step::FinishRound
            }
            // A no-better-terms re-solicitation: the quotes are in hand.
            AfterHolder::Decide => Step::Decide,
            AfterHolder::AskMarket => Step::AskMarket,
        }
    }

    fn ask_market(&mut self, out: &mut Out, id: &str) -> Step {
        let Some(round_request) = self.round_request(id) else { return Step::Wait };
        let state = self.requests.get_mut(id).expect("request exists");
        state.status = Status::Market;
        let round = state.round.as_mut().expect("round running");
        let rules = &round.screened.rules;
        let holder_waits = round
            .screened
            .refusal
            .as_ref()
            .filter(|r| r.mode == RefusalMode::Match)
            .map(|r| r.holder.clone());
        let mut providers: BTreeSet<ProviderName> = self.published.keys().cloned().collect();
        providers.retain(|p| {
            !rules.excluded.contains_key(p)
                && rules.exclusive_to.as_ref().is_none_or(|(holder, _)| holder == p)
                && holder_waits.as_ref() != Some(p)
        });
        let number = round.number;
        if providers.is_empty() {
            let reason = match (&rules.exclusive_to, rules.excluded.is_empty()) {
                (Some((holder, clause)), _) => {
                    format!("workload is exclusive to {holder} ({clause}), which is not available")
                }
                (None, false) => "every provider is excluded (declined, down or already used)".to_owned(),
                (None, true) => "no provider publishes any offer".to_owned(),
            };
            return Step::Unfilled(reason);
        }
        let respond_by = out.now.plus_hours(self.config.quote_window_hours);
        round.phase = Phase::Quotes { respond_by, asked: providers.clone(), answered: BTreeSet::new() };
        let providers: Vec<ProviderName> = providers.into_iter().collect();
        out.ledger(
            Some(id),
            EventKind::QuotesRequested { round: number, providers: providers.clone(), respond_by },
        );
        let ask = Ask::new(
            id,
            number,
            &round_request,
            round_request.gpus.get(),
            round_request.duration_hours,
            respond_by,
        );
        out.effects.push(Effect::RequestQuotes { providers, ask });
        out.effects.push(Effect::SetTimer {
            at: respond_by,
            timer: Timer::QuoteDeadline { request: id.to_owned(), round: number },
        });
        Step::Wait
    }

    /// One provider's quotes; the round is decided when the last one asked has answered.
    fn quotes(
        &mut self,
        out: &mut Out,
        id: &str,
        round_number: u32,
        provider: ProviderName,
        mut offers: Vec<Offer>,
    ) -> Step {
        let Some(state) = self.requests.get_mut(id) else { return Step::Wait };
        let Some(round) = state.round.as_mut() else { return Step::Wait };
        let Phase::Quotes { respond_by, asked, answered } = &mut round.phase else {
            out.ledger(Some(id), EventKind::LateAnswerIgnored { round: round_number, from: provider });
            return Step::Wait;
        };
        if round.number != round_number
            || out.now > *respond_by
            || !asked.contains(&provider)
            || answered.contains(&provider)
        {
            out.ledger(Some(id), EventKind::LateAnswerIgnored { round: round_number, from: provider });
            return Step::Wait;
        }
        // A provider speaks only for itself, of things that exist, and within bounds.
        let quoted = offers.len();
        offers.truncate(MAX_QUOTES_PER_ANSWER);
        offers.retain(|o| self.names.check_quoted(&provider, o).is_ok());
        out.ledger(
            Some(id),
            EventKind::QuoteReceived {
                round: round_number,
                provider: provider.clone(),
                offers: offers.len(),
                rejected: quoted - offers.len(),
            },
        );
        answered.insert(provider);
        let all_in = answered == asked;
        round.quotes.extend(offers);
        if all_in { Step::Decide } else { Step::Wait }
    }

    /// A provider's quote call failed for good: it quoted nothing, and the round records why.
    fn quote_failed(
        &mut self,
        out: &mut Out,
        id: &str,
        round_number: u32,
        provider: ProviderName,
        error: String,
    ) -> Step {
        let waiting = self.requests.get(id).and_then(|s| s.round.as_ref()).is_some_and(|round| {
            round.number == round_number
                && matches!(&round.phase, Phase::Quotes { asked, answered, .. }
                    if asked.contains(&provider) && !answered.contains(&provider))
        });
        if waiting {
            let error: String = error.chars().take(MAX_FAILURE_TEXT).collect();
            out.ledger(
                Some(id),
                EventKind::QuoteFailed {
                    round: round_number,
                    provider: provider.clone(),
                    error: error.clone(),
                },
            );
            if let Some(round) = self.requests.get_mut(id).and_then(|s| s.round.as_mut()) {
                round.silent.insert(provider.clone(), format!("its call failed: {error}"));
            }
        }
        self.quotes(out, id, round_number, provider, Vec::new())
    }

    /// Places the round's GPUs over the quotes in hand, then awards, goes back
    /// to the holder (match mode, or the no-better-terms rule), or gives up.
    fn decide(&mut self, out: &mut Out, id: &str) -> Step {
        let Some(round_request) = self.round_request(id) else { return Step::Wait };
        // The fleet, and the providers this request already uses, moved since screening if the
        // holder took part of this round.
        let fleet = self.fleet(round_request.workload);
        let in_use = self.providers_in_use(id);
        let node_gpus = round_request
            .accelerators
            .iter()
            .filter_map(|a| self.largest_node.get(a))
            .copied()
            .max()
            .unwrap_or(round_request.block.get());
        let state = self.requests.get_mut(id).expect("request exists");
        let round = state.round.as_mut().expect("round running");
        if !round.screened.rules.caps.is_empty() {
            round.screened.rules.fleet = fleet;
        }
        round.screened.rules.min_providers = remaining_min_providers(&round.screened.min_providers, &in_use);
        // Out of re-offers: the no-better-terms rule becomes a filter.
        let offer_first = round.screened.refusal.as_ref().is_some_and(|r| r.mode == RefusalMode::OfferFirst);
        if offer_first && round.solicitations > MAX_RESOLICITATIONS {
            round.screened.rules.declined_terms = round.declined_price.and_then(|p| Price::new(p).ok());
        }
        let mut quotes = round.quotes.clone();
        quotes.sort_by(|a, b| a.id.cmp(&b.id));
        // At most two placements: the second when the no-better-terms rule cannot go back to a
        // holder the caps leave no room, and holds the market to the declined terms instead.
        for _ in 0..2 {
            let state = self.requests.get_mut(id).expect("request exists");
            let round = state.round.as_mut().expect("round running");
            let placement = placement::place(
                Demand { request: &round_request, gpus: round.gpus, now: out.now },
                &quotes,
                &round.screened.rules,
                self.config.solver,
            );
            let number = round.number;
            out.ledger(
                Some(id),
                EventKind::Placed {
                    round: number,
                    solver: placement.solver.clone(),
                    list_cost: placement.list_cost,
                    effective_cost: placement.effective_cost,
                    notes: placement.notes.clone(),
                    verdicts: placement.verdicts.clone(),
                },
            );
            if let Some(reason) = placement.infeasible {
                return Step::Unfilled(reason);
            }
            let max_price =
                placement.allocations.iter().map(PlannedAllocation::price_per_gpu_hour).fold(0.0, f64::max);
            if let Some(refusal) = round.screened.refusal.clone() {
                let holder_excluded = round.screened.rules.excluded.contains_key(&refusal.holder);
                match refusal.mode {
                    // Match: the holder has not yet seen these terms.
                    RefusalMode::Match if !holder_excluded => {
                        let gpus = first_offer_room(
                            &round.screened.rules,
                            &refusal.holder,
                            &round_request,
                            node_gpus,
                        );
                        let basis = format!("the market's winning terms, ${max_price:.4}/GPU-h, to match");
                        let offered = Offered { gpus, price: Price::new(max_price).expect("valid"), basis };
                        self.solicit(out, id, &refusal, offered, AfterHolder::Match(placement.allocations));
                        return Step::Wait;
                    }
                    // Offer-first: the no-better-terms rule.
                    RefusalMode::OfferFirst => {
                        if let Some(declined) = round.declined_price
                            && max_price > declined + 1e-9
                        {
                            out.ledger(
                                Some(id),
                                EventKind::NoBetterTerms {
                                    round: number,
                                    holder: refusal.holder.clone(),
                                    declined_price: declined,
                                    market_price: max_price,
                                },
                            );
                            // The contract may keep the market's terms from the holder: then
                            // the market is held to the price the holder declined.
                            let room = match refusal.no_better_terms {
                                NoBetterTerms::ShowTerms => holder_room(
                                    &round.screened.rules,
                                    &refusal.holder,
                                    &round_request,
                                    node_gpus,
                                ),
                                NoBetterTerms::HoldMarket => 0,
                            };
                            if room > 0 {
                                round.screened.rules.excluded.remove(&refusal.holder);
                                let basis = format!(
                                    "the market's terms, ${max_price:.4}/GPU-h, above the ${declined:.4} declined \
                                     (no-better-terms)"
                                );
                                let price = Price::new(max_price).expect("valid");
                                self.solicit(
                                    out,
                                    id,
                                    &refusal,
                                    Offered { gpus: room, price, basis },
                                    AfterHolder::Decide,
                                );
                                return Step::Wait;
                            }
                            // The caps leave the holder no room for more, or the contract keeps the
                            // market's terms from it: the market may not have better terms than
                            // the holder declined, so it is held to them.
                            round.screened.rules.declined_terms = Price::new(declined).ok();
                            let why = match refusal.no_better_terms {
                                NoBetterTerms::HoldMarket => format!(
                                    "{} ({}) is not shown the market's terms (no_better_terms = hold-market)",
                                    refusal.holder, refusal.reference
                                ),
                                NoBetterTerms::ShowTerms => {
                                    format!("{} has no room for more within the buyer's caps", refusal.holder)
                                }
                            };
                            out.ledger(
                                Some(id),
                                EventKind::FirstRefusalSkipped {
                                    round: number,
                                    holder: refusal.holder.clone(),
                                    evidence: vec![format!(
                                        "{why}; the market is held to the ${declined:.4}/GPU-h it declined (no-better-terms)"
                                    )],
                                },
                            );
                            continue;
                        }
                    }
                    // Match, but the holder cannot be shown the terms: record why before the market award.
                    RefusalMode::Match if round.solicitations == 0 => {
                        let why = match round.screened.rules.excluded.get(&refusal.holder) {
                            Some(why) => format!("{}: {why}", refusal.holder),
                            None => format!("{} cannot be shown the terms", refusal.holder),
                        };
                        out.ledger(
                            Some(id),
                            EventKind::FirstRefusalSkipped {
                                round: number,
                                holder: refusal.holder.clone(),
                                evidence: vec![why],
                            },
                        );
                    }
                    RefusalMode::Match => {}
                }
            }
            self.award(out, id, placement.allocations, "market");
            return Step::FinishRound;
        }
        // Not reached: the second placement holds the market to the declined terms, so it
        // cannot break the no-better-terms rule again. Unfilled rather than a panic.
        Step::Unfilled("no award within the no-better-terms rule".to_owned())
    }

    fn award(&mut self, out: &mut Out, id: &str, plans: Vec<PlannedAllocation>, via: &str) {
        let state = self.requests.get_mut(id).expect("request exists");
        let round = state.round.as_ref().expect("round running");
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
            out.effects.push(Effect::Reserve { allocation, plan: plan.clone(), promised });
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
                    ready_at: None,
                    ends_at: None,
                    ended_at: None,
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

    fn unfilled(&mut self, out: &mut Out, id: &str, mut reason: String) -> Step {
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

    fn finish_round(&mut self, out: &mut Out, id: &str) -> Step {
        if let Some(state) = self.requests.get_mut(id) {
            state.round = None;
        }
        self.settle_status(out, id);
        Step::NextRound
    }

    /// Derives the request's status from its allocations once no round runs.
    fn settle_status(&mut self, out: &mut Out, id: &str) {
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

    /// Whether `timer` would do anything if it fired now. A timer whose moment has passed
    /// (the holder answered, every quote is in, the allocation is no longer waiting) does
    /// nothing when it fires, so a shell may drop it instead of keeping it until then.
    pub fn timer_matters(&self, timer: &Timer) -> bool {
        let round_of = |request: &str, number: u32| {
            self.requests.get(request).and_then(|s| s.round.as_ref()).filter(|r| r.number == number)
        };
        let allocation_in = |allocation: &u64, state: AllocationState| {
            self.allocations.get(allocation).is_some_and(|a| a.state == state)
        };
        match timer {
            Timer::HolderWindow { request, round, solicitation } => round_of(request, *round).is_some_and(
                |r| matches!(r.phase, Phase::Holder { solicitation: s, .. } if s == *solicitation),
            ),
            Timer::QuoteDeadline { request, round } => round_of(request, *round).is_some_and(
                |r| matches!(&r.phase, Phase::Quotes { asked, answered, .. } if answered != asked),
            ),
            Timer::DeliveryDue { allocation } => allocation_in(allocation, AllocationState::Reserved),
            Timer::Release { allocation } => allocation_in(allocation, AllocationState::Active),
            Timer::Settle => true,
        }
    }

    fn timer(&mut self, out: &mut Out, timer: Timer) {
        if !self.timer_matters(&timer) {
            return;
        }
        match timer {
            Timer::HolderWindow { request, round, .. } => {
                let Some(current) = self.requests.get(&request).and_then(|s| s.round.as_ref()) else {
                    return;
                };
                let holder = current.screened.refusal.as_ref().expect("first refusal").holder.clone();
                out.ledger(Some(&request), EventKind::HolderLapsed { round, holder });
                self.drive(out, &request, Step::HolderPassed);
            }
            Timer::QuoteDeadline { request, .. } => {
                let Some(current) = self.requests.get(&request).and_then(|s| s.round.as_ref()) else {
                    return;
                };
                let Phase::Quotes { asked, answered, .. } = &current.phase else { return };
                let late: Vec<ProviderName> = asked.difference(answered).cloned().collect();
                if let Some(current) = self.requests.get_mut(&request).and_then(|s| s.round.as_mut()) {
                    for provider in late {
                        current
                            .silent
                            .entry(provider)
                            .or_insert_with(|| "it did not answer by the deadline".into());
                    }
                }
                self.drive(out, &request, Step::Decide);
            }
            Timer::DeliveryDue { allocation } => {
                let Some(a) = self.allocations.get(&allocation) else { return };
                let (request, gpus, hours, promised, provider) =
                    (a.request.clone(), a.plan.gpus, a.hours, a.promised, a.plan.provider.clone());
                let a = self.allocations.get_mut(&allocation).expect("exists");
                a.state = AllocationState::Cancelled;
                a.ended_at = Some(out.now);
                if let Some(state) = self.requests.get_mut(&request) {
                    state
                        .failed_providers
                        .insert(provider.clone(), format!("did not deliver allocation {allocation} on time"));
                }
                self.leave_fleet(allocation);
                out.ledger(Some(&request), EventKind::Spillover { allocation, gpus, promised });
                out.effects.push(Effect::Cancel {
                    allocation,
                    provider,
                    why: "not ready by its promised time plus grace".into(),
                });
                self.requeue(out, &request, Purpose::Spillover, gpus, hours);
            }
            Timer::Settle => self.settle(out),
            Timer::Release { allocation } => {
                let Some(a) = self.allocations.get_mut(&allocation) else { return };
                a.state = AllocationState::Released;
                a.ended_at = Some(out.now);
                let request = a.request.clone();
                let gpu_hours = f64::from(a.plan.gpus_bought()) * f64::from(a.hours);
                let spend = a.plan.spend_per_hour() * f64::from(a.hours);
                let provider = a.plan.provider.clone();
                out.ledger(Some(&request), EventKind::AllocationReleased { allocation, gpu_hours, spend });
                out.effects.push(Effect::Release { allocation, provider });
                self.leave_fleet(allocation);
                self.settle_status(out, &request);
            }
        }
    }

    fn requeue(&mut self, out: &mut Out, id: &str, purpose: Purpose, gpus: u32, hours: u32) {
        if let Some(state) = self.requests.get_mut(id)
            && state.status != Status::Cancelled
            && hours > 0
        {
            state.pending.push(Pending { purpose, gpus, hours });
            self.drive(out, id, Step::NextRound);
        }
    }

    fn allocation_ready(&mut self, out: &mut Out, allocation: u64) {
        let Some(a) = self.allocations.get(&allocation) else { return };
        if a.state != AllocationState::Reserved {
            return;
        }
        // Capacity delivered before the request's earliest start is held for it, and its hours
        // run (and bill) from that start.
        let start = self.requests.get(&a.request).map_or(out.now, |r| out.now.max(r.request.earliest_start));
        let Some(a) = self.allocations.get_mut(&allocation) else { return };
        a.state = AllocationState::Active;
        a.ready_at = Some(start);
        let ends_at = start.plus_hours(f64::from(a.hours));
        a.ends_at = Some(ends_at);
        let request = a.request.clone();
        out.ledger(Some(&request), EventKind::AllocationReady { allocation });
        out.effects.push(Effect::SetTimer { at: ends_at, timer: Timer::Release { allocation } });
        self.settle_status(out, &request);
    }

    fn incident_opened(&mut self, out: &mut Out, id: String, provider: ProviderName, region: Option<Region>) {
        out.ledger(
            None,
            EventKind::IncidentOpened { id: id.clone(), provider: provider.clone(), region: region.clone() },
        );
        self.incidents.insert(id.clone(), Incident { provider: provider.clone(), region: region.clone() });
        let affected: Vec<u64> = self
            .allocations
            .values()
            .filter(|a| {
                matches!(a.state, AllocationState::Reserved | AllocationState::Active)
                    && a.plan.provider == provider
                    && region.as_ref().is_none_or(|r| r == &a.plan.region)
            })
            .map(|a| a.id)
            .collect();
        for allocation in affected {
            let a = self.allocations.get_mut(&allocation).expect("exists");
            // Whole hours left, rounded down, so the replacement never bills an hour twice.
            let remaining = match a.ends_at {
                Some(ends) => (ends.hours_since(out.now).floor().max(0.0) as u32).min(a.hours),
                None => a.hours,
            };
            a.state = AllocationState::Cancelled;
            a.ended_at = Some(out.now);
            let (request, gpus) = (a.request.clone(), a.plan.gpus);
            self.leave_fleet(allocation);
            out.ledger(
                Some(&request),
                EventKind::Failover { allocation, incident: id.clone(), gpus, remaining_hours: remaining },
            );
            out.effects.push(Effect::Cancel {
                allocation,
                provider: provider.clone(),
                why: format!("incident {id}"),
            });
            self.requeue(out, &request, Purpose::Failover, gpus, remaining);
            self.settle_status(out, &request);
        }
    }

    fn cancel(&mut self, out: &mut Out, id: &str) {
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
            if matches!(a.state, AllocationState::Reserved | AllocationState::Active) {
                a.state = AllocationState::Cancelled;
                a.ended_at = Some(out.now);
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

/// The most GPUs the buyer may give the holder in a round: the round's GPUs, limited by the
/// GPU caps (given the fleet, with the same one-unit tolerance placement uses: one of the
/// holder's nodes) and by the minimum-provider rule (which leaves a block to each other
/// provider needed), in whole blocks; possibly none. Spend caps limit the market's awards,
/// not what the holder is offered. See [`first_offer_room`] for the first solicitation.
fn holder_room(rules: &Rules, holder: &ProviderName, request: &Request, node_gpus: u32) -> u32 {
    let gpus = request.gpus.get();
    let block = request.block.get();
    let mut room = f64::from(gpus);
    let fleet_total: f64 = rules.fleet.gpus.values().sum();
    let held = rules.fleet.gpus.get(holder).copied().unwrap_or(0.0);
    for cap in rules.caps.iter().filter(|c| c.basis == ShareBasis::Gpus) {
        let allowed =
            cap.max_share * (fleet_total + f64::from(gpus)) - held + f64::from(node_gpus.max(block));
        room = room.min(allowed);
    }
    if let Some((k, _)) = &rules.min_providers {
        room = room.min(f64::from(gpus.saturating_sub(k.saturating_sub(1) * block)));
    }
    // A tolerance keeps 0.4 * 500 from rounding down to 199.99.
    let room = (room.max(0.0) + 1e-9).floor() as u32;
    (room / block * block).min(gpus)
}

/// What the holder is offered when first solicited in a round: its room, but never less than
/// one block. A contractual right of first refusal is exercised even when the buyer's own
/// diversification policy would leave the holder nothing; the policy decides how much, not
/// whether.
fn first_offer_room(rules: &Rules, holder: &ProviderName, request: &Request, node_gpus: u32) -> u32 {
    let block = request.block.get();
    holder_room(rules, holder, request, node_gpus).max(block).min(request.gpus.get())
}

/// Adds (`sign` 1) or removes (`sign` -1) an allocation's GPUs (bought, whole nodes) and spend rate.
fn add_to_fleet(fleet: &mut Fleet, plan: &PlannedAllocation, sign: f64) {
    let gpus = f64::from(plan.gpus_bought());
    *fleet.gpus.entry(plan.provider.clone()).or_default() += sign * gpus;
    *fleet.spend_per_hour.entry(plan.provider.clone()).or_default() += sign * plan.spend_per_hour();
    if fleet.gpus.get(&plan.provider).is_some_and(|g| *g <= 0.0) {
        fleet.gpus.remove(&plan.provider);
        fleet.spend_per_hour.remove(&plan.provider);
    }
}

fn by_provider(offers: Vec<Offer>) -> BTreeMap<ProviderName, Vec<Offer>> {
    offers.into_iter().fold(BTreeMap::new(), |mut by: BTreeMap<_, Vec<_>>, offer| {
        by.entry(offer.provider.clone()).or_default().push(offer);
        by
    })
}

/// A minimum of `k` providers per request, less the providers the request already uses.
fn remaining_min_providers(
    rule: &Option<(u32, String)>,
    in_use: &BTreeSet<ProviderName>,
) -> Option<(u32, String)> {
    let (k, source) = rule.as_ref()?;
    let left = k.saturating_sub(in_use.len() as u32);
    (left > 1).then(|| (left, source.clone()))
}

/// The key of a commitment clause in force.
fn commitment_key(c: &crate::contract::InForce<'_, crate::contract::Commitment>) -> CommitmentKey {
    CommitmentKey {
        contract: c.contract.to_owned(),
        version: c.version.to_owned(),
        clause: c.clause.to_owned(),
    }
}

/// Collects effects for one input.
struct Out {
    now: Timestamp,
    effects: Effects,
}

impl Out {
    fn ledger(&mut self, request: Option<&str>, kind: EventKind) {
        self.effects.push(Effect::Ledger(Event { at: self.now, request: request.map(str::to_owned), kind }));
    }
}

/// What the holder took in first refusal.
#[derive(Debug)]
struct Taken {
    gpus: u32,
    region: Region,
    accelerator: Accelerator,
    instance_type: String,
    gpus_per_node: GpuCount,
    lead_time_hours: u32,
}

/// What is put to the holder in one solicitation.
struct Offered {
    gpus: u32,
    /// Per GPU-hour.
    price: Price,
    /// How the price was arrived at, for the ledger.
    basis: String,
}

/// What a first-refusal holder is offered in offer-first mode.
struct HolderOffer {
    price: Price,
    /// How the price was arrived at, for the ledger.
    basis: String,
    /// The largest node among the holder's offers that meet the request: the one-unit
    /// tolerance of the caps.
    node_gpus: u32,
}

/// A request id as the engine remembers it once the request is handed over: the first 8
/// bytes of its SHA-256, stable across builds and platforms.
fn id_digest(id: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(id.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}
