//! `dibs simulate`: replay demand through the engine in virtual time, under
//! several contract variants, and settle the result.
//!
//! One [`Scenario`] (demand, supply, incidents, price path, seed) is run once
//! per [`Variant`]; variants change only the contracts, the policy or the
//! holder, so they see the same demand and the same faults. The run is the
//! engine itself driven by [`VirtualRun`]; every `settle_every_hours` of
//! virtual time the settlement functions of `dibs_core::settlement` accrue
//! spend, earn revenue, evaluate review triggers (whose suspensions take
//! effect in the engine from then on) and check the billing invariants. A
//! violated invariant stops the variant and is reported with the seed.

use std::collections::BTreeMap;
use std::time::Instant;

use dibs_core::commitments::CommitmentStatus;
use dibs_core::contract::{ClauseKind, ContractSet, RefusalMode};
use dibs_core::engine::{Engine, EngineConfig, Input};
use dibs_core::ledger::{EventKind, HolderOutcome};
use dibs_core::names::Names;
use dibs_core::placement::SolverConfig;
use dibs_core::request::RequestSpec;
use dibs_core::settlement::{self, RevenueShareStatement, TriggerFired};
use dibs_core::types::{Offer, Timestamp, WorkloadClass};
use dibs_providers::{HolderBehaviour, SimulatedBehaviour, SimulatedProvider};
use serde::Serialize;

use crate::VirtualRun;
use crate::incidents::Incident;
use crate::prices::PricePath;
use crate::trace::DemandRequest;

/// At most this many variants run side by side.
pub const MAX_VARIANTS: usize = 16;
/// Series for plots keep at most this many points.
const MAX_SERIES_POINTS: usize = 400;

/// Everything the variants share.
pub struct Scenario {
    pub contracts: ContractSet,
    pub offers: Vec<Offer>,
    pub demand: Vec<DemandRequest>,
    /// Accelerators every request accepts, in order of preference.
    pub accelerators: Vec<String>,
    pub incidents: Vec<Incident>,
    pub price_path: PricePath,
    pub holder: HolderBehaviour,
    /// The holder's mean answer time; each answer time is drawn from an
    /// exponential distribution with this mean, so a shorter window lapses more.
    pub holder_answer_hours: f64,
    pub seed: u64,
    pub start: Timestamp,
    /// Revenue earned per GPU-hour of inference and api work.
    pub revenue_per_gpu_hour: f64,
    /// Events declared during the run (for review triggers), with their instants.
    pub declared: Vec<(String, Timestamp)>,
    pub settle_every_hours: f64,
}

/// One change a variant makes to the scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// First-refusal window in hours; `None` removes first refusal.
    Window(Option<u32>),
    /// Diversification cap (share of GPUs); `None` removes caps.
    Cap(Option<f64>),
    Mode(RefusalMode),
    Holder(HolderBehaviour),
    Incidents(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub changes: Vec<Change>,
}

/// Parses one `--vary KEY=V1,V2,...` into its key and one change per value.
///
/// Keys: `window` (hours, or `none`), `cap` (a share in (0, 1], or `none`),
/// `mode` (`offer-first` or `match`), `holder` (`accept`, `decline`,
/// `silent`, `partial:N`, `rate:P`), `incidents` (`on` or `off`).
pub fn parse_vary(spec: &str) -> Result<(String, Vec<(String, Change)>), String> {
    let (key, values) =
        spec.split_once('=').ok_or_else(|| format!("--vary {spec:?}: expected KEY=V1,V2,..."))?;
    let values: Vec<&str> = values.split(',').map(str::trim).filter(|v| !v.is_empty()).collect();
    if values.is_empty() {
        return Err(format!("--vary {spec:?}: no values after '='"));
    }
    let parse = |value: &str| -> Result<Change, String> {
        let bad = |expected: &str| format!("--vary {key}: {value:?} is not {expected}");
        match key {
            "window" if value == "none" => Ok(Change::Window(None)),
            "window" => value
                .parse::<u32>()
                .ok()
                .filter(|h| *h > 0)
                .map(|h| Change::Window(Some(h)))
                .ok_or_else(|| bad("a number of hours or none")),
            "cap" if value == "none" => Ok(Change::Cap(None)),
            "cap" => value
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0 && *s <= 1.0)
                .map(|s| Change::Cap(Some(s)))
                .ok_or_else(|| bad("a share in (0, 1] or none")),
            "mode" => match value {
                "offer-first" => Ok(Change::Mode(RefusalMode::OfferFirst)),
                "match" => Ok(Change::Mode(RefusalMode::Match)),
                _ => Err(bad("offer-first or match")),
            },
            "holder" => {
                HolderBehaviour::parse(value).map(Change::Holder).map_err(|e| format!("--vary holder: {e}"))
            }
            "incidents" => match value {
                "on" => Ok(Change::Incidents(true)),
                "off" => Ok(Change::Incidents(false)),
                _ => Err(bad("on or off")),
            },
            _ => Err(format!("--vary: unknown key {key:?}; expected window, cap, mode, holder or incidents")),
        }
    };
    let changes =
        values.iter().map(|v| parse(v).map(|c| (format!("{key}={v}"), c))).collect::<Result<_, _>>()?;
    Ok((key.to_owned(), changes))
}

