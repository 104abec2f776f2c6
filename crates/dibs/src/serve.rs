//! `dibs serve`, `dibs ledger ...` and `dibs request ...`: the service and
//! the commands that talk to it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use dibs_core::contract;
use serde::Deserialize;
use std::collections::BTreeMap;

use dibs_core::types::ProviderName;
use dibs_providers::HolderBehaviour;

use crate::exit::{Exit, Unreachable};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: String,
    /// Data folder: the SQLite ledger and the admin token's hash.
    #[arg(long, default_value = "dibs-data")]
    data: PathBuf,
    /// PostgreSQL URL (postgres://user@host/db); default: SQLite in --data.
    /// Replicas given the same URL and schema share one ledger: one leads,
    /// the others stand by and take over if it dies.
    #[arg(long)]
    database: Option<String>,
    /// PostgreSQL schema for dibs's tables.
    #[arg(long, default_value = dibs_serve::POSTGRES_SCHEMA)]
    database_schema: String,
    /// Contract TOML files or folders. Default: the embedded default set.
    #[arg(long)]
    contracts: Vec<PathBuf>,
    #[command(flatten)]
    catalog: crate::CatalogArgs,
    /// How the in-process simulated first-refusal holder answers: accept,
    /// decline, silent, partial:N or rate:P.
    #[arg(long, default_value = "rate:0.5")]
    holder: String,
    /// Seed for the simulated providers' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Reach this catalog provider over HTTP (a `dibs provider serve`):
    /// NAME=URL, repeatable. NAME=pull: the provider calls in instead, reading
    /// /v1/provider/events and answering through the API with a provider
    /// token. NAME=ec2: dibs launches real instances through EC2's own API (credentials,
    /// region and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL_EC2 or AWS_ENDPOINT_URL; prices
    /// from the catalog; see --aws-*). Providers not named run in-process.
    #[arg(long = "provider", value_name = "NAME=URL")]
    providers: Vec<String>,
    /// The regions dibs may launch EC2 instances in, comma-separated (default: the
    /// catalog's regions of the provider given as NAME=ec2).
    #[arg(long, value_name = "REGIONS", value_delimiter = ',')]
    aws_regions: Vec<String>,
    /// The EC2 launch template dibs launches from: NAME for every region, or REGION=NAME,
    /// repeatable (the operator's image, network and security groups; dibs never picks an
    /// image). A region without one refuses its reservations, saying so.
    #[arg(long, value_name = "[REGION=]NAME")]
    aws_launch_template: Vec<String>,
    /// Send every EC2 launch with DryRun=true: EC2 checks the permissions and parameters
    /// and launches nothing; each allocation says so and its GPUs go back to the market.
    #[arg(long)]
    aws_dry_run: bool,
    /// The most nodes dibs may hold at once with a provider reached through a cloud API:
    /// NAME=N (e.g. aws=4). Quotes offer no more, and a reservation above it is refused
    /// with the reason.
    #[arg(long, value_name = "NAME=N")]
    max_nodes: Vec<String>,
    /// At start, also terminate the EC2 instances tagged by another dibs (another ledger)
    /// that none of this one's allocations owns (without it they are reported on the
    /// banner). This ledger's own instances of allocations it ended are always terminated.
    #[arg(long)]
    aws_reap_orphans: bool,
    /// Run the service's clock N times faster than the wall clock, for a demo on the
    /// in-process simulated providers: at 3600 a real second is a simulated hour, so a
    /// request goes from first refusal to active in a minute or two rather than in 4 to 168
    /// hours. Holder windows, quote deadlines, lead times and durations all run on this
    /// clock. It is recorded in the ledger; time never goes backwards across a restart (a
    /// later start resumes from the ledger's last instant). Not with --provider: remote
    /// providers answer in real time.
    #[arg(long, default_value_t = 1.0, value_name = "N")]
    time_speed: f64,
    /// At most this many client connections served at once; as many more wait for a slot,
    /// and beyond that a connection is closed at once.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_connections: usize,
    /// A connection on which nothing moves for this long is closed, and a request body
    /// must arrive within it (a slow or stalled client cannot hold a connection).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    idle_timeout_seconds: u64,
    /// With --database: the leader renews its lease about once a second; a standby that
    /// finds it unrenewed for this long (a frozen or partitioned leader still holding its
    /// lock) ends the old leader's sessions and takes over, and the old one, when it
    /// resumes, finds its epoch stale and starts again as a standby without acknowledging
    /// anything.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    lease_seconds: u64,
    /// A request's head (its request line and headers) must arrive whole within this many
    /// seconds of its first byte, however its bytes trickle: a slow client cannot hold a
    /// connection by sending a header byte now and then.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    header_timeout_seconds: u64,
    /// At most this many connections at once from one client address; more are closed at
    /// once. An eighth of --max-connections is kept for addresses that hold none yet, so
    /// one address filling the rest does not keep others out.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_connections_per_client: usize,
    /// Take a snapshot of the service's state every N ledger entries (more apart when the
    /// last one was large), and at shutdown: a start loads the latest and replays only the
    /// entries after it, not the whole ledger. Snapshots are kept beside the ledger, which
    /// records each one's SHA-256; `dibs ledger verify` checks every one against a replay.
    /// 0: never (every start replays the whole ledger).
    #[arg(long, default_value_t = dibs_serve::broker::SNAPSHOT_EVERY, value_name = "N")]
    snapshot_every: u64,
}

