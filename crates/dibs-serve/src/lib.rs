//! `dibs serve`: the durable broker service.
//!
//! The same engine as `dibs place` and `dibs simulate`, with the wall clock
//! instead of a virtual one and a durable ledger ([`dibs_store`]) as the
//! source of truth. [`broker`] is the shell that feeds the engine and
//! commits; [`http`] is the JSON API in front of it.

pub mod app;
pub mod banner;
pub mod broker;
pub mod clock;
pub mod dashboard;
pub mod ec2;
pub mod http;
pub mod listener;
pub mod openapi;
pub mod provider;
pub mod remote;
pub mod sealed;
pub mod signing;
pub mod view;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dibs_core::types::Offer;
use dibs_providers::{HolderBehaviour, SimulatedBehaviour, SimulatedProvider};
use dibs_store::{PostgresStore, SqliteStore, Store, StoreError};

use crate::broker::{Broker, Recovery};

/// The default PostgreSQL schema the service keeps its tables in.
pub const POSTGRES_SCHEMA: &str = "dibs";

pub struct ServeConfig {
    pub listen: String,
    /// The data folder: the SQLite ledger and the admin token's hash.
    pub data: PathBuf,
    /// A PostgreSQL URL; `None` keeps the ledger in SQLite in `data`.
    pub database: Option<String>,
    /// The PostgreSQL schema (replicas that share a ledger use the same one).
    pub schema: String,
    /// How long the leader's lease lasts unrenewed before a standby takes over.
    pub lease: std::time::Duration,
    /// Contract files as (name, contents), and the catalog's offers: recorded
    /// in the ledger when they differ from what it last ran under.
    pub configuration: broker::Configuration,
    /// How the in-process simulated holder answers.
    pub holder: HolderBehaviour,
    /// Providers reached over HTTP (`dibs provider serve`), by name; the
    /// others in the catalog run in-process.
    pub remote_providers: BTreeMap<dibs_core::types::ProviderName, String>,
    /// Providers reached through a cloud's own API in this process (`--provider aws=ec2`).
    pub adapters: remote::Adapters,
    pub seed: u64,
    /// The admin token (from `DIBS_ADMIN_TOKEN`); `None`: keep the one made at first start.
    pub admin_token: Option<String>,
    /// How many times faster than the wall clock the service's clock runs (1: real time).
    /// Recorded in `configuration.time_speed` too.
    pub time_speed: f64,
    /// Where the contracts and the catalog came from, for the start banner.
    pub loaded_from: LoadedFrom,
    /// Connections at once, and how long one may sit idle or take to send a body.
    pub limits: listener::Limits,
    /// A snapshot every this many ledger entries (0: never), and at shutdown.
    pub snapshot_every: u64,
}

/// Where the configuration came from, in words, for the start banner.
#[derive(Debug, Clone, Default)]
pub struct LoadedFrom {
    /// `the embedded default set`, or the paths given.
    pub contracts: String,
    /// `the bundled price table`, or the paths given, and how many offers it gave.
    pub catalog: String,
    /// How the in-process holder answers, as `--holder` says it.
    pub holder: String,
}

/// The exit status of a replica that lost the lead (its lock session went, or another
/// replica's epoch refused its write) or its database, and could not start again as a
/// standby ([`rejoin`]).
pub const EXIT_LOST_LEAD: i32 = 75;
/// The exit status of a service whose ledger could not be written (sysexits' EX_SOFTWARE):
/// the engine may hold decisions the ledger does not, so it stops and a restart replays.
pub const EXIT_LEDGER_UNWRITABLE: i32 = 70;

/// The file in the data folder that holds the admin token's SHA-256 (hex).
pub const ADMIN_TOKEN_FILE: &str = "admin-token.sha256";

/// The whole service: the API under `/v1` and its OpenAPI document, and the dashboard,
/// every request's body read within the body timeout first.
pub fn router(state: Arc<app::AppState>) -> axum::Router {
    let api = http::routes().route("/v1/openapi.json", axum::routing::get(openapi::serve));
    http::with_api_layers(api)
        .with_state(state.clone())
        .merge(dashboard::router(state.clone()))
        .layer(axum::middleware::from_fn_with_state(state, http::bodies_in_time))
}

