//! `dibs place`: one request, run to completion in virtual time.

use std::path::PathBuf;

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use clap::Args;
use dibs_core::engine::{Engine, EngineConfig, Input, Status};
use dibs_core::ledger::{Event, EventKind};
use dibs_core::names::Names;
use dibs_core::placement::{self, Optimality, Outcome};
use dibs_core::request::Request;
use dibs_core::types::{Offer, Timestamp};
use dibs_providers::{HolderBehaviour, SimulatedBehaviour, SimulatedProvider};
use dibs_sim::VirtualRun;
use serde::Serialize;

use crate::exit::Exit;

#[derive(Args)]
pub struct PlaceArgs {
    /// A directory of contract TOML files (and its policy.toml), or single files.
    /// Default: the embedded contract set whose clauses are in force today.
    #[arg(long, value_name = "DIR")]
    contracts: Vec<PathBuf>,
    #[command(flatten)]
    catalog: crate::CatalogArgs,
    #[command(flatten)]
    request: crate::request_args::RequestArgs,
    /// The instant of the request (YYYY-MM-DD or RFC 3339); decides which contract versions apply. Default: now.
    #[arg(long)]
    at: Option<String>,
    /// How the first-refusal holder answers: accept, decline, silent, partial:N (takes N GPUs)
    /// or rate:P (accepts with probability P, seeded).
    #[arg(long, default_value = "decline")]
    holder: String,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PlaceArgs) -> Result<Exit> {
    let at = crate::instant(args.at.as_deref())?;
    let holder = HolderBehaviour::parse(&args.holder).map_err(|e| anyhow::anyhow!("--holder: {e}"))?;
    let contracts = if args.contracts.is_empty() {
        dibs_core::contract::builtin_contracts("default").context("the embedded default contract set")?
    } else {
        // Kept as a ContractError, so that invalid contract files exit `Exit::Invalid`.
        crate::load_contracts(&args.contracts)?
    };
    let catalog = crate::load_catalogs(&args.catalog)?;
    crate::warn_unknown_names(&contracts, &catalog);
    crate::warn_uncontracted(&contracts, &catalog);
    let names = Names::from_offers(&catalog.offers);
    let request =
        args.request.spec("place-1", at, &names).validate(&names).map_err(crate::request_args::flag_error)?;

    let mut providers = SimulatedProvider::from_catalog(&catalog.offers, SimulatedBehaviour::default());
    for provider in providers.values_mut() {
        provider.behaviour.holder = holder;
    }
    let engine = Engine::new(contracts, catalog.offers.clone(), EngineConfig::default());
    let mut run = VirtualRun::new(engine, providers, at);
    run.schedule(at, Input::Submit(request.clone()));
    let id = request.id.clone();
    run.run_while(|engine| {
        engine.request(&id).is_none_or(|r| !(r.status.is_final() || r.status == Status::Active))
    });

    let report = Report::from_run(&run, &request, &catalog.offers);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.human(&request, at));
    }
    Ok(if report.status == "awarded" { Exit::Success } else { Exit::Unfilled })
}

/// The `--json` output; its own struct so the engine's types can change without changing it.
#[derive(Serialize)]
struct Report {
    status: &'static str,
    lifecycle: &'static str,
    award: Award,
    first_refusal: FirstRefusal,
    unfilled: Option<Unfilled>,
    /// Every offer of the catalog that lost, with its reason: those the placement weighed, and
    /// those no provider quoted (their reason is the filter they fail, or that they were not quoted).
    losing_offers: Vec<LosingOffer>,
    solver: Option<String>,
    /// `proven`, `gap`, or `unknown` (a fallback decided).
    optimality: Option<String>,
    notes: Vec<String>,
    /// Hours from submission to the (last) award, and to all capacity ready.
    hours_to_award: Option<f64>,
    hours_to_capacity: Option<f64>,
    ledger_head: String,
    events: Vec<serde_json::Value>,
}

