//! Placement: filter, optimize, explain.
//!
//! A pipeline in the manner of the Nomad and Kubernetes schedulers, over an
//! immutable snapshot of offers:
//!
//! 1. **Filter.** Each offer passes or fails hard checks in a fixed order
//!    (accelerator, spot, exclusivity, excluded providers, region, validity,
//!    lead time, price ceiling, block size). The first failing check is the
//!    offer's reason.
//! 2. **Optimize.** Minimize effective cost for exactly the GPUs asked, in
//!    whole blocks, within diversification caps and the minimum-provider
//!    rule. Three paths, and the result says which one it took:
//!    * *single offer*: when the globally cheapest feasible offer can hold the
//!      whole request, no cap binds, no provider has a commitment credit and
//!      one provider is enough, that offer is optimal (any split costs at
//!      least `gpus * cheapest price`). No solver runs.
//!    * *MILP*: integer block counts per offer, solved with good_lp's
//!      pure-Rust microlp backend. GPU caps become per-provider block bounds;
//!      spend caps are linear rows; a commitment credit (the projected
//!      shortfall the buyer pays anyway) is an extra variable
//!      `excess_p >= spend_p - credit_p`, so only spend beyond the shortfall
//!      costs money. With GPU caps the constraint matrix is an interval
//!      matrix, so the LP relaxation is already integral and the solve is an
//!      LP solve. The minimum-provider rule avoids big-M binaries: the
//!      unconstrained optimum is tried first; if it uses too few providers,
//!      every subset of the right size among the `MAX_PROVIDERS_ENUMERATED`
//!      cheapest providers is solved with "at least one block each" rows.
//!    * *greedy*: cheapest offer first within the caps. The fallback when a
//!      problem exceeds `MAX_SOLVER_VARIABLES` or the solver fails or runs
//!      out of time; optimal when there are no spend caps, credits or
//!      minimum-provider rules.
//! 3. **Explain.** Every offer carries a verdict: awarded, or the reason it
//!    lost.
//!
//! Ties are broken deterministically: offers are ranked by (effective price,
//! lead time, offer id) and the objective adds a tiny per-rank epsilon.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use good_lp::{
    Expression, ProblemVariables, ResolutionError, Solution, SolutionStatus, SolverModel, Variable,
    WithTimeLimit, constraint, microlp, variable,
};
use serde::Serialize;

use crate::contract::ShareBasis;
use crate::request::Request;
use crate::types::{Offer, OfferKind, Price, ProviderName, Region, Timestamp};

/// Problems with more integer variables than this go to the greedy fallback.
pub const MAX_SOLVER_VARIABLES: usize = 20_000;
/// The minimum-provider rule enumerates subsets of at most this many providers.
pub const MAX_PROVIDERS_ENUMERATED: usize = 8;
/// Tie-break weight per rank, in dollars per block: far below a cent.
const TIE_BREAK_EPSILON: f64 = 1e-7;

/// A diversification cap that applies to this request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cap {
    pub max_share: f64,
    pub basis: ShareBasis,
    /// Where the cap came from, e.g. `policy:training-cap` or `contract/version/clause`.
    pub source: String,
}

/// What the buyer already holds, in the scope of the caps.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Fleet {
    pub gpus: BTreeMap<ProviderName, f64>,
    pub spend_per_hour: BTreeMap<ProviderName, f64>,
}

/// Everything placement needs besides the offers: decided by the engine from
/// the contracts in force, the policy and the request's history.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Only this provider may host the workload (an exclusivity clause), with the clause reference.
    pub exclusive_to: Option<(ProviderName, String)>,
    /// Providers that may not be used in this round, with the reason (declined, down, ...).
    pub excluded: BTreeMap<ProviderName, String>,
    /// Regions of providers that may not be used (a regional incident), with the reason.
    pub excluded_regions: BTreeMap<(ProviderName, Region), String>,
    /// The buyer policy's allowed regions; empty means any.
    pub policy_regions: Vec<Region>,
    /// The lower of the request's and the policy's price ceiling.
    pub price_ceiling: Option<Price>,
    /// The no-better-terms rule, once the holder may not be asked again: no
    /// market offer above the price the holder declined.
    pub declined_terms: Option<Price>,
    pub caps: Vec<Cap>,
    /// At least this many distinct providers, with the rule's reference.
    pub min_providers: Option<(u32, String)>,
    /// Commitment credit per provider: projected shortfall in USD that new spend absorbs at no extra cost.
    pub credits: BTreeMap<ProviderName, f64>,
    pub fleet: Fleet,
}

