//! `dibs serve`, `dibs ledger ...` and `dibs request ...`: the service and
//! the commands that talk to it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use dibs_core::contract;
use std::collections::BTreeMap;

use dibs_core::types::ProviderName;
use dibs_providers::HolderBehaviour;

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
    /// token. Providers not named run in-process.
    #[arg(long = "provider", value_name = "NAME=URL")]
    providers: Vec<String>,
}

fn parse_remotes(specs: &[String]) -> Result<BTreeMap<ProviderName, String>> {
    let mut remotes = BTreeMap::new();
    for spec in specs {
        let (name, url) =
            spec.split_once('=').with_context(|| format!("--provider {spec:?}: expected NAME=URL"))?;
        let name = ProviderName::new(name).map_err(|e| anyhow::anyhow!("--provider {spec:?}: {e}"))?;
        if !(url.starts_with("http://") || url.starts_with("https://") || url == dibs_serve::remote::PULL) {
            bail!("--provider {spec:?}: expected an http:// or https:// URL, or `pull`");
        }
        if remotes.insert(name, url.trim_end_matches('/').to_owned()).is_some() {
            bail!("--provider {spec:?}: that provider was given twice");
        }
    }
    Ok(remotes)
}

pub fn serve(args: ServeArgs) -> Result<ExitCode> {
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
    let remote_providers = parse_remotes(&args.providers)?;
    for name in remote_providers.keys() {
        if !catalog.offers.iter().any(|o| &o.provider == name) {
            bail!("--provider {name}=...: the catalog has no offers from {name}, so no request would ask it");
        }
    }
    let admin_token = std::env::var("DIBS_ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
    dibs_serve::serve(dibs_serve::ServeConfig {
        listen: args.listen,
        data: args.data,
        database: args.database,
        schema: args.database_schema,
        configuration: dibs_serve::broker::Configuration {
            contracts: contract_texts,
            offers: catalog.offers,
            origin: dibs_serve::broker::Configuration::COMMAND_LINE.into(),
        },
        holder,
        remote_providers,
        seed: args.seed,
        admin_token,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Recreate the state tables (the requests projection) by replaying the
    /// ledger. Stop the server first: it writes the projection too.
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
    /// Check the ledger's hash chain and that replaying its inputs, under the
    /// contracts and catalog it records, makes the decisions it records; names
    /// the first bad entry. Reads the store directly (the server may be running).
    Verify {
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
}

pub fn ledger(command: LedgerCommand) -> Result<ExitCode> {
    let (LedgerCommand::Verify { data, database, database_schema }
    | LedgerCommand::Rebuild { data, database, database_schema }) = &command;
    let (data, database, database_schema) = (data.clone(), database.clone(), database_schema.clone());
    if database.is_none() && !data.join("ledger.db").is_file() {
        bail!("--data {}: no ledger.db there", data.display());
    }
    let mut store = dibs_serve::open_store(&data, database.as_deref(), &database_schema)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let LedgerCommand::Rebuild { .. } = command {
        dibs_store::verify(store.as_mut())
            .map_err(|e| anyhow::anyhow!("the hash chain is broken, so no rebuild: {e}"))?;
        let (recovery, rows) = dibs_serve::rebuild(store).map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("rebuilt the requests projection: {rows} requests from {} ledger entries", recovery.entries);
        return Ok(ExitCode::SUCCESS);
    }
    match dibs_store::verify(store.as_mut()) {
        Ok(v) => println!("hash chain: ok, {} entries, head {}", v.entries, v.head),
        Err(e) => {
            println!("hash chain: BROKEN: {e}");
            return Ok(ExitCode::from(1));
        }
    }
    match dibs_serve::replay_check(store) {
        Ok((r, projection)) => {
            println!(
                "replay: ok, {} inputs under {} recorded configurations give the {} decisions recorded; {} requests",
                r.inputs,
                r.configurations,
                r.entries - r.inputs - r.configurations,
                r.requests
            );
            match projection {
                Ok(rows) => {
                    println!("projection: ok, {rows} requests match the replay");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("projection: MISMATCH: {e} (dibs ledger rebuild recreates it)");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Err(e) => {
            println!("replay: MISMATCH: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

#[derive(Subcommand)]
pub enum RequestCommand {
    /// Submit a capacity request to a running server.
    Submit {
        #[command(flatten)]
        request: Box<crate::request_args::RequestArgs>,
        /// Makes the submission safe to repeat: the server answers a repeat with the first answer.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one request.
    Show {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List requests.
    List {
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Args)]
pub struct ServerArgs {
    /// The server's URL.
    #[arg(long, default_value = "http://127.0.0.1:7878")]
    server: String,
}

fn call(
    server: &ServerArgs,
    method: &str,
    path: &str,
    body: Option<(serde_json::Value, Option<String>)>,
) -> Result<ExitCode> {
    let token =
        std::env::var("DIBS_TOKEN").context("DIBS_TOKEN: set it to the token `dibs serve` printed")?;
    let url = format!("{}/v1{path}", server.server.trim_end_matches('/').trim_end_matches("/v1"));
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
    .with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if status >= 400 {
        eprintln!("{method} {url}: HTTP {status}\n{pretty}");
        return Ok(ExitCode::from(2));
    }
    println!("{pretty}");
    Ok(ExitCode::SUCCESS)
}

pub fn request(command: RequestCommand) -> Result<ExitCode> {
    match command {
        RequestCommand::Submit { request, idempotency_key, server } => {
            let body = request.body(crate::instant(None)?);
            call(&server, "POST", "/requests", Some((body, idempotency_key)))
        }
        RequestCommand::Show { id, server } => call(&server, "GET", &format!("/requests/{id}"), None),
        RequestCommand::List { status, server } => {
            let query = status.map(|s| format!("?status={s}")).unwrap_or_default();
            call(&server, "GET", &format!("/requests{query}"), None)
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
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn provider(command: ProviderCommand) -> Result<ExitCode> {
    let ProviderCommand::Serve(args) = command;
    let name = ProviderName::new(&args.name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let holder_text = args.accept_rate.map_or(args.holder.clone(), |p| format!("rate:{p}"));
    let holder = HolderBehaviour::parse(&holder_text).map_err(|e| anyhow::anyhow!("--holder: {e}"))?;
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
    Ok(ExitCode::SUCCESS)
}
