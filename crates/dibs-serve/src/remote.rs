//! The client side of the provider protocol: calls to providers over HTTP.
//!
//! The broker never waits for a provider. It hands each call to a pool of
//! worker threads; a worker tries the call with a per-try timeout, retries
//! with exponential backoff, and gives up at the call's deadline (the
//! holder's response window, the quote deadline). A good answer comes back
//! to the broker as an input; an error, a garbage answer or no answer in
//! time comes back as nothing, and the engine's own timers move the request
//! on (the window lapses, the quote round closes, the delivery is late).

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dibs_core::engine::{Ask, HolderAnswer, Input, Solicitation};
use dibs_core::placement::PlannedAllocation;
use dibs_core::types::{Offer, ProviderName, Timestamp};
use serde::Deserialize;
use serde_json::json;

use crate::broker::{CallRecord, Command};
use crate::provider::{CancelBody, ReserveBody};
use dibs_store::{Store, StoreError};

/// Tries per call, at most.
pub const MAX_TRIES: u32 = 4;
/// One try waits at most this long.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// First backoff; it doubles after each failed try.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Calls without a deadline of their own (reserve, cancel) give up after this.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);
/// Quotes beyond this many offers per answer are cut off.
pub const MAX_OFFERS_PER_ANSWER: usize = 1000;

/// One outgoing call.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    Solicit(Solicitation),
    Quote { provider: ProviderName, ask: Ask },
    Reserve { allocation: u64, plan: PlannedAllocation },
    Cancel { provider: ProviderName, allocation: u64 },
}

impl Call {
    pub fn provider(&self) -> &ProviderName {
        match self {
            Call::Solicit(s) => &s.holder,
            Call::Quote { provider, .. } | Call::Cancel { provider, .. } => provider,
            Call::Reserve { plan, .. } => &plan.provider,
        }
    }

    /// When the answer stops being useful.
    fn deadline(&self, now: Timestamp) -> Duration {
        let until = |at: Timestamp| Duration::from_secs(at.unix().saturating_sub(now.unix()).max(1) as u64);
        match self {
            Call::Solicit(s) => until(s.ask.respond_by),
            Call::Quote { ask, .. } => until(ask.respond_by),
            _ => DEFAULT_DEADLINE,
        }
    }
}

#[derive(Deserialize)]
struct SolicitReply {
    answer: Option<HolderAnswer>,
}

#[derive(Deserialize)]
struct QuoteReply {
    offers: Vec<Offer>,
}

#[derive(Deserialize)]
struct ReserveReply {
    ready_at: Option<Timestamp>,
}

/// The "URL" of a provider that is not called but calls in: it reads
/// `/v1/provider/events` and answers through `/v1/provider/requests/{id}/answer`.
pub const PULL: &str = "pull";

/// How long a worker holds a claimed call before another may take it over.
pub const LEASE_SECONDS: i64 = 60;

/// Opens a store handle for a worker.
pub type OpenStore = Arc<dyn Fn() -> Result<Box<dyn Store>, StoreError> + Send + Sync>;

/// Providers reached over HTTP, and the workers that make the calls the
/// broker commits to the outbox.
pub struct Dispatcher {
    urls: BTreeMap<ProviderName, String>,
    wake: Sender<()>,
}

