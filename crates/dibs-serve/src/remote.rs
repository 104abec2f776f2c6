//! The client side of the provider protocol: calls to providers over HTTP.
//!
//! The broker never waits for a provider. Each call is an outbox row, committed with the
//! decision that made it; a pool of worker threads claims rows and makes the calls. A call
//! is tried until its own deadline (the holder's response window, the quote deadline, the
//! capacity's lead time), never given up early: a try waits as long as the deadline allows
//! (at most [`MAX_TRY`]); after a failure the first few retries follow at once with a short
//! backoff, then the row goes back to the outbox with a growing, jittered backoff (at most
//! [`MAX_BACKOFF`]), where any worker, or the next process after a crash, picks it up. A
//! provider that keeps failing trips a breaker: while it is open, quote calls to it fail at
//! once (a market round does not wait for a provider known to be down) and its other calls
//! wait out [`BREAKER_COOL_DOWN`] without being tried, so the workers serve the providers
//! that answer.
//!
//! A provider may also be reached by an [`Adapter`] in this process, which speaks a cloud's
//! own API (the EC2 adapter, `crate::ec2`): the workers, the outbox and the deadlines are
//! the same; only the try differs. An adapter may say a call is not done yet
//! ([`Tried::Pending`]: nodes still starting), which is polled again without counting as a
//! failure, or that the provider cannot be used at all ([`Tried::Broken`]: credentials
//! refused), which opens its breaker at once.
//!
//! A good answer comes back to the broker as an input. A call that reaches its deadline
//! unanswered comes back as what that means (a quote call: `QuoteFailed`, so an unfilled
//! round says who gave no quote and why); the engine's own timers do the rest (a holder's
//! window lapses, a late delivery spills over).

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dibs_core::engine::Input;
use dibs_core::types::{ProviderName, Timestamp};
pub use dibs_providers::Call;
use dibs_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::clock::unix_now;

/// An outbox row's content: the call, and when it was decided.
#[derive(Serialize, Deserialize)]
pub struct CallRecord {
    pub at: Timestamp,
    pub call: Call,
}

/// A provider's answer to an outbox row's call: the input it causes, due at `at` (`None`:
/// now).
pub struct Answer {
    pub at: Option<Timestamp>,
    pub input: Input,
    /// The outbox row answered (`None`: news a provider brought unasked, such as nodes
    /// that are gone).
    pub call: Option<String>,
}

/// Hands an answer to the broker; `false` once the broker has gone.
pub type Deliver = Arc<dyn Fn(Answer) -> bool + Send + Sync>;

/// One try waits at most this long, even when the deadline is further away: a connection
/// that says nothing for this long is retried on a new one.
pub const MAX_TRY: Duration = Duration::from_secs(60);
/// Tries made at once, one after the other with [`QUICK_BACKOFF`] doubling, before the
/// call goes back to the outbox.
pub const QUICK_TRIES: u32 = 3;
pub const QUICK_BACKOFF: Duration = Duration::from_millis(100);
/// The longest a call waits in the outbox between tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Failures in a row after which a provider's breaker opens.
pub const BREAKER_FAILURES: u32 = 5;
/// How long an open breaker keeps a provider's calls waiting.
pub const BREAKER_COOL_DOWN: Duration = Duration::from_secs(30);
/// Cancellations and releases are tried for this long: the provider bills until it hears.
pub const CANCEL_DEADLINE_HOURS: f64 = 24.0;

/// When a call's answer stops being useful (unix seconds): the holder's window or the quote
/// deadline; a reservation's lead time (the capacity is late after it, and spills over); a
/// day for cancellations and releases.
fn deadline(record: &CallRecord) -> i64 {
    match (&record.call, record.call.respond_by()) {
        (_, Some(at)) => at.unix(),
        (Call::Reserve { plan, .. }, None) => {
            record.at.plus_hours(f64::from(plan.lead_time_hours).max(1.0)).unix()
        }
        _ => record.at.plus_hours(CANCEL_DEADLINE_HOURS).unix(),
    }
}

/// The wait before the next try of a call first decided at `decided` (unix seconds), at
/// `now`: half the call's age, from one second to [`MAX_BACKOFF`], less up to a quarter
/// at random (so calls that failed together do not come back together).
fn backoff(decided: i64, now: i64, rng: &mut fastrand::Rng) -> i64 {
    let age = (now - decided).max(0);
    let wait = (age / 2).clamp(1, MAX_BACKOFF.as_secs() as i64);
    (wait - rng.i64(0..=wait / 4)).max(1)
}