/// `--provider NAME=ec2`: the provider is reached through EC2's own API.
const EC2: &str = "ec2";

/// The EC2 provider `--provider NAME=ec2` names, built from the `--aws-*` flags and the
/// AWS variables; none when no provider is reached through EC2.
fn ec2_adapters(
    args: &ServeArgs,
    remotes: &mut BTreeMap<ProviderName, String>,
    offers: &[dibs_core::types::Offer],
) -> Result<dibs_serve::remote::Adapters> {
    let mut adapters = dibs_serve::remote::Adapters::new();
    let names: Vec<ProviderName> =
        remotes.iter().filter(|(_, url)| *url == EC2).map(|(n, _)| n.clone()).collect();
    if names.len() > 1 {
        bail!("--provider ...=ec2: one provider may be reached through EC2, not {}", names.len());
    }
    let Some(name) = names.into_iter().next() else {
        if !args.aws_regions.is_empty()
            || !args.aws_launch_template.is_empty()
            || args.aws_dry_run
            || args.aws_reap_orphans
        {
            bail!("--aws-*: no provider is reached through EC2; add --provider aws=ec2");
        }
        return Ok(adapters);
    };
    remotes.remove(&name);
    let mut regions = args.aws_regions.clone();
    if regions.is_empty() {
        regions = offers.iter().filter(|o| o.provider == name).map(|o| o.region.to_string()).collect();
        regions.sort();
        regions.dedup();
    }
    let config = dibs_providers::ec2::Ec2Config::from_env()
        .map_err(|e| anyhow::anyhow!("--provider {name}=ec2: {e}"))?;
    let mut launch_templates = BTreeMap::new();
    for spec in &args.aws_launch_template {
        let (region, template) = match spec.split_once('=') {
            Some((region, template)) => (Some(region.to_owned()), template),
            None => (None, spec.as_str()),
        };
        if template.is_empty() {
            bail!("--aws-launch-template {spec:?}: expected NAME or REGION=NAME");
        }
        if let Some(region) = &region
            && !regions.contains(region)
        {
            bail!(
                "--aws-launch-template {spec:?}: {region} is not among the regions dibs launches in ({})",
                regions.join(", ")
            );
        }
        launch_templates.insert(region, template.to_owned());
    }
    let mut max_nodes = None;
    for spec in &args.max_nodes {
        let (provider, n) =
            spec.split_once('=').with_context(|| format!("--max-nodes {spec:?}: expected NAME=N"))?;
        let n: u32 = n
            .parse()
            .map_err(|_| anyhow::anyhow!("--max-nodes {spec:?}: N must be a whole number of nodes"))?;
        if provider != name.as_str() {
            bail!("--max-nodes {spec:?}: {provider} is not reached through a cloud API (only {name} is)");
        }
        max_nodes = Some(n);
    }
    let settings = dibs_serve::ec2::Ec2Settings {
        provider: name.clone(),
        config,
        regions,
        launch_templates,
        dry_run: args.aws_dry_run,
        max_nodes,
        reap_orphans: args.aws_reap_orphans,
    };
    adapters.insert(name, std::sync::Arc::new(dibs_serve::ec2::Ec2Provider::new(settings, offers)));
    Ok(adapters)
}

fn parse_remotes(specs: &[String]) -> Result<BTreeMap<ProviderName, String>> {
    let mut remotes = BTreeMap::new();
    for spec in specs {
        let (name, url) =
            spec.split_once('=').with_context(|| format!("--provider {spec:?}: expected NAME=URL"))?;
        let name = ProviderName::new(name).map_err(|e| anyhow::anyhow!("--provider {spec:?}: {e}"))?;
        if !(url.starts_with("http://")
            || url.starts_with("https://")
            || url == dibs_serve::remote::PULL
            || url == EC2)
        {
            bail!("--provider {spec:?}: expected an http:// or https:// URL, `pull` or `ec2`");
        }
        if remotes.insert(name, url.trim_end_matches('/').to_owned()).is_some() {
            bail!("--provider {spec:?}: that provider was given twice");
        }
    }
    Ok(remotes)
}