/// Solver knobs. The time limit reads the wall clock inside the solver, so it
/// is off in simulation (determinism) and on in the live service.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SolverConfig {
    pub time_limit_seconds: Option<f64>,
}

/// What to place now: `gpus` of `request` (the whole request, or a remainder).
#[derive(Debug, Clone, Copy)]
pub struct Demand<'a> {
    pub request: &'a Request,
    pub gpus: u32,
    pub now: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    Accelerator { offered: String },
    Spot,
    Exclusive { holder: String, clause: String },
    Excluded { why: String },
    RegionNotRequested { region: String },
    RegionNotAllowedByPolicy { region: String },
    Expired { valid_until: Timestamp },
    TooLate { ready_at: Timestamp, deliver_by: Timestamp },
    AboveCeiling { price: f64, ceiling: f64 },
    AboveDeclinedTerms { price: f64, declined: f64 },
    BlockTooLarge { available: u32, block: u32 },
    AtCap { cap: String },
    Costlier { effective_price: f64, marginal_price: f64 },
    LostTieBreak,
    NotInOptimum,
    NoFeasibleAward,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accelerator { offered } => write!(f, "accelerator {offered} was not requested"),
            Self::Spot => write!(f, "spot capacity, and the request does not allow spot"),
            Self::Exclusive { holder, clause } => {
                write!(f, "workload is exclusive to {holder} ({clause})")
            }
            Self::Excluded { why } => write!(f, "provider excluded: {why}"),
            Self::RegionNotRequested { region } => write!(f, "region {region} not in the request's regions"),
            Self::RegionNotAllowedByPolicy { region } => write!(f, "region {region} not allowed by policy"),
            Self::Expired { valid_until } => write!(f, "offer expired at {valid_until}"),
            Self::TooLate { ready_at, deliver_by } => {
                write!(f, "ready at {ready_at}, after the deliver-by {deliver_by}")
            }
            Self::AboveCeiling { price, ceiling } => {
                write!(f, "price ${price:.4}/GPU-h above the ceiling ${ceiling:.4}")
            }
            Self::AboveDeclinedTerms { price, declined } => write!(
                f,
                "price ${price:.4}/GPU-h above the ${declined:.4} the first-refusal holder declined (no-better-terms)"
            ),
            Self::BlockTooLarge { available, block } => {
                write!(f, "{available} GPUs available, less than one {block}-GPU block")
            }
            Self::AtCap { cap } => write!(f, "provider at its diversification cap ({cap})"),
            Self::Costlier { effective_price, marginal_price } => write!(
                f,
                "effective price ${effective_price:.4}/GPU-h above the award's marginal ${marginal_price:.4}"
            ),
            Self::LostTieBreak => {
                write!(
                    f,
                    "same effective price as an awarded offer; lost the tie-break (lead time, then offer id)"
                )
            }
            Self::NotInOptimum => write!(f, "not part of the cheapest combination within the rules"),
            Self::NoFeasibleAward => write!(f, "feasible, but no award within the rules was possible"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Awarded { gpus: u32 },
    Rejected(Rejection),
}

/// One offer's fate, for the explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub offer_id: String,
    pub provider: ProviderName,
    pub region: Region,
    pub price: f64,
    pub outcome: Outcome,
}

/// One provider's part of a planned award.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PlannedAllocation {
    pub offer_id: String,
    pub provider: ProviderName,
    pub region: Region,
    pub accelerator: crate::types::Accelerator,
    pub gpus: u32,
    pub price: Price,
    pub lead_time_hours: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "path", rename_all = "snake_case")]
pub enum SolverPath {
    SingleOffer,
    Milp { variables: usize, solves: usize, status: String },
    Greedy { why: String },
}

impl fmt::Display for SolverPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SingleOffer => write!(f, "single offer (exact fast path)"),
            Self::Milp { variables, solves, status } => {
                write!(f, "MILP (microlp, {variables} variables, {solves} solve(s), {status})")
            }
            Self::Greedy { why } => write!(f, "greedy ({why})"),
        }
    }
}

