//! Placement: filter, optimize, explain.
//!
//! A pipeline in the manner of the Nomad and Kubernetes schedulers, over an immutable snapshot
//! of offers. What is bought is whole nodes of an instance type at its all-in node price; the
//! request's block (GPUs that must sit together) decides which nodes qualify.
//!
//! 1. **Filter.** Each offer passes or fails hard checks in a fixed order (accelerator, spot
//!    policy, the request's providers, exclusivity, exclusions, regions, validity, lead time,
//!    price ceiling, the declined terms, node size, nodes available). The first failing
//!    check is the offer's reason.
//! 2. **Optimize.** Minimize effective cost for at least the GPUs asked, in whole nodes,
//!    within the diversification caps and the minimum-provider rule.
//! 3. **Explain.** Every offer carries a verdict: awarded, or the reason it lost.
//!
//! # Blocks and nodes
//!
//! A block of `b` GPUs must sit together. When some node of the accelerator holds a block
//! (`b` is at most the largest node size among the offers of that accelerator), blocks are
//! intra-node: a node of `g >= b` GPUs carries `g / b` whole blocks, and smaller nodes are
//! not eligible ("a node of 1 GPU cannot hold an 8-GPU block"). A block larger than every
//! node is a multi-node gang: `ceil(b / g)` whole nodes of one offer, in one region. Either
//! way the integer unit of the optimization is a *unit*: one node, or one gang. When the GPUs
//! asked do not fill the units exactly, the award over-buys; the optimizer pays for the whole
//! nodes and the award says how many GPUs are over-bought and what they cost.
//!
//! # The optimization
//!
//! Offers that are interchangeable for the decision (one provider, the same unit cost, unit
//! shape, lead time and place in the order of preference) are merged into one integer
//! variable, its capacity the sum of theirs; the units chosen are then spread over the merged
//! offers in id order. Real catalogs sell one instance type at one price in many regions, and
//! those ties are what makes branch-and-bound explode; merged, a shared-catalog problem has a
//! few dozen variables. The model:
//!
//! * `u_g`: units from group `g`, integer, `0..=capacity`; minimize `sum cost_g u_g`, where a
//!   unit's cost is its node price times its nodes times the hours, times the preference
//!   factor (see [`Preference`]), plus a tie-break of a millionth of a dollar per unit and rank.
//! * Cover: `sum blocks_g u_g >= B` (blocks asked), and `<= B - 1 + max blocks_g` so an award
//!   never buys a whole unit it does not need.
//! * GPU caps: a provider's GPUs after the award (held plus bought) are at most the share of
//!   the fleet after the award (held by everyone plus the GPUs asked), plus one of the
//!   provider's units: the **one-unit tolerance**. A cap binds to whole nodes, so a request
//!   smaller than a node is never made impossible by a share, and on a large fleet the
//!   tolerance is noise.
//! * Spend caps: the same, over spend per hour, the fleet total including this award's spend,
//!   with the same one-unit tolerance.
//! * Commitment credit (the projected shortfall the buyer pays anyway): a variable
//!   `excess_p >= spend_p * hours - credit_p` carries the cost of the provider's units instead,
//!   so only spend beyond the shortfall costs money.
//! * Minimum providers `k`: a binary `y_p <= sum_{g in p} u_g` per provider and `sum y_p >= k`.
//!   No big-M: `y_p` may be 1 only if the provider supplies a unit.
//!
//! The LP relaxation is not integral (node sizes differ, so the cover row is a knapsack), so
//! the model is solved as a MILP with microlp's branch-and-bound under a **deterministic work
//! limit**, [`SolverConfig::node_limit`] branch-and-bound nodes, never the wall clock, so a
//! simulation replays exactly. The result says whether the award is proven optimal or, when
//! the limit stopped the search, its gap to the best bound. Every solution is checked against
//! the rules before it is used ([`Problem::violation`]); when the solver has nothing, or
//! something that breaks a rule, a greedy fallback that checks the same rules runs, and if it
//! too finds nothing the request is unfilled with the reason: a fallback never breaks a rule.
//!
//! The order of preference and the objective are outer loops over the same model:
//! [`Preference::Fallback`] tries the first place of the list, then the first two, and so on;
//! [`Objective::Time`] tries the shortest lead time, then the next, and takes the cheapest
//! award at the first that fills the request. `same_region` takes the cheapest single offer
//! that holds the whole request, by enumeration (exact).
//!
//! A fast path skips the solver when the cheapest group by price per GPU fills the request
//! exactly, alone, with no cap binding, no credit and one provider allowed: any award costs
//! at least the GPUs asked times that price, and this one costs exactly that.
//!
//! Ties are broken deterministically: groups are ranked by (effective price per GPU, lead
//! time, offer id), and the objective adds the tie-break per rank.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use microlp::{ComparisonOp, OptimizationDirection, Problem as LpProblem, SolveOptions, Variable};
use serde::{Deserialize, Serialize};

use crate::contract::ShareBasis;
use crate::request::{Objective, Preference, Request, SpotPolicy};
use crate::types::{
    Accelerator, GpuCount, Location, NodePrice, Offer, OfferKind, Price, ProviderName, Region, Timestamp,
};

/// Problems with more groups than this are not given to the solver; the greedy fallback runs.
pub const MAX_SOLVER_VARIABLES: usize = 20_000;
/// The solver's default work limit: branch-and-bound nodes per solve.
pub const DEFAULT_NODE_LIMIT: u64 = 2_500;
/// Tie-break weight per unit and rank, in dollars: far below a cent.
const TIE_BREAK_EPSILON: f64 = 1e-6;
/// Relative tolerance when checking a solution against the rules.
const RULE_TOLERANCE: f64 = 1e-7;

/// A diversification cap that applies to this request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cap {
    pub max_share: f64,
    pub basis: ShareBasis,
    /// Where the cap came from, e.g. `policy:training-cap` or `contract/version/clause`.
    pub source: String,
}

/// What the buyer already holds, in the scope of the caps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    /// GPUs held (bought, over-bought ones included) per provider.
    pub gpus: BTreeMap<ProviderName, f64>,
    pub spend_per_hour: BTreeMap<ProviderName, f64>,
}

/// Everything placement needs besides the offers: decided by the engine from
/// the contracts in force, the policy and the request's history.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rules {
    /// Only this provider may host the workload (an exclusivity clause), with the clause reference.
    pub exclusive_to: Option<(ProviderName, String)>,
    /// Providers that may not be used in this round, with the reason (declined, down, ...).
    pub excluded: BTreeMap<ProviderName, String>,
    /// Regions of providers that may not be used (a regional incident), with the reason.
    #[serde(with = "crate::pairs")]
    pub excluded_regions: BTreeMap<(ProviderName, Region), String>,
    /// The buyer policy's allowed locations; empty means any.
    pub policy_regions: Vec<Location>,
    /// The lower of the request's and the policy's price ceiling, per GPU-hour.
    pub price_ceiling: Option<Price>,
    /// The no-better-terms rule, once the holder may not be asked again: no
    /// market offer above the price per GPU-hour the holder declined.
    pub declined_terms: Option<Price>,
    pub caps: Vec<Cap>,
    /// At least this many distinct providers, with the rule's reference.
    pub min_providers: Option<(u32, String)>,
    /// Commitment credit per provider: projected shortfall in USD that new spend absorbs at no extra cost.
    pub credits: BTreeMap<ProviderName, f64>,
    pub fleet: Fleet,
    /// The largest node of each accelerator the market sells (see "Blocks and nodes"); the
    /// offers placed are consulted too, so this may be left empty.
    pub largest_node: BTreeMap<Accelerator, u32>,
}

/// Solver knobs. The work limit counts branch-and-bound nodes, not seconds, so the same
/// problem always gets the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SolverConfig {
    pub node_limit: u64,
}

impl Default for SolverConfig {
    fn default() -> Self {
        Self { node_limit: DEFAULT_NODE_LIMIT }
    }
}

/// What to place now: `gpus` of `request` (the whole request, or a remainder).
#[derive(Debug, Clone, Copy)]
pub struct Demand<'a> {
    pub request: &'a Request,
    pub gpus: u32,
    pub now: Timestamp,
    /// The request's parts already awarded and not yet running: the new parts start with
    /// them (empty for a request whose parts may run apart).
    pub joining: &'a [Joining],
}

impl<'a> Demand<'a> {
    /// The whole of `request`, placed at `now`, with nothing awarded before.
    pub fn whole(request: &'a Request, now: Timestamp) -> Self {
        Self { request, gpus: request.gpus.get(), now, joining: &[] }
    }
}

/// A part of a request awarded in an earlier round and not yet running: it is held until
/// the request's GPUs start together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Joining {
    /// When it is ready (or promised to be).
    pub ready_at: Timestamp,
    /// What it bills per hour while it waits (zero when it bills from a start date).
    pub held_spend_per_hour: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    Accelerator {
        offered: String,
    },
    Spot,
    NotSpot,
    ProviderNotRequested {
        provider: String,
    },
    ProviderExcludedByRequest {
        provider: String,
    },
    Exclusive {
        holder: String,
        clause: String,
    },
    Excluded {
        why: String,
    },
    RegionNotRequested {
        region: String,
    },
    RegionNotAllowedByPolicy {
        region: String,
    },
    Expired {
        valid_until: Timestamp,
    },
    TooLate {
        ready_at: Timestamp,
        deliver_by: Timestamp,
    },
    AboveCeiling {
        price: f64,
        ceiling: f64,
    },
    AboveDeclinedTerms {
        price: f64,
        declined: f64,
    },
    NodeTooSmall {
        gpus_per_node: u32,
        block: u32,
        largest: u32,
    },
    TooFewNodes {
        available: u32,
        needed: u32,
        block: u32,
    },
    AtCap {
        cap: String,
    },
    LaterChoice {
        place: usize,
        filled_at: usize,
    },
    Slower {
        ready_at: Timestamp,
        award_ready_at: Timestamp,
    },
    /// Cheaper per GPU-hour, but the award's other parts would be held (and billed) until
    /// it is ready, which costs more than it saves.
    HeldTooLong {
        ready_at: Timestamp,
        award_ready_at: Timestamp,
    },
    NotTheSingleOffer {
        chosen: String,
    },
    TooSmallAlone {
        holds: u32,
        needed: u32,
    },
    Costlier {
        effective_price: f64,
        marginal_price: f64,
    },
    LostTieBreak,
    NotInOptimum,
    NoFeasibleAward,
}