/// Makes a new admin token and keeps its hash in `data` (replacing any before), for
/// `dibs token reset`; returns the token, which is shown once. A running server keeps the
/// hash it read at start: the new token works from the next start.
pub fn reset_admin_token(data: &std::path::Path) -> std::io::Result<String> {
    std::fs::create_dir_all(data)?;
    let token = app::new_token().map_err(|e| std::io::Error::other(e.to_string()))?;
    write_admin_token_hash(data, &app::token_hash(&token))?;
    Ok(token)
}

fn write_admin_token_hash(data: &std::path::Path, hash: &[u8; 32]) -> std::io::Result<()> {
    let path = data.join(ADMIN_TOKEN_FILE);
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, dibs_core::ledger::hex(hash))?;
    std::fs::rename(&temporary, &path)
}

/// Whether a `dibs serve` holds the data folder (its SQLite lock).
pub fn data_folder_in_use(data: &std::path::Path) -> bool {
    let Ok(lock) = std::fs::File::options().write(true).open(data.join("serve.lock")) else { return false };
    lock.try_lock().is_err()
}

/// What a user types to run this program: `dibs` when the running program is on PATH,
/// else its path (relative to the current folder when it is below it).
fn program_name() -> String {
    let Ok(exe) = std::env::current_exe() else { return "dibs".into() };
    let on_path = exe.parent().is_some_and(|dir| {
        std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|p| p == dir))
    });
    if on_path {
        return "dibs".into();
    }
    let relative = std::env::current_dir().ok().and_then(|cwd| exe.strip_prefix(cwd).ok().map(PathBuf::from));
    relative.unwrap_or(exe).display().to_string()
}

/// Whether a `dibs serve` runs on this ledger now: one holds the data folder (SQLite), or
/// leads the schema (PostgreSQL). A command that rewrites what the server writes refuses then.
pub fn ledger_in_use(
    data: &std::path::Path,
    database: Option<&str>,
    schema: &str,
) -> Result<bool, StoreError> {
    match database {
        None => Ok(data_folder_in_use(data)),
        Some(url) => PostgresStore::led(url, schema),
    }
}

/// Opens the configured store (a new handle each call).
pub fn open_store(
    data: &std::path::Path,
    database: Option<&str>,
    schema: &str,
) -> Result<Box<dyn Store>, StoreError> {
    match database {
        Some(url) => Ok(Box::new(PostgresStore::connect(url, schema)?)),
        None => Ok(Box::new(SqliteStore::open(&data.join("ledger.db"))?)),
    }
}

/// What the providers reached through a cloud's API need the operator to know at start:
/// one that cannot be used (its credentials refused), instances it holds that no open
/// allocation owns.
fn adapter_warnings(adapters: &remote::Adapters, broker: &Broker) -> Vec<String> {
    let mut warnings = Vec::new();
    for (name, adapter) in adapters {
        if let Err(why) = adapter.health() {
            warnings.push(format!("{name} cannot be used: {why}"));
            continue;
        }
        let owned: std::collections::BTreeSet<u64> = broker
            .engine
            .allocations()
            .filter(|a| &a.plan.provider == name && a.state.is_live())
            .map(|a| a.id)
            .collect();
        if let Some(line) = adapter.orphans(&owned) {
            warnings.push(format!("{name}: {line}"));
        }
    }
    warnings
}

/// In-process simulated providers for the embedded default: they answer in
/// seconds (a holder in 2 s, quotes in 1 s) so a request is decided while
/// its client waits; delivery takes the catalog's lead time.
pub fn simulated_providers(
    offers: &[Offer],
    holder: HolderBehaviour,
    seed: u64,
) -> BTreeMap<dibs_core::types::ProviderName, SimulatedProvider> {
    let behaviour = SimulatedBehaviour {
        holder,
        answer_hours: 2.0 / 3600.0,
        quote_hours: 1.0 / 3600.0,
        ..SimulatedBehaviour::default()
    };
    simulated_providers_with(offers, behaviour, seed)
}

/// Simulated providers with the given behaviour, seeded.
pub fn simulated_providers_with(
    offers: &[Offer],
    behaviour: SimulatedBehaviour,
    seed: u64,
) -> BTreeMap<dibs_core::types::ProviderName, SimulatedProvider> {
    let mut providers = SimulatedProvider::from_catalog(offers, behaviour);
    for provider in providers.values_mut() {
        provider.seed(seed);
    }
    providers
}