/// The result of placement: an award plan or the reason there is none, and a verdict for every offer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placement {
    pub allocations: Vec<PlannedAllocation>,
    /// Set when no award was possible; says why.
    pub infeasible: Option<String>,
    pub verdicts: Vec<Verdict>,
    pub solver: SolverPath,
    /// List-price cost of the award over the request's duration, USD.
    pub list_cost: f64,
    /// Cost net of commitment credits, USD.
    pub effective_cost: f64,
    /// Human sentences about pricing decisions (commitment credits, caps).
    pub notes: Vec<String>,
}

impl Placement {
    pub fn awarded_gpus(&self) -> u32 {
        self.allocations.iter().map(|a| a.gpus).sum()
    }
}

/// A feasible offer, prepared for optimization.
struct Candidate {
    offer: usize,
    provider: usize,
    max_blocks: u32,
    /// USD per block over the whole duration.
    block_cost: f64,
    rank: usize,
}

/// Runs the pipeline. Never panics on any input the types allow.
pub fn place(demand: Demand<'_>, offers: &[Offer], rules: &Rules, config: SolverConfig) -> Placement {
    let request = demand.request;
    let block = request.min_block.get();
    let mut verdicts: Vec<Option<Rejection>> = offers.iter().map(|o| filter(demand, o, rules)).collect();

    let mut providers: Vec<ProviderName> = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    for (index, offer) in offers.iter().enumerate() {
        if verdicts[index].is_some() {
            continue;
        }
        let provider = match providers.iter().position(|p| p == &offer.provider) {
            Some(p) => p,
            None => {
                providers.push(offer.provider.clone());
                providers.len() - 1
            }
        };
        let max_blocks = (offer.gpus_available / block).min(demand.gpus / block.max(1));
        candidates.push(Candidate {
            offer: index,
            provider,
            max_blocks,
            block_cost: offer.price.get() * f64::from(block) * f64::from(request.duration_hours),
            rank: 0,
        });
    }
    candidates.sort_by(|a, b| {
        let (x, y) = (&offers[a.offer], &offers[b.offer]);
        x.price
            .get()
            .total_cmp(&y.price.get())
            .then(x.lead_time_hours.cmp(&y.lead_time_hours))
            .then_with(|| x.id.cmp(&y.id))
    });
    for (rank, candidate) in candidates.iter_mut().enumerate() {
        candidate.rank = rank;
    }

    let problem = Problem::new(demand, offers, rules, &providers, &candidates);
    let (blocks, solver, infeasible) = match problem.check_capacity() {
        Err(why) => {
            (vec![0; candidates.len()], SolverPath::Greedy { why: "not attempted".into() }, Some(why))
        }
        Ok(()) => problem.optimize(config),
    };

    let mut allocations = Vec::new();
    for (candidate, &count) in candidates.iter().zip(&blocks) {
        if count > 0 {
            let offer = &offers[candidate.offer];
            allocations.push(PlannedAllocation {
                offer_id: offer.id.clone(),
                provider: offer.provider.clone(),
                region: offer.region.clone(),
                accelerator: offer.accelerator.clone(),
                gpus: count * block,
                price: offer.price,
                lead_time_hours: offer.lead_time_hours,
            });
        }
    }
    allocations.sort_by(|a, b| a.provider.cmp(&b.provider).then_with(|| a.offer_id.cmp(&b.offer_id)));

    let hours = f64::from(request.duration_hours);
    let list_cost: f64 = allocations.iter().map(|a| a.price.get() * f64::from(a.gpus) * hours).sum();
    let mut notes = Vec::new();
    let mut effective_cost = list_cost;
    for (provider, credit) in &rules.credits {
        let spend: f64 = allocations
            .iter()
            .filter(|a| &a.provider == provider)
            .map(|a| a.price.get() * f64::from(a.gpus) * hours)
            .sum();
        if spend > 0.0 && *credit > 0.0 {
            let covered = spend.min(*credit);
            effective_cost -= covered;
            notes.push(format!(
                "{provider}: ${covered:.0} of this award's ${spend:.0} falls within the projected commitment \
                 shortfall (${credit:.0}) that the buyer pays anyway, so it costs nothing extra"
            ));
        }
    }
    for cap in &rules.caps {
        notes.push(format!(
            "cap: no provider above {:.0}% of the fleet by {} ({})",
            cap.max_share * 100.0,
            match cap.basis {
                ShareBasis::Gpus => "GPUs",
                ShareBasis::Spend => "spend",
            },
            cap.source
        ));
    }

    // Explain the feasible offers that lost.
    let marginal = candidates
        .iter()
        .zip(&blocks)
        .filter(|(_, count)| **count > 0)
        .map(|(c, _)| problem.effective_price(&offers[c.offer]))
        .fold(0.0, f64::max);
    let used_blocks: Vec<u32> = (0..providers.len())
        .map(|p| candidates.iter().zip(&blocks).filter(|(c, _)| c.provider == p).map(|(_, b)| *b).sum())
        .collect();
    for (candidate, &count) in candidates.iter().zip(&blocks) {
        if count > 0 {
            continue;
        }
        let offer = &offers[candidate.offer];
        let reason = if infeasible.is_some() {
            Rejection::NoFeasibleAward
        } else if let Some(cap) = problem.gpu_cap_blocks[candidate.provider]
            && used_blocks[candidate.provider] >= cap
        {
            Rejection::AtCap { cap: problem.cap_source.clone().unwrap_or_default() }
        } else if problem.effective_price(offer) > marginal + 1e-9 {
            Rejection::Costlier { effective_price: problem.effective_price(offer), marginal_price: marginal }
        } else if (problem.effective_price(offer) - marginal).abs() <= 1e-9 {
            Rejection::LostTieBreak
        } else {
            Rejection::NotInOptimum
        };
        verdicts[candidate.offer] = Some(reason);
    }

    let verdicts = offers
        .iter()
        .zip(verdicts)
        .map(|(offer, rejection)| {
            let outcome = match rejection {
                Some(rejection) => Outcome::Rejected(rejection),
                None => Outcome::Awarded {
                    gpus: allocations.iter().filter(|a| a.offer_id == offer.id).map(|a| a.gpus).sum(),
                },
            };
            Verdict {
                offer_id: offer.id.clone(),
                provider: offer.provider.clone(),
                region: offer.region.clone(),
                price: offer.price.get(),
                outcome,
            }
        })
        .collect();

    if infeasible.is_some() {
        allocations.clear();
    }
    Placement {
        list_cost: if infeasible.is_some() { 0.0 } else { list_cost },
        effective_cost: if infeasible.is_some() { 0.0 } else { effective_cost },
        allocations,
        infeasible,
        verdicts,
        solver,
        notes,
    }
}