impl Rejection {
    /// Whether the rejection is of a hard requirement of the request (accelerator, spot
    /// policy, its providers and regions, the policy's regions, validity, deliver-by, node
    /// size, nodes for a gang): the only grounds on which a first-refusal holder may be
    /// skipped. Price, caps and exclusions are not.
    pub fn is_hard_requirement(&self) -> bool {
        matches!(
            self,
            Self::Accelerator { .. }
                | Self::Spot
                | Self::NotSpot
                | Self::ProviderNotRequested { .. }
                | Self::ProviderExcludedByRequest { .. }
                | Self::RegionNotRequested { .. }
                | Self::RegionNotAllowedByPolicy { .. }
                | Self::Expired { .. }
                | Self::TooLate { .. }
                | Self::NodeTooSmall { .. }
                | Self::TooFewNodes { .. }
        )
    }
}

fn ordinal(place: usize) -> String {
    let n = place + 1;
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accelerator { offered } => write!(f, "accelerator {offered} was not requested"),
            Self::Spot => write!(f, "spot capacity, and the request does not allow spot"),
            Self::NotSpot => write!(f, "not spot capacity, and the request asks for spot only"),
            Self::ProviderNotRequested { provider } => {
                write!(f, "provider {provider} is not among the request's providers")
            }
            Self::ProviderExcludedByRequest { provider } => {
                write!(f, "the request excludes provider {provider}")
            }
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
            Self::NodeTooSmall { gpus_per_node, block, largest } => write!(
                f,
                "a node of {gpus_per_node} GPU(s) cannot hold a block of {block} GPUs (nodes of {largest} GPUs of this accelerator exist)"
            ),
            Self::TooFewNodes { available, needed, block } => write!(
                f,
                "{available} node(s) available; a {block}-GPU gang needs {needed} nodes of one offer"
            ),
            Self::AtCap { cap } => write!(f, "provider at its diversification cap ({cap})"),
            Self::LaterChoice { place, filled_at } => write!(
                f,
                "the {} choice in the request's order of preference; choices up to the {} fill the request",
                ordinal(*place),
                ordinal(*filled_at)
            ),
            Self::Slower { ready_at, award_ready_at } => {
                write!(f, "ready at {ready_at}, later than the award's {award_ready_at} (objective: time)")
            }
            Self::HeldTooLong { ready_at, award_ready_at } => write!(
                f,
                "ready at {ready_at}, later than the award's {award_ready_at}: the parts start together, and \
                 holding the faster ones (billed) until then costs more than it saves"
            ),
            Self::TooSmallAlone { holds, needed } => write!(
                f,
                "holds {holds} of the {needed} GPUs alone, and the request takes all its nodes from one offer (same region)"
            ),
            Self::NotTheSingleOffer { chosen } => {
                write!(f, "the request takes all its nodes from one offer (same region): {chosen}")
            }
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Awarded { gpus: u32, nodes: u32 },
    Rejected(Rejection),
}

/// One offer's fate, for the explanation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub offer_id: String,
    pub provider: ProviderName,
    pub region: Region,
    /// All-in price per GPU-hour.
    pub price: f64,
    pub outcome: Outcome,
}

/// One provider's part of a planned award: whole nodes of one offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedAllocation {
    pub offer_id: String,
    pub provider: ProviderName,
    pub region: Region,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub instance_type: String,
    pub accelerator: Accelerator,
    pub gpus_per_node: GpuCount,
    pub nodes: u32,
    /// GPUs of the request this allocation carries; at most `nodes * gpus_per_node`, the rest
    /// being over-bought.
    pub gpus: u32,
    /// All-in price of one node for one hour.
    pub node_price: NodePrice,
    pub lead_time_hours: u32,
    pub kind: OfferKind,
    /// Whether the nodes bill from delivery (see [`Offer::bills_from_delivery`]).
    #[serde(
        default = "crate::types::bills_from_delivery_default",
        skip_serializing_if = "crate::types::is_true"
    )]
    pub bills_from_delivery: bool,
    /// Hours the nodes are expected to wait, delivered and billed, for the award's slowest
    /// part before the request's GPUs start together (as planned at the award).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_hours: u32,
}

fn is_zero_cost(cost: &f64) -> bool {
    *cost == 0.0
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl PlannedAllocation {
    /// GPUs bought: whole nodes.
    pub fn gpus_bought(&self) -> u32 {
        self.nodes * self.gpus_per_node.get()
    }

    /// GPUs bought beyond those the request needs from this allocation.
    pub fn gpus_overbought(&self) -> u32 {
        self.gpus_bought() - self.gpus
    }

    /// What the allocation costs per hour: whole nodes at their all-in price. The one formula
    /// for spend; everything that bills, accrues or caps spend calls this.
    pub fn spend_per_hour(&self) -> f64 {
        self.node_price.get() * f64::from(self.nodes)
    }

    /// The all-in price per GPU-hour of the nodes.
    pub fn price_per_gpu_hour(&self) -> f64 {
        self.node_price.per_gpu(self.gpus_per_node)
    }
}

/// Whether an award is known to be the cheapest within the rules.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "proof", rename_all = "snake_case")]
pub enum Optimality {
    /// Proven optimal.
    Proven,
    /// The work limit stopped the search: the award is within `gap` (relative) of the best bound.
    Gap { gap: f64 },
    /// A fallback found the award; nothing is known about how far it is from the optimum.
    Unknown,
}

impl fmt::Display for Optimality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Proven => f.write_str("proven optimal"),
            Self::Gap { gap } => {
                write!(f, "within {:.2}% of the best bound (work limit reached)", gap * 100.0)
            }
            Self::Unknown => f.write_str("optimality unknown"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "path", rename_all = "snake_case")]
pub enum SolverPath {
    /// The cheapest offer alone fills the request exactly: no solver ran.
    SingleOffer,
    /// `same_region`: every offer that alone holds the request was compared.
    SingleRegion { candidates: usize },
    /// Branch-and-bound over `variables` merged groups; `solves` models, `branch_nodes` nodes.
    Milp { variables: usize, solves: usize, branch_nodes: u64, optimality: Optimality },
    /// The greedy fallback, within every rule.
    Fallback { why: String },
}

impl SolverPath {
    pub fn optimality(&self) -> Optimality {
        match self {
            Self::SingleOffer | Self::SingleRegion { .. } => Optimality::Proven,
            Self::Milp { optimality, .. } => *optimality,
            Self::Fallback { .. } => Optimality::Unknown,
        }
    }
}

impl fmt::Display for SolverPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SingleOffer => write!(f, "single offer (exact fast path)"),
            Self::SingleRegion { candidates } => {
                write!(f, "single offer in one region ({candidates} candidates compared; exact)")
            }
            Self::Milp { variables, solves, branch_nodes, optimality } => write!(
                f,
                "MILP (microlp, {variables} variables, {solves} solve(s), {branch_nodes} branch nodes; {optimality})"
            ),
            Self::Fallback { why } => {
                write!(f, "greedy fallback within the rules ({why}; optimality unknown)")
            }
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
    /// List-price cost of the award over the request's duration, held hours included, USD.
    pub list_cost: f64,
    /// What the award's faster parts bill while held for its slowest, USD (in `list_cost`).
    #[serde(skip_serializing_if = "is_zero_cost")]
    pub held_cost: f64,
    /// Cost net of commitment credits, USD.
    pub effective_cost: f64,
    /// GPUs bought beyond those asked (whole nodes), and what they cost over the duration.
    pub overbought_gpus: u32,
    pub overbought_cost: f64,
    /// Human sentences about pricing decisions (commitment credits, caps, over-buying).
    pub notes: Vec<String>,
}

impl Placement {
    pub fn awarded_gpus(&self) -> u32 {
        self.allocations.iter().map(|a| a.gpus).sum()
    }
}

/// How one feasible offer is bought: in units of `nodes_per_unit` nodes carrying
/// `blocks_per_unit` blocks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Shape {
    nodes_per_unit: u32,
    blocks_per_unit: u32,
}

/// A feasible offer, prepared for optimization.
#[derive(Debug, Clone)]
struct Candidate {
    offer: usize,
    shape: Shape,
    /// Units the offer can supply (whole units, at most what the request could use).
    units: u32,
}

/// What makes two candidates interchangeable for the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    provider: usize,
    /// The bits of the unit's spend per hour: equal prices, exactly.
    unit_spend: u64,
    nodes_per_unit: u32,
    blocks_per_unit: u32,
    gpus_per_node: u32,
    lead_time_hours: u32,
    bills_from_delivery: bool,
    place: usize,
    /// Under `same_region`, every offer is its own group: its nodes may not be spread.
    offer: Option<usize>,
}

/// Interchangeable candidates, merged into one variable.
#[derive(Debug, Clone)]
struct Group {
    provider: usize,
    shape: Shape,
    /// Offer indices, in id order.
    members: Vec<usize>,
    units: u32,
    /// Spend per hour of one unit, USD.
    unit_spend: f64,
    /// GPUs bought per unit.
    unit_gpus: u32,
    lead_time_hours: u32,
    /// Whether its nodes bill while they are held for the award's slowest part.
    bills_from_delivery: bool,
    /// Place in the request's order of preference (0 is the first choice).
    place: usize,
    /// The objective's weight on list spend: the preference factor.
    factor: f64,
    rank: usize,
}