/// The cartesian product of the varied keys, in the order given.
pub fn variants(varies: &[(String, Vec<(String, Change)>)]) -> Result<Vec<Variant>, String> {
    let mut out = vec![Variant { name: String::new(), changes: Vec::new() }];
    for (_, options) in varies {
        let mut next = Vec::new();
        for base in &out {
            for (label, change) in options {
                let mut variant = base.clone();
                variant.name =
                    if variant.name.is_empty() { label.clone() } else { format!("{} {label}", variant.name) };
                variant.changes.push(change.clone());
                next.push(variant);
            }
        }
        out = next;
        if out.len() > MAX_VARIANTS {
            return Err(format!("--vary gives {} variants; at most {MAX_VARIANTS} run at once", out.len()));
        }
    }
    if out[0].name.is_empty() {
        out[0].name = "baseline".into();
    }
    Ok(out)
}

fn apply(contracts: &ContractSet, changes: &[Change]) -> ContractSet {
    let mut set = contracts.clone();
    for change in changes {
        for version in set.contracts.iter_mut().flat_map(|c| c.versions.iter_mut()) {
            match change {
                Change::Window(None) => {
                    version.clauses.retain(|c| !matches!(c.kind, ClauseKind::FirstRefusal(_)))
                }
                Change::Cap(None) => {
                    version.clauses.retain(|c| !matches!(c.kind, ClauseKind::Diversification(_)))
                }
                _ => {}
            }
            for clause in &mut version.clauses {
                match (change, &mut clause.kind) {
                    (Change::Window(Some(hours)), ClauseKind::FirstRefusal(f)) => f.window_hours = *hours,
                    (Change::Mode(mode), ClauseKind::FirstRefusal(f)) => f.mode = *mode,
                    (Change::Cap(Some(share)), ClauseKind::Diversification(d)) => d.max_share = *share,
                    _ => {}
                }
            }
        }
        match change {
            Change::Cap(Some(share)) => {
                set.policy.diversification.iter_mut().for_each(|d| d.max_share = *share)
            }
            Change::Cap(None) => set.policy.diversification.clear(),
            _ => {}
        }
    }
    set
}

/// Time-to-capacity figures, in hours from submission to all capacity ready.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    pub requests_filled: usize,
    pub requests_never_filled: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FirstRefusalCounts {
    pub solicited: usize,
    pub accepted: usize,
    pub accepted_part: usize,
    pub declined: usize,
    pub lapsed: usize,
    pub skipped: usize,
    pub no_better_terms: usize,
}

