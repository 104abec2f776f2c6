//! What the HTTP side asks of the broker ([`Command`]), what it answers (each command's own
//! type, from `view.rs`, or a [`BrokerError`]), and how the broker answers each one.
//!
//! The broker picks no HTTP status: an error says what went wrong (not found, a conflict,
//! a field at fault, ...) and `app.rs` maps it to HTTP once. Answers are held until the
//! turn that decided them commits ([`Held`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use dibs_core::engine::{HolderAnswer, Input, MAX_QUOTES_PER_ANSWER, Status};
use dibs_core::names::Names;
use dibs_core::request::{Request, RequestSpec};
use dibs_core::types::{Offer, ProviderName, Timestamp};
use dibs_store::{IdempotentAnswer, NewEntry};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Broker, Configuration, Finished, MAX_LIST, configured_entry};
use crate::remote::Dispatcher;
use crate::view::{self, RequestView};
use dibs_core::engine::Engine;

/// How far ahead a request may be placed: two years.
pub const MAX_HOURS_AHEAD: f64 = 2.0 * 365.0 * 24.0;

/// Why the broker did not do what a command asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BrokerError {
    /// No such request, incident or contract.
    #[error("{0}")]
    NotFound(String),
    /// It exists, but its state refuses this (a request that ended otherwise, a request not
    /// waiting for this provider).
    #[error("{0}")]
    Conflict(String),
    /// A field of what was sent is wrong.
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// Not now: the store cannot be reached, the engine holds the most requests it takes,
    /// the broker stopped.
    #[error("{0}")]
    Unavailable(String),
    /// A record the broker needs is missing or unreadable.
    #[error("{0}")]
    Broken(String),
}

impl BrokerError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.to_owned(), message: message.into() }
    }
}

/// Where a command's answer goes.
pub type Replier<T> = tokio::sync::oneshot::Sender<Result<T, BrokerError>>;

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
    /// The parts of a split award may run apart, each from its own ready time (`batch`
    /// only; by default a request's GPUs start together).
    #[serde(default)]
    pub apart: bool,
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
        reply: Replier<RequestView>,
    },
    Cancel {
        id: String,
        reply: Replier<RequestView>,
    },
    Get {
        id: String,
        reply: Replier<RequestView>,
    },
    List {
        status: Option<String>,
        after: Option<String>,
        limit: usize,
        reply: Replier<view::RequestPage>,
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
        reply: Replier<view::IncidentView>,
    },
    ResolveIncident {
        id: String,
        reply: Replier<view::IncidentResolvedView>,
    },
    /// Revenue earned, reported to dibs (for revenue share and review triggers).
    ReportRevenue {
        amount: f64,
        reply: Replier<view::RevenueReportedView>,
    },
    /// An event declared for review-trigger conditions.
    DeclareEvent {
        name: String,
        reply: Replier<view::EventDeclaredView>,
    },
    /// The latest settlement.
    Settlement {
        reply: Replier<view::SettlementView>,
    },
    Incidents {
        reply: Replier<view::IncidentList>,
    },
    /// Allocations in id order after `after`, of one provider if given.
    Allocations {
        provider: Option<String>,
        after: u64,
        limit: usize,
        reply: Replier<view::AllocationPage>,
    },
    /// A provider answering over the API (the pull side of the provider
    /// protocol): its answer to a solicitation, or its quotes.
    ProviderAnswer {
        provider: String,
        request: String,
        answer: ProviderReply,
        reply: Replier<view::AnswerTaken>,
    },
    /// Load a contract set (file name, contents): it applies from now on.
    LoadContracts {
        files: Vec<(String, String)>,
        reply: Replier<view::ContractsLoaded>,
    },
    /// The contracts the engine runs under.
    Contracts {
        reply: Replier<view::ContractList>,
    },
    /// One contract, with its versions and their clauses.
    Contract {
        id: String,
        reply: Replier<view::ContractView>,
    },
    /// The providers requests may ask, how each is reached, and its open incidents.
    Providers {
        reply: Replier<view::ProviderList>,
    },
    /// How many requests are in each status.
    Stats {
        reply: Replier<view::StatsView>,
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
    pub(super) remote: Option<&'a Dispatcher>,
}