/// Runs the pipeline. Never panics on any input the types allow.
pub fn place(demand: Demand<'_>, offers: &[Offer], rules: &Rules, config: SolverConfig) -> Placement {
    let request = demand.request;
    let block = request.block.get();
    let largest = LargestNodes::new(request, offers, &rules.largest_node);
    let mut verdicts: Vec<Option<Rejection>> =
        offers.iter().map(|o| filter(demand, o, rules, &largest)).collect();

    let blocks_needed = demand.gpus.div_ceil(block);
    let mut providers: Vec<ProviderName> = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    for (index, offer) in offers.iter().enumerate() {
        if verdicts[index].is_some() {
            continue;
        }
        let shape = shape(offer, block);
        let useful = blocks_needed.div_ceil(shape.blocks_per_unit);
        let units = (offer.nodes_available / shape.nodes_per_unit).min(useful);
        if !providers.contains(&offer.provider) {
            providers.push(offer.provider.clone());
        }
        candidates.push(Candidate { offer: index, shape, units });
    }
    providers.sort();

    let groups = merge(&candidates, offers, &providers, demand);
    let mut problem = Problem::new(demand, offers, rules, &providers, &groups);
    if groups.is_empty() {
        problem.filtered = summarize_rejections(&verdicts);
    }
    let result = problem.solve(config, &candidates);

    let hours = f64::from(request.duration_hours);
    let mut allocations = Vec::new();
    let mut capacities = Vec::new();
    let mut awarded_offers = BTreeSet::new();
    // Spread each group's units over its offers in id order; the request's GPUs are spread over
    // the allocations below.
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&g| groups[g].rank);
    for &g in &order {
        let mut units_left = result.units[g];
        let group = &groups[g];
        for &member in &group.members {
            if units_left == 0 {
                break;
            }
            let candidate = candidates.iter().find(|c| c.offer == member).expect("member is a candidate");
            let take = units_left.min(candidate.units);
            if take == 0 {
                continue;
            }
            units_left -= take;
            awarded_offers.insert(member);
            let offer = &offers[member];
            let nodes = take * group.shape.nodes_per_unit;
            capacities.push(take * group.shape.blocks_per_unit * block);
            allocations.push(PlannedAllocation {
                offer_id: offer.id.clone(),
                provider: offer.provider.clone(),
                region: offer.region.clone(),
                zone: offer.zone.clone(),
                instance_type: offer.instance_type.clone(),
                accelerator: offer.accelerator.clone(),
                gpus_per_node: offer.gpus_per_node,
                nodes,
                gpus: 0,
                node_price: offer.node_price,
                lead_time_hours: offer.lead_time_hours,
                kind: offer.kind,
                bills_from_delivery: offer.bills_from_delivery,
                held_hours: problem.held_hours(group, result.hold).round() as u32,
            });
        }
    }
    // The request's GPUs, in whole blocks: one block to each allocation first (so that an
    // allocation a minimum of providers asked for carries part of the request), then the rest
    // in rank order.
    let mut gpus_left = demand.gpus;
    for (allocation, capacity) in allocations.iter_mut().zip(&capacities) {
        let first = block.min(*capacity).min(gpus_left);
        allocation.gpus = first;
        gpus_left -= first;
    }
    for (allocation, capacity) in allocations.iter_mut().zip(&capacities) {
        let more = (capacity - allocation.gpus).min(gpus_left);
        allocation.gpus += more;
        gpus_left -= more;
    }
    allocations.sort_by(|a, b| a.provider.cmp(&b.provider).then_with(|| a.offer_id.cmp(&b.offer_id)));

    let infeasible = result.infeasible.clone();
    let held_cost: f64 = allocations.iter().map(|a| a.spend_per_hour() * f64::from(a.held_hours)).sum();
    let list_cost: f64 = allocations.iter().map(|a| a.spend_per_hour() * hours).sum::<f64>() + held_cost;
    let overbought_gpus: u32 = allocations.iter().map(PlannedAllocation::gpus_overbought).sum();
    let overbought_cost: f64 =
        allocations.iter().map(|a| f64::from(a.gpus_overbought()) * a.price_per_gpu_hour() * hours).sum();
    let mut notes = Vec::new();
    let mut effective_cost = list_cost;
    for (provider, credit) in &rules.credits {
        let spend: f64 = allocations
            .iter()
            .filter(|a| &a.provider == provider)
            .map(|a| a.spend_per_hour() * (hours + f64::from(a.held_hours)))
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
    if held_cost > 0.0 && infeasible.is_none() {
        let held: Vec<String> = allocations
            .iter()
            .filter(|a| a.held_hours > 0)
            .map(|a| format!("{} {} h", a.offer_id, a.held_hours))
            .collect();
        notes.push(format!(
            "the parts start together: faster parts are held, billed, until the slowest is ready ({}; \
             ${held_cost:.0}, in the cost)",
            held.join(", ")
        ));
    }
    if overbought_gpus > 0 && infeasible.is_none() {
        notes.push(format!(
            "over-buys {overbought_gpus} GPU(s) in whole nodes (${overbought_cost:.0} over the duration): \
             the GPUs asked do not fill the nodes exactly"
        ));
    }
    for cap in &rules.caps {
        notes.push(format!(
            "cap: no provider above {:.0}% of the fleet by {}, within one node or gang ({})",
            cap.max_share * 100.0,
            match cap.basis {
                ShareBasis::Gpus => "GPUs",
                ShareBasis::Spend => "spend",
            },
            cap.source
        ));
    }
    if request.preference != Preference::Any {
        notes.push(format!("preference: {}", describe_preference(request.preference)));
    }

    problem.explain(&mut verdicts, &result, &candidates, &awarded_offers);
    let verdicts = offers
        .iter()
        .zip(verdicts)
        .map(|(offer, rejection)| {
            let outcome = match rejection {
                Some(rejection) => Outcome::Rejected(rejection),
                None => {
                    let mine = allocations.iter().filter(|a| a.offer_id == offer.id);
                    let (gpus, nodes) = mine.fold((0, 0), |(g, n), a| (g + a.gpus, n + a.nodes));
                    Outcome::Awarded { gpus, nodes }
                }
            };
            Verdict {
                offer_id: offer.id.clone(),
                provider: offer.provider.clone(),
                region: offer.region.clone(),
                price: offer.gpu_price(),
                outcome,
            }
        })
        .collect();

    if infeasible.is_some() {
        allocations.clear();
    }
    let awarded = infeasible.is_none();
    Placement {
        list_cost: if awarded { list_cost } else { 0.0 },
        held_cost: if awarded { held_cost } else { 0.0 },
        effective_cost: if awarded { effective_cost } else { 0.0 },
        overbought_gpus: if awarded { overbought_gpus } else { 0 },
        overbought_cost: if awarded { overbought_cost } else { 0.0 },
        allocations,
        infeasible,
        verdicts,
        solver: result.path,
        notes,
    }
}

/// Why each of `offers` (a catalog) would lose against `request` on its hard requirements
/// alone; an offer that meets them all is reported as not quoted. For explanations of the
/// offers no provider quoted, so that every offer of a catalog has a reason.
pub fn explain_unquoted<'a>(
    request: &Request,
    offers: &'a [Offer],
    now: Timestamp,
) -> Vec<(&'a Offer, String)> {
    let largest = LargestNodes::new(request, offers, &BTreeMap::new());
    let demand = Demand::whole(request, now);
    let rules = Rules::default();
    offers
        .iter()
        .map(|offer| {
            let reason = match filter(demand, offer, &rules, &largest) {
                Some(rejection) => rejection.to_string(),
                None => {
                    "not quoted: its provider was not asked (declined, down or excluded) or had no free nodes"
                        .to_owned()
                }
            };
            (offer, reason)
        })
        .collect()
}

/// Whether any of a provider's published `offers` could meet the request: its hard
/// requirements (accelerator, spot policy, the request's providers and regions, the policy's
/// regions, deliver-by, node size) and the round's exclusions and exclusivity. A provider none
/// of whose offers could is not asked for quotes, so the buyer's demand does not reach a cloud
/// it ruled out. Neither price nor free capacity is judged here: a quote says what the
/// provider sells now, at what price.
pub fn could_quote(demand: Demand<'_>, offers: &[Offer], rules: &Rules) -> bool {
    // The market's largest nodes (`rules.largest_node`, from every published offer) decide
    // which nodes are too small, as in a placement: no pass over the offers to find them.
    let largest = LargestNodes::new(demand.request, &[], &rules.largest_node);
    offers.iter().any(|offer| match filter(demand, offer, rules, &largest) {
        None => true,
        Some(rejection) => matches!(
            rejection,
            Rejection::AboveCeiling { .. }
                | Rejection::AboveDeclinedTerms { .. }
                | Rejection::TooFewNodes { .. }
                | Rejection::Expired { .. }
        ),
    })
}

/// When the minimum-provider rule cannot be met whatever the offers: one offer asked for
/// (`same_region`), or fewer blocks than providers. Says what would make it possible.
pub fn min_providers_unmet(request: &Request, gpus: u32, rules: &Rules) -> Option<String> {
    let (k, source) = rules.min_providers.as_ref().filter(|(k, _)| *k > 1)?;
    let block = request.block.get();
    if request.same_region {
        return Some(format!(
            "same region asks for one offer, but the minimum of {k} providers ({source}) applies to {} \
             workloads; drop same region",
            request.workload
        ));
    }
    let blocks = gpus.div_ceil(block);
    (blocks < *k).then(|| {
        format!(
            "the minimum of {k} providers ({source}) needs at least {k} blocks, and {gpus} GPUs is {blocks} \
             block(s) of {block}: ask for at least {} GPUs, or a block of at most {} GPUs",
            k * block,
            (gpus / k).max(1)
        )
    })
}