/// The hard checks, in order; the first that fails is the reason.
fn filter(demand: Demand<'_>, offer: &Offer, rules: &Rules) -> Option<Rejection> {
    let request = demand.request;
    let block = request.min_block.get();
    if !request.accelerators.contains(&offer.accelerator) {
        return Some(Rejection::Accelerator { offered: offer.accelerator.to_string() });
    }
    if offer.kind == OfferKind::Spot && !request.allow_spot {
        return Some(Rejection::Spot);
    }
    if let Some((holder, clause)) = &rules.exclusive_to
        && holder != &offer.provider
    {
        return Some(Rejection::Exclusive { holder: holder.to_string(), clause: clause.clone() });
    }
    if let Some(why) = rules.excluded.get(&offer.provider) {
        return Some(Rejection::Excluded { why: why.clone() });
    }
    if let Some(why) = rules.excluded_regions.get(&(offer.provider.clone(), offer.region.clone())) {
        return Some(Rejection::Excluded { why: why.clone() });
    }
    if !request.regions.is_empty() && !request.regions.contains(&offer.region) {
        return Some(Rejection::RegionNotRequested { region: offer.region.to_string() });
    }
    if !rules.policy_regions.is_empty() && !rules.policy_regions.contains(&offer.region) {
        return Some(Rejection::RegionNotAllowedByPolicy { region: offer.region.to_string() });
    }
    if let Some(valid_until) = offer.valid_until
        && valid_until < demand.now
    {
        return Some(Rejection::Expired { valid_until });
    }
    let ready_at = demand.now.max(request.earliest_start).plus_hours(f64::from(offer.lead_time_hours));
    if let Some(deliver_by) = request.deliver_by
        && ready_at > deliver_by
    {
        return Some(Rejection::TooLate { ready_at, deliver_by });
    }
    if let Some(ceiling) = rules.price_ceiling
        && offer.price.get() > ceiling.get()
    {
        return Some(Rejection::AboveCeiling { price: offer.price.get(), ceiling: ceiling.get() });
    }
    if let Some(declined) = rules.declined_terms
        && offer.price.get() > declined.get()
    {
        return Some(Rejection::AboveDeclinedTerms { price: offer.price.get(), declined: declined.get() });
    }
    if offer.gpus_available < block {
        return Some(Rejection::BlockTooLarge { available: offer.gpus_available, block });
    }
    None
}