impl ReadView<'_> {
    /// How a provider is reached: `in-process`, `pull`, or its URL.
    pub fn reached(&self, provider: &dibs_core::types::ProviderName) -> String {
        reached(self.remote, provider)
    }
}

/// Hands a read's answer over once the turn that computed it has committed.
pub type Delivery = Box<dyn FnOnce() + Send>;

pub(super) fn reached(remote: Option<&Dispatcher>, provider: &dibs_core::types::ProviderName) -> String {
    if let Some(adapter) = remote.and_then(|r| r.adapter(provider)) {
        return adapter.describe();
    }
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

/// Answers held until the turn that decided them commits, then sent in order.
#[derive(Default)]
pub(super) struct Held(Vec<Delivery>);

impl Held {
    fn answer<T: Send + 'static>(&mut self, reply: Replier<T>, answer: Result<T, BrokerError>) {
        self.0.push(Box::new(move || {
            // A client that went away does not need its answer.
            let _ = reply.send(answer);
        }));
    }

    /// Sends every answer: call only once the turn has committed.
    pub(super) fn send(self) {
        for deliver in self.0 {
            deliver();
        }
    }
}

impl Broker {
    /// Does what one command asks at `now`: what it decides goes to `entries`, its answer
    /// to `held`.
    pub(super) fn command(
        &mut self,
        now: Timestamp,
        command: Command,
        entries: &mut Vec<NewEntry>,
        held: &mut Held,
    ) {
        match command {
            Command::Submit { body, idempotency, reply } => {
                let answer = self.submit(now, *body, idempotency, entries);
                held.answer(reply, answer);
            }
            Command::Cancel { id, reply } => {
                let answer = self.cancel(now, id, entries);
                held.answer(reply, answer);
            }
            Command::Get { id, reply } => held.answer(reply, self.any_view(&id)),
            Command::List { status, after, limit, reply } => {
                let answer = self.list(status.as_deref(), after.as_deref(), limit.min(MAX_LIST));
                held.answer(reply, answer);
            }
            Command::Stats { reply } => held.answer(reply, Ok(self.stats())),
            Command::OpenIncident { provider, region, idempotency, reply } => {
                let answer = match self.first_answer(&idempotency) {
                    Ok(Some(first)) => Ok(first),
                    Err(e) => Err(e),
                    Ok(None) => self
                        .open_incident(now, provider, region, entries)
                        .inspect(|view| self.remember(idempotency, view)),
                };
                held.answer(reply, answer);
            }
            Command::ResolveIncident { id, reply } => {
                let answer = self.resolve_incident(now, id, entries);
                held.answer(reply, answer);
            }
            Command::ReportRevenue { amount, reply } => {
                self.apply(now, Input::RevenueReported { amount }, entries);
                let month = dibs_core::settlement::month_of(now);
                held.answer(reply, Ok(view::RevenueReportedView { amount, month }));
            }
            Command::DeclareEvent { name, reply } => {
                self.apply(now, Input::EventDeclared { name: name.clone() }, entries);
                held.answer(reply, Ok(view::EventDeclaredView { name, at: now.to_string() }));
            }
            Command::Settlement { reply } => held.answer(reply, Ok(view::settlement(&self.engine))),
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
                held.answer(reply, Ok(view::IncidentList { incidents }));
            }
            Command::Allocations { provider, after, limit, reply } => {
                let limit = limit.min(MAX_LIST);
                let allocations: Vec<view::AllocationView> = self
                    .engine
                    .allocations_from(after + 1)
                    .filter(|a| provider.as_deref().is_none_or(|p| a.plan.provider.as_str() == p))
                    .take(limit)
                    .map(view::allocation)
                    .collect();
                let next_after =
                    (allocations.len() == limit).then(|| allocations.last().map(|a| a.id)).flatten();
                held.answer(reply, Ok(view::AllocationPage { allocations, next_after }));
            }
            Command::ProviderAnswer { provider, request, answer, reply } => {
                let answer = self.provider_answer(now, &provider, request, answer, entries);
                held.answer(reply, answer);
            }
            Command::LoadContracts { files, reply } => {
                let answer = self.load_contracts(now, files, entries);
                held.answer(reply, answer);
            }
            Command::Contracts { reply } => {
                let contracts =
                    self.engine.contracts().contracts.iter().map(|c| view::contract(c, false)).collect();
                held.answer(reply, Ok(view::ContractList { contracts }));
            }
            Command::Contract { id, reply } => {
                let contract = self.engine.contracts().contracts.iter().find(|c| c.id == id);
                let answer = contract
                    .map(|c| view::contract(c, true))
                    .ok_or_else(|| BrokerError::NotFound(format!("no contract {id:?}")));
                held.answer(reply, answer);
            }
            Command::Providers { reply } => held.answer(reply, Ok(self.providers())),
            Command::Input { at, input, call } => {
                // The answered call leaves the outbox with this turn's commit.
                if let Some(call) = call {
                    self.rows.outbox_done.push(call);
                }
                match at {
                    Some(at) if at > now => self.schedule(at, *input),
                    _ => self.apply(now, *input, entries),
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
                if let Ok(delivery) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&view))) {
                    held.0.push(delivery);
                }
            }
            Command::Shutdown => {}
        }
    }

    /// Cancelling twice changes nothing (and records nothing); a request that ended
    /// otherwise cannot be cancelled.
    fn cancel(
        &mut self,
        now: Timestamp,
        id: String,
        entries: &mut Vec<NewEntry>,
    ) -> Result<RequestView, BrokerError> {
        let status = self
            .engine
            .request(&id)
            .map(|r| r.status)
            .or_else(|| self.finished.get(id.as_str()).map(|f| f.status));
        match status {
            None => Err(BrokerError::NotFound(format!("no request {id:?}"))),
            Some(Status::Cancelled) => self.any_view(&id),
            Some(status) if status.is_final() => {
                Err(BrokerError::Conflict(format!("{id} is {} and cannot be cancelled", status.as_str())))
            }
            Some(_) => {
                self.apply(now, Input::Cancel { request: id.clone() }, entries);
                Ok(self.view(&id))
            }
        }
    }

    /// How many requests are in each status, and how many inputs wait.
    fn stats(&self) -> view::StatsView {
        let mut requests: BTreeMap<String, usize> = BTreeMap::new();
        for state in self.engine.requests() {
            *requests.entry(state.status.as_str().to_owned()).or_default() += 1;
        }
        for ended in self.finished.values() {
            *requests.entry(ended.status.as_str().to_owned()).or_default() += 1;
        }
        view::StatsView { requests, pending_inputs: self.due.len() }
    }

    /// Resolving twice changes nothing (and records nothing), as cancelling does.
    fn resolve_incident(
        &mut self,
        now: Timestamp,
        id: String,
        entries: &mut Vec<NewEntry>,
    ) -> Result<view::IncidentResolvedView, BrokerError> {
        let issued = id
            .strip_prefix("inc-")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 1 && n < self.next_incident && id == format!("inc-{n}"));
        if self.engine.open_incidents().any(|(open, ..)| open == id) {
            self.apply(now, Input::IncidentResolved { id: id.clone() }, entries);
            Ok(view::IncidentResolvedView { id, resolved: true })
        } else if issued {
            Ok(view::IncidentResolvedView { id, resolved: true })
        } else {
            Err(BrokerError::NotFound(format!("no incident {id:?}")))
        }
    }

    /// A contract set loaded over the API: it applies from now on. Parsing changes nothing
    /// when the files are wrong.
    fn load_contracts(
        &mut self,
        now: Timestamp,
        files: Vec<(String, String)>,
        entries: &mut Vec<NewEntry>,
    ) -> Result<view::ContractsLoaded, BrokerError> {
        let offers = self.configuration.as_ref().map(|c| c.offers.clone()).unwrap_or_default();
        let time_speed = self.configuration.as_ref().and_then(|c| c.time_speed);
        let configuration =
            Configuration { contracts: files, offers, origin: Configuration::API.into(), time_speed };
        let entry = configured_entry(now, &configuration);
        self.configure(configuration).map_err(|e| BrokerError::invalid("files", e))?;
        entries.push(entry);
        let loaded = self.engine.contracts().contracts.iter().map(|c| c.id.clone()).collect();
        Ok(view::ContractsLoaded { loaded, from: now.to_string() })
    }

    /// The providers requests may ask, how each is reached, and its open incidents.
    fn providers(&self) -> view::ProviderList {
        let providers = self
            .engine
            .published_providers()
            .map(|name| view::ProviderView {
                name: name.to_string(),
                reached: reached(self.remote.as_ref(), name),
                open_incidents: self
                    .engine
                    .open_incidents()
                    .filter(|(_, p, _)| *p == name)
                    .map(|(id, ..)| id.to_owned())
                    .collect(),
                healthy: None,
                problem: None,
            })
            .collect();
        view::ProviderList { providers }
    }

    fn provider_answer(
        &mut self,
        now: Timestamp,
        provider: &str,
        request: String,
        answer: ProviderReply,
        entries: &mut Vec<NewEntry>,
    ) -> Result<view::AnswerTaken, BrokerError> {
        let name = ProviderName::new(provider).map_err(|e| BrokerError::Forbidden(e.to_string()))?;
        // Only a provider that calls in answers here; the others answer the calls dibs makes
        // to them (in process, or over HTTP), and an answer from anyone else is a spoof.
        if self.remote.as_ref().and_then(|r| r.url(&name)) != Some(crate::remote::PULL) {
            return Err(BrokerError::Forbidden(format!(
                "{name} is not a pull provider: dibs calls it, and only its answers to those calls count"
            )));
        }
        let input = match answer {
            ProviderReply::Holder(answer) => {
                let round = self.engine.awaiting_holder(&request, &name).ok_or_else(|| {
                    BrokerError::Conflict(format!(
                        "{request} is not waiting for {name}'s first-refusal answer"
                    ))
                })?;
                self.check_holder_answer(&request, &name, &answer)?;
                Input::HolderAnswer { request: request.clone(), round, answer }
            }
            ProviderReply::Quotes { mut offers } => {
                let round = self.engine.awaiting_quotes(&request, &name).ok_or_else(|| {
                    BrokerError::Conflict(format!("{request} is not waiting for quotes from {name}"))
                })?;
                if offers.len() > MAX_QUOTES_PER_ANSWER {
                    return Err(BrokerError::invalid(
                        "offers",
                        format!("at most {MAX_QUOTES_PER_ANSWER} offers per answer"),
                    ));
                }
                for (i, offer) in offers.iter().enumerate() {
                    if let Err(problem) = self.engine.names().check_quoted(&name, offer) {
                        let field = format!("offers[{i}].{}", problem.field);
                        return Err(BrokerError::invalid(&field, problem.message));
                    }
                }
                offers.iter_mut().for_each(|o| o.valid_until = o.valid_until.or(Some(now.plus_hours(24.0))));
                Input::Quotes { request: request.clone(), round, provider: name, offers }
            }
        };
        self.apply(now, input, entries);
        Ok(view::AnswerTaken { request, accepted: true })
    }

    /// A holder's acceptance passes the checks a quoted offer does (its own region, a known
    /// accelerator, bounded nodes and lead time) and fits what it was offered: no more GPUs,
    /// whole blocks, nodes that can hold the block.
    fn check_holder_answer(
        &self,
        request: &str,
        holder: &ProviderName,
        answer: &HolderAnswer,
    ) -> Result<(), BrokerError> {
        let HolderAnswer::Accept { gpus, region, accelerator, instance_type, gpus_per_node, lead_time_hours } =
            answer
        else {
            return Ok(());
        };
        let (offered, block) = self.engine.holder_offered(request, holder).ok_or_else(|| {
            BrokerError::Conflict(format!("{request} is not waiting for {holder}'s answer"))
        })?;
        // As an offer, so the one check quoted offers pass applies (node price and capacity are
        // the solicitation's and the answer's own).
        let per_node = gpus_per_node.get();
        let offer = Offer {
            id: format!("{holder}/{region}/{instance_type}/first-refusal"),
            provider: holder.clone(),
            region: region.clone(),
            zone: None,
            instance_type: instance_type.clone(),
            accelerator: accelerator.clone(),
            gpus_per_node: *gpus_per_node,
            nodes_available: gpus.div_ceil(per_node),
            node_price: dibs_core::types::NodePrice::new(1.0).expect("a positive price"),
            lead_time_hours: *lead_time_hours,
            kind: dibs_core::types::OfferKind::OnDemand,
            valid_until: None,
            bills_from_delivery: true,
            price_source: None,
        };
        if let Err(problem) = self.engine.names().check_quoted(holder, &offer) {
            let field = if problem.field == "nodes_available" { "gpus" } else { problem.field };
            return Err(BrokerError::invalid(field, problem.message));
        }
        if instance_type.trim().is_empty() || instance_type.len() > 200 {
            return Err(BrokerError::invalid("instance_type", "1 to 200 characters"));
        }
        if *gpus > offered {
            return Err(BrokerError::invalid("gpus", format!("{gpus} GPUs; it was offered {offered}")));
        }
        if gpus % block != 0 {
            return Err(BrokerError::invalid("gpus", format!("{gpus} GPUs is not whole blocks of {block}")));
        }
        let largest = self.engine.largest_node(accelerator).unwrap_or(per_node);
        if per_node < block && block <= largest {
            return Err(BrokerError::invalid(
                "gpus_per_node",
                format!(
                    "a node of {per_node} GPUs cannot hold a block of {block} (nodes of {largest} exist)"
                ),
            ));
        }
        Ok(())
    }

    fn open_incident(
        &mut self,
        now: Timestamp,
        provider: String,
        region: Option<String>,
        entries: &mut Vec<NewEntry>,
    ) -> Result<view::IncidentView, BrokerError> {
        let provider =
            ProviderName::new(&provider).map_err(|e| BrokerError::invalid("provider", e.to_string()))?;
        if !self.engine.publishes(&provider) {
            return Err(BrokerError::invalid("provider", format!("{provider} publishes no offers here")));
        }
        let region = region
            .map(|r| {
                // A region of that provider's, as `aws/us-east-1` or `us-east-1`.
                let text = if r.contains('/') { r } else { format!("{provider}/{r}") };
                match self.engine.names().location(&text) {
                    Ok(location) if location.provider == provider => location.region.ok_or_else(|| {
                        BrokerError::invalid("region", "name one region, or leave it out for all of them")
                    }),
                    Ok(location) => Err(BrokerError::invalid(
                        "region",
                        format!("{text} is {}'s, not {provider}'s", location.provider),
                    )),
                    Err(e) => Err(BrokerError::invalid("region", e)),
                }
            })
            .transpose()?;
        let id = format!("inc-{}", self.next_incident);
        self.next_incident += 1;
        let input =
            Input::IncidentOpened { id: id.clone(), provider: provider.clone(), region: region.clone() };
        self.apply(now, input, entries);
        Ok(view::IncidentView { id, provider: provider.to_string(), region: region.map(|r| r.to_string()) })
    }

    /// The first answer to a create made before with the same Idempotency-Key
    /// (scope, key, body digest), if any; an error if the body differs.
    fn first_answer<T: DeserializeOwned>(
        &mut self,
        idempotency: &Option<(String, String, String)>,
    ) -> Result<Option<T>, BrokerError> {
        let Some((scope, key, digest)) = idempotency else { return Ok(None) };
        let earlier = match self.turn_answers.iter().find(|a| &a.scope == scope && &a.key == key) {
            Some(answer) => Some(answer.clone()),
            None => self.store.answer(scope, key).map_err(|e| BrokerError::Unavailable(e.to_string()))?,
        };
        let Some(answer) = earlier else { return Ok(None) };
        if &answer.request_digest != digest {
            return Err(BrokerError::invalid(
                "Idempotency-Key",
                format!("key {key:?} was used with a different request body"),
            ));
        }
        serde_json::from_str(&answer.response)
            .map(Some)
            .map_err(|e| BrokerError::Broken(format!("the first answer to key {key:?} is unreadable: {e}")))
    }

    /// Keeps a create's answer under its Idempotency-Key, committed with the turn.
    fn remember(&mut self, idempotency: Option<(String, String, String)>, answer: &impl Serialize) {
        if let Some((scope, key, digest)) = idempotency {
            self.turn_answers.push(IdempotentAnswer {
                scope,
                key,
                request_digest: digest,
                // Every create this key can repeat answers 201.
                status: 201,
                response: serde_json::to_string(answer).expect("the API's types serialize"),
            });
        }
    }

    /// The view of a request the engine holds or that ended in this turn.
    fn view(&self, id: &str) -> RequestView {
        match self.engine.request(id) {
            Some(state) => view::request(&self.engine, state),
            None => self.ended_this_turn.get(id).expect("checked by the caller").clone(),
        }
    }

    /// A request's view wherever it is: in the engine, ended in this turn, or stored.
    fn any_view(&mut self, id: &str) -> Result<RequestView, BrokerError> {
        if self.engine.request(id).is_some() || self.ended_this_turn.contains_key(id) {
            Ok(self.view(id))
        } else if self.finished.contains_key(id) {
            self.stored_view(id)
        } else {
            Err(BrokerError::NotFound(format!("no request {id:?}")))
        }
    }

    /// A page of requests in list order (`view::list_key`: oldest first), open ones from the
    /// engine and ended ones from the `requests` table.
    fn list(
        &mut self,
        status: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<view::RequestPage, BrokerError> {
        let wanted = |id: &str, s: Status| {
            status.is_none_or(|want| s.as_str() == want) && after.is_none_or(|a| view::id_order(id, a))
        };
        // Both maps are in text order (r-10 before r-2); the page is in list order, so
        // every candidate after the cursor is looked at and the first `limit` kept.
        let open = self.engine.requests().map(|s| (s.request.id.as_str(), s.status, true));
        let ended = self.finished.iter().map(|(id, f)| (&**id, f.status, false));
        let mut candidates: Vec<(&str, bool)> =
            open.chain(ended).filter(|(id, s, _)| wanted(id, *s)).map(|(id, _, held)| (id, held)).collect();
        if candidates.len() > limit && limit > 0 {
            candidates.select_nth_unstable_by_key(limit - 1, |(id, _)| view::list_key(id));
        }
        candidates.truncate(limit);
        candidates.sort_unstable_by_key(|(id, _)| view::list_key(id));
        let page: Vec<(String, bool)> =
            candidates.into_iter().map(|(id, held)| (id.to_owned(), held)).collect();
        let mut requests = Vec::with_capacity(page.len());
        for (id, held) in &page {
            let view = if *held { self.view(id) } else { self.any_view(id)? };
            requests.push(view);
        }
        let next_after = (page.len() == limit).then(|| page.last().map(|(id, _)| id.clone())).flatten();
        Ok(view::RequestPage { requests, next_after })
    }

    /// The stored view of a request that ended in an earlier turn.
    fn stored_view(&mut self, id: &str) -> Result<RequestView, BrokerError> {
        match self.store.request_view(id) {
            Ok(Some(view)) => serde_json::from_str(&view).map_err(|e| BrokerError::Broken(e.to_string())),
            Ok(None) => Err(BrokerError::Broken(format!("{id} ended but has no row in the requests table"))),
            Err(e) => Err(BrokerError::Unavailable(e.to_string())),
        }
    }

    fn submit(
        &mut self,
        now: Timestamp,
        body: SubmitBody,
        idempotency: Option<(String, String, String)>,
        entries: &mut Vec<NewEntry>,
    ) -> Result<RequestView, BrokerError> {
        if let Some(first) = self.first_answer(&idempotency)? {
            return Ok(first);
        }
        let request = submission(self.engine.names(), now, format!("r-{}", self.next_request), body)?;
        self.next_request += 1;
        let id = request.id.clone();
        self.apply(now, Input::Submit(request), entries);
        if self.engine.request(&id).is_none() && !self.ended_this_turn.contains_key(&id) {
            // The engine refused it (recorded in the ledger): it holds the most open requests
            // it takes.
            return Err(BrokerError::Unavailable(format!(
                "dibs holds the most open requests it takes ({}); submit again when some have ended",
                dibs_core::engine::MAX_OPEN_REQUESTS
            )));
        }
        let view = self.view(&id);
        self.remember(idempotency, &view);
        Ok(view)
    }
}