/// `12 x accelerator H100 was not requested; 3 x region ... (e.g. ...)`: each filter that
/// rejected offers, most first, with one example of its message.
/// The filters' rejections by kind, most common first, each with the example nearest to
/// passing (the cheapest offer above a ceiling, the earliest too late, the largest node too
/// small): what would have to change is what a reader needs.
fn summarize_rejections(verdicts: &[Option<Rejection>]) -> String {
    let mut kinds: Vec<(usize, &Rejection)> = Vec::new();
    for rejection in verdicts.iter().flatten() {
        let kind = std::mem::discriminant(rejection);
        match kinds.iter_mut().find(|(_, example)| std::mem::discriminant(*example) == kind) {
            Some((count, example)) => {
                *count += 1;
                if nearer(rejection, example) {
                    *example = rejection;
                }
            }
            None => kinds.push((1, rejection)),
        }
    }
    kinds.sort_by_key(|(count, _)| std::cmp::Reverse(*count));
    let parts: Vec<String> = kinds
        .iter()
        .map(|(count, example)| match count {
            2.. if has_nearest(example) => {
                format!("{count} offers, the nearest to passing: {example}")
            }
            _ => format!("{count} x {example}"),
        })
        .collect();
    parts.join("; ")
}

/// Whether rejections of this kind have one nearest to passing (see [`nearer`]).
fn has_nearest(rejection: &Rejection) -> bool {
    use Rejection::*;
    matches!(
        rejection,
        AboveCeiling { .. }
            | AboveDeclinedTerms { .. }
            | TooLate { .. }
            | TooFewNodes { .. }
            | NodeTooSmall { .. }
    )
}

/// Whether `candidate` is nearer to passing than `example`, a rejection of the same kind.
fn nearer(candidate: &Rejection, example: &Rejection) -> bool {
    use Rejection::*;
    match (candidate, example) {
        (AboveCeiling { price: a, .. }, AboveCeiling { price: b, .. })
        | (AboveDeclinedTerms { price: a, .. }, AboveDeclinedTerms { price: b, .. }) => a < b,
        (TooLate { ready_at: a, .. }, TooLate { ready_at: b, .. }) => a < b,
        (TooFewNodes { available: a, .. }, TooFewNodes { available: b, .. })
        | (NodeTooSmall { gpus_per_node: a, .. }, NodeTooSmall { gpus_per_node: b, .. }) => a > b,
        _ => false,
    }
}

fn describe_preference(preference: Preference) -> String {
    match preference {
        Preference::Any => "any choice; cheapest wins".into(),
        Preference::Fallback => "a later choice only when the earlier ones cannot fill the request".into(),
        Preference::Premium { percent } => {
            format!(
                "a later choice only when at least {percent}% cheaper per GPU-hour for each place down the list"
            )
        }
    }
}

/// The largest node of each of a request's accelerators, among the offers and what the market
/// is known to sell: a block up to this size must fit in one node.
struct LargestNodes<'a> {
    accelerators: &'a [Accelerator],
    sizes: Vec<u32>,
}

impl<'a> LargestNodes<'a> {
    fn new(request: &'a Request, offers: &[Offer], known: &BTreeMap<Accelerator, u32>) -> Self {
        let accelerators = request.accelerators.as_slice();
        let mut sizes: Vec<u32> = accelerators.iter().map(|a| known.get(a).copied().unwrap_or(0)).collect();
        for offer in offers {
            if let Some(i) = accelerators.iter().position(|a| *a == offer.accelerator) {
                sizes[i] = sizes[i].max(offer.gpus_per_node.get());
            }
        }
        Self { accelerators, sizes }
    }

    fn of(&self, accelerator: &Accelerator) -> Option<u32> {
        self.accelerators.iter().position(|a| a == accelerator).map(|i| self.sizes[i])
    }
}

/// The largest node offered per accelerator: a block up to this size must fit in one node.
pub fn largest_nodes(offers: &[Offer]) -> BTreeMap<Accelerator, u32> {
    let mut largest: BTreeMap<Accelerator, u32> = BTreeMap::new();
    for offer in offers {
        let entry = largest.entry(offer.accelerator.clone()).or_default();
        *entry = (*entry).max(offer.gpus_per_node.get());
    }
    largest
}

/// How `block`-GPU blocks are bought from an offer that passed the filters.
fn shape(offer: &Offer, block: u32) -> Shape {
    let g = offer.gpus_per_node.get();
    if block <= g {
        Shape { nodes_per_unit: 1, blocks_per_unit: g / block }
    } else {
        Shape { nodes_per_unit: block.div_ceil(g), blocks_per_unit: 1 }
    }
}

/// Merges candidates that are interchangeable for the decision, and ranks the groups.
fn merge(
    candidates: &[Candidate],
    offers: &[Offer],
    providers: &[ProviderName],
    demand: Demand<'_>,
) -> Vec<Group> {
    let request = demand.request;
    let block = request.block.get();
    let hours = f64::from(request.duration_hours);
    let mut groups: Vec<Group> = Vec::new();
    let mut index: BTreeMap<GroupKey, usize> = BTreeMap::new();
    for candidate in candidates.iter().filter(|c| c.units > 0) {
        let offer = &offers[candidate.offer];
        let provider = providers.iter().position(|p| *p == offer.provider).expect("provider listed");
        let place = request.place_of(&offer.accelerator, &offer.provider).unwrap_or(0);
        let unit_spend = offer.node_price.get() * f64::from(candidate.shape.nodes_per_unit);
        let key = GroupKey {
            provider,
            unit_spend: unit_spend.to_bits(),
            nodes_per_unit: candidate.shape.nodes_per_unit,
            blocks_per_unit: candidate.shape.blocks_per_unit,
            gpus_per_node: offer.gpus_per_node.get(),
            lead_time_hours: offer.lead_time_hours,
            bills_from_delivery: offer.bills_from_delivery,
            place,
            offer: request.same_region.then_some(candidate.offer),
        };
        match index.get(&key) {
            Some(&g) => {
                let group = &mut groups[g];
                group.members.push(candidate.offer);
                group.units = group.units.saturating_add(candidate.units);
            }
            None => {
                index.insert(key, groups.len());
                groups.push(Group {
                    provider,
                    shape: candidate.shape,
                    members: vec![candidate.offer],
                    units: candidate.units,
                    unit_spend,
                    unit_gpus: candidate.shape.nodes_per_unit * offer.gpus_per_node.get(),
                    lead_time_hours: offer.lead_time_hours,
                    bills_from_delivery: offer.bills_from_delivery,
                    place,
                    factor: request.preference.price_factor(place),
                    rank: 0,
                });
            }
        }
    }
    let useful = demand.gpus.div_ceil(block);
    for group in &mut groups {
        group.members.sort_by(|a, b| offers[*a].id.cmp(&offers[*b].id));
        group.units = group.units.min(useful.div_ceil(group.shape.blocks_per_unit));
    }
    // Rank by weighted price per GPU carried, then lead time, then the first offer's id.
    let per_gpu = |g: &Group| g.unit_spend * g.factor * hours / f64::from(g.shape.blocks_per_unit * block);
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&groups[a], &groups[b]);
        per_gpu(x)
            .total_cmp(&per_gpu(y))
            .then(x.lead_time_hours.cmp(&y.lead_time_hours))
            .then_with(|| offers[x.members[0]].id.cmp(&offers[y.members[0]].id))
    });
    for (rank, &g) in order.iter().enumerate() {
        groups[g].rank = rank;
    }
    groups
}

