//! The dibs command line. Thin glue: parsing arguments, reading files,
//! printing. Every decision is made in `dibs-core`.

mod place;
mod serve;
mod simulate;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use dibs_core::catalog::{self, Catalog, CatalogDefaults};
use dibs_core::contract::{self, ContractSet};
use dibs_core::types::Timestamp;

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
    /// Run the broker service: the HTTP API under /v1, a durable ledger
    /// (SQLite in --data, or PostgreSQL), simulated providers in-process.
    Serve(serve::ServeArgs),
    /// Submit, show and list requests on a running server (token from DIBS_TOKEN).
    #[command(subcommand)]
    Request(serve::RequestCommand),
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
    /// file, line and column. Exit status 1 when any file is invalid.
    Check {
        /// Contract or policy TOML files, or directories of them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The instant to report (YYYY-MM-DD or RFC 3339); default: now.
        #[arg(long)]
        at: Option<String>,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Load SkyPilot `vms.csv` catalogs and report offers and skipped rows.
    Check {
        /// A `*_vms.csv` file or a directory of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Place(args) => place::run(args),
        Command::Simulate(args) => simulate::run(*args),
        Command::Serve(args) => serve::serve(args),
        Command::Request(command) => serve::request(command),
        Command::Ledger(command) => serve::ledger(command),
        Command::Provider(command) => serve::provider(command),
        Command::Contract(ContractCommand::Check { files, at }) => contract_check(&files, at.as_deref()),
        Command::Catalog(CatalogCommand::Check { paths }) => catalog_check(&paths),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Parses `--at`, or takes the wall clock: the shell may read the clock, the engine never does.
pub fn instant(at: Option<&str>) -> Result<Timestamp> {
    match at {
        Some(text) => Timestamp::parse(text).map_err(|e| anyhow::anyhow!("--at: {e}")),
        None => {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).context("system clock")?;
            Ok(Timestamp::from_unix(now.as_secs() as i64))
        }
    }
}

/// Loads contracts from files and directories (in sorted order within a directory).
pub fn load_contracts(paths: &[PathBuf]) -> Result<ContractSet, contract::ContractError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            found.retain(|p| p.extension().is_some_and(|e| e == "toml"));
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    contract::load_contract_files(&files)
}

fn contract_check(files: &[PathBuf], at: Option<&str>) -> Result<ExitCode> {
    let at = instant(at)?;
    match load_contracts(files) {
        Ok(set) => {
            print!("{}", contract::describe_in_force(&set, at));
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Loads catalogs from paths, or the bundled price table when there are none.
pub fn load_catalogs(paths: &[PathBuf]) -> Result<Catalog> {
    if paths.is_empty() {
        return Ok(catalog::bundled_catalog());
    }
    let defaults = CatalogDefaults::default();
    let mut merged: Option<Catalog> = None;
    for path in paths {
        let loaded = catalog::load_catalog_path(path, &defaults)?;
        match &mut merged {
            Some(all) => all.merge(loaded),
            None => merged = Some(loaded),
        }
    }
    Ok(merged.expect("at least one path"))
}

fn catalog_check(paths: &[PathBuf]) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let catalog = load_catalogs(paths)?;
    println!("{}", catalog.report);
    println!("{} offers in {:.0?}", catalog.offers.len(), started.elapsed());
    Ok(ExitCode::SUCCESS)
}