/// The admin token's hash, and the token itself when it was made just now
/// (the caller prints it once).
fn admin_token(config: &ServeConfig) -> std::io::Result<([u8; 32], Option<String>)> {
    if let Some(token) = &config.admin_token {
        return Ok((app::token_hash(token), None));
    }
    let path = config.data.join(ADMIN_TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(hash) = <[u8; 32] as hex::FromHex>::from_hex(text.trim()) {
            return Ok((hash, None));
        }
        return Err(std::io::Error::other(format!(
            "{}: not a SHA-256 hex digest; delete it to make a new admin token",
            path.display()
        )));
    }
    let token = app::new_token().map_err(|e| std::io::Error::other(e.to_string()))?;
    let hash = app::token_hash(&token);
    write_admin_token_hash(&config.data, &hash)?;
    Ok((hash, Some(token)))
}

/// Why `dibs serve` or `dibs provider serve` could not start, or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Something the configuration names could not be used; `what` names it as the command
    /// line does (`--data dibs-data`, `--listen 127.0.0.1:7878`, a file, `admin token`).
    #[error("{what}: {error}")]
    Unusable { what: String, error: std::io::Error },
    /// Another `dibs serve` holds the data folder (SQLite: one process per ledger).
    #[error("--data {}: another dibs serve is using it", data.display())]
    DataInUse { data: PathBuf },
    /// `dibs provider serve --name` names a provider the catalog has no offers from.
    #[error("--name {0}: the catalog has no offers from {0}")]
    NoOffers(dibs_core::types::ProviderName),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] signing::KeyError),
    /// The ledger holds signed heads but the key that signed them is gone: a new key would
    /// sign over a ledger whose heads no longer check.
    #[error(
        "--data {}: the ledger holds {heads} signed heads but {} is missing; restore it from a backup \
         (a new key would let a rewritten ledger be re-signed unseen)",
        data.display(),
        data.join(signing::KEY_FILE).display()
    )]
    KeyMissing { data: PathBuf, heads: usize },
}

impl ServeError {
    /// Maps an I/O error on what `what` names to [`ServeError::Unusable`].
    pub(crate) fn unusable(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Self {
        move |error| Self::Unusable { what: what.to_string(), error }
    }
}

/// Why a replica that does not serve yet waits (`None`: it is starting), for its health.
pub type StandingState = Arc<Mutex<Option<dibs_store::Waiting>>>;

/// A replica on a shared database that lost its lead, or its database, starts again as
/// this same program with the same arguments: its engine may hold decisions the ledger
/// does not, so nothing of it is kept; the new process waits as a standby (with backoff
/// while the database is away) and leads again if the lead comes free. Exits with
/// [`EXIT_LOST_LEAD`] only if it cannot start again.
pub fn rejoin(why: &str) -> ! {
    eprintln!("dibs: {why}; starting again as a standby");
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        if let Ok(program) = std::env::current_exe() {
            let mut again = std::process::Command::new(program);
            again.args(std::env::args_os().skip(1));
            // The port stays open across the restart: the new process takes the socket.
            if let Some(&fd) = LISTENING.get() {
                // SAFETY: `fd` is the open listening socket; only its close-on-exec flag changes.
                if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == 0 {
                    again.env(LISTEN_FD, fd.to_string());
                }
            }
            let error = again.exec();
            eprintln!("dibs: could not start again ({error})");
        }
    }
    std::process::exit(EXIT_LOST_LEAD);
}

/// The environment variable through which a replica that starts again as a standby
/// ([`rejoin`]) hands its listening socket to the new process.
pub const LISTEN_FD: &str = "DIBS_LISTEN_FD";

/// The listening socket's descriptor, for [`rejoin`].
#[cfg(unix)]
static LISTENING: std::sync::OnceLock<std::os::fd::RawFd> = std::sync::OnceLock::new();

/// The socket to serve on: the one a replica that started again handed over, else `listen`
/// bound now.
fn listening_socket(listen: &str) -> Result<std::net::TcpListener, ServeError> {
    #[cfg(unix)]
    {
        use std::os::fd::{AsRawFd, FromRawFd};
        let handed = std::env::var(LISTEN_FD).ok().and_then(|fd| fd.parse::<std::os::fd::RawFd>().ok());
        let socket = match handed {
            // SAFETY: the previous process of this replica passed its open listening socket.
            Some(fd) => unsafe { std::net::TcpListener::from_raw_fd(fd) },
            None => std::net::TcpListener::bind(listen)
                .map_err(ServeError::unusable(format_args!("--listen {listen}")))?,
        };
        // SAFETY: only the close-on-exec flag of our own open socket is set back.
        unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        let _ = LISTENING.set(socket.as_raw_fd());
        Ok(socket)
    }
    #[cfg(not(unix))]
    std::net::TcpListener::bind(listen).map_err(ServeError::unusable(format_args!("--listen {listen}")))
}