pub fn serve(args: ServeArgs) -> Result<Exit> {
    let holder = HolderBehaviour::parse(&args.holder).map_err(|e| anyhow::anyhow!("--holder: {e}"))?;
    let contract_texts = if args.contracts.is_empty() {
        contract::builtin_contract_texts("default").context("the embedded default contract set")?
    } else {
        contract::read_contract_texts(&args.contracts).map_err(|e| anyhow::anyhow!("{e}"))?
    };
    // Check them here, so a mistake is reported with its file, line and column before anything starts.
    let contracts = contract::contract_set_from_texts(&contract_texts).map_err(|e| anyhow::anyhow!("{e}"))?;
    let catalog = crate::load_catalogs(&args.catalog)?;
    crate::warn_unknown_names(&contracts, &catalog);
    let mut remote_providers = parse_remotes(&args.providers)?;
    for name in remote_providers.keys() {
        if !catalog.offers.iter().any(|o| &o.provider == name) {
            bail!("--provider {name}=...: the catalog has no offers from {name}, so no request would ask it");
        }
    }
    let adapters = ec2_adapters(&args, &mut remote_providers, &catalog.offers)?;
    let time_speed =
        dibs_serve::clock::check_speed(args.time_speed).map_err(|e| anyhow::anyhow!("--time-speed: {e}"))?;
    if time_speed != 1.0 && !(remote_providers.is_empty() && adapters.is_empty()) {
        bail!(
            "--time-speed: providers reached over HTTP (--provider) answer in real time; run the demo clock on the in-process providers only"
        );
    }
    let loaded_from = dibs_serve::LoadedFrom {
        contracts: if args.contracts.is_empty() {
            format!("the embedded default set ({} files)", contract_texts.len())
        } else {
            format!("{} ({} files)", paths(&args.contracts), contract_texts.len())
        },
        catalog: format!(
            "{}, {} offers from {} providers{}",
            if args.catalog.catalog.is_empty() {
                "the bundled price table".to_owned()
            } else {
                paths(&args.catalog.catalog)
            },
            catalog.offers.len(),
            dibs_core::names::Names::from_offers(&catalog.offers).providers().count(),
            match &args.catalog.supply {
                Some(supply) => format!(", supply {}", supply.display()),
                None if args.catalog.catalog.is_empty() => ", the bundled supply (made up)".to_owned(),
                None => String::new(),
            }
        ),
        holder: args.holder.clone(),
    };
    let admin_token = std::env::var("DIBS_ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
    dibs_serve::serve(dibs_serve::ServeConfig {
        listen: args.listen,
        data: args.data,
        database: args.database,
        schema: args.database_schema,
        lease: std::time::Duration::from_secs(args.lease_seconds.max(1)),
        configuration: dibs_serve::broker::Configuration {
            time_speed: (time_speed != 1.0).then_some(time_speed),
            ..dibs_serve::broker::Configuration::at_start(contract_texts, catalog.offers)
        },
        holder,
        remote_providers,
        adapters,
        seed: args.seed,
        admin_token,
        time_speed,
        loaded_from,
        limits: dibs_serve::listener::Limits {
            max_connections: args.max_connections,
            idle: std::time::Duration::from_secs(args.idle_timeout_seconds.max(1)),
            head: std::time::Duration::from_secs(args.header_timeout_seconds.max(1)),
            per_client: args.max_connections_per_client.max(1),
        },
        snapshot_every: args.snapshot_every,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Exit::Success)
}

/// Paths as a short comma-separated list.
fn paths(list: &[PathBuf]) -> String {
    list.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Recreate the state tables (the requests projection) by replaying the
    /// ledger. Stop the server first: it writes the projection too (a rebuild refuses
    /// while one runs on the ledger).
    Rebuild {
        /// Data folder holding the SQLite ledger.
        #[arg(long, default_value = "dibs-data")]
        data: PathBuf,
        /// PostgreSQL URL instead of SQLite.
        #[arg(long)]
        database: Option<String>,
        /// PostgreSQL schema.
        #[arg(long, default_value = dibs_serve::POSTGRES_SCHEMA)]
        database_schema: String,
    },
    /// Check the ledger's hash chain (every column of every entry), every idempotency answer
    /// against its acknowledgement in the chain, every signed checkpoint (its signature, and
    /// that the ledger still reaches and matches it), any heads kept elsewhere (--head), and
    /// that replaying its inputs, under the contracts and catalog it records, makes the
    /// decisions it records; names the first bad entry. Reads the store directly (the
    /// server may be running).
    Verify {
        /// Data folder holding the SQLite ledger (and the key that signs its heads).
        #[arg(long, default_value = "dibs-data")]
        data: PathBuf,
        /// PostgreSQL URL instead of SQLite.
        #[arg(long)]
        database: Option<String>,
        /// PostgreSQL schema.
        #[arg(long, default_value = dibs_serve::POSTGRES_SCHEMA)]
        database_schema: String,
        /// A signed head kept from `dibs ledger head` or `GET /v1/ledger/head` (JSON): the
        /// ledger must still hold that entry with that hash. Repeat for several.
        #[arg(long = "head", value_name = "FILE")]
        heads: Vec<PathBuf>,
    },
    /// Print the ledger's head, signed with the key in the data folder, as JSON to keep:
    /// `dibs ledger verify --head FILE` later shows the ledger was not cut short or
    /// rewritten under it.
    Head {
        /// Data folder holding the ledger and its key.
        #[arg(long, default_value = "dibs-data")]
        data: PathBuf,
        /// PostgreSQL URL instead of SQLite (the key is still read from --data).
        #[arg(long)]
        database: Option<String>,
        /// PostgreSQL schema.
        #[arg(long, default_value = dibs_serve::POSTGRES_SCHEMA)]
        database_schema: String,
    },
}

pub fn ledger(command: LedgerCommand) -> Result<Exit> {
    let (LedgerCommand::Verify { data, database, database_schema, .. }
    | LedgerCommand::Head { data, database, database_schema }
    | LedgerCommand::Rebuild { data, database, database_schema }) = &command;
    let (data, database, database_schema) = (data.clone(), database.clone(), database_schema.clone());
    if database.is_none() && !data.join("ledger.db").is_file() {
        bail!("--data {}: no ledger.db there", data.display());
    }
    let mut store = dibs_serve::open_store(&data, database.as_deref(), &database_schema)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let LedgerCommand::Rebuild { .. } = command {
        if dibs_serve::ledger_in_use(&data, database.as_deref(), &database_schema)
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            bail!(
                "{}: a dibs serve is running on this ledger; stop it first (it writes the requests table too)",
                database.as_ref().map_or_else(
                    || format!("--data {}", data.display()),
                    |_| format!("--database-schema {database_schema}")
                )
            );
        }
        dibs_store::verify(store.as_mut())
            .map_err(|e| anyhow::anyhow!("the hash chain is broken, so no rebuild: {e}"))?;
        let (recovery, rows) = dibs_serve::rebuild(store).map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("rebuilt the requests projection: {rows} requests from {} ledger entries", recovery.entries);
        return Ok(Exit::Success);
    }
    if let LedgerCommand::Head { .. } = command {
        let signer = dibs_serve::signing::HeadSigner::load(&data).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, hash) = store.head().map_err(|e| anyhow::anyhow!("{e}"))?;
        let at = dibs_serve::clock::wall_now();
        let head = dibs_serve::signing::HeadView::from(&signer.sign(seq, hash, at.to_string()));
        println!("{}", serde_json::to_string_pretty(&head)?);
        return Ok(Exit::Success);
    }
    let verified = match dibs_store::verify(store.as_mut()) {
        Ok(v) => {
            println!(
                "hash chain: ok, {} entries, head {}; {} idempotency answers acknowledged",
                v.entries, v.head, v.answers
            );
            v
        }
        Err(e) => {
            println!("hash chain: BROKEN: {e}");
            return Ok(Exit::Invalid);
        }
    };
    if let Err(problem) = check_heads(&data, store.as_mut(), &verified, &command) {
        println!("signed heads: BROKEN: {problem}");
        return Ok(Exit::Invalid);
    }
    match dibs_serve::replay_check(store) {
        Ok(dibs_serve::ReplayCheck { recovery: r, projection, snapshot }) => {
            println!(
                "replay: ok, {} inputs under {} recorded configurations give the {} decisions recorded; {} requests; \
                 {} snapshots match the state replay reaches",
                r.inputs,
                r.configurations,
                r.entries - r.inputs - r.configurations - r.snapshot_entries,
                r.requests,
                r.snapshots_checked,
            );
            let mut code = Exit::Success;
            match projection {
                Ok(rows) => println!("projection: ok, {rows} requests match the replay"),
                Err(e) => {
                    println!("projection: MISMATCH: {e} (dibs ledger rebuild recreates it)");
                    code = Exit::Invalid;
                }
            }
            match snapshot {
                Ok(Some(seq)) => println!(
                    "stored snapshot: ok, the one taken at entry {seq} (the state after entry {}), as recorded",
                    seq.saturating_sub(1)
                ),
                Ok(None) => println!("stored snapshot: none"),
                Err(e) => {
                    println!("stored snapshot: MISMATCH: {e} (a start replays the whole ledger instead)");
                    code = Exit::Invalid;
                }
            }
            Ok(code)
        }
        Err(e) => {
            println!("replay: MISMATCH: {e}");
            Ok(Exit::Invalid)
        }
    }
}

