//! The dibs command line. Thin glue: parsing arguments, reading files,
//! printing. Every decision is made in `dibs-core`.

mod exit;
mod place;
mod request_args;
mod serve;
mod simulate;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use dibs_core::catalog::{self, Catalog};
use dibs_core::contract::{self, ContractSet};
use dibs_core::types::Timestamp;

use crate::exit::Exit;

// A simulation allocates and frees an event per engine step; mimalloc
// halves the time the system allocator takes for that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// dibs: a contract-aware broker for GPU cloud capacity.
///
/// dibs runs a capacity request end to end: first refusal to the holder,
/// open-market quotes, an optimal award split across providers within
/// diversification caps, and a ledger of every step.
#[derive(Parser)]
#[command(name = "dibs", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Place one request: run the engine to completion in virtual time against
    /// simulated providers built from a price catalog.
    Place(place::PlaceArgs),
    /// Replay a demand trace through the engine in virtual time, under contract
    /// variants side by side, and report spend, time to capacity, concentration,
    /// first-refusal outcomes, spillovers, failovers, commitments and revenue share.
    Simulate(Box<simulate::SimulateArgs>),
    /// Run the broker service: the dashboard at /, the HTTP API under /v1, a durable
    /// ledger (SQLite in --data, or PostgreSQL), simulated providers in-process.
    Serve(serve::ServeArgs),
    /// Submit, show, list and cancel requests on a running server (token from DIBS_TOKEN).
    #[command(subcommand)]
    Request(serve::RequestCommand),
    /// Make tokens: a new admin token for a lost one, or a token with a role.
    #[command(subcommand)]
    Token(serve::TokenCommand),
    /// Run a standalone provider for the provider protocol.
    #[command(subcommand)]
    Provider(serve::ProviderCommand),
    /// Check a service's ledger, or rebuild its state tables from it.
    #[command(subcommand)]
    Ledger(serve::LedgerCommand),
    /// Work with contract files.
    #[command(subcommand)]
    Contract(ContractCommand),
    /// Work with price catalogs.
    #[command(subcommand)]
    Catalog(CatalogCommand),
}

#[derive(Subcommand)]
enum ContractCommand {
    /// Validate contract and policy files and print the clauses in force at an instant.
    ///
    /// Each FILE may be a TOML file or a directory of them. Errors name the
    /// file, line and column; a clause's holder must be a party to its contract.
    /// Names that no offer of the catalog uses (a holder with no offers, an
    /// unknown region or accelerator) are printed as warnings. Exit status 1
    /// when any file is invalid.
    Check {
        /// Contract or policy TOML files, or directories of them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The instant to report (YYYY-MM-DD or RFC 3339); default: now.
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        catalog: CatalogArgs,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Load price catalogs and a supply, and report offers, skipped rows and capacity.
    ///
    /// Prints, per catalog file, the rows read, the offers made and the rows
    /// skipped with their reasons; then every offer with the nodes and lead
    /// time it got and the supply rule (FILE:LINE) they came from.
    ///
    /// A supply file is TOML, a list of rules:
    ///
    ///   [[supply]]
    ///   provider = "aws"          # or "*"
    ///   region = "us-east-1"      # or "*"
    ///   accelerator = "H100"      # or "*"
    ///   instance_type = "p5.48xlarge"   # optional
    ///   kind = "on-demand"        # optional: on-demand, spot or reserved
    ///   nodes = 64
    ///   lead_time_hours = 48
    ///
    /// The most specific matching rule wins, the later one on a tie; an offer
    /// no rule matches has no capacity and is left out.
    #[command(verbatim_doc_comment)]
    Check {
        #[command(flatten)]
        catalog: CatalogArgs,
        /// Print only the per-file summary, not every offer.
        #[arg(long)]
        summary: bool,
    },
}

/// Where prices and capacity come from: the same flags for every command that reads them.
#[derive(Args, Clone, Debug)]
pub struct CatalogArgs {
    /// A SkyPilot `vms.csv` catalog file or a directory of them (repeatable). Default: the
    /// bundled price table.
    #[arg(long, value_name = "PATH")]
    pub catalog: Vec<PathBuf>,
    /// A supply file (TOML; see `dibs catalog check --help`) giving each offer its nodes and
    /// lead time. Default: `supply.toml` beside the first catalog, else the bundled supply,
    /// which is made up.
    #[arg(long, value_name = "FILE")]
    pub supply: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Place(args) => place::run(args),
        Command::Simulate(args) => simulate::run(*args),
        Command::Serve(args) => serve::serve(args),
        Command::Request(command) => serve::request(command),
        Command::Token(command) => serve::token(command),
        Command::Ledger(command) => serve::ledger(command),
        Command::Provider(command) => serve::provider(command),
        Command::Contract(ContractCommand::Check { files, at, catalog }) => {
            contract_check(&files, at.as_deref(), &catalog)
        }
        Command::Catalog(CatalogCommand::Check { catalog, summary }) => catalog_check(&catalog, summary),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(error) => {
            eprintln!("error: {error:#}");
            Exit::for_error(&error).into()
        }
    }
}