/// Starts the service and serves until Ctrl-C. Prints the URL (and the admin
/// token when it was made now) once it is listening. On a shared database, a database
/// error while it takes the lead (the database went away meanwhile) starts it again as a
/// standby rather than ending it.
pub fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let replicated = config.database.is_some();
    match serve_once(config) {
        Err(ServeError::Store(e))
            if replicated && matches!(e, StoreError::Postgres(_) | StoreError::Fenced { .. }) =>
        {
            // Not at once: a database that refuses every start would otherwise be hammered.
            std::thread::sleep(std::time::Duration::from_secs(1));
            rejoin(&format!("the database failed while this replica took the lead ({e})"))
        }
        other => other,
    }
}

fn serve_once(config: ServeConfig) -> Result<(), ServeError> {
    std::fs::create_dir_all(&config.data)
        .map_err(ServeError::unusable(format_args!("--data {}", config.data.display())))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // The port is open from the start: a standby answers health (its role) and readiness
    // (503), so a load balancer can tell a standby from a dead replica.
    let socket = listening_socket(&config.listen)?;
    socket.set_nonblocking(true)?;
    let standing: StandingState = Arc::default();
    let standing_by = standby_server(&runtime, socket.try_clone()?, config.limits, standing.clone())?;
    // On a shared database one replica runs the engine; the others wait
    // here, and the first to get the lock after the leader dies takes over
    // by replaying the ledger.
    let _leadership = match &config.database {
        Some(url) => Some(PostgresStore::lead(
            url,
            &config.schema,
            config.lease,
            |why| {
                let at = socket.local_addr().map(|a| a.to_string()).unwrap_or_default();
                match &why {
                    dibs_store::Waiting::AnotherLeads => eprintln!(
                        "dibs: standby on http://{at}: another replica leads schema {:?}; waiting to take over",
                        config.schema
                    ),
                    dibs_store::Waiting::DatabaseDown(e) => {
                        eprintln!(
                            "dibs: standby on http://{at}: the database cannot be reached ({e}); trying again"
                        )
                    }
                }
                *standing.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
            },
            // The lock went with its session: another replica may lead already. Stop
            // writing now (the epoch check refuses any write still attempted) and contend
            // again as a standby.
            |e| rejoin(&format!("lost the lead ({e})")),
        )?),
        None => None,
    };
    // On SQLite, one process per data folder: a second would run a second engine on one ledger.
    let lock_path = config.data.join("serve.lock");
    let lock = std::fs::File::create(&lock_path).map_err(ServeError::unusable(lock_path.display()))?;
    if config.database.is_none() && lock.try_lock().is_err() {
        return Err(ServeError::DataInUse { data: config.data.clone() });
    }
    let mut store = open_store(&config.data, config.database.as_deref(), &config.schema)?;
    // Holding the lead: from now on a write by any replica that led before is refused.
    store.fence()?;
    let mut reader = open_store(&config.data, config.database.as_deref(), &config.schema)?;
    // Time never goes backwards: a ledger left ahead of the wall clock by a demo run is
    // resumed from its last instant (see `clock`).
    let (clock, clock_info) = clock::service_clock(last_instant(reader.as_mut())?, config.time_speed);
    let offers = &config.configuration.offers;
    let mut providers = simulated_providers(offers, config.holder, config.seed);
    providers
        .retain(|name, _| !config.remote_providers.contains_key(name) && !config.adapters.contains_key(name));
    let (tx, rx) = std::sync::mpsc::sync_channel(app::MAX_QUEUED_COMMANDS);
    let open: remote::OpenStore = {
        let (data, database, schema) = (config.data.clone(), config.database.clone(), config.schema.clone());
        Arc::new(move || open_store(&data, database.as_deref(), &schema))
    };
    let remote = if config.remote_providers.is_empty() && config.adapters.is_empty() {
        None
    } else {
        let tx = tx.clone();
        let deliver: remote::Deliver = Arc::new(move |answer: remote::Answer| {
            let input =
                broker::Command::Input { at: answer.at, input: Box::new(answer.input), call: answer.call };
            tx.send(input).is_ok()
        });
        Some(remote::Dispatcher::start(
            config.remote_providers.clone(),
            config.adapters.clone(),
            deliver,
            8,
            open.clone(),
        )?)
    };
    let (mut broker, mut recovery) =
        Broker::recover(store, providers, remote, clock, Some(config.configuration.clone()))?;
    // Providers reached through a cloud's API tag what they launch with the ledger: its
    // first entry's hash, the same for every replica of it and for no other ledger.
    if let Some(first) = reader.entries(0, 1)?.first() {
        for adapter in config.adapters.values() {
            adapter.bind(&dibs_core::ledger::hex(&first.hash));
        }
    }
    broker.set_time_speed(config.time_speed);
    broker.set_snapshot_every(config.snapshot_every);
    broker.write_snapshots_with(open.clone())?;
    // Heads are signed with the key beside the ledger (made now at a first start; a SQLite
    // ledger that holds heads signed before does not get a new one. Replicas on PostgreSQL
    // each sign with their own key, beside their own data).
    if config.database.is_none() && !config.data.join(signing::KEY_FILE).is_file() {
        let heads = reader.heads()?.len();
        if heads > 0 {
            return Err(ServeError::KeyMissing { data: config.data.clone(), heads });
        }
    }
    broker.sign_heads(signing::HeadSigner::load_or_create(&config.data)?);
    recovery.outstanding = broker.take_over()?;
    let Recovery { entries, inputs, requests, outstanding, snapshot, snapshot_refused, .. } = recovery;
    let from = match (snapshot, snapshot_refused) {
        // Said as `dibs ledger verify` says it: by the entry that announced it.
        (Some(seq), _) => {
            format!("loaded the snapshot taken at entry {} (the state after entry {seq}), then ", seq + 1)
        }
        (None, Some(why)) => format!("did not use the stored snapshot ({why}); "),
        (None, None) => String::new(),
    };
    let replayed = entries - snapshot.unwrap_or(0);
    let replayed = format!(
        "{from}replayed {replayed} entries, {inputs} inputs; {requests} requests; {outstanding} timers re-armed"
    );
    let (hash, new_token) = admin_token(&config).map_err(ServeError::unusable("admin token"))?;
    let mut banner = banner::Banner {
        program: program_name(),
        base_url: String::new(),
        storage: match &config.database {
            Some(_) => format!("PostgreSQL, schema {}", config.schema),
            None => format!("{}", config.data.join("ledger.db").display()),
        },
        replayed,
        contracts_from: config.loaded_from.contracts.clone(),
        in_force: banner::in_force_lines(broker.engine.contracts(), clock_info.started_at),
        providers: broker
            .engine
            .published_providers()
            .map(|name| {
                let reached = match (config.remote_providers.get(name), config.adapters.get(name)) {
                    (_, Some(adapter)) => adapter.describe(),
                    (Some(url), None) => url.clone(),
                    (None, None) => "in-process".into(),
                };
                (name.to_string(), reached)
            })
            .collect(),
        holder: config.loaded_from.holder.clone(),
        catalog: config.loaded_from.catalog.clone(),
        uncontracted: broker.engine.contracts().uncontracted(broker.engine.names()),
        warnings: adapter_warnings(&config.adapters, &broker),
        clock: clock_info,
        new_admin_token: new_token,
        admin_token_from_env: config.admin_token.is_some(),
    };

    let replicated = config.database.is_some();
    let broker_thread = std::thread::Builder::new().name("dibs-broker".into()).spawn(move || {
        if let Err(e) = broker.run(rx) {
            if let StoreError::Fenced { .. } = e {
                // Another replica leads: this one's write was refused, as it should be.
                rejoin(&format!("lost the lead ({e})"));
            }
            if replicated {
                // The database went away under the leader (a restart, a blip): the engine may
                // hold decisions the ledger does not, so this process starts again, as a
                // standby, and whoever leads next replays the ledger.
                rejoin(&format!("the ledger could not be written ({e})"));
            }
            // The engine may hold decisions the ledger does not: stop; a restart replays the ledger.
            eprintln!("dibs: the ledger could not be written ({e}); stopping");
            std::process::exit(EXIT_LEDGER_UNWRITABLE);
        }
    })?;
    let state = Arc::new(app::AppState {
        commands: tx.clone(),
        reader: Mutex::new(reader),
        tokens: Mutex::new(open()?),
        signer: signing::HeadSigner::load(&config.data)?,
        body_timeout: config.limits.idle,
        open: open.clone(),
        admin_token_hash: hash,
        roles: Mutex::new(std::collections::HashMap::new()),
        adapters: config.adapters.clone(),
    });

    let kept = state.clone();
    runtime.block_on(async move {
        // The standby's server stops taking connections; this one takes over the socket.
        standing_by.stop().await;
        let listener = tokio::net::TcpListener::from_std(socket)?;
        let address: SocketAddr = listener.local_addr()?;
        banner.base_url = format!("http://{address}");
        print!("{banner}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let listener = listener::GuardedListener::new(listener, config.limits);
        axum::serve(listener, router(state)).with_graceful_shutdown(stop_signal()).await?;
        let _ = tx.send(broker::Command::Shutdown);
        Ok::<(), ServeError>(())
    })?;
    // The broker finishes its turn, writes its snapshot and signs the head before the process ends.
    let _ = broker_thread.join();
    // The API's store handles (a PostgreSQL client runs a runtime of its own) are dropped
    // here, outside the async runtime: dropped inside it, the client panics.
    drop(runtime);
    drop(kept);
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what systemd and Kubernetes send): both drain,
/// write the shutdown snapshot and signed head, and exit 0.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The server a replica runs while it waits for the lead.
struct StandingBy {
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl StandingBy {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

/// Serves `socket` as a standby until stopped: health 200 with the role, readiness 503,
/// everything else 503 naming the role.
fn standby_server(
    runtime: &tokio::runtime::Runtime,
    socket: std::net::TcpListener,
    limits: listener::Limits,
    standing: StandingState,
) -> std::io::Result<StandingBy> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(socket)?
    };
    let done = runtime.spawn(async move {
        let listener = listener::GuardedListener::new(listener, limits);
        let _ = axum::serve(listener, http::standby_router(standing))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(StandingBy { stop, done })
}

/// The instant of the ledger's last entry, if it has any.
fn last_instant(store: &mut dyn Store) -> Result<Option<dibs_core::types::Timestamp>, StoreError> {
    let (length, _) = store.head()?;
    if length == 0 {
        return Ok(None);
    }
    let last = store.entries(length - 1, 1)?;
    Ok(last.first().and_then(|e| dibs_core::types::Timestamp::parse(&e.at).ok()))
}

/// Replays a ledger through a fresh engine without serving, under the
/// configurations the ledger records: checks that the recorded inputs give
/// exactly the recorded decisions and every snapshot it records (`dibs ledger verify`), then
/// compares the stored `requests` projection with the replayed state, and the stored
/// snapshot (the entry that records it, if any) with its entry's digests.
pub fn replay_check(store: Box<dyn Store>) -> Result<ReplayCheck, StoreError> {
    let (mut broker, recovery) = recover_everything(store)?;
    let projection = broker.check_projection();
    let snapshot = broker.check_stored_snapshot();
    Ok(ReplayCheck { recovery, projection, snapshot })
}

/// What [`replay_check`] found past the replay itself.
pub struct ReplayCheck {
    pub recovery: Recovery,
    /// Requests in the projection, all matching the replay, or the first that does not.
    pub projection: Result<usize, String>,
    /// The entry that announced the stored snapshot (none stored: `None`), or what is wrong
    /// with it.
    pub snapshot: Result<Option<u64>, String>,
}

/// Recreates the `requests` projection by replaying the ledger (`dibs ledger rebuild`).
pub fn rebuild(store: Box<dyn Store>) -> Result<(Recovery, usize), StoreError> {
    let (mut broker, recovery) = recover_everything(store)?;
    let rows = broker.rebuild_projection()?;
    Ok((recovery, rows))
}

/// Replays a ledger keeping every request, ended ones too (the service forgets those):
/// what comparing or rewriting the whole `requests` table needs. The decisions are the
/// same either way, so this replay also checks the ones the forgetting service made.
fn recover_everything(store: Box<dyn Store>) -> Result<(Broker, Recovery), StoreError> {
    let config = dibs_core::engine::EngineConfig { forget_finished: false, ..broker::engine_config() };
    Broker::recover_with(store, BTreeMap::new(), None, broker::wall_clock(), None, config)
}
