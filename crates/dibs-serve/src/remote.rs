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

use dibs_core::engine::Input;
use dibs_core::types::{ProviderName, Timestamp};
pub use dibs_providers::Call;
use dibs_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

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
    /// The outbox row answered.
    pub call: String,
}

/// Hands an answer to the broker; `false` once the broker has gone.
pub type Deliver = Arc<dyn Fn(Answer) -> bool + Send + Sync>;

/// Tries per call, at most.
pub const MAX_TRIES: u32 = 4;
/// One try waits at most this long.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// First backoff; it doubles after each failed try.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Calls without a deadline of their own (reserve, cancel) give up after this.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);

/// When a call's answer stops being useful: its own deadline (the holder's window, the quote
/// deadline), or `DEFAULT_DEADLINE` for reservations, cancellations and releases.
fn deadline(call: &Call, now: Timestamp) -> Duration {
    match call.respond_by() {
        Some(at) => Duration::from_secs(at.unix().saturating_sub(now.unix()).max(1) as u64),
        None => DEFAULT_DEADLINE,
    }
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
    /// calls from the outbox and `deliver` the answers to the broker.
    pub fn start(
        urls: BTreeMap<ProviderName, String>,
        deliver: Deliver,
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
            let (woken, deliver, urls, agent) = (woken.clone(), deliver.clone(), urls.clone(), agent.clone());
            std::thread::Builder::new()
                .name(format!("dibs-provider-{i}"))
                .spawn(move || work(store, &woken, &*deliver, &urls, &agent))
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
    deliver: &(dyn Fn(Answer) -> bool + Send + Sync),
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
                if !deliver(Answer { at, input, call: row.key }) {
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
    let (path, body) = (call.path(), call.body());
    let give_up = Instant::now() + deadline(call, now);
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
                let answered =
                    text.ok().and_then(|text| call.parse_reply(&text)).and_then(|reply| call.input(reply));
                return answered.or_else(|| gave_up(call));
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

/// A call that got no usable answer, as an input now (see [`Call::unanswered`]).
fn gave_up(call: &Call) -> Option<(Option<Timestamp>, Input)> {
    call.unanswered().map(|input| (None, input))
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