/// A named series of (hours since start, value) points, for plots and CSV.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Everything one variant produced.
#[derive(Debug, Clone, Serialize)]
pub struct VariantReport {
    pub name: String,
    pub ledger_head: String,
    pub ledger_entries: usize,
    pub engine_inputs: usize,
    pub wall_seconds: f64,
    pub requests: usize,
    pub spend_total: f64,
    pub spend_by_provider: BTreeMap<String, f64>,
    pub gpu_hours_by_provider: BTreeMap<String, f64>,
    /// GPU-hours billed over the run, all providers.
    pub gpu_hours_delivered: f64,
    /// Spend over delivered GPU-hours: the average price actually paid.
    pub spend_per_gpu_hour: f64,
    /// Share of GPU-hours per provider.
    pub share_by_provider: BTreeMap<String, f64>,
    /// Herfindahl-Hirschman index of the GPU-hour shares, 0 to 10,000.
    pub hhi: f64,
    pub time_to_capacity_hours: Percentiles,
    pub unfilled_gpu_hours: f64,
    /// Rounds that ended unfilled, by the kind of reason.
    pub unfilled_reasons: BTreeMap<String, usize>,
    pub first_refusal: FirstRefusalCounts,
    pub spillovers: usize,
    pub failovers: usize,
    pub incidents: usize,
    pub commitments: Vec<CommitmentStatus>,
    pub revenue: f64,
    pub revenue_share_owed: f64,
    pub revenue_share_statements: Vec<RevenueShareStatement>,
    pub triggers_fired: Vec<TriggerFired>,
    pub trigger_errors: Vec<String>,
    /// Set when a settlement invariant failed; the run stopped there.
    pub invariant_violation: Option<String>,
    #[serde(skip)]
    pub spend_over_time: Vec<Series>,
    #[serde(skip)]
    pub share_over_time: Vec<Series>,
    #[serde(skip)]
    pub time_to_capacity_samples: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs one variant to the end of its demand. `progress` is told the
/// fraction of virtual time done after each settlement tick.
pub fn run_variant(scenario: &Scenario, variant: &Variant, progress: &mut dyn FnMut(f64)) -> VariantReport {
    let started = Instant::now();
    let contracts = apply(&scenario.contracts, &variant.changes);
    let holder = variant.changes.iter().rev().find_map(|c| match c {
        Change::Holder(h) => Some(*h),
        _ => None,
    });
    let incidents_on = variant.changes.iter().rev().find_map(|c| match c {
        Change::Incidents(on) => Some(*on),
        _ => None,
    });

    let behaviour = SimulatedBehaviour {
        holder: holder.unwrap_or(scenario.holder),
        answer_hours: scenario.holder_answer_hours,
        answer_exponential: true,
        ..SimulatedBehaviour::default()
    };
    let last_submit = scenario.demand.iter().map(|d| d.submit).max().unwrap_or(scenario.start);
    let horizon_hours = last_submit.hours_since(scenario.start).max(1.0)
        + scenario.demand.iter().map(|d| f64::from(d.duration_hours)).fold(0.0, f64::max);
    let mut providers = SimulatedProvider::from_catalog(&scenario.offers, behaviour);
    for (name, provider) in providers.iter_mut() {
        provider.seed(scenario.seed);
        if !matches!(scenario.price_path, PricePath::Static) {
            let days = (horizon_hours / 24.0).ceil() as i64 + 1;
            provider.price_steps = (0..days)
                .map(|d| {
                    let at = scenario.start.plus_seconds(d * 86_400);
                    (at, scenario.price_path.multiplier(name, at))
                })
                .collect();
        }
    }
    // The solver's work limit counts branch nodes, never seconds: a run replays exactly.
    let config = EngineConfig {
        solver: SolverConfig::default(),
        settle_every_hours: scenario.settle_every_hours.max(1.0),
        ..EngineConfig::default()
    };
    let names = Names::from_offers(&scenario.offers);
    let engine = Engine::new(contracts.clone(), scenario.offers.clone(), config);
    let mut run = VirtualRun::new(engine, providers, scenario.start);

    let mut rejected = 0;
    for demand in &scenario.demand {
        let spec = RequestSpec {
            id: demand.id.clone(),
            accelerators: scenario.accelerators.clone(),
            gpus: demand.gpus,
            block: Some(demand.block),
            duration_hours: demand.duration_hours,
            earliest_start: demand.submit,
            workload: demand.workload.as_str().to_owned(),
            ..RequestSpec::default()
        };
        match spec.validate(&names) {
            Ok(request) => run.schedule(demand.submit, Input::Submit(request)),
            Err(_) => rejected += 1,
        }
    }
    let incidents: &[Incident] = if incidents_on.unwrap_or(true) { &scenario.incidents } else { &[] };
    for incident in incidents {
        run.schedule(
            incident.begin,
            Input::IncidentOpened {
                id: incident.id.clone(),
                provider: incident.provider.clone(),
                region: incident.region.clone(),
            },
        );
        run.schedule(incident.end, Input::IncidentResolved { id: incident.id.clone() });
    }

    // Declared events are inputs at their instants; the engine evaluates review triggers when
    // it settles (every `settle_every_hours`, a timer of its own) and suspends clauses itself.
    for (name, at) in &scenario.declared {
        run.schedule(*at, Input::EventDeclared { name: name.clone() });
    }

    // Sampling ticks until the queue drains: revenue earned since the last tick is reported to
    // the engine (an input, as a live buyer would report it), and the series are read from the
    // engine's latest settlement.
    let step = scenario.settle_every_hours.max(1.0);
    let mut tick = scenario.start;
    let mut revenue_class_hours = 0.0;
    let mut invariant_violation = None;
    let mut spend_points: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut share_points: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let every_nth = ((horizon_hours / step) as usize / MAX_SERIES_POINTS).max(1);
    let mut ticks = 0usize;
    let mut tally = Tally::default();
    loop {
        tick = tick.plus_hours(step);
        run.run_until(Some(tick));
        tally.add(&run.events);
        run.events.clear();
        ticks += 1;
        let settlement = run.engine.settlement().clone();
        if let Some(violation) = &settlement.violation {
            invariant_violation = Some(format!("at {}: {violation}", settlement.at.unwrap_or(tick)));
            break;
        }
        let accruals = &settlement.accruals;
        // Revenue: earned on inference and api GPU-hours since the last tick.
        let class_hours: f64 = [WorkloadClass::Inference, WorkloadClass::Api]
            .iter()
            .map(|c| accruals.gpu_hours_by_class.get(c).copied().unwrap_or(0.0))
            .sum();
        let earned = (class_hours - revenue_class_hours) * scenario.revenue_per_gpu_hour;
        revenue_class_hours = class_hours;
        if earned > 0.0 {
            run.schedule(tick, Input::RevenueReported { amount: earned });
        }
        if ticks.is_multiple_of(every_nth) {
            let hours = tick.hours_since(scenario.start);
            for (provider, spend) in &accruals.spend {
                spend_points.entry(provider.to_string()).or_default().push((hours, *spend));
            }
            let active = accruals.gpus_active.max(1) as f64;
            for provider in run.providers.keys() {
                let gpus = accruals.gpus_active_by_provider.get(provider).copied().unwrap_or(0) as f64;
                share_points.entry(provider.to_string()).or_default().push((hours, gpus / active));
            }
        }
        progress((tick.hours_since(scenario.start) / horizon_hours).min(1.0));
        if run.next_at().is_none() {
            break;
        }
    }

    // The end of the run: a full recount, checked against the engine's incremental figures.
    let end = tick;
    let accruals = settlement::accrue(run.engine.allocation_book(), end);
    if invariant_violation.is_none() {
        let incremental = run.engine.settlement().accruals.total_spend();
        let recount = accruals.total_spend();
        if let Err(violation) = settlement::check_billing(run.engine.allocation_book(), &accruals, end) {
            invariant_violation = Some(format!("at {end}: {violation}"));
        } else if (incremental - recount).abs() > 1e-6 * recount.max(1.0) {
            invariant_violation = Some(format!(
                "at {end}: incremental settlement says {incremental}, a full recount {recount}"
            ));
        }
    }
    tally.add(&run.events);
    let mut report = summarize(&run, tally);
    report.name = variant.name.clone();
    report.wall_seconds = started.elapsed().as_secs_f64();
    report.requests = scenario.demand.len() - rejected;
    report.spend_total = accruals.total_spend();
    report.spend_by_provider = accruals.spend.iter().map(|(p, s)| (p.to_string(), *s)).collect();
    report.gpu_hours_by_provider = accruals.gpu_hours.iter().map(|(p, h)| (p.to_string(), *h)).collect();
    let total_hours: f64 = accruals.gpu_hours.values().sum();
    report.share_by_provider = accruals
        .gpu_hours
        .iter()
        .map(|(p, h)| (p.to_string(), if total_hours > 0.0 { h / total_hours } else { 0.0 }))
        .collect();
    report.gpu_hours_delivered = report.gpu_hours_by_provider.values().sum::<f64>() + 0.0;
    if report.gpu_hours_delivered > 0.0 {
        report.spend_per_gpu_hour = report.spend_total / report.gpu_hours_delivered;
    }
    report.hhi = report.share_by_provider.values().map(|s| (s * 100.0).powi(2)).sum::<f64>() + 0.0;
    let last = run.engine.settlement();
    report.commitments = run.engine.commitment_statuses(end);
    report.revenue = last.cumulative_revenue;
    report.revenue_share_statements = last.revenue_share.clone();
    report.revenue_share_owed = report.revenue_share_statements.iter().map(|s| s.owed).sum::<f64>() + 0.0;
    report.trigger_errors = last.trigger_errors.clone();
    report.invariant_violation = invariant_violation;
    report.incidents = incidents.len();
    report.spend_over_time = spend_points.into_iter().map(|(name, points)| Series { name, points }).collect();
    report.share_over_time = share_points.into_iter().map(|(name, points)| Series { name, points }).collect();
    report
}

/// The figures that come from the ledger.
/// What the report counts from the ledger, folded in as events arrive so a
/// long run need not keep its events.
#[derive(Default)]
struct Tally {
    submitted: BTreeMap<String, Timestamp>,
    active: BTreeMap<String, Timestamp>,
    first_refusal: FirstRefusalCounts,
    spillovers: usize,
    failovers: usize,
    unfilled_gpu_hours: f64,
    unfilled_reasons: BTreeMap<String, usize>,
    triggers_fired: Vec<TriggerFired>,
}

impl Tally {
    fn add(&mut self, events: &[dibs_core::ledger::Event]) {
        let fr = &mut self.first_refusal;
        for event in events {
            let request = event.request.as_deref().unwrap_or("");
            match &event.kind {
                EventKind::RequestSubmitted { .. } => {
                    self.submitted.insert(request.to_owned(), event.at);
                }
                EventKind::RequestActive {} if !self.active.contains_key(request) => {
                    self.active.insert(request.to_owned(), event.at);
                }
                EventKind::Solicited { .. } => fr.solicited += 1,
                EventKind::HolderAnswered { outcome, .. } => match outcome {
                    HolderOutcome::Accepted => fr.accepted += 1,
                    HolderOutcome::AcceptedPart => fr.accepted_part += 1,
                    HolderOutcome::Declined | HolderOutcome::Invalid(_) => fr.declined += 1,
                },
                EventKind::HolderLapsed { .. } => fr.lapsed += 1,
                EventKind::FirstRefusalSkipped { .. } => fr.skipped += 1,
                EventKind::NoBetterTerms { .. } => fr.no_better_terms += 1,
                EventKind::Spillover { .. } => self.spillovers += 1,
                EventKind::Failover { .. } => self.failovers += 1,
                EventKind::TriggerFired { contract, clause, condition, action } => {
                    self.triggers_fired.push(TriggerFired {
                        contract: contract.clone(),
                        clause: clause.clone(),
                        at: event.at,
                        condition: condition.clone(),
                        action: action.clone(),
                    })
                }
                EventKind::Unfilled { gpus, hours, reason, .. } => {
                    self.unfilled_gpu_hours += f64::from(*gpus) * f64::from(*hours);
                    // The kind of reason, without the numbers that follow its colon.
                    let kind = reason.split(": ").next().unwrap_or(reason).trim().to_owned();
                    *self.unfilled_reasons.entry(kind).or_default() += 1;
                }
                _ => {}
            }
        }
    }
}

fn summarize(run: &VirtualRun, tally: Tally) -> VariantReport {
    let Tally {
        submitted,
        active,
        first_refusal: fr,
        spillovers,
        failovers,
        unfilled_gpu_hours,
        unfilled_reasons,
        triggers_fired,
    } = tally;
    let mut samples: Vec<f64> =
        active.iter().filter_map(|(id, at)| submitted.get(id).map(|s| at.hours_since(*s))).collect();
    samples.sort_by(f64::total_cmp);
    let time_to_capacity_hours = Percentiles {
        p50: percentile(&samples, 50.0),
        p95: percentile(&samples, 95.0),
        max: samples.last().copied().unwrap_or(0.0),
        requests_filled: samples.len(),
        requests_never_filled: submitted.len() - samples.len(),
    };
    VariantReport {
        name: String::new(),
        ledger_head: run.chain.head_hex(),
        ledger_entries: run.chain.len() as usize,
        engine_inputs: run.inputs_processed,
        wall_seconds: 0.0,
        requests: 0,
        spend_total: 0.0,
        spend_by_provider: BTreeMap::new(),
        gpu_hours_by_provider: BTreeMap::new(),
        gpu_hours_delivered: 0.0,
        spend_per_gpu_hour: 0.0,
        share_by_provider: BTreeMap::new(),
        hhi: 0.0,
        time_to_capacity_hours,
        unfilled_gpu_hours,
        unfilled_reasons,
        first_refusal: fr,
        spillovers,
        failovers,
        incidents: 0,
        commitments: Vec::new(),
        revenue: 0.0,
        revenue_share_owed: 0.0,
        revenue_share_statements: Vec::new(),
        triggers_fired,
        trigger_errors: Vec::new(),
        invariant_violation: None,
        spend_over_time: Vec::new(),
        share_over_time: Vec::new(),
        time_to_capacity_samples: samples,
    }
}