impl Dispatcher {
    /// Starts `workers` threads, each with its own store handle; they claim
    /// calls from the outbox and send answers to `broker`.
    pub fn start(
        urls: BTreeMap<ProviderName, String>,
        broker: Sender<Command>,
        workers: usize,
        open: OpenStore,
    ) -> Result<Self, StoreError> {
        let (wake, woken) = std::sync::mpsc::channel();
        let woken = Arc::new(Mutex::new(woken));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(TRY_TIMEOUT))
            .build()
            .into();
        for i in 0..workers.max(1) {
            let store = open()?;
            let (woken, broker, urls, agent) = (woken.clone(), broker.clone(), urls.clone(), agent.clone());
            std::thread::Builder::new()
                .name(format!("dibs-provider-{i}"))
                .spawn(move || work(store, &woken, &broker, &urls, &agent))
                .expect("a worker thread starts");
        }
        Ok(Self { urls, wake })
    }

    /// The URL a provider is reached at (or `pull`).
    pub fn url(&self, provider: &ProviderName) -> Option<&str> {
        self.urls.get(provider).map(String::as_str)
    }

    pub fn is_remote(&self, provider: &ProviderName) -> bool {
        self.urls.contains_key(provider)
    }

    /// Tells idle workers that `calls` new calls are in the outbox.
    pub fn wake(&self, calls: usize) {
        for _ in 0..calls {
            let _ = self.wake.send(());
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn work(
    mut store: Box<dyn Store>,
    woken: &Mutex<Receiver<()>>,
    broker: &Sender<Command>,
    urls: &BTreeMap<ProviderName, String>,
    agent: &ureq::Agent,
) {
    loop {
        let now = unix_now();
        let claimed = match store.claim_calls(now, now + LEASE_SECONDS, 1) {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("dibs: claiming a call: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let Some(row) = claimed.into_iter().next() else {
            // Nothing to do: wait for a wake-up, or look again in a while
            // (a lease that ran out frees a call without one).
            let waited = woken.lock().map(|w| w.recv_timeout(Duration::from_millis(500)));
            if matches!(waited, Ok(Err(std::sync::mpsc::RecvTimeoutError::Disconnected))) {
                return;
            }
            continue;
        };
        let Ok(record) = serde_json::from_str::<CallRecord>(&row.body) else {
            eprintln!("dibs: outbox row {} is unreadable; dropping it", row.key);
            let _ = store.drop_call(&row.key);
            continue;
        };
        let answer =
            urls.get(record.call.provider()).and_then(|url| perform(agent, url, &record.call, record.at));
        match answer {
            Some((at, input)) => {
                if broker.send(Command::Input { at, input: Box::new(input), call: Some(row.key) }).is_err() {
                    return;
                }
            }
            // Nothing to record (a cancel, or a call that failed for good): the row goes now.
            None => {
                let _ = store.drop_call(&row.key);
            }
        }
    }
}

/// Makes one call with retries; the input its answer causes, if any, and
/// when it is due (`None`: now).
fn perform(
    agent: &ureq::Agent,
    url: &str,
    call: &Call,
    now: Timestamp,
) -> Option<(Option<Timestamp>, Input)> {
    let (path, body) = match call {
        Call::Solicit(s) => ("solicit", serde_json::to_value(s).ok()?),
        Call::Quote { ask, .. } => ("quote", serde_json::to_value(ask).ok()?),
        Call::Reserve { allocation, plan } => (
            "reserve",
            serde_json::to_value(ReserveBody { allocation: *allocation, plan: plan.clone() }).ok()?,
        ),
        Call::Cancel { allocation, .. } => ("cancel", json!(CancelBody { allocation: *allocation })),
    };
    let give_up = Instant::now() + call.deadline(now);
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=MAX_TRIES {
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let sent = agent
            .post(format!("{}/{path}", url.trim_end_matches('/')))
            .config()
            .timeout_global(Some(left.min(TRY_TIMEOUT)))
            .build()
            .send_json(&body);
        match sent {
            Ok(mut response) if response.status().is_success() => {
                let text = response.body_mut().with_config().limit(4 * 1024 * 1024).read_to_string();
                // A garbage answer is no answer; retrying would get the same garbage.
                return text.ok().and_then(|text| answer(call, &text)).or_else(|| gave_up(call));
            }
            Ok(response) if response.status().is_client_error() => {
                eprintln!("dibs: {url}/{path}: HTTP {}; not retrying", response.status());
                return gave_up(call);
            }
            Ok(response) => eprintln!("dibs: {url}/{path}: HTTP {} (try {attempt})", response.status()),
            Err(e) => eprintln!("dibs: {url}/{path}: {e} (try {attempt})"),
        }
        let pause = backoff.min(give_up.saturating_duration_since(Instant::now()));
        std::thread::sleep(pause);
        backoff *= 2;
    }
    gave_up(call)
}

/// What a call that got no usable answer means. A provider that cannot
/// quote has quoted nothing: the round need not wait for it until its
/// deadline. A holder that cannot answer is silent, and its window lapses;
/// a reservation that cannot be confirmed is late, and spills over.
fn gave_up(call: &Call) -> Option<(Option<Timestamp>, Input)> {
    match call {
        Call::Quote { provider, ask } => Some((
            None,
            Input::Quotes {
                request: ask.request.clone(),
                round: ask.round,
                provider: provider.clone(),
                offers: Vec::new(),
            },
        )),
        _ => None,
    }
}

fn answer(call: &Call, text: &str) -> Option<(Option<Timestamp>, Input)> {
    match call {
        Call::Solicit(s) => {
            let reply: SolicitReply = serde_json::from_str(text).ok()?;
            let input = Input::HolderAnswer {
                request: s.ask.request.clone(),
                round: s.ask.round,
                answer: reply.answer?,
            };
            Some((None, input))
        }
        Call::Quote { provider, ask } => {
            let reply: QuoteReply = serde_json::from_str(text).ok()?;
            // A provider quotes for itself only: offers naming another provider are dropped.
            let offers: Vec<Offer> = reply
                .offers
                .into_iter()
                .filter(|o| &o.provider == provider)
                .take(MAX_OFFERS_PER_ANSWER)
                .collect();
            Some((
                None,
                Input::Quotes {
                    request: ask.request.clone(),
                    round: ask.round,
                    provider: provider.clone(),
                    offers,
                },
            ))
        }
        Call::Reserve { allocation, .. } => {
            let reply: ReserveReply = serde_json::from_str(text).ok()?;
            reply.ready_at.map(|at| (Some(at), Input::AllocationReady { allocation: *allocation }))
        }
        Call::Cancel { .. } => None,
    }
}

/// Whether a provider's health endpoint answers 2xx within a second.
pub fn healthy(url: &str) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(1)))
        .build()
        .into();
    agent.get(url).call().is_ok_and(|r| r.status().is_success())
}