/// Parses `--at`, or takes the wall clock: the shell may read the clock, the engine never does.
pub fn instant(at: Option<&str>) -> Result<Timestamp> {
    match at {
        Some(text) => Timestamp::parse(text).map_err(|e| anyhow::anyhow!("--at: {e}")),
        None => Ok(dibs_serve::clock::wall_now()),
    }
}

/// Loads contracts from files and directories (in sorted order within a directory).
pub fn load_contracts(paths: &[PathBuf]) -> Result<ContractSet, contract::ContractError> {
    contract::load_contract_files(&contract::contract_paths(paths)?)
}

fn contract_check(files: &[PathBuf], at: Option<&str>, catalog: &CatalogArgs) -> Result<Exit> {
    let at = instant(at)?;
    match load_contracts(files) {
        Ok(set) => {
            print!("{}", contract::describe_in_force(&set, at));
            let catalog = load_catalogs(catalog)?;
            warn_unknown_names(&set, &catalog);
            Ok(Exit::Success)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(Exit::Invalid)
        }
    }
}

/// Prints a warning for each name in the contracts that the catalog's offers do not use.
pub fn warn_unknown_names(set: &ContractSet, catalog: &Catalog) {
    let names = dibs_core::names::Names::from_offers(&catalog.offers);
    for line in set.names_not_in(&names) {
        eprintln!("warning: {line}");
    }
}

/// Warns of catalog providers with no contract on file (`dibs serve` says it on its banner).
pub fn warn_uncontracted(set: &ContractSet, catalog: &Catalog) {
    let uncontracted = set.uncontracted(&dibs_core::names::Names::from_offers(&catalog.offers));
    if !uncontracted.is_empty() {
        eprintln!("warning: {}", dibs_core::contract::uncontracted_warning(&uncontracted));
    }
}

/// Loads the catalogs and the supply the flags name (the bundled tables by default).
pub fn load_catalogs(args: &CatalogArgs) -> Result<Catalog> {
    let catalog = catalog::load_catalog(&args.catalog, args.supply.as_deref())?;
    if catalog.offers.is_empty() {
        anyhow::bail!("--catalog: no offers loaded (see `dibs catalog check`)");
    }
    Ok(catalog)
}

fn catalog_check(args: &CatalogArgs, summary: bool) -> Result<Exit> {
    let started = std::time::Instant::now();
    let catalog = load_catalogs(args)?;
    let elapsed = started.elapsed();
    print!("{}", catalog.report);
    if !summary {
        println!(
            "\n{:<64} {:>11} {:>6} {:>5} {:>11} {:>6}  capacity from",
            "offer", "accelerator", "nodes", "GPUs", "$/node-h", "lead"
        );
        for (offer, (_, origin)) in catalog.offers.iter().zip(&catalog.report.capacity_from) {
            println!(
                "{:<64} {:>11} {:>6} {:>5} {:>11.4} {:>5}h  {origin}",
                offer.id,
                offer.accelerator.as_str(),
                offer.nodes_available,
                offer.gpus_per_node.get(),
                offer.node_price.get(),
                offer.lead_time_hours
            );
        }
    }
    println!("\n{} offers in {:.0?}", catalog.offers.len(), elapsed);
    Ok(Exit::Success)
}