/// The signed checkpoints in the store and the heads kept elsewhere (`--head`): every
/// signature good, the store's under the data folder's key when it has one, and every head
/// an entry the ledger still holds with that hash.
fn check_heads(
    data: &std::path::Path,
    store: &mut dyn dibs_store::Store,
    verified: &dibs_store::Verification,
    command: &LedgerCommand,
) -> std::result::Result<(), String> {
    let ours = dibs_serve::signing::HeadSigner::load(data).ok().map(|s| s.public_key().to_vec());
    if ours.is_none() && !verified.checkpoints.is_empty() && data.join("ledger.db").is_file() {
        return Err(format!(
            "{} checkpoints are signed, but {} is missing: which key signed them cannot be checked \
             (restore the key; a rewrite re-signed with another key would otherwise pass)",
            verified.checkpoints.len(),
            data.join(dibs_serve::signing::KEY_FILE).display()
        ));
    }
    for head in &verified.checkpoints {
        dibs_serve::signing::check(head).map_err(|e| e.to_string())?;
        if ours.as_ref().is_some_and(|key| *key != head.public_key) && data.join("ledger.db").is_file() {
            return Err(format!(
                "the checkpoint at entry {} is signed by a key other than {}'s",
                head.seq,
                data.display()
            ));
        }
    }
    let LedgerCommand::Verify { heads, .. } = command else { return Ok(()) };
    for path in heads {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let view: dibs_serve::signing::HeadView =
            serde_json::from_str(&text).map_err(|e| format!("{}: not a signed head: {e}", path.display()))?;
        let head = view.to_signed().map_err(|e| format!("{}: {e}", path.display()))?;
        dibs_serve::signing::check(&head).map_err(|e| format!("{}: {e}", path.display()))?;
        if head.seq > verified.entries {
            return Err(format!(
                "{}: the kept head names entry {}, but the ledger ends at {}: its tail was cut off",
                path.display(),
                head.seq,
                verified.entries
            ));
        }
        if head.seq > 0 {
            let entry = store.entries(head.seq - 1, 1).map_err(|e| e.to_string())?;
            if entry.first().map(|e| e.hash) != Some(head.hash) {
                return Err(format!(
                    "{}: entry {} no longer hashes as the kept head says: the ledger was rewritten",
                    path.display(),
                    head.seq
                ));
            }
        }
    }
    println!(
        "signed heads: ok, {} checkpoints in the store{}",
        verified.checkpoints.len(),
        if heads.is_empty() { String::new() } else { format!(", {} kept heads", heads.len()) }
    );
    Ok(())
}