/// A submission checked as the API checks it, into the engine's request `id`: the first
/// field that is wrong, by the API's name for it.
fn submission(names: &Names, now: Timestamp, id: String, body: SubmitBody) -> Result<Request, BrokerError> {
    // Instants within a year before now (a start in the past means now) and
    // MAX_HOURS_AHEAD after it: a date of 0000 or 9999 is a typo, not a plan.
    let (earliest, latest) = (now.plus_hours(-24.0 * 365.0), now.plus_hours(MAX_HOURS_AHEAD));
    let instant = |field: &str, text: &Option<String>| -> Result<Option<Timestamp>, BrokerError> {
        let Some(text) = text.as_deref() else { return Ok(None) };
        let at = Timestamp::parse(text).map_err(|e| BrokerError::invalid(field, e.to_string()))?;
        if at < earliest || at > latest {
            return Err(BrokerError::invalid(
                field,
                format!("{at} is not between {earliest} and {latest} (a year back, two years ahead)"),
            ));
        }
        Ok(Some(at))
    };
    if body.deliver_within_hours.is_some_and(|h| f64::from(h) > MAX_HOURS_AHEAD) {
        return Err(BrokerError::invalid("deliver_within_hours", format!("at most {MAX_HOURS_AHEAD} hours")));
    }
    let spec = RequestSpec {
        id,
        accelerators: body.accelerators,
        gpus: body.gpus,
        // Whole 8-GPU nodes unless the request says otherwise or cannot be.
        block: body.block.or(Some(if body.gpus.is_multiple_of(8) { 8 } else { 1 })),
        duration_hours: body.duration_hours,
        earliest_start: instant("earliest_start", &body.earliest_start)?.unwrap_or(now).max(now),
        deliver_by: match (instant("deliver_by", &body.deliver_by)?, body.deliver_within_hours) {
            (Some(_), Some(_)) => {
                return Err(BrokerError::invalid(
                    "deliver_within_hours",
                    "give deliver_by or deliver_within_hours, not both",
                ));
            }
            (by, within) => by.or(within.map(|hours| now.plus_hours(f64::from(hours)))),
        },
        // A region list in one string splits around region names that hold commas.
        regions: body.regions.iter().flat_map(|r| names.split_locations(r)).collect(),
        providers: body.providers,
        exclude_providers: body.exclude_providers,
        workload: body.workload,
        max_price: body.max_price,
        spot: body.spot,
        same_region: body.same_region,
        apart: body.apart,
        objective: body.objective,
        preference: body.preference,
    };
    spec.validate(names).map_err(|e| BrokerError::invalid(e.field, e.to_string()))
}