/// The hard checks, in order; the first that fails is the reason.
fn filter(demand: Demand<'_>, offer: &Offer, rules: &Rules, largest: &LargestNodes<'_>) -> Option<Rejection> {
    let request = demand.request;
    let block = request.block.get();
    if !request.accelerators.contains(&offer.accelerator) {
        return Some(Rejection::Accelerator { offered: offer.accelerator.to_string() });
    }
    match (request.spot, offer.kind == OfferKind::Spot) {
        (SpotPolicy::Never, true) => return Some(Rejection::Spot),
        (SpotPolicy::Only, false) => return Some(Rejection::NotSpot),
        _ => {}
    }
    if !request.providers.is_empty() && !request.providers.contains(&offer.provider) {
        return Some(Rejection::ProviderNotRequested { provider: offer.provider.to_string() });
    }
    if request.exclude_providers.contains(&offer.provider) {
        return Some(Rejection::ProviderExcludedByRequest { provider: offer.provider.to_string() });
    }
    if let Some((holder, clause)) = &rules.exclusive_to
        && holder != &offer.provider
    {
        return Some(Rejection::Exclusive { holder: holder.to_string(), clause: clause.clone() });
    }
    if let Some(why) = rules.excluded.get(&offer.provider) {
        return Some(Rejection::Excluded { why: why.clone() });
    }
    if let Some((_, why)) = rules
        .excluded_regions
        .iter()
        .find(|((provider, region), _)| *provider == offer.provider && *region == offer.region)
    {
        return Some(Rejection::Excluded { why: why.clone() });
    }
    let inside = |locations: &[Location]| {
        locations.is_empty() || locations.iter().any(|l| l.contains(&offer.provider, &offer.region))
    };
    if !inside(&request.regions) {
        return Some(Rejection::RegionNotRequested { region: offer.location().to_string() });
    }
    if !inside(&rules.policy_regions) {
        return Some(Rejection::RegionNotAllowedByPolicy { region: offer.location().to_string() });
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
    let price = offer.gpu_price();
    if let Some(ceiling) = rules.price_ceiling
        && price > ceiling.get()
    {
        return Some(Rejection::AboveCeiling { price, ceiling: ceiling.get() });
    }
    if let Some(declined) = rules.declined_terms
        && price > declined.get()
    {
        return Some(Rejection::AboveDeclinedTerms { price, declined: declined.get() });
    }
    let g = offer.gpus_per_node.get();
    let largest = largest.of(&offer.accelerator).unwrap_or(g);
    if g < block && block <= largest {
        return Some(Rejection::NodeTooSmall { gpus_per_node: g, block, largest });
    }
    let needed = shape(offer, block).nodes_per_unit;
    if offer.nodes_available < needed {
        return Some(Rejection::TooFewNodes { available: offer.nodes_available, needed, block });
    }
    None
}

/// What a solve produced: units per group, how, and why there is no award if there is none.
struct Solved {
    units: Vec<u32>,
    path: SolverPath,
    infeasible: Option<String>,
    /// Under `Preference::Fallback`: the last place of the list the award may use.
    level: Option<usize>,
    /// Under `Objective::Time`: the longest lead time the award may use.
    lead_limit: Option<u32>,
    /// When the parts start together: the lead time of the award's slowest part, until which
    /// faster parts are held.
    hold: Option<u32>,
    /// Under `same_region`: the chosen offer.
    single: Option<usize>,
}

/// The optimization problem over the groups of feasible candidates.
struct Problem<'a> {
    demand: Demand<'a>,
    offers: &'a [Offer],
    rules: &'a Rules,
    providers: &'a [ProviderName],
    groups: &'a [Group],
    blocks_needed: u32,
    /// Per provider: the most GPUs the GPU caps let it hold after the award, without the
    /// one-unit tolerance (`None`: no GPU cap).
    gpu_room: Vec<Option<f64>>,
    /// Per provider: the one-unit tolerance in GPUs and in spend per hour.
    tolerance_gpus: Vec<f64>,
    tolerance_spend: Vec<f64>,
    gpu_cap_source: Option<String>,
    spend_caps: Vec<&'a Cap>,
    /// What the filters rejected, for the reason when nothing passed.
    filtered: String,
    /// Under the fallback rule: the objective's penalty per block and place down the list,
    /// more than any block costs (zero otherwise).
    fallback_weight: f64,
}

impl<'a> Problem<'a> {
    fn new(
        demand: Demand<'a>,
        offers: &'a [Offer],
        rules: &'a Rules,
        providers: &'a [ProviderName],
        groups: &'a [Group],
    ) -> Self {
        let fleet_total: f64 = rules.fleet.gpus.values().sum();
        let after = fleet_total + f64::from(demand.gpus);
        let mut gpu_room = vec![None; providers.len()];
        let mut gpu_cap_source = None;
        for cap in rules.caps.iter().filter(|c| c.basis == ShareBasis::Gpus) {
            for (index, provider) in providers.iter().enumerate() {
                let held = rules.fleet.gpus.get(provider).copied().unwrap_or(0.0);
                let room = cap.max_share * after - held;
                gpu_room[index] = Some(gpu_room[index].map_or(room, |r: f64| r.min(room)));
            }
            gpu_cap_source = Some(cap.source.clone());
        }
        let mut tolerance_gpus = vec![0.0f64; providers.len()];
        let mut tolerance_spend = vec![0.0f64; providers.len()];
        for group in groups {
            tolerance_gpus[group.provider] = tolerance_gpus[group.provider].max(f64::from(group.unit_gpus));
            tolerance_spend[group.provider] = tolerance_spend[group.provider].max(group.unit_spend);
        }
        let spend_caps = rules.caps.iter().filter(|c| c.basis == ShareBasis::Spend).collect();
        Self {
            demand,
            offers,
            rules,
            providers,
            groups,
            blocks_needed: demand.gpus.div_ceil(demand.request.block.get()),
            gpu_room,
            tolerance_gpus,
            tolerance_spend,
            gpu_cap_source,
            spend_caps,
            filtered: String::new(),
            fallback_weight: 0.0,
        }
        .with_fallback_weight()
    }

    fn with_fallback_weight(mut self) -> Self {
        if self.demand.request.preference == Preference::Fallback {
            let slowest = self.groups.iter().map(|g| g.lead_time_hours).max();
            let hold = self.holds().then_some(slowest).flatten();
            let most = self
                .groups
                .iter()
                .map(|g| self.unit_cost(g, hold) / f64::from(g.shape.blocks_per_unit))
                .fold(0.0, f64::max);
            self.fallback_weight = 2.0 * most + 1.0;
        }
        self
    }

    fn hours(&self) -> f64 {
        f64::from(self.demand.request.duration_hours)
    }

    fn credit(&self, provider: usize) -> f64 {
        self.rules.credits.get(&self.providers[provider]).copied().unwrap_or(0.0).max(0.0)
    }

    fn min_providers(&self) -> usize {
        self.rules.min_providers.as_ref().map_or(1, |(k, _)| *k as usize)
    }

    /// Whether the award's parts start together (faster parts held for the slowest).
    fn holds(&self) -> bool {
        !self.demand.request.apart
    }

    /// When the request's GPUs start if the award's slowest part has lead time `last`: not
    /// before the earliest start, the last new part's delivery, or a part awarded before.
    fn start_with(&self, last: u32) -> Timestamp {
        let demand = self.demand;
        let start = demand.now.plus_hours(f64::from(last)).max(demand.request.earliest_start);
        demand.joining.iter().fold(start, |start, j| start.max(j.ready_at))
    }

    /// Hours one unit of `g` waits, delivered and billed, for a start whose slowest part has
    /// lead time `hold` (none when the parts run apart or its nodes bill from a start date).
    /// Delivery before the request's earliest start is not billed: that is a start date too.
    fn held_hours(&self, g: &Group, hold: Option<u32>) -> f64 {
        let Some(last) = hold.filter(|_| g.bills_from_delivery) else { return 0.0 };
        let ready =
            self.demand.now.plus_hours(f64::from(g.lead_time_hours)).max(self.demand.request.earliest_start);
        self.start_with(last).hours_since(ready).max(0.0)
    }

    /// What the parts awarded before bill while they wait for a start whose slowest new part
    /// has lead time `last`.
    fn joining_cost(&self, last: u32) -> f64 {
        let start = self.start_with(last);
        let earliest = self.demand.request.earliest_start;
        self.demand
            .joining
            .iter()
            .map(|j| j.held_spend_per_hour * start.hours_since(j.ready_at.max(earliest)).max(0.0))
            .sum()
    }

    /// The hours one unit of `g` bills: the request's, and those it is held.
    fn billed_hours(&self, g: &Group, hold: Option<u32>) -> f64 {
        self.hours() + self.held_hours(g, hold)
    }

    /// The objective's cost of one unit of a group, held hours included, before the tie-break.
    fn unit_cost(&self, g: &Group, hold: Option<u32>) -> f64 {
        if self.credit(g.provider) > 0.0 { 0.0 } else { g.unit_spend * self.billed_hours(g, hold) * g.factor }
    }

    /// What a unit costs in the objective: its cost, plus, under the fallback rule, a penalty
    /// per block for each place down the order of preference that outweighs any saving, so
    /// the award takes from earlier choices as much as the rules let it.
    fn objective_cost(&self, g: &Group, hold: Option<u32>) -> f64 {
        self.unit_cost(g, hold) + self.fallback_weight * g.place as f64 * f64::from(g.shape.blocks_per_unit)
    }

    /// The effective price per GPU-hour carried of a group, held hours included (zero under
    /// a credit).
    fn effective_price(&self, g: &Group, hold: Option<u32>) -> f64 {
        let block = self.demand.request.block.get();
        self.unit_cost(g, hold) / (self.hours() * f64::from(g.shape.blocks_per_unit * block))
    }

    /// A lower bound on what any award whose slowest part has lead time `last` costs the
    /// objective: the cheapest blocks first, whole units split, no rule but capacity (the
    /// rules and the whole units only add), and what the parts awarded before bill while
    /// they wait. Infinite when the blocks cannot be covered at all.
    fn lower_bound(&self, last: u32) -> f64 {
        let hold = self.holds().then_some(last);
        let mut blocks: Vec<(f64, u64)> = self
            .groups
            .iter()
            .filter(|g| g.lead_time_hours <= last)
            .map(|g| {
                let per_unit = f64::from(g.shape.blocks_per_unit);
                (
                    self.objective_cost(g, hold) / per_unit,
                    u64::from(g.units) * u64::from(g.shape.blocks_per_unit),
                )
            })
            .collect();
        blocks.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut needed = u64::from(self.blocks_needed);
        let mut cost = if self.holds() { self.joining_cost(last) } else { 0.0 };
        for (per_block, available) in blocks {
            let take = available.min(needed);
            cost += per_block * take as f64;
            needed -= take;
            if needed == 0 {
                return cost;
            }
        }
        f64::INFINITY
    }

    /// What an award costs the objective: its units with their held hours (the slowest
    /// part's lead time decides them), the credited providers' spend beyond their credit,
    /// and what the parts awarded before bill while they wait.
    fn award_cost(&self, units: &[u32]) -> f64 {
        let last =
            self.groups.iter().zip(units).filter(|(_, u)| **u > 0).map(|(g, _)| g.lead_time_hours).max();
        let hold = self.holds().then_some(last).flatten();
        let mut cost = hold.map_or(0.0, |last| self.joining_cost(last));
        let mut credited = vec![0.0f64; self.providers.len()];
        for (g, &u) in self.groups.iter().zip(units) {
            cost += f64::from(u) * self.objective_cost(g, hold);
            if self.credit(g.provider) > 0.0 {
                credited[g.provider] += f64::from(u) * g.unit_spend * self.billed_hours(g, hold);
            }
        }
        for (p, spend) in credited.iter().enumerate() {
            cost += (spend - self.credit(p)).max(0.0);
        }
        cost
    }