/// How soon a call an adapter says is not done yet ([`Tried::Pending`]) is tried again.
pub const PENDING_POLL: Duration = Duration::from_secs(3);

/// A provider reached in this process through a cloud's own API instead of the provider
/// protocol over HTTP. Its calls are made on the workers' threads and may block.
pub trait Adapter: Send + Sync {
    /// What it talks to, for the banner and the provider list (`EC2 at http://...`).
    fn describe(&self) -> String;
    /// One try of a call, within `limit`.
    fn call(&self, call: &Call, limit: Duration) -> Tried;
    /// Whether it can be used now (a cheap call); the error says why not.
    fn health(&self) -> Result<(), String>;
    /// Names the ledger it serves (its first entry's hash), once the ledger is read: what
    /// it launches is tagged with it.
    fn bind(&self, _ledger: &str) {}
    /// What the cloud holds that no open allocation in `owned` owns (instances dibs
    /// launched and lost track of), said in a line for the operator; `None`: nothing.
    fn orphans(&self, _owned: &std::collections::BTreeSet<u64>) -> Option<String> {
        None
    }
    /// Allocations it delivered whose nodes are gone since (a spot interruption, instances
    /// terminated under them), and why; asked every [`WATCH_EVERY`].
    fn lost(&self) -> Vec<(u64, String)> {
        Vec::new()
    }
}

/// How often an adapter is asked which delivered allocations lost their nodes.
pub const WATCH_EVERY: Duration = Duration::from_secs(10);

/// Per provider: failures in a row, and until when its breaker is open.
#[derive(Default)]
struct Breakers {
    state: Mutex<BTreeMap<ProviderName, (u32, Option<Instant>)>>,
}

impl Breakers {
    /// Until when calls to `provider` wait without being tried, if its breaker is open.
    fn open_until(&self, provider: &ProviderName) -> Option<Instant> {
        let state = self.state.lock().ok()?;
        state.get(provider).and_then(|(_, until)| *until).filter(|until| *until > Instant::now())
    }

    fn failed(&self, provider: &ProviderName) {
        if let Ok(mut state) = self.state.lock() {
            let (failures, until) = state.entry(provider.clone()).or_default();
            *failures += 1;
            if *failures >= BREAKER_FAILURES {
                *until = Some(Instant::now() + BREAKER_COOL_DOWN);
                eprintln!(
                    "dibs: {provider} failed {failures} times in a row; its calls wait {BREAKER_COOL_DOWN:?}"
                );
            }
        }
    }

    /// The provider cannot be used (its credentials were refused): open at once.
    fn broken(&self, provider: &ProviderName, why: &str) {
        if let Ok(mut state) = self.state.lock() {
            let (failures, until) = state.entry(provider.clone()).or_default();
            *failures = (*failures).max(BREAKER_FAILURES);
            *until = Some(Instant::now() + BREAKER_COOL_DOWN);
            eprintln!("dibs: {provider} cannot be used ({why}); its calls wait {BREAKER_COOL_DOWN:?}");
        }
    }

    fn answered(&self, provider: &ProviderName) {
        if let Ok(mut state) = self.state.lock() {
            state.remove(provider);
        }
    }
}

/// The "URL" of a provider that is not called but calls in: it reads
/// `/v1/provider/events` and answers through `/v1/provider/requests/{id}/answer`.
pub const PULL: &str = "pull";

/// How long a worker holds a claimed call before another may take it over: longer than a
/// call's quick tries can take.
pub const LEASE_SECONDS: i64 = 4 * 60;

/// Opens a store handle for a worker.
pub type OpenStore = Arc<dyn Fn() -> Result<Box<dyn Store>, StoreError> + Send + Sync>;

/// Providers reached over HTTP, and the workers that make the calls the
/// broker commits to the outbox.
pub struct Dispatcher {
    urls: BTreeMap<ProviderName, String>,
    adapters: Adapters,
    wake: Sender<()>,
}

/// Providers reached through an adapter, by name.
pub type Adapters = BTreeMap<ProviderName, Arc<dyn Adapter>>;

