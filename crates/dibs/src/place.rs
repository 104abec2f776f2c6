//! `dibs place`: one request, run to completion in virtual time.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use dibs_core::engine::{Engine, EngineConfig, Input, Status};
use dibs_core::ledger::{Event, EventKind};
use dibs_core::placement::Outcome;
use dibs_core::request::{Request, RequestSpec};
use dibs_core::types::Timestamp;
use dibs_providers::{HolderBehaviour, SimulatedBehaviour, SimulatedProvider};
use dibs_sim::VirtualRun;
use serde::Serialize;

#[derive(Args)]
pub struct PlaceArgs {
    /// A directory of contract TOML files (and its policy.toml), or single files.
    /// Default: the embedded contract set whose clauses are in force today.
    #[arg(long, value_name = "DIR")]
    contracts: Vec<PathBuf>,
    /// A SkyPilot `vms.csv` catalog file or directory. Default: the bundled price table.
    #[arg(long, value_name = "PATH")]
    catalog: Vec<PathBuf>,
    /// Acceptable accelerators, comma-separated, in order of preference (e.g. H100,H200).
    #[arg(long, value_delimiter = ',', required = true)]
    accelerator: Vec<String>,
    /// GPUs wanted.
    #[arg(long)]
    gpus: u32,
    /// GPUs that must come together from one offer. Default: 8 when GPUs is a multiple of 8, else 1.
    #[arg(long)]
    block: Option<u32>,
    /// Duration in hours.
    #[arg(long)]
    hours: u32,
    /// Workload class: training, inference, api or batch.
    #[arg(long, default_value = "training")]
    workload: String,
    /// Allowed regions, comma-separated. Default: any.
    #[arg(long, value_delimiter = ',')]
    regions: Vec<String>,
    /// Price ceiling in USD per GPU-hour.
    #[arg(long)]
    max_price: Option<f64>,
    /// Accept spot capacity (the provider may reclaim it).
    #[arg(long)]
    allow_spot: bool,
    /// Capacity must be ready within this many hours of the request.
    #[arg(long, value_name = "HOURS")]
    deliver_within: Option<u32>,
    /// The instant of the request (YYYY-MM-DD or RFC 3339); decides which contract versions apply. Default: now.
    #[arg(long)]
    at: Option<String>,
    /// How the first-refusal holder answers: accept, decline, silent, or partial:N.
    #[arg(long, default_value = "decline")]
    holder: String,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PlaceArgs) -> Result<ExitCode> {
    let at = crate::instant(args.at.as_deref())?;
    let holder = HolderBehaviour::parse(&args.holder).map_err(|e| anyhow::anyhow!("--holder: {e}"))?;
    let contracts = if args.contracts.is_empty() {
        dibs_core::contract::builtin_contracts("default").context("the embedded default contract set")?
    } else {
        crate::load_contracts(&args.contracts).map_err(|e| anyhow::anyhow!("{e}"))?
    };
    let catalog = crate::load_catalogs(&args.catalog)?;
    if catalog.offers.is_empty() {
        bail!("--catalog: no offers loaded");
    }
    let block = args.block.unwrap_or(if args.gpus.is_multiple_of(8) { 8 } else { 1 });
    let request = RequestSpec {
        id: "place-1".into(),
        accelerators: args.accelerator.clone(),
        gpus: args.gpus,
        min_block: Some(block),
        duration_hours: args.hours,
        earliest_start: at,
        deliver_by: args.deliver_within.map(|h| at.plus_hours(f64::from(h))),
        regions: args.regions.clone(),
        workload: args.workload.clone(),
        max_price: args.max_price,
        allow_spot: args.allow_spot,
    }
    .validate()
    .map_err(|e| {
        let flag = match e.field {
            "min_block" => "block",
            "max_price" => "max-price",
            "deliver_by" => "deliver-within",
            other => other,
        };
        anyhow::anyhow!("--{flag}: {}", e.message)
    })?;

    let mut providers = SimulatedProvider::from_catalog(&catalog.offers, SimulatedBehaviour::default());
    for provider in providers.values_mut() {
        provider.behaviour.holder = holder;
    }
    let engine = Engine::new(contracts, catalog.offers, EngineConfig::default());
    let mut run = VirtualRun::new(engine, providers, at);
    run.schedule(at, Input::Submit(request.clone()));
    let id = request.id.clone();
    run.run_while(|engine| {
        engine.request(&id).is_none_or(|r| !(r.status.is_final() || r.status == Status::Active))
    });

    let report = Report::from_run(&run, &request);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.human(&request, at));
    }
    Ok(if report.status == "awarded" { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// The `--json` output; its own struct so the engine's types can change without changing it.
#[derive(Serialize)]
struct Report {
    status: &'static str,
    lifecycle: &'static str,
    award: Award,
    first_refusal: FirstRefusal,
    unfilled: Option<Unfilled>,
    losing_offers: Vec<LosingOffer>,
    solver: Option<String>,
    notes: Vec<String>,
    /// Hours from submission to the (last) award, and to all capacity ready.
    hours_to_award: Option<f64>,
    hours_to_capacity: Option<f64>,
    ledger_head: String,
    events: Vec<serde_json::Value>,
}

#[derive(Serialize)]
struct Award {
    gpus: u32,
    list_cost_usd: f64,
    allocations: Vec<AllocationOut>,
}

#[derive(Serialize)]
struct AllocationOut {
    provider: String,
    region: String,
    accelerator: String,
    gpus: u32,
    price_per_gpu_hour: f64,
    via: String,
    lead_time_hours: u32,
}

#[derive(Serialize)]
struct FirstRefusal {
    holder: Option<String>,
    /// accepted, accepted_part, declined, lapsed, skipped, or not_applicable.
    outcome: String,
    gpus: u32,
    detail: Vec<String>,
}

#[derive(Serialize)]
struct Unfilled {
    gpus: u32,
    reason: String,
}

#[derive(Serialize)]
struct LosingOffer {
    offer: String,
    provider: String,
    price_per_gpu_hour: f64,
    reason: String,
}

impl Report {
    fn from_run(run: &VirtualRun, request: &Request) -> Self {
        let engine = &run.engine;
        let state = engine.request(&request.id);
        let allocations: Vec<AllocationOut> = state
            .map(|s| s.allocations.iter().filter_map(|id| engine.allocation(*id)).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|a| AllocationOut {
                provider: a.plan.provider.to_string(),
                region: a.plan.region.to_string(),
                accelerator: a.plan.accelerator.to_string(),
                gpus: a.plan.gpus,
                price_per_gpu_hour: a.plan.price.get(),
                via: a.via.clone(),
                lead_time_hours: a.plan.lead_time_hours,
            })
            .collect();
        let gpus = allocations.iter().map(|a| a.gpus).sum();
        let list_cost_usd = allocations
            .iter()
            .map(|a| a.price_per_gpu_hour * f64::from(a.gpus) * f64::from(request.duration_hours))
            .sum();
        let lifecycle = state.map_or("unknown", |s| s.status.as_str());
        let status = if gpus > 0 { "awarded" } else { "unfilled" };
        let unfilled = state.filter(|s| s.unfilled_gpus > 0).map(|s| Unfilled {
            gpus: s.unfilled_gpus,
            reason: s.unfilled_reason.clone().unwrap_or_default(),
        });

        let mut first_refusal =
            FirstRefusal { holder: None, outcome: "not_applicable".into(), gpus: 0, detail: Vec::new() };
        let mut losing_offers = Vec::new();
        let mut solver = None;
        let mut notes = Vec::new();
        let submitted = run.events.first().map_or(request.earliest_start, |e| e.at);
        let (mut hours_to_award, mut hours_to_capacity) = (None, None);
        for event in &run.events {
            match &event.kind {
                EventKind::Solicited { holder, mode, gpus, price, respond_by, .. } => {
                    first_refusal.holder = Some(holder.to_string());
                    first_refusal.outcome = "solicited".into();
                    let of = if *gpus < request.gpus.get() {
                        format!(" of {} (the rest is beyond what the buyer's caps allow one provider)", request.gpus)
                    } else {
                        String::new()
                    };
                    first_refusal.detail.push(format!(
                        "{mode}: offered {gpus} GPUs{of} at {price}, to answer by +{:.0}h",
                        respond_by.hours_since(submitted)
                    ));
                }
                EventKind::Awarded { .. } => hours_to_award = Some(event.at.hours_since(submitted)),
                EventKind::RequestActive {} => hours_to_capacity = Some(event.at.hours_since(submitted)),
                EventKind::HolderAnswered { holder, outcome, gpus, .. } => {
                    first_refusal.holder = Some(holder.to_string());
                    first_refusal.outcome = outcome.clone();
                    first_refusal.gpus += gpus;
                }
                EventKind::HolderLapsed { holder, .. } => {
                    first_refusal.holder = Some(holder.to_string());
                    first_refusal.outcome = "lapsed".into();
                }
                EventKind::FirstRefusalSkipped { holder, evidence, .. } => {
                    first_refusal.holder = Some(holder.to_string());
                    first_refusal.outcome = "skipped".into();
                    first_refusal.detail.extend(evidence.iter().cloned());
                }
                EventKind::NoBetterTerms { declined_price, market_price, .. } => first_refusal.detail.push(format!(
                    "no-better-terms: market at ${market_price:.4} above the declined ${declined_price:.4}, re-offered"
                )),
                EventKind::Placed { verdicts, solver: path, notes: placed_notes, .. } => {
                    solver = Some(path.to_string());
                    notes = placed_notes.clone();
                    losing_offers = verdicts
                        .iter()
                        .filter_map(|v| match &v.outcome {
                            Outcome::Rejected(reason) => Some(LosingOffer {
                                offer: v.offer_id.clone(),
                                provider: v.provider.to_string(),
                                price_per_gpu_hour: v.price,
                                reason: reason.to_string(),
                            }),
                            Outcome::Awarded { .. } => None,
                        })
                        .collect();
                }
                _ => {}
            }
        }
        let events = run.events.iter().map(event_json).collect();
        Report {
            status,
            lifecycle,
            award: Award { gpus, list_cost_usd, allocations },
            first_refusal,
            unfilled,
            losing_offers,
            solver,
            notes,
            hours_to_award,
            hours_to_capacity,
            ledger_head: run.chain.head_hex(),
            events,
        }
    }

    fn human(&self, request: &Request, at: Timestamp) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let accelerators: Vec<String> = request.accelerators.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "Request: {} x {} ({}-GPU blocks) for {} h, {} workload, at {at}",
            request.gpus,
            accelerators.join("|"),
            request.min_block,
            request.duration_hours,
            request.workload
        );
        match &self.first_refusal.holder {
            Some(holder) => {
                let _ = writeln!(
                    s,
                    "First refusal: {holder}: {} ({} GPUs taken)",
                    self.first_refusal.outcome, self.first_refusal.gpus
                );
                for line in &self.first_refusal.detail {
                    let _ = writeln!(s, "  {line}");
                }
            }
            None => {
                let _ = writeln!(s, "First refusal: none in force for this request");
            }
        }
        let _ = writeln!(s, "Status: {} (lifecycle: {})", self.status, self.lifecycle);
        if let Some(hours) = self.hours_to_award {
            let ready = self
                .hours_to_capacity
                .map(|h| format!("; all capacity ready at +{h:.1}h"))
                .unwrap_or_default();
            let _ = writeln!(s, "Timeline: awarded at +{hours:.1}h{ready}");
        }
        if !self.award.allocations.is_empty() {
            let _ = writeln!(
                s,
                "\nAward: {} GPUs, ${:.0} at list price",
                self.award.gpus, self.award.list_cost_usd
            );
            let _ = writeln!(
                s,
                "  {:<10} {:<18} {:<11} {:>6} {:>9} {:>6}  via",
                "provider", "region", "accelerator", "GPUs", "$/GPU-h", "lead"
            );
            for a in &self.award.allocations {
                let _ = writeln!(
                    s,
                    "  {:<10} {:<18} {:<11} {:>6} {:>9.4} {:>5}h  {}",
                    a.provider,
                    a.region,
                    a.accelerator,
                    a.gpus,
                    a.price_per_gpu_hour,
                    a.lead_time_hours,
                    a.via
                );
            }
        }
        if let Some(unfilled) = &self.unfilled {
            let _ = writeln!(s, "\nUnfilled: {} GPUs: {}", unfilled.gpus, unfilled.reason);
        }
        if let Some(solver) = &self.solver {
            let _ = writeln!(s, "\nSolver: {solver}");
        }
        for note in &self.notes {
            let _ = writeln!(s, "Note: {note}");
        }
        if !self.losing_offers.is_empty() {
            let _ = writeln!(s, "\nOffers that lost ({}):", self.losing_offers.len());
            for offer in self.losing_offers.iter().take(40) {
                let _ =
                    writeln!(s, "  {:<48} {:>9.4}  {}", offer.offer, offer.price_per_gpu_hour, offer.reason);
            }
            if self.losing_offers.len() > 40 {
                let _ = writeln!(s, "  ... and {} more (use --json for all)", self.losing_offers.len() - 40);
            }
        }
        let _ = writeln!(s, "\nLedger: {} entries, head {}", self.events.len(), self.ledger_head);
        s
    }
}

fn event_json(event: &Event) -> serde_json::Value {
    serde_json::to_value(event)
        .unwrap_or_else(|e| serde_json::json!({ "kind": "unserializable", "error": e.to_string() }))
}