    /// Checks units against every rule; `Some(why)` names the first one broken.
    fn violation(&self, units: &[u32], allowed: &dyn Fn(&Group) -> bool) -> Option<String> {
        let mut blocks = 0u64;
        let mut bought = vec![0.0f64; self.providers.len()];
        let mut spend = vec![0.0f64; self.providers.len()];
        for (group, &u) in self.groups.iter().zip(units) {
            if u > group.units {
                return Some(format!("{u} units of a group with {}", group.units));
            }
            if u > 0 && !allowed(group) {
                return Some("a unit outside the allowed choices".into());
            }
            blocks += u64::from(u) * u64::from(group.shape.blocks_per_unit);
            bought[group.provider] += f64::from(u) * f64::from(group.unit_gpus);
            spend[group.provider] += f64::from(u) * group.unit_spend;
        }
        if blocks < u64::from(self.blocks_needed) {
            return Some(format!("{blocks} blocks of {} needed", self.blocks_needed));
        }
        // A cap limits what the award gives a provider: one the award gives nothing is within
        // it, even if it already holds more than its share.
        for (p, provider) in self.providers.iter().enumerate() {
            if bought[p] == 0.0 {
                continue;
            }
            if let Some(room) = self.gpu_room[p]
                && bought[p] > room + self.tolerance_gpus[p] + RULE_TOLERANCE * (1.0 + room.abs())
            {
                return Some(format!("{provider} above its GPU cap"));
            }
            for cap in &self.spend_caps {
                let held = self.rules.fleet.spend_per_hour.get(provider).copied().unwrap_or(0.0);
                let total: f64 =
                    self.rules.fleet.spend_per_hour.values().sum::<f64>() + spend.iter().sum::<f64>();
                let limit = cap.max_share * total + self.tolerance_spend[p];
                if spend[p] + held > limit + RULE_TOLERANCE * (1.0 + limit.abs()) {
                    return Some(format!("{provider} above its spend cap"));
                }
            }
        }
        let used = bought.iter().filter(|b| **b > 0.0).count();
        if used < self.min_providers() {
            return Some(format!("{used} provider(s) used, {} required", self.min_providers()));
        }
        None
    }

    /// Chooses the units: same-region enumeration, or the preference and objective loops
    /// around the MILP.
    fn solve(&self, config: SolverConfig, candidates: &[Candidate]) -> Solved {
        let request = self.demand.request;
        let none = vec![0; self.groups.len()];
        let unfilled = |why: String, path: SolverPath| Solved {
            units: none.clone(),
            path,
            infeasible: Some(why),
            level: None,
            lead_limit: None,
            hold: None,
            single: None,
        };
        if self.groups.is_empty() {
            return unfilled(
                self.no_candidates_reason(),
                SolverPath::Milp { variables: 0, solves: 0, branch_nodes: 0, optimality: Optimality::Proven },
            );
        }
        if let Some(why) = self.impossible_by_rule() {
            return unfilled(
                why,
                SolverPath::Milp { variables: 0, solves: 0, branch_nodes: 0, optimality: Optimality::Proven },
            );
        }
        if request.same_region {
            return self.single_offer(candidates);
        }
        let mut leads: Vec<u32> = self.groups.iter().map(|g| g.lead_time_hours).collect();
        leads.sort_unstable();
        leads.dedup();
        // The lead time of the award's slowest part, tried in turn: under `Objective::Time`
        // the first that fills wins; under cost, when the parts start together, each decides
        // how long the faster parts are held (and billed), so the cheapest over all of them
        // wins. Held hours are linear in the units once the slowest lead time is fixed.
        let limits: Vec<Option<u32>> = match request.objective {
            Objective::Time => leads.iter().copied().map(Some).collect(),
            Objective::Cost if self.holds() => {
                // One part alone is never held: when the cheapest offer fills the request
                // exactly, no split can cost less, held hours or not.
                if self.demand.joining.is_empty()
                    && let Some(units) = self.fast_path(&|_| true, None)
                {
                    let hold =
                        self.groups.iter().zip(&units).find(|(_, u)| **u > 0).map(|(g, _)| g.lead_time_hours);
                    return Solved {
                        units,
                        path: SolverPath::SingleOffer,
                        infeasible: None,
                        level: None,
                        lead_limit: None,
                        hold,
                        single: None,
                    };
                }
                // Most promising first (the least lower bound), so that the rest are pruned.
                let mut bounded: Vec<(f64, u32)> = leads.iter().map(|&l| (self.lower_bound(l), l)).collect();
                bounded.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                bounded.into_iter().map(|(_, l)| Some(l)).collect()
            }
            Objective::Cost => vec![None],
        };
        let mut solves = 0;
        let mut branch_nodes = 0;
        let mut last_failure: Option<Failure> = None;
        let mut best: Option<(f64, Vec<u32>, SolverPath, Option<u32>)> = None;
        for &limit in &limits {
            let allowed = |g: &Group| limit.is_none_or(|t| g.lead_time_hours <= t);
            if !self.may_fill(&allowed) {
                continue;
            }
            if request.objective == Objective::Cost
                && let (Some(limit), Some((least, ..))) = (limit, &best)
                && self.lower_bound(limit) > *least + RULE_TOLERANCE * (1.0 + least.abs())
            {
                // The limits come by lower bound: no later one can do better either.
                break;
            }
            let hold = if self.holds() { limit.or(leads.last().copied()) } else { None };
            let attempt = self.solve_once(config, &allowed, hold, &mut solves, &mut branch_nodes);
            let (units, path) = match attempt {
                Ok(found) => found,
                Err(failure) => {
                    last_failure = Some(failure);
                    continue;
                }
            };
            if request.objective == Objective::Time {
                best = Some((0.0, units, path, limit));
                break;
            }
            let cost = self.award_cost(&units);
            // Cheaper wins; at the same cost, the one ready sooner.
            let better = best.as_ref().is_none_or(|(least, _, _, at)| {
                let tolerance = RULE_TOLERANCE * (1.0 + least.abs());
                cost < *least - tolerance || (cost <= *least + tolerance && limit < *at)
            });
            if better {
                best = Some((cost, units, path, limit));
            }
        }
        if let Some((_, units, mut path, limit)) = best {
            // The path says how much work all the solves took, not only the winning one.
            if let SolverPath::Milp { solves: s, branch_nodes: b, .. } = &mut path {
                (*s, *b) = (solves, branch_nodes);
            }
            // Under the fallback rule, the furthest place down the list the award uses.
            let level = (request.preference == Preference::Fallback).then(|| {
                self.groups
                    .iter()
                    .zip(&units)
                    .filter(|(_, u)| **u > 0)
                    .map(|(g, _)| g.place)
                    .max()
                    .unwrap_or(0)
            });
            let last =
                self.groups.iter().zip(&units).filter(|(_, u)| **u > 0).map(|(g, _)| g.lead_time_hours).max();
            let lead_limit = if request.objective == Objective::Time { limit } else { None };
            let hold = self.holds().then_some(last).flatten();
            return Solved { units, path, infeasible: None, level, lead_limit, hold, single: None };
        }
        let failure = last_failure.unwrap_or(Failure {
            path: SolverPath::Milp {
                variables: self.groups.len(),
                solves,
                branch_nodes,
                optimality: Optimality::Proven,
            },
            why: None,
        });
        unfilled(failure.why.unwrap_or_else(|| self.infeasible_reason()), failure.path)
    }

    /// A quick necessary condition: enough units among the allowed groups, within the GPU caps.
    fn may_fill(&self, allowed: &dyn Fn(&Group) -> bool) -> bool {
        let mut per_provider = vec![0u64; self.providers.len()];
        for g in self.groups.iter().filter(|g| allowed(g)) {
            let mut units = u64::from(g.units);
            if let Some(room) = self.gpu_room[g.provider] {
                let most =
                    ((room + self.tolerance_gpus[g.provider]).max(0.0) / f64::from(g.unit_gpus)).floor();
                units = units.min(most as u64);
            }
            per_provider[g.provider] += units * u64::from(g.shape.blocks_per_unit);
        }
        per_provider.iter().sum::<u64>() >= u64::from(self.blocks_needed)
            && per_provider.iter().filter(|b| **b > 0).count() >= self.min_providers()
    }

    /// One model over the allowed groups: the fast path, the MILP, or the fallback.
    fn solve_once(
        &self,
        config: SolverConfig,
        allowed: &dyn Fn(&Group) -> bool,
        hold: Option<u32>,
        solves: &mut usize,
        branch_nodes: &mut u64,
    ) -> Result<(Vec<u32>, SolverPath), Failure> {
        if let Some(units) = self.fast_path(allowed, hold) {
            return Ok((units, SolverPath::SingleOffer));
        }
        let variables = self.groups.iter().filter(|g| allowed(g)).count();
        if variables > MAX_SOLVER_VARIABLES {
            return self.fallback(allowed, format!("{variables} variables exceed the solver bound"));
        }
        *solves += 1;
        match self.milp(config, allowed, hold) {
            MilpResult::Solved { units, nodes, optimality } => {
                *branch_nodes += nodes;
                match self.violation(&units, allowed) {
                    None => Ok((
                        units,
                        SolverPath::Milp {
                            variables,
                            solves: *solves,
                            branch_nodes: *branch_nodes,
                            optimality,
                        },
                    )),
                    Some(why) => self.fallback(allowed, format!("the solver's answer broke a rule ({why})")),
                }
            }
            MilpResult::Infeasible { nodes } => {
                *branch_nodes += nodes;
                Err(Failure {
                    path: SolverPath::Milp {
                        variables,
                        solves: *solves,
                        branch_nodes: *branch_nodes,
                        optimality: Optimality::Proven,
                    },
                    why: None,
                })
            }
            MilpResult::Interrupted { nodes } => {
                *branch_nodes += nodes;
                self.fallback(
                    allowed,
                    format!("no solution within the work limit of {} branch nodes", config.node_limit),
                )
            }
            MilpResult::Failed(why) => self.fallback(allowed, format!("solver failed: {why}")),
        }
    }