/// The "URL" of a provider reached through an adapter.
pub const ADAPTER: &str = "adapter";

impl Dispatcher {
    /// Starts `workers` threads, each with its own store handle; they claim
    /// calls from the outbox and `deliver` the answers to the broker.
    pub fn start(
        mut urls: BTreeMap<ProviderName, String>,
        adapters: Adapters,
        deliver: Deliver,
        workers: usize,
        open: OpenStore,
    ) -> Result<Self, StoreError> {
        for (name, adapter) in &adapters {
            urls.insert(name.clone(), ADAPTER.to_owned());
            let (adapter, deliver) = (adapter.clone(), deliver.clone());
            std::thread::Builder::new()
                .name(format!("dibs-watch-{name}"))
                .spawn(move || watch(adapter.as_ref(), &deliver))
                .expect("a watcher thread starts");
        }
        let (wake, woken) = std::sync::mpsc::channel();
        let woken = Arc::new(Mutex::new(woken));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(MAX_TRY))
            .build()
            .into();
        let breakers = Arc::new(Breakers::default());
        for i in 0..workers.max(1) {
            let store = open()?;
            let worker = Worker {
                woken: woken.clone(),
                deliver: deliver.clone(),
                urls: urls.clone(),
                adapters: adapters.clone(),
                agent: agent.clone(),
                breakers: breakers.clone(),
                rng: fastrand::Rng::new(),
            };
            std::thread::Builder::new()
                .name(format!("dibs-provider-{i}"))
                .spawn(move || worker.work(store))
                .expect("a worker thread starts");
        }
        Ok(Self { urls, adapters, wake })
    }

    /// The URL a provider is reached at (or `pull`, or `adapter`).
    pub fn url(&self, provider: &ProviderName) -> Option<&str> {
        self.urls.get(provider).map(String::as_str)
    }

    /// The adapter a provider is reached through, if it is.
    pub fn adapter(&self, provider: &ProviderName) -> Option<&Arc<dyn Adapter>> {
        self.adapters.get(provider)
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

/// One worker thread's share of the dispatcher.
struct Worker {
    woken: Arc<Mutex<Receiver<()>>>,
    deliver: Deliver,
    urls: BTreeMap<ProviderName, String>,
    adapters: Adapters,
    agent: ureq::Agent,
    breakers: Arc<Breakers>,
    rng: fastrand::Rng,
}

/// What one try of a call came to.
pub enum Tried {
    /// An answer, as the input it causes (`None`: an answer that causes nothing, an ack).
    Answered(Option<(Option<Timestamp>, Input)>),
    /// The provider refused the call (4xx) or answered garbage: retrying gets the same.
    Refused(String),
    /// An error, a 5xx, a timeout: worth another try.
    Failed(String),
    /// Not done yet (an adapter's nodes still starting): asked again after [`PENDING_POLL`],
    /// not a failure.
    Pending(String),
    /// The provider cannot be used at all (credentials refused): its breaker opens now,
    /// and the call gives up with this as its reason.
    Broken(String),
}

impl Worker {
    fn work(mut self, mut store: Box<dyn Store>) {
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
                // Nothing to do: wait for a wake-up, or look again in a while (a lease that ran
                // out, or a backoff that ended, frees a call without one).
                let waited = self.woken.lock().map(|w| w.recv_timeout(Duration::from_millis(500)));
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
            if !self.carry(store.as_mut(), &row.key, &record) {
                return;
            }
        }
    }

    /// Makes one claimed call, or puts it back for later; false once the broker has gone.
    fn carry(&mut self, store: &mut dyn Store, key: &str, record: &CallRecord) -> bool {
        let call = &record.call;
        let provider = call.provider();
        let deadline = deadline(record);
        let Some(url) = self.urls.get(provider).cloned() else {
            let _ = store.drop_call(key);
            return true;
        };
        if let Some(until) = self.breakers.open_until(provider) {
            // A market round does not wait for a provider known to be down: its quote call
            // fails now. A holder's solicitation, a reservation or a cancellation waits the
            // cool-down out and is tried again, up to its deadline.
            if matches!(call, Call::Quote { .. }) || unix_now() >= deadline {
                let why = format!("{provider} failed {BREAKER_FAILURES} times in a row (breaker open)");
                return self.give_up(store, key, call, &why);
            }
            let wait = until.saturating_duration_since(Instant::now()).as_secs().max(1) as i64;
            let _ = store.retry_call(key, (unix_now() + wait).min(deadline));
            return true;
        }
        let mut pause = QUICK_BACKOFF;
        let mut last_error = String::new();
        for _ in 0..QUICK_TRIES {
            let left = deadline - unix_now();
            if left <= 0 {
                break;
            }
            let limit = Duration::from_secs(left as u64).min(MAX_TRY);
            let tried = match self.adapters.get(provider) {
                Some(adapter) => adapter.call(call, limit),
                None => try_once(&self.agent, &url, call, limit),
            };
            match tried {
                Tried::Answered(input) => {
                    self.breakers.answered(provider);
                    return match input {
                        Some((at, input)) => (self.deliver)(Answer { at, input, call: Some(key.to_owned()) }),
                        None => {
                            let _ = store.drop_call(key);
                            true
                        }
                    };
                }
                Tried::Refused(error) => {
                    self.breakers.answered(provider);
                    eprintln!("dibs: {url}/{}: {error}; not retrying", call.path());
                    return self.give_up(store, key, call, &error);
                }
                Tried::Pending(note) => {
                    self.breakers.answered(provider);
                    let again = unix_now() + PENDING_POLL.as_secs() as i64;
                    if again >= deadline {
                        return self.give_up(store, key, call, &format!("not done by its deadline: {note}"));
                    }
                    let _ = store.retry_call(key, again);
                    return true;
                }
                Tried::Broken(error) => {
                    self.breakers.broken(provider, &error);
                    return self.give_up(store, key, call, &error);
                }
                Tried::Failed(error) => {
                    eprintln!("dibs: {url}/{}: {error}", call.path());
                    self.breakers.failed(provider);
                    last_error = error;
                    if self.breakers.open_until(provider).is_some() {
                        // The next claim sees the open breaker and does what it says.
                        let _ = store.retry_call(key, unix_now());
                        return true;
                    }
                    std::thread::sleep(pause);
                    pause *= 2;
                }
            }
        }
        let now = unix_now();
        if now >= deadline {
            return self.give_up(store, key, call, &last_error);
        }
        let not_before = (now + backoff(record.at.unix(), now, &mut self.rng)).min(deadline);
        let _ = store.retry_call(key, not_before);
        true
    }

    /// The call reached its deadline unanswered, or was refused: the broker hears what that
    /// means, or the row goes.
    fn give_up(&self, store: &mut dyn Store, key: &str, call: &Call, error: &str) -> bool {
        match call.unanswered(error) {
            Some(input) => (self.deliver)(Answer { at: None, input, call: Some(key.to_owned()) }),
            None => {
                let _ = store.drop_call(key);
                true
            }
        }
    }
}

