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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::commitments::{CommitmentBooks, CommitmentStatus};
use crate::contract::{ContractSet, RefusalMode, ShareBasis, Suspension};
use crate::ledger::{AllocationRecord, Event, EventKind, Wanted};
use crate::names::Names;
use crate::placement::{self, Cap, Demand, Fleet, Joining, PlannedAllocation, Rules, SolverConfig};
use crate::request::Request;
use crate::settlement::Settler;
use crate::types::{
    Accelerator, GpuCount, NodePrice, Offer, OfferKind, Price, ProviderName, Region, Timestamp, WorkloadClass,
};

mod allocations;
mod first_refusal;
mod market;
mod round;
mod screen;
mod settle;
mod snapshot;
mod timers;

pub use crate::allocation::{Allocation, AllocationState, Allocations, Run, Stage};
pub use crate::ledger::{HolderOutcome, Purpose};
pub use snapshot::EngineSnapshot;

use round::{Pending, Phase, RoundInput, Running, Step};
use screen::commitment_key;
use timers::Undelivered;

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
    /// The provider could not deliver a reservation (no capacity in any zone, its launch
    /// failed, its nodes ended before they ran): its GPUs go back to the market at once,
    /// without that provider, with `reason` as the evidence.
    ReservationFailed {
        allocation: u64,
        reason: String,
    },
    /// The provider says a delivered allocation's nodes are gone (a spot interruption, an
    /// instance terminated under it): it fails over for the hours it has left.
    AllocationLost {
        allocation: u64,
        reason: String,
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
    /// What is asked for, as the ledger records it too (one JSON object with the rest).
    #[serde(flatten)]
    pub wanted: Wanted,
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
        /// The request it is for (a cloud tags what it launches with it).
        request: String,
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
        let wanted = Wanted {
            gpus,
            block: request.block.get(),
            accelerators: request.accelerators.iter().map(|a| a.to_string()).collect(),
            regions: request.regions.clone(),
            spot: request.spot,
            duration_hours: hours,
            deliver_by: request.deliver_by,
        };
        Self { request: id.to_owned(), round, wanted, respond_by }
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

/// A provider's failure is recorded in at most this many characters.
const MAX_FAILURE_TEXT: usize = 300;

/// One input drives a request through at most this many steps; more is a bug.
const MAX_STEPS_PER_INPUT: usize = 10_000;

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
    round: Option<Box<Running>>,
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
    allocations: Allocations,
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

    /// Every allocation by id: what settlement reads.
    pub fn allocation_book(&self) -> &Allocations {
        &self.allocations
    }

    /// The round of `request` waiting for `provider`'s answer as first-refusal holder, if any.
    pub fn awaiting_holder(&self, request: &str, provider: &ProviderName) -> Option<u32> {
        let Running { round, phase } = self.requests.get(request)?.round.as_deref()?;
        let holder = &round.screened.refusal.as_ref()?.holder;
        (matches!(phase, Phase::Holder { .. }) && holder == provider).then_some(round.number)
    }

    /// What `provider`, as the holder, was offered in the solicitation `request` waits on:
    /// the GPUs and the block they come in.
    pub fn holder_offered(&self, request: &str, provider: &ProviderName) -> Option<(u32, u32)> {
        let state = self.requests.get(request)?;
        let Running { round, phase } = state.round.as_deref()?;
        let holder = &round.screened.refusal.as_ref()?.holder;
        match phase {
            Phase::Holder { offered_gpus, .. } if holder == provider => {
                Some((*offered_gpus, state.request.block.get()))
            }
            _ => None,
        }
    }

    /// The largest node of `accelerator` the published offers sell (a block up to this
    /// size must sit in one node).
    pub fn largest_node(&self, accelerator: &Accelerator) -> Option<u32> {
        self.largest_node.get(accelerator).copied()
    }

    /// The round of `request` waiting for `provider`'s quotes, if any.
    pub fn awaiting_quotes(&self, request: &str, provider: &ProviderName) -> Option<u32> {
        let Running { round, phase } = self.requests.get(request)?.round.as_deref()?;
        match phase {
            Phase::Quotes { asked, answered, .. } => {
                (asked.contains(provider) && !answered.contains(provider)).then_some(round.number)
            }
            Phase::Holder { .. } => None,
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
                self.drive(&mut out, &request, Step::Input(RoundInput::HolderAnswer { round, answer }))
            }
            Input::Quotes { request, round, provider, offers } => {
                self.drive(&mut out, &request, Step::Input(RoundInput::Quotes { round, provider, offers }))
            }
            Input::QuoteFailed { request, round, provider, error } => self.drive(
                &mut out,
                &request,
                Step::Input(RoundInput::QuoteFailed { round, provider, error }),
            ),
            Input::Timer(timer) => self.timer(&mut out, timer),
            Input::AllocationReady { allocation } => self.allocation_ready(&mut out, allocation),
            Input::ReservationFailed { allocation, reason } => {
                let reason: String = reason.chars().take(MAX_FAILURE_TEXT).collect();
                self.not_delivered(&mut out, allocation, Undelivered::Failed(reason));
            }
            Input::AllocationLost { allocation, reason } => {
                let reason: String = reason.chars().take(MAX_FAILURE_TEXT).collect();
                self.allocation_lost(&mut out, allocation, reason);
            }
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
}

fn by_provider(offers: Vec<Offer>) -> BTreeMap<ProviderName, Vec<Offer>> {
    offers.into_iter().fold(BTreeMap::new(), |mut by: BTreeMap<_, Vec<_>>, offer| {
        by.entry(offer.provider.clone()).or_default().push(offer);
        by
    })
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

/// A request id as the engine remembers it once the request is handed over: the first 8
/// bytes of its SHA-256, stable across builds and platforms.
fn id_digest(id: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(id.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}