    /// The cheapest allowed group alone fills the request exactly, and nothing else matters.
    fn fast_path(&self, allowed: &dyn Fn(&Group) -> bool, hold: Option<u32>) -> Option<Vec<u32>> {
        let rules_matter = !self.spend_caps.is_empty()
            || (0..self.providers.len()).any(|p| self.credit(p) > 0.0)
            || self.min_providers() > 1
            || self.fallback_weight > 0.0;
        if rules_matter {
            return None;
        }
        let (index, cheapest) =
            self.groups.iter().enumerate().filter(|(_, g)| allowed(g)).min_by(|(_, a), (_, b)| {
                self.effective_price(a, hold)
                    .total_cmp(&self.effective_price(b, hold))
                    .then(a.rank.cmp(&b.rank))
            })?;
        let per_unit = cheapest.shape.blocks_per_unit;
        let exact = self.blocks_needed.is_multiple_of(per_unit);
        let units = self.blocks_needed / per_unit;
        let fits = cheapest.units >= units
            && self.gpu_room[cheapest.provider].is_none_or(|room| {
                f64::from(units * cheapest.unit_gpus) <= room + self.tolerance_gpus[cheapest.provider]
            });
        (exact && fits).then(|| {
            let mut chosen = vec![0; self.groups.len()];
            chosen[index] = units;
            chosen
        })
    }

    fn milp(&self, config: SolverConfig, allowed: &dyn Fn(&Group) -> bool, hold: Option<u32>) -> MilpResult {
        let mut lp = LpProblem::new(OptimizationDirection::Minimize);
        let vars: Vec<Option<Variable>> = self
            .groups
            .iter()
            .map(|g| {
                allowed(g).then(|| {
                    let tie = TIE_BREAK_EPSILON * (g.rank + 1) as f64;
                    lp.add_integer_var(
                        self.objective_cost(g, hold) + tie,
                        (0, i32::try_from(g.units).unwrap_or(i32::MAX)),
                    )
                })
            })
            .collect();
        let terms = |f: &dyn Fn(&Group) -> f64, provider: Option<usize>| -> Vec<(Variable, f64)> {
            self.groups
                .iter()
                .zip(&vars)
                .filter(|(g, _)| provider.is_none_or(|p| g.provider == p))
                .filter_map(|(g, v)| v.map(|v| (v, f(g))))
                .collect()
        };
        let max_blocks =
            self.groups.iter().filter(|g| allowed(g)).map(|g| g.shape.blocks_per_unit).max().unwrap_or(1);
        let blocks = |g: &Group| f64::from(g.shape.blocks_per_unit);
        lp.add_constraint(terms(&blocks, None).as_slice(), ComparisonOp::Ge, f64::from(self.blocks_needed));
        // Never a whole unit more than needed; each provider the minimum requires may bring
        // one unit however many blocks it carries.
        lp.add_constraint(
            terms(&blocks, None).as_slice(),
            ComparisonOp::Le,
            f64::from(self.blocks_needed) - 1.0 + f64::from(max_blocks) * self.min_providers() as f64,
        );
        let gpus = |g: &Group| f64::from(g.unit_gpus);
        // What a unit bills over the request, held hours included (against a credit).
        let billed = |g: &Group| g.unit_spend * self.billed_hours(g, hold);
        let fleet_spend: f64 = self.rules.fleet.spend_per_hour.values().sum();
        let mut used_flags = Vec::new();
        for (p, provider) in self.providers.iter().enumerate() {
            let mine = terms(&gpus, Some(p));
            if mine.is_empty() {
                continue;
            }
            if let Some(room) = self.gpu_room[p] {
                // GPUs per unit are whole numbers: divided by their greatest common divisor, the
                // row's right-hand side may be rounded down (a Chvatal-Gomory cut that removes no
                // integer award). When a provider sells one node size this makes the row a plain
                // count of units, and the relaxation integral.
                let divisor = self
                    .groups
                    .iter()
                    .zip(&vars)
                    .filter(|(g, v)| g.provider == p && v.is_some())
                    .fold(0, |d, (g, _)| gcd(d, g.unit_gpus))
                    .max(1);
                let row: Vec<(Variable, f64)> =
                    mine.iter().map(|(v, c)| (*v, c / f64::from(divisor))).collect();
                // A provider already above its share gets nothing more (a limit of zero units).
                let limit =
                    ((room + self.tolerance_gpus[p]) / f64::from(divisor) + RULE_TOLERANCE).floor().max(0.0);
                lp.add_constraint(row.as_slice(), ComparisonOp::Le, limit);
            }
            for cap in &self.spend_caps {
                // spend_p + held_p <= share * (fleet + spend_all) + tolerance
                let held = self.rules.fleet.spend_per_hour.get(provider).copied().unwrap_or(0.0);
                let slack = cap.max_share * fleet_spend - held + self.tolerance_spend[p];
                if slack < 0.0 {
                    // Above its share already: nothing more, and no purchase elsewhere to dilute it.
                    let units: Vec<(Variable, f64)> = terms(&|_| 1.0, Some(p));
                    lp.add_constraint(units.as_slice(), ComparisonOp::Le, 0.0);
                    continue;
                }
                let mut row: Vec<(Variable, f64)> = Vec::new();
                for (g, v) in self.groups.iter().zip(&vars) {
                    let Some(v) = v else { continue };
                    let own = if g.provider == p { 1.0 } else { 0.0 };
                    let coefficient = g.unit_spend * (own - cap.max_share);
                    if coefficient != 0.0 {
                        row.push((*v, coefficient));
                    }
                }
                lp.add_constraint(row.as_slice(), ComparisonOp::Le, slack);
            }
            let credit = self.credit(p);
            if credit > 0.0 {
                // excess >= billed_p - credit, i.e. billed_p - excess <= credit.
                let excess = lp.add_var(1.0, (0.0, f64::INFINITY));
                let mut row: Vec<(Variable, f64)> = terms(&billed, Some(p));
                row.push((excess, -1.0));
                lp.add_constraint(row.as_slice(), ComparisonOp::Le, credit);
            }
            if self.min_providers() > 1 {
                let used = lp.add_binary_var(0.0);
                let mut row: Vec<(Variable, f64)> =
                    terms(&|_| 1.0, Some(p)).into_iter().map(|(v, _)| (v, -1.0)).collect();
                row.push((used, 1.0));
                lp.add_constraint(row.as_slice(), ComparisonOp::Le, 0.0);
                used_flags.push((used, 1.0));
            }
        }
        if self.min_providers() > 1 {
            lp.add_constraint(used_flags.as_slice(), ComparisonOp::Ge, self.min_providers() as f64);
        }
        let mut options = SolveOptions::default();
        options.node_limit = Some(config.node_limit);
        match lp.solve_with(options) {
            Ok(outcome) => {
                let stats = outcome.stats();
                match outcome.into_solution() {
                    Ok(solution) => {
                        let optimality = match solution.status() {
                            microlp::SolutionStatus::Optimal => Optimality::Proven,
                            microlp::SolutionStatus::Feasible => {
                                Optimality::Gap { gap: solution.gap().or(stats.gap).unwrap_or(f64::NAN) }
                            }
                        };
                        let units = vars
                            .iter()
                            .map(|v| v.map_or(0, |v| solution.var_value(v).round().max(0.0) as u32))
                            .collect();
                        MilpResult::Solved { units, nodes: stats.nodes_solved, optimality }
                    }
                    Err(_) => MilpResult::Interrupted { nodes: stats.nodes_solved },
                }
            }
            Err(microlp::Error::Infeasible) => MilpResult::Infeasible { nodes: 0 },
            Err(other) => MilpResult::Failed(other.to_string()),
        }
    }

    /// The greedy fallback: one unit from each of the cheapest providers the minimum needs,
    /// then the cheapest units first, each only if no cap is broken. Checked against every
    /// rule at the end; if it breaks one, no award.
    fn fallback(
        &self,
        allowed: &dyn Fn(&Group) -> bool,
        why: String,
    ) -> Result<(Vec<u32>, SolverPath), Failure> {
        let mut order: Vec<usize> = (0..self.groups.len()).filter(|&g| allowed(&self.groups[g])).collect();
        order.sort_by_key(|&g| self.groups[g].rank);
        let mut units = vec![0u32; self.groups.len()];
        let mut seeded = BTreeSet::new();
        for &g in &order {
            if seeded.len() >= self.min_providers() {
                break;
            }
            if seeded.insert(self.groups[g].provider) {
                units[g] = 1;
            }
        }
        let block_count = |units: &[u32]| -> u64 {
            self.groups
                .iter()
                .zip(units)
                .map(|(g, u)| u64::from(*u) * u64::from(g.shape.blocks_per_unit))
                .sum()
        };
        for &g in &order {
            while units[g] < self.groups[g].units && block_count(&units) < u64::from(self.blocks_needed) {
                units[g] += 1;
                let caps_ok = self.violation(&units, allowed).is_none_or(|v| v.contains("blocks of"));
                if !caps_ok {
                    units[g] -= 1;
                    break;
                }
            }
        }
        match self.violation(&units, allowed) {
            None => Ok((units, SolverPath::Fallback { why })),
            Some(broken) => Err(Failure {
                path: SolverPath::Fallback { why: why.clone() },
                why: Some(format!(
                    "no award within the rules was found: {why}, and the greedy fallback could not meet every rule ({broken})"
                )),
            }),
        }
    }