/// Asks an adapter, every [`WATCH_EVERY`], which delivered allocations lost their nodes,
/// and tells the broker; ends when the broker has gone.
fn watch(adapter: &dyn Adapter, deliver: &Deliver) {
    loop {
        std::thread::sleep(WATCH_EVERY);
        for (allocation, reason) in adapter.lost() {
            let input = Input::AllocationLost { allocation, reason };
            if !deliver(Answer { at: None, input, call: None }) {
                return;
            }
        }
    }
}

/// One try of a call, waiting at most `limit`.
fn try_once(agent: &ureq::Agent, url: &str, call: &Call, limit: Duration) -> Tried {
    let sent = agent
        .post(format!("{}/{}", url.trim_end_matches('/'), call.path()))
        .config()
        .timeout_global(Some(limit))
        .build()
        .send_json(call.body());
    match sent {
        Ok(mut response) if response.status().is_success() => {
            let text = response.body_mut().with_config().limit(4 * 1024 * 1024).read_to_string();
            match text.ok().and_then(|text| call.parse_reply(&text)) {
                Some(reply) => Tried::Answered(call.input(reply)),
                None => Tried::Refused("an answer that is not the protocol's".into()),
            }
        }
        Ok(response) if response.status().is_client_error() => {
            Tried::Refused(format!("HTTP {}", response.status()))
        }
        Ok(response) => Tried::Failed(format!("HTTP {}", response.status())),
        Err(e) => Tried::Failed(e.to_string()),
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