/// The optimization problem over the feasible candidates.
struct Problem<'a> {
    demand: Demand<'a>,
    offers: &'a [Offer],
    rules: &'a Rules,
    candidates: &'a [Candidate],
    providers: &'a [ProviderName],
    blocks_needed: u32,
    /// Per provider: the most blocks GPU caps allow it in this award.
    gpu_cap_blocks: Vec<Option<u32>>,
    cap_source: Option<String>,
    spend_caps: Vec<&'a Cap>,
}

impl<'a> Problem<'a> {
    fn new(
        demand: Demand<'a>,
        offers: &'a [Offer],
        rules: &'a Rules,
        providers: &'a [ProviderName],
        candidates: &'a [Candidate],
    ) -> Self {
        let block = demand.request.min_block.get();
        let fleet_total: f64 = rules.fleet.gpus.values().sum();
        let after = fleet_total + f64::from(demand.gpus);
        let mut gpu_cap_blocks = vec![None; providers.len()];
        let mut cap_source = None;
        for cap in rules.caps.iter().filter(|c| c.basis == ShareBasis::Gpus) {
            for (index, provider) in providers.iter().enumerate() {
                let held = rules.fleet.gpus.get(provider).copied().unwrap_or(0.0);
                // A small tolerance keeps 0.4 * 500 from rounding down to 199.99.
                let room = (cap.max_share * after - held + 1e-9).max(0.0);
                let blocks = (room / f64::from(block)).floor() as u32;
                gpu_cap_blocks[index] = Some(gpu_cap_blocks[index].map_or(blocks, |b: u32| b.min(blocks)));
            }
            cap_source = Some(cap.source.clone());
        }
        let spend_caps = rules.caps.iter().filter(|c| c.basis == ShareBasis::Spend).collect();
        Self {
            demand,
            offers,
            rules,
            candidates,
            providers,
            blocks_needed: demand.gpus / block,
            gpu_cap_blocks,
            cap_source,
            spend_caps,
        }
    }

    fn credit(&self, provider: &ProviderName) -> f64 {
        self.rules.credits.get(provider).copied().unwrap_or(0.0).max(0.0)
    }

    /// The price per GPU-hour of the first GPU from this offer, net of commitment credit.
    fn effective_price(&self, offer: &Offer) -> f64 {
        if self.credit(&offer.provider) > 0.0 { 0.0 } else { offer.price.get() }
    }

    /// Cheap necessary condition: is there enough capacity within the GPU caps at all?
    fn check_capacity(&self) -> Result<(), String> {
        let block = self.demand.request.min_block.get();
        if self.candidates.is_empty() {
            return Err("no offer passed the filters".into());
        }
        let mut total = 0u64;
        for (index, provider) in self.providers.iter().enumerate() {
            let offered: u64 =
                self.candidates.iter().filter(|c| c.provider == index).map(|c| u64::from(c.max_blocks)).sum();
            let allowed = self.gpu_cap_blocks[index].map_or(offered, |cap| offered.min(u64::from(cap)));
            let _ = provider;
            total += allowed;
        }
        if total < u64::from(self.blocks_needed) {
            let capped =
                if self.gpu_cap_blocks.iter().any(Option::is_some) { " within the caps" } else { "" };
            return Err(format!(
                "not enough capacity{capped}: {} GPUs can be placed, {} needed",
                total * u64::from(block),
                self.demand.gpus
            ));
        }
        Ok(())
    }

    fn needs_solver(&self) -> bool {
        !self.spend_caps.is_empty()
            || self.providers.iter().any(|p| self.credit(p) > 0.0)
            || self.rules.min_providers.as_ref().is_some_and(|(k, _)| *k > 1)
    }