#[derive(Serialize)]
struct Award {
    /// GPUs of the request the award carries.
    gpus: u32,
    /// GPUs bought: whole nodes.
    gpus_bought: u32,
    overbought_gpus: u32,
    overbought_cost_usd: f64,
    cost_per_hour_usd: f64,
    list_cost_usd: f64,
    /// The market's part net of commitment credits (what the buyer pays beyond what it owes
    /// anyway), over the duration; first-refusal parts at their list price.
    effective_cost_usd: f64,
    allocations: Vec<AllocationOut>,
}

#[derive(Serialize)]
struct AllocationOut {
    provider: String,
    region: String,
    /// The availability zone the offer was priced in; null when the catalog names none.
    zone: Option<String>,
    instance_type: String,
    accelerator: String,
    gpus_per_node: u32,
    nodes: u32,
    /// GPUs of the request this allocation carries (at most nodes x gpus_per_node).
    gpus: u32,
    kind: String,
    price_per_node_hour: f64,
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
    fn from_run(run: &VirtualRun, request: &Request, catalog: &[Offer]) -> Self {
        let engine = &run.engine;
        let state = engine.request(&request.id);
        let allocations: Vec<AllocationOut> = state
            .map(|s| s.allocations.iter().filter_map(|id| engine.allocation(*id)).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|a| AllocationOut {
                provider: a.plan.provider.to_string(),
                region: a.plan.region.to_string(),
                zone: a.plan.zone.clone(),
                instance_type: a.plan.instance_type.clone(),
                accelerator: a.plan.accelerator.to_string(),
                gpus_per_node: a.plan.gpus_per_node.get(),
                nodes: a.plan.nodes,
                gpus: a.plan.gpus,
                kind: a.plan.kind.as_str().to_owned(),
                price_per_node_hour: a.plan.node_price.get(),
                price_per_gpu_hour: a.plan.price_per_gpu_hour(),
                via: a.via.clone(),
                lead_time_hours: a.plan.lead_time_hours,
            })
            .collect();
        let gpus = allocations.iter().map(|a| a.gpus).sum();
        let gpus_bought: u32 = allocations.iter().map(|a| a.nodes * a.gpus_per_node).sum();
        let hours = f64::from(request.duration_hours);
        let cost_per_hour_usd: f64 =
            allocations.iter().map(|a| a.price_per_node_hour * f64::from(a.nodes)).sum();
        let overbought_cost_usd: f64 = allocations
            .iter()
            .map(|a| f64::from(a.nodes * a.gpus_per_node - a.gpus) * a.price_per_gpu_hour * hours)
            .sum();
        let lifecycle = state.map_or("unknown", |s| s.status.as_str());
        let status = if gpus > 0 { "awarded" } else { "unfilled" };
        let unfilled = state.filter(|s| s.unfilled_gpus > 0).map(|s| Unfilled {
            gpus: s.unfilled_gpus,
            reason: s.unfilled_reason.clone().unwrap_or_default(),
        });

        let mut first_refusal =
            FirstRefusal { holder: None, outcome: "not_applicable".into(), gpus: 0, detail: Vec::new() };
        // Per round, the last placement's effective cost and list cost: the one awarded.
        let mut placed: std::collections::BTreeMap<u32, (f64, f64)> = std::collections::BTreeMap::new();
        let mut losing_offers = Vec::new();
        let mut weighed: BTreeSet<String> = BTreeSet::new();
        let mut solver = None;
        let mut optimality = None;
        let mut notes = Vec::new();
        let submitted = run.events.first().map_or(request.earliest_start, |e| e.at);
        let (mut hours_to_award, mut hours_to_capacity) = (None, None);
        for event in &run.events {
            match &event.kind {
                EventKind::Solicited { holder, mode, gpus, of_gpus, price, terms, respond_by, .. } => {
                    first_refusal.holder = Some(holder.to_string());
                    first_refusal.outcome = "solicited".into();
                    let of = if gpus < of_gpus {
                        format!(" of {of_gpus} (the rest is beyond what the buyer's caps allow one provider)")
                    } else {
                        String::new()
                    };
                    first_refusal.detail.push(format!(
                        "{mode}: offered {gpus} GPUs{of} at {price} ({terms}), to answer by +{:.0}h",
                        respond_by.hours_since(submitted)
                    ));
                }
                EventKind::Awarded { .. } => hours_to_award = Some(event.at.hours_since(submitted)),
                EventKind::RequestActive {} => hours_to_capacity = Some(event.at.hours_since(submitted)),
                EventKind::HolderAnswered { holder, outcome, gpus, .. } => {
                    first_refusal.holder = Some(holder.to_string());
                    first_refusal.outcome = outcome.to_string();
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
                EventKind::Placed { round, verdicts, solver: path, notes: placed_notes, list_cost, effective_cost } => {
                    placed.insert(*round, (*list_cost, *effective_cost));
                    solver = Some(path.to_string());
                    optimality = Some(
                        match path.optimality() {
                            Optimality::Proven => "proven",
                            Optimality::Gap { .. } => "gap",
                            Optimality::Unknown => "unknown",
                        }
                        .to_owned(),
                    );
                    notes = placed_notes.clone();
                    weighed = verdicts.iter().map(|v| v.offer_id.clone()).collect();
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
        // Offers no provider quoted (filtered out by the provider, or a provider not asked)
        // lost too; say which hard requirement each fails.
        let awarded: BTreeSet<&str> = state
            .map(|s| {
                s.allocations
                    .iter()
                    .filter_map(|id| engine.allocation(*id))
                    .map(|a| a.plan.offer_id.as_str())
                    .collect()
            })
            .unwrap_or_default();
        for (offer, reason) in placement::explain_unquoted(request, catalog, submitted) {
            if weighed.contains(&offer.id) || awarded.contains(offer.id.as_str()) {
                continue;
            }
            losing_offers.push(LosingOffer {
                offer: offer.id.clone(),
                provider: offer.provider.to_string(),
                price_per_gpu_hour: offer.gpu_price(),
                reason,
            });
        }
        let credited: f64 = placed.values().map(|(list, effective)| list - effective).sum();
        let events = run.events.iter().map(event_json).collect();
        Report {
            status,
            lifecycle,
            award: Award {
                gpus,
                gpus_bought,
                overbought_gpus: gpus_bought - gpus,
                overbought_cost_usd,
                cost_per_hour_usd,
                list_cost_usd: cost_per_hour_usd * hours,
                effective_cost_usd: cost_per_hour_usd * hours - credited,
                allocations,
            },
            first_refusal,
            unfilled,
            losing_offers,
            solver,
            optimality,
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
            request.block,
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
            let over = if self.award.overbought_gpus > 0 {
                format!(
                    "; {} GPUs over-bought in whole nodes (${:.0})",
                    self.award.overbought_gpus, self.award.overbought_cost_usd
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "\nAward: {} GPUs in {} bought, ${:.2}/h, ${:.0} at list price{over}",
                self.award.gpus,
                self.award.gpus_bought,
                self.award.cost_per_hour_usd,
                self.award.list_cost_usd
            );
            let _ = writeln!(
                s,
                "  {:<10} {:<20} {:<34} {:<11} {:>12} {:>10} {:>9} {:>6}  via",
                "provider",
                "region",
                "instance type",
                "accelerator",
                "nodes x GPUs",
                "$/node-h",
                "$/GPU-h",
                "lead"
            );
            for a in &self.award.allocations {
                let _ = writeln!(
                    s,
                    "  {:<10} {:<20} {:<34} {:<11} {:>12} {:>10.4} {:>9.4} {:>5}h  {}{}",
                    a.provider,
                    a.region,
                    a.instance_type,
                    a.accelerator,
                    format!("{} x {}", a.nodes, a.gpus_per_node),
                    a.price_per_node_hour,
                    a.price_per_gpu_hour,
                    a.lead_time_hours,
                    a.via,
                    if a.kind == "spot" { " (spot)" } else { "" }
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
                    writeln!(s, "  {:<60} {:>9.4}  {}", offer.offer, offer.price_per_gpu_hour, offer.reason);
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