/// The most errors [`every_field_error`] reports: one per field of a submission.
pub const MAX_FIELD_ERRORS: usize = 20;

/// Every field of a submission that is wrong, not only the first: after each error the
/// field it names is set to a value that passes its own check, and the rest is checked
/// again. A form shows them all at once; the API answers the first. Errors that do not name
/// a field of the body, or name one twice, end the search.
pub fn every_field_error(names: &Names, now: Timestamp, mut body: SubmitBody) -> Vec<(String, String)> {
    let mut errors: Vec<(String, String)> = Vec::new();
    for _ in 0..MAX_FIELD_ERRORS {
        let Err(error) = submission(names, now, "r-0".into(), body.clone()) else { break };
        let BrokerError::Invalid { field, message } = error else { break };
        if errors.iter().any(|(seen, _)| *seen == field) {
            break;
        }
        let known = passable(names, &mut body, &field);
        errors.push((field, message));
        if !known {
            break;
        }
    }
    errors
}

/// Sets `field` of `body` to a value that passes that field's own check; false for a field
/// it does not know.
fn passable(names: &Names, body: &mut SubmitBody, field: &str) -> bool {
    match field {
        "accelerators" => body.accelerators = names.accelerators().take(1).map(|a| a.to_string()).collect(),
        "gpus" => {
            body.gpus = 8;
            body.block = None;
        }
        "block" => body.block = None,
        "duration_hours" => body.duration_hours = 1,
        "earliest_start" => body.earliest_start = None,
        "deliver_by" => body.deliver_by = None,
        "deliver_within_hours" => body.deliver_within_hours = None,
        "regions" => body.regions.clear(),
        "providers" => body.providers.clear(),
        "exclude_providers" => body.exclude_providers.clear(),
        "workload" => body.workload = "training".into(),
        "max_price" => body.max_price = None,
        "spot" => body.spot = None,
        "same_region" => body.same_region = false,
        "apart" => body.apart = false,
        "objective" => body.objective = None,
        "preference" => body.preference = None,
        _ => return false,
    }
    true
}