    /// `same_region`: the cheapest single offer that holds the whole request within the rules.
    fn single_offer(&self, candidates: &[Candidate]) -> Solved {
        let request = self.demand.request;
        // The order: earliest ready (objective time), then earliest place (fallback), then cost, then rank.
        // (offer, units, (lead, place, cost, rank))
        type Choice = (usize, u32, (u32, usize, f64, usize));
        let mut best: Option<Choice> = None;
        let mut compared = 0;
        for candidate in candidates {
            let Some((g, group)) =
                self.groups.iter().enumerate().find(|(_, g)| g.members.contains(&candidate.offer))
            else {
                continue;
            };
            let units = self.blocks_needed.div_ceil(candidate.shape.blocks_per_unit);
            if candidate.units < units {
                continue;
            }
            let mut chosen = vec![0; self.groups.len()];
            chosen[g] = units;
            if self.violation(&chosen, &|_| true).is_some() {
                continue;
            }
            compared += 1;
            let lead = if request.objective == Objective::Time { group.lead_time_hours } else { 0 };
            let place = if request.preference == Preference::Fallback { group.place } else { 0 };
            let key = (lead, place, self.unit_cost(group, None) * f64::from(units), group.rank);
            let better = best.as_ref().is_none_or(|(_, _, k)| {
                key.0
                    .cmp(&k.0)
                    .then(key.1.cmp(&k.1))
                    .then(key.2.total_cmp(&k.2))
                    .then(key.3.cmp(&k.3))
                    .is_lt()
            });
            if better {
                best = Some((candidate.offer, units, key));
            }
        }
        match best {
            Some((offer, units, _)) => {
                let g = self.groups.iter().position(|g| g.members.contains(&offer)).expect("found above");
                let mut chosen = vec![0; self.groups.len()];
                chosen[g] = units;
                Solved {
                    units: chosen,
                    path: SolverPath::SingleRegion { candidates: compared },
                    infeasible: None,
                    level: None,
                    lead_limit: None,
                    hold: None,
                    single: Some(offer),
                }
            }
            None => Solved {
                units: vec![0; self.groups.len()],
                path: SolverPath::SingleRegion { candidates: 0 },
                infeasible: Some(format!(
                    "same region: no single offer holds {} GPUs ({} units) within the rules; allow a split \
                     across regions, or ask for fewer GPUs",
                    self.demand.gpus, self.blocks_needed
                )),
                level: None,
                lead_limit: None,
                hold: None,
                single: None,
            },
        }
    }

    /// A rule that no choice of offers can satisfy, said with what would make it possible.
    fn impossible_by_rule(&self) -> Option<String> {
        let k = self.min_providers();
        if let Some(why) = min_providers_unmet(self.demand.request, self.demand.gpus, self.rules) {
            return Some(why);
        }
        if k > 1 {
            let (_, source) = self.rules.min_providers.as_ref().expect("k > 1");
            let suppliers: BTreeSet<usize> = self.groups.iter().map(|g| g.provider).collect();
            if suppliers.len() < k {
                let names: Vec<&str> = suppliers.iter().map(|p| self.providers[*p].as_str()).collect();
                return Some(format!(
                    "the minimum of {k} providers ({source}) cannot be met: only {} can supply this request ({})",
                    suppliers.len(),
                    names.join(", ")
                ));
            }
        }
        None
    }

    /// Why no offer survived the filters, by count of reasons.
    fn no_candidates_reason(&self) -> String {
        if self.filtered.is_empty() {
            "no offers were quoted".to_owned()
        } else {
            format!("no offer passed the filters: {}", self.filtered)
        }
    }

    /// Why a request with candidates has no award: capacity, caps, or the rules together.
    fn infeasible_reason(&self) -> String {
        let block = self.demand.request.block.get();
        let total_blocks: u64 =
            self.groups.iter().map(|g| u64::from(g.units) * u64::from(g.shape.blocks_per_unit)).sum();
        if total_blocks < u64::from(self.blocks_needed) {
            return format!(
                "not enough capacity: {} GPUs can be placed in whole {}-GPU blocks, {} needed",
                total_blocks * u64::from(block),
                block,
                self.demand.gpus
            );
        }
        let mut within = 0u64;
        for (p, _) in self.providers.iter().enumerate() {
            let mut blocks = 0u64;
            let mut gpus = 0.0;
            let mut order: Vec<&Group> = self.groups.iter().filter(|g| g.provider == p).collect();
            order.sort_by_key(|g| g.rank);
            for g in order {
                for _ in 0..g.units {
                    let room = self.gpu_room[p].map_or(f64::INFINITY, |r| r + self.tolerance_gpus[p]);
                    if gpus + f64::from(g.unit_gpus) > room + RULE_TOLERANCE {
                        break;
                    }
                    gpus += f64::from(g.unit_gpus);
                    blocks += u64::from(g.shape.blocks_per_unit);
                }
            }
            within += blocks;
        }
        if within < u64::from(self.blocks_needed)
            && let Some(source) = &self.gpu_cap_source
        {
            let share = self
                .rules
                .caps
                .iter()
                .filter(|c| c.basis == ShareBasis::Gpus)
                .map(|c| c.max_share)
                .fold(1.0, f64::min);
            return format!(
                "not enough capacity within the diversification cap ({source}, {:.0}% by GPUs): {} GPUs can be \
                 placed, {} needed; the {} provider(s) with capacity would need a larger share, or more \
                 providers or regions must be allowed",
                share * 100.0,
                within * u64::from(block),
                self.demand.gpus,
                self.providers.len()
            );
        }
        match &self.rules.min_providers {
            Some((k, source)) if *k > 1 => {
                format!("no award meets the caps and the minimum of {k} providers ({source})")
            }
            _ if !self.spend_caps.is_empty() => {
                let sources: Vec<&str> = self.spend_caps.iter().map(|c| c.source.as_str()).collect();
                format!("no award meets the spend cap ({})", sources.join(", "))
            }
            _ => "no award meets the rules".to_owned(),
        }
    }

    /// Gives every feasible offer that lost its reason.
    fn explain(
        &self,
        verdicts: &mut [Option<Rejection>],
        solved: &Solved,
        candidates: &[Candidate],
        awarded: &BTreeSet<usize>,
    ) {
        let request = self.demand.request;
        let used_gpus: Vec<f64> = (0..self.providers.len())
            .map(|p| {
                self.groups
                    .iter()
                    .zip(&solved.units)
                    .filter(|(g, _)| g.provider == p)
                    .map(|(g, u)| f64::from(*u) * f64::from(g.unit_gpus))
                    .sum()
            })
            .collect();
        let chosen: Vec<&Group> =
            self.groups.iter().zip(&solved.units).filter(|(_, u)| **u > 0).map(|(g, _)| g).collect();
        let price = |g: &Group| self.effective_price(g, solved.hold);
        let marginal = chosen.iter().map(|g| price(g)).fold(0.0, f64::max);
        let award_lead = chosen.iter().map(|g| g.lead_time_hours).max().unwrap_or(0);
        let start = self.demand.now.max(request.earliest_start);
        for candidate in candidates {
            if verdicts[candidate.offer].is_some() {
                continue;
            }
            if awarded.contains(&candidate.offer) && solved.infeasible.is_none() {
                continue;
            }
            let group = self.groups.iter().find(|g| g.members.contains(&candidate.offer));
            let reason = match group {
                _ if solved.infeasible.is_some() => Rejection::NoFeasibleAward,
                None => Rejection::NotInOptimum,
                Some(group) => {
                    let offer = &self.offers[candidate.offer];
                    if let Some(single) = solved.single {
                        let holds = candidate.units * candidate.shape.blocks_per_unit * request.block.get();
                        if holds < self.demand.gpus {
                            Rejection::TooSmallAlone { holds, needed: self.demand.gpus }
                        } else if price(group) > marginal + 1e-9 {
                            Rejection::Costlier { effective_price: price(group), marginal_price: marginal }
                        } else {
                            Rejection::NotTheSingleOffer { chosen: self.offers[single].id.clone() }
                        }
                    } else if let Some(level) = solved.level
                        && group.place > level
                    {
                        Rejection::LaterChoice { place: group.place, filled_at: level }
                    } else if let Some(limit) = solved.lead_limit
                        && offer.lead_time_hours > limit
                    {
                        Rejection::Slower {
                            ready_at: start.plus_hours(f64::from(offer.lead_time_hours)),
                            award_ready_at: start.plus_hours(f64::from(award_lead)),
                        }
                    } else if let Some(room) = self.gpu_room[group.provider]
                        && used_gpus[group.provider] + f64::from(group.unit_gpus)
                            > room + self.tolerance_gpus[group.provider] + RULE_TOLERANCE
                    {
                        Rejection::AtCap { cap: self.gpu_cap_source.clone().unwrap_or_default() }
                    } else if price(group) > marginal + 1e-9 {
                        Rejection::Costlier { effective_price: price(group), marginal_price: marginal }
                    } else if let Some(last) = solved.hold
                        && offer.lead_time_hours > last
                    {
                        Rejection::HeldTooLong {
                            ready_at: start.plus_hours(f64::from(offer.lead_time_hours)),
                            award_ready_at: start.plus_hours(f64::from(award_lead)),
                        }
                    } else if (price(group) - marginal).abs() <= 1e-9 {
                        Rejection::LostTieBreak
                    } else {
                        Rejection::NotInOptimum
                    }
                }
            };
            verdicts[candidate.offer] = Some(reason);
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A model that gave no award: how it was tried, and why, when that is known.
struct Failure {
    path: SolverPath,
    why: Option<String>,
}

enum MilpResult {
    Solved { units: Vec<u32>, nodes: u64, optimality: Optimality },
    Infeasible { nodes: u64 },
    Interrupted { nodes: u64 },
    Failed(String),
}