    fn optimize(&self, config: SolverConfig) -> (Vec<u32>, SolverPath, Option<String>) {
        // The exact fast path: the cheapest candidate alone holds the whole request.
        if !self.needs_solver()
            && let Some(first) = self.candidates.first()
            && first.max_blocks >= self.blocks_needed
            && self.gpu_cap_blocks[first.provider].is_none_or(|cap| cap >= self.blocks_needed)
        {
            let mut blocks = vec![0; self.candidates.len()];
            blocks[0] = self.blocks_needed;
            return (blocks, SolverPath::SingleOffer, None);
        }
        if self.candidates.len() + self.providers.len() > MAX_SOLVER_VARIABLES {
            return self.greedy(format!("{} variables exceed the solver bound", self.candidates.len()));
        }
        let min_providers = self.rules.min_providers.as_ref().map_or(1, |(k, _)| *k as usize);
        let mut solves = 1;
        let first = self.solve(&[], config);
        let best = match first {
            Ok((blocks, cost, status)) if self.providers_used(&blocks) >= min_providers => {
                Some((blocks, cost, status))
            }
            Ok(_) | Err(SolveFailure::Infeasible) => {
                // Enumerate subsets of the cheapest providers, each required to supply a block.
                let mut best: Option<(Vec<u32>, f64, String)> = None;
                let order = self.providers_by_price();
                for subset in subsets(&order, min_providers) {
                    solves += 1;
                    if let Ok((blocks, cost, status)) = self.solve(&subset, config)
                        && best.as_ref().is_none_or(|(_, c, _)| cost < *c - 1e-6)
                    {
                        best = Some((blocks, cost, status));
                    }
                }
                best
            }
            Err(SolveFailure::Other(why)) => return self.greedy(format!("solver failed: {why}")),
        };
        match best {
            Some((blocks, _, status)) => {
                (blocks, SolverPath::Milp { variables: self.candidates.len(), solves, status }, None)
            }
            None => {
                let why = match &self.rules.min_providers {
                    Some((k, source)) if *k > 1 => {
                        format!("no award meets the caps and the minimum of {k} providers ({source})")
                    }
                    _ => "no award meets the caps".to_owned(),
                };
                (
                    vec![0; self.candidates.len()],
                    SolverPath::Milp {
                        variables: self.candidates.len(),
                        solves,
                        status: "infeasible".into(),
                    },
                    Some(why),
                )
            }
        }
    }