#[derive(Subcommand)]
pub enum RequestCommand {
    /// Submit a capacity request to a running server; prints its id, status and dashboard page.
    Submit {
        #[command(flatten)]
        request: Box<crate::request_args::RequestArgs>,
        /// Makes the submission safe to repeat: the server answers a repeat with the first answer.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one request: what it asked for, its status, its allocations.
    Show {
        /// The request's id, as submit printed it (r-1).
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List requests, oldest first, a page at a time.
    List {
        // The states are the server's own list, so the help cannot fall behind it.
        #[arg(long, help = format!("Only requests in this state: {}", dibs_serve::view::statuses_in_words()))]
        status: Option<String>,
        /// List after this request id (the next page; list prints it when there is one).
        #[arg(long)]
        after: Option<String>,
        /// Requests per page, 1 to 500.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel a request: its allocations are released and nothing more is bought for it.
    Cancel {
        /// The request's id (r-1).
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Args)]
pub struct ServerArgs {
    /// The server's URL.
    #[arg(long, default_value = "http://127.0.0.1:7878")]
    server: String,
    /// Print the server's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

/// A request as the API shows it (`GET /v1/requests/{id}`): the command line's own struct,
/// so a change to the API's shape shows up here as an error, not as silently wrong output.
#[derive(Debug, Deserialize)]
struct RequestOut {
    id: String,
    status: String,
    accelerators: Vec<String>,
    gpus: u32,
    duration_hours: u32,
    workload: String,
    earliest_start: String,
    allocations: Vec<AllocationOut>,
    #[serde(default)]
    unfilled: Option<UnfilledOut>,
}

#[derive(Debug, Deserialize)]
struct AllocationOut {
    id: u64,
    provider: String,
    region: String,
    instance_type: String,
    nodes: u32,
    gpus_per_node: u32,
    gpus: u32,
    price_per_node_hour: f64,
    via: String,
    state: String,
    promised: String,
    #[serde(default)]
    ready_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UnfilledOut {
    gpus: u32,
    reason: String,
}

#[derive(Debug, Deserialize)]
struct RequestPage {
    requests: Vec<RequestOut>,
    next_after: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorOut {
    error: String,
    #[serde(default)]
    field: Option<String>,
}

/// What a call answered: the HTTP status and the body.
struct Answer {
    status: u16,
    body: String,
}

fn call(
    server: &ServerArgs,
    method: &str,
    path: &str,
    body: Option<(serde_json::Value, Option<String>)>,
) -> Result<Answer> {
    // An empty or blank token is as good as none: say so rather than send it for a 401.
    let token =
        std::env::var("DIBS_TOKEN").ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).context(
            "DIBS_TOKEN: set it to the token `dibs serve` printed (lost it? `dibs token reset --help`)",
        )?;
    let url = format!("{}/v1{path}", base_url(server));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let auth = format!("Bearer {token}");
    let mut response = match (method, body) {
        ("POST", Some((json, key))) => {
            let mut request = agent.post(&url).header("Authorization", &auth);
            if let Some(key) = key {
                request = request.header("Idempotency-Key", &key);
            }
            request.send_json(&json)
        }
        ("POST", None) => agent.post(&url).header("Authorization", &auth).send_empty(),
        _ => agent.get(&url).header("Authorization", &auth).call(),
    }
    .map_err(|error| {
        let what = format!("{method} {url}");
        // The server was not there, or did not answer in time: not the caller's input.
        let unreachable = matches!(
            error,
            ureq::Error::Io(_)
                | ureq::Error::Timeout(_)
                | ureq::Error::HostNotFound
                | ureq::Error::ConnectionFailed
        );
        let error = anyhow::Error::new(error);
        if unreachable { error.context(Unreachable(what)) } else { error.context(what) }
    })?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    Ok(Answer { status, body })
}

fn base_url(server: &ServerArgs) -> String {
    server.server.trim_end_matches('/').trim_end_matches("/v1").to_owned()
}

/// Prints an answer: the JSON as is with --json, else through `table`. An error answer
/// exits [`Exit::BadInput`], naming the field at fault.
fn print_answer<T: serde::de::DeserializeOwned>(
    server: &ServerArgs,
    answer: Answer,
    table: impl FnOnce(T) -> String,
) -> Result<Exit> {
    let pretty = || {
        serde_json::from_str::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| answer.body.clone())
    };
    if answer.status >= 400 {
        if server.json {
            eprintln!("HTTP {}\n{}", answer.status, pretty());
        } else {
            match serde_json::from_str::<ErrorOut>(&answer.body) {
                Ok(ErrorOut { error, field: Some(field) }) => {
                    eprintln!("error: {field}: {error} (HTTP {})", answer.status)
                }
                Ok(ErrorOut { error, field: None }) => eprintln!("error: {error} (HTTP {})", answer.status),
                Err(_) => eprintln!("error: HTTP {}: {}", answer.status, answer.body.trim()),
            }
        }
        return Ok(Exit::BadInput);
    }
    if server.json {
        println!("{}", pretty());
        return Ok(Exit::Success);
    }
    let value: T =
        serde_json::from_str(&answer.body).context("the server's answer is not what this dibs expects")?;
    print!("{}", table(value));
    Ok(Exit::Success)
}

/// Rows as aligned columns under a header.
fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = widths[i])).collect();
        format!("{}\n", text.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn request_line(r: &RequestOut) -> Vec<String> {
    let mut providers: Vec<&str> =
        r.allocations.iter().filter(|a| a.state != "cancelled").map(|a| a.provider.as_str()).collect();
    providers.sort_unstable();
    providers.dedup();
    vec![
        r.id.clone(),
        r.status.clone(),
        r.gpus.to_string(),
        r.accelerators.join(","),
        r.duration_hours.to_string(),
        r.workload.clone(),
        providers.join(","),
    ]
}

fn request_table(r: &RequestOut, dashboard: &str) -> String {
    let mut out = format!(
        "{}: {}\n  {} GPUs of {} for {} h ({}), from {}\n",
        r.id,
        r.status,
        r.gpus,
        r.accelerators.join(" or "),
        r.duration_hours,
        r.workload,
        r.earliest_start
    );
    if let Some(unfilled) = &r.unfilled {
        out.push_str(&format!("  unfilled: {} GPUs: {}\n", unfilled.gpus, unfilled.reason));
    }
    if r.allocations.is_empty() {
        out.push_str("  no allocations yet\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .allocations
            .iter()
            .map(|a| {
                vec![
                    a.id.to_string(),
                    a.provider.clone(),
                    a.region.clone(),
                    a.instance_type.clone(),
                    format!("{}x{}", a.nodes, a.gpus_per_node),
                    a.gpus.to_string(),
                    format!("{:.2}", a.price_per_node_hour),
                    a.via.clone(),
                    a.state.clone(),
                    a.ready_at.clone().unwrap_or_else(|| format!("promised {}", a.promised)),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&columns(
            &[
                "ALLOCATION",
                "PROVIDER",
                "REGION",
                "INSTANCE",
                "NODES",
                "GPUS",
                "$/NODE-H",
                "VIA",
                "STATE",
                "READY",
            ],
            &rows,
        ));
    }
    out.push_str(&format!("\n  story: {dashboard}/requests/{}\n", r.id));
    out
}

pub fn request(command: RequestCommand) -> Result<Exit> {
    match command {
        RequestCommand::Submit { request, idempotency_key, server } => {
            let answer = call(&server, "POST", "/requests", Some((request.body(), idempotency_key)))?;
            let dashboard = base_url(&server);
            print_answer(&server, answer, |r: RequestOut| request_table(&r, &dashboard))
        }
        RequestCommand::Show { id, server } => {
            let answer = call(&server, "GET", &format!("/requests/{id}"), None)?;
            let dashboard = base_url(&server);
            print_answer(&server, answer, |r: RequestOut| request_table(&r, &dashboard))
        }
        RequestCommand::Cancel { id, server } => {
            let answer = call(&server, "POST", &format!("/requests/{id}/cancel"), None)?;
            let dashboard = base_url(&server);
            print_answer(&server, answer, |r: RequestOut| request_table(&r, &dashboard))
        }
        RequestCommand::List { status, after, limit, server } => {
            let mut query = vec![format!("limit={limit}")];
            query.extend(status.map(|s| format!("status={s}")));
            query.extend(after.map(|a| format!("after={a}")));
            let answer = call(&server, "GET", &format!("/requests?{}", query.join("&")), None)?;
            print_answer(&server, answer, |page: RequestPage| {
                let rows: Vec<Vec<String>> = page.requests.iter().map(request_line).collect();
                let mut out = columns(
                    &["ID", "STATUS", "GPUS", "ACCELERATORS", "HOURS", "WORKLOAD", "PROVIDERS"],
                    &rows,
                );
                out.push_str(&format!("{} requests", rows.len()));
                match page.next_after {
                    Some(next) => out.push_str(&format!("; more with --after {next}\n")),
                    None => out.push('\n'),
                }
                out
            })
        }
    }
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a new admin token for a data folder and print it once; the old one stops working.
    ///
    /// For a lost admin token. The server reads the admin token's hash when it starts, so
    /// stop `dibs serve` first, run this, and start it again; this refuses while a server
    /// holds the data folder. A server started with DIBS_ADMIN_TOKEN uses that instead.
    Reset {
        /// The data folder `dibs serve --data` uses.
        #[arg(long, default_value = "dibs-data")]
        data: PathBuf,
    },
    /// Make a token with a role on a running server (with the admin token in DIBS_TOKEN).
    Create {
        /// requester (submit, cancel, read), auditor (read, ledger), admin, or provider:NAME
        /// (only that provider's own view; NAME must publish offers on the server).
        #[arg(long)]
        role: String,
        /// Hours until the token stops working (default: until it is revoked).
        #[arg(long, value_name = "HOURS")]
        expires_in_hours: Option<f64>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the tokens a running server knows (ids, roles, expiry, revocation; never the
    /// tokens themselves).
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke a token by its id (from `dibs token list`): refused from the next call on.
    Revoke {
        /// The token's id: 16 hex digits.
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Deserialize)]
struct TokenOut {
    token: String,
    id: String,
    role: String,
    expires_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenRow {
    id: String,
    role: String,
    created_at: String,
    expires_at: Option<String>,
    revoked_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenRows {
    tokens: Vec<TokenRow>,
}

fn token_line(t: &TokenRow) -> String {
    let state = match (&t.revoked_at, &t.expires_at) {
        (Some(at), _) => format!("revoked {at}"),
        (None, Some(at)) => format!("expires {at}"),
        (None, None) => "no expiry".into(),
    };
    format!("{:<16}  {:<22}  made {}  {state}", t.id, t.role, t.created_at)
}

pub fn token(command: TokenCommand) -> Result<Exit> {
    match command {
        TokenCommand::Reset { data } => {
            if dibs_serve::data_folder_in_use(&data) {
                bail!(
                    "--data {}: a dibs serve is using it; stop it first (it reads the admin token at start)",
                    data.display()
                );
            }
            let token =
                dibs_serve::reset_admin_token(&data).with_context(|| format!("--data {}", data.display()))?;
            println!("new admin token for {} (shown once; the old one no longer works):", data.display());
            println!("  {token}");
            println!("\n  export DIBS_TOKEN={token}");
            println!("\nstart dibs serve --data {} again to use it", data.display());
            if std::env::var_os("DIBS_ADMIN_TOKEN").is_some() {
                println!(
                    "note: DIBS_ADMIN_TOKEN is set here; a server started with it uses that token instead"
                );
            }
            Ok(Exit::Success)
        }
        TokenCommand::Create { role, expires_in_hours, server } => {
            let mut body = serde_json::json!({ "role": role });
            if let Some(hours) = expires_in_hours {
                body["expires_in_hours"] = serde_json::json!(hours);
            }
            let answer = call(&server, "POST", "/tokens", Some((body, None)))?;
            print_answer(&server, answer, |t: TokenOut| {
                let until = t.expires_at.map_or("until revoked".into(), |at| format!("until {at}"));
                format!("{} token {} ({until}; shown once):\n  {}\n", t.role, t.id, t.token)
            })
        }
        TokenCommand::List { server } => {
            let answer = call(&server, "GET", "/tokens", None)?;
            print_answer(&server, answer, |rows: TokenRows| {
                if rows.tokens.is_empty() {
                    return "no tokens besides the admin's\n".into();
                }
                rows.tokens.iter().map(|t| token_line(t) + "\n").collect()
            })
        }
        TokenCommand::Revoke { id, server } => {
            let answer =
                call(&server, "POST", &format!("/tokens/{id}/revoke"), Some((serde_json::json!({}), None)))?;
            print_answer(&server, answer, |t: TokenRow| token_line(&t) + "\n")
        }
    }
}

#[derive(Subcommand)]
pub enum ProviderCommand {
    /// Run a standalone provider that answers the provider protocol over HTTP
    /// from a catalog, with behaviour and fault knobs.
    Serve(ProviderServeArgs),
}

#[derive(Args)]
pub struct ProviderServeArgs {
    /// The provider's name, as the catalog spells it (e.g. azure, lambda).
    #[arg(long)]
    name: String,
    #[command(flatten)]
    catalog: crate::CatalogArgs,
    /// Address to listen on (port 0 picks a free one; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// As a first-refusal holder: accept, decline, silent, partial:N or rate:P.
    #[arg(long, default_value = "accept")]
    holder: String,
    /// Shorthand for --holder rate:P.
    #[arg(long, conflicts_with = "holder")]
    accept_rate: Option<f64>,
    /// Capacity of every offer, in nodes (default: the supply's).
    #[arg(long)]
    capacity: Option<u32>,
    /// Wait this many milliseconds before every answer.
    #[arg(long, default_value_t = 0)]
    answer_delay_ms: u64,
    /// Fail this share of calls with HTTP 500 (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Answer every call with HTTP 503.
    #[arg(long)]
    down: bool,
    /// Seed for the provider's random choices (accept rate, error rate).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn provider(command: ProviderCommand) -> Result<Exit> {
    let ProviderCommand::Serve(args) = command;
    let name = ProviderName::new(&args.name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let holder = match args.accept_rate {
        Some(p) if !(0.0..=1.0).contains(&p) => bail!("--accept-rate: {p} must be between 0 and 1"),
        Some(p) => HolderBehaviour::AcceptRate(p),
        None => HolderBehaviour::parse(&args.holder).map_err(|e| anyhow::anyhow!("--holder: {e}"))?,
    };
    if !(0.0..=1.0).contains(&args.error_rate) {
        bail!("--error-rate: {} must be between 0 and 1", args.error_rate);
    }
    let catalog = crate::load_catalogs(&args.catalog)?;
    let knobs = dibs_serve::provider::Knobs {
        holder,
        answer_delay: std::time::Duration::from_millis(args.answer_delay_ms),
        error_rate: args.error_rate,
        down: args.down,
        capacity: args.capacity,
        seed: args.seed,
    };
    dibs_serve::provider::serve_provider(name, catalog.offers, &args.listen, knobs)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Exit::Success)
}