    fn providers_used(&self, blocks: &[u32]) -> usize {
        self.candidates
            .iter()
            .zip(blocks)
            .filter(|(_, b)| **b > 0)
            .map(|(c, _)| c.provider)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Provider indices ordered by their cheapest candidate, at most `MAX_PROVIDERS_ENUMERATED`.
    fn providers_by_price(&self) -> Vec<usize> {
        let mut order = Vec::new();
        for candidate in self.candidates {
            if !order.contains(&candidate.provider) {
                order.push(candidate.provider);
            }
        }
        order.truncate(MAX_PROVIDERS_ENUMERATED);
        order
    }

    /// One MILP solve; `required` providers must each supply at least one block.
    fn solve(
        &self,
        required: &[usize],
        config: SolverConfig,
    ) -> Result<(Vec<u32>, f64, String), SolveFailure> {
        let block = f64::from(self.demand.request.min_block.get());
        let hours = f64::from(self.demand.request.duration_hours);
        let mut vars = ProblemVariables::new();
        let x: Vec<Variable> = self
            .candidates
            .iter()
            .map(|c| vars.add(variable().integer().min(0).max(f64::from(c.max_blocks))))
            .collect();
        let credited: Vec<(usize, Variable)> = (0..self.providers.len())
            .filter(|&p| self.credit(&self.providers[p]) > 0.0)
            .map(|p| (p, vars.add(variable().min(0))))
            .collect();

        let mut objective = Expression::from(0.0);
        for (c, v) in self.candidates.iter().zip(&x) {
            let tie = TIE_BREAK_EPSILON * c.rank as f64;
            if credited.iter().any(|(p, _)| *p == c.provider) {
                objective += tie * *v;
            } else {
                objective += (c.block_cost + tie) * *v;
            }
        }
        for (_, excess) in &credited {
            objective += *excess;
        }
        let mut model = vars.minimise(objective).using(microlp);
        if let Some(seconds) = config.time_limit_seconds {
            model = model.with_time_limit(seconds);
        }
        let total: Expression = x.iter().copied().sum();
        model = model.with(constraint!(total == f64::from(self.blocks_needed)));
        for p in 0..self.providers.len() {
            let mine: Expression =
                self.candidates.iter().zip(&x).filter(|(c, _)| c.provider == p).map(|(_, v)| *v).sum();
            if let Some(cap) = self.gpu_cap_blocks[p] {
                model = model.with(constraint!(mine.clone() <= f64::from(cap)));
            }
            if required.contains(&p) {
                model = model.with(constraint!(mine >= 1.0));
            }
        }
        // Spend per hour of the award, per provider and in total.
        let spend = |p: Option<usize>| -> Expression {
            self.candidates
                .iter()
                .zip(&x)
                .filter(|(c, _)| p.is_none_or(|p| c.provider == p))
                .map(|(c, v)| self.offers[c.offer].price.get() * block * *v)
                .sum()
        };
        let fleet_spend_total: f64 = self.rules.fleet.spend_per_hour.values().sum();
        for cap in &self.spend_caps {
            for (p, provider) in self.providers.iter().enumerate() {
                let held = self.rules.fleet.spend_per_hour.get(provider).copied().unwrap_or(0.0);
                model = model.with(constraint!(
                    spend(Some(p)) + held <= cap.max_share * (spend(None) + fleet_spend_total)
                ));
            }
        }
        for (p, excess) in &credited {
            let credit = self.credit(&self.providers[*p]);
            model = model.with(constraint!(*excess >= spend(Some(*p)) * hours - credit));
        }
        let solution = model.solve().map_err(|e| match e {
            ResolutionError::Infeasible => SolveFailure::Infeasible,
            other => SolveFailure::Other(other.to_string()),
        })?;
        let status = match solution.status() {
            SolutionStatus::Optimal => "optimal",
            SolutionStatus::GapLimit => "within gap",
            SolutionStatus::TimeLimit => "time limit, best found",
        };
        let blocks: Vec<u32> = x.iter().map(|v| solution.value(*v).round().max(0.0) as u32).collect();
        let cost =
            self.candidates.iter().zip(&blocks).map(|(c, b)| c.block_cost * f64::from(*b)).sum::<f64>()
                - credited
                    .iter()
                    .map(|(p, _)| {
                        let spend: f64 = self
                            .candidates
                            .iter()
                            .zip(&blocks)
                            .filter(|(c, _)| c.provider == *p)
                            .map(|(c, b)| c.block_cost * f64::from(*b))
                            .sum();
                        spend.min(self.credit(&self.providers[*p]))
                    })
                    .sum::<f64>();
        if blocks.iter().sum::<u32>() != self.blocks_needed {
            return Err(SolveFailure::Other("solution does not cover the request".into()));
        }
        Ok((blocks, cost, status.to_owned()))
    }

    /// Cheapest first within the GPU caps; spend caps and minimum providers are not enforced.
    fn greedy(&self, why: String) -> (Vec<u32>, SolverPath, Option<String>) {
        let mut blocks = vec![0; self.candidates.len()];
        let mut used = vec![0u32; self.providers.len()];
        let mut left = self.blocks_needed;
        for (index, candidate) in self.candidates.iter().enumerate() {
            if left == 0 {
                break;
            }
            let room = self.gpu_cap_blocks[candidate.provider]
                .map_or(u32::MAX, |cap| cap.saturating_sub(used[candidate.provider]));
            let take = candidate.max_blocks.min(room).min(left);
            blocks[index] = take;
            used[candidate.provider] += take;
            left -= take;
        }
        let infeasible =
            (left > 0).then(|| "greedy fallback could not cover the request within the caps".to_owned());
        (blocks, SolverPath::Greedy { why }, infeasible)
    }
}

enum SolveFailure {
    Infeasible,
    Other(String),
}

/// All subsets of `items` with exactly `size` elements, in lexicographic order.
fn subsets(items: &[usize], size: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    fn walk(items: &[usize], size: usize, start: usize, current: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if current.len() == size {
            out.push(current.clone());
            return;
        }
        for i in start..items.len() {
            current.push(items[i]);
            walk(items, size, i + 1, current, out);
            current.pop();
        }
    }
    walk(items, size, 0, &mut current, &mut out);
    out
}
