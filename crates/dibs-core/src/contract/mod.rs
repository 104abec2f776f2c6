//! Contracts as code: the domain model, the TOML parser and the "terms in
//! force at an instant" query the engine asks before every decision.
//!
//! A contract has versions; an amendment is a new version with its own
//! effective date. At any instant at most one version of a contract is in
//! force, and the engine records which one every decision used.

mod condition;
mod describe;
pub(crate) mod parse;

pub use condition::{Condition, ConditionError, Metrics};
pub use describe::describe_in_force;
pub use parse::{
    ContractError, ContractSetBuilder, SourceLocation, builtin_contract_texts, builtin_contracts,
    contract_paths, contract_set_from_texts, load_contract_dir, load_contract_files, parse_contract,
    parse_policy, read_contract_texts,
};

use serde::Serialize;

use crate::types::{Accelerator, Location, Price, ProviderName, Timestamp, WorkloadClass};

/// A set of contracts and the buyer's own policy, as loaded from files.
#[derive(Debug, Clone, Default)]
pub struct ContractSet {
    pub contracts: Vec<Contract>,
    pub policy: Policy,
}

/// The agreement with one counterparty.
#[derive(Debug, Clone)]
pub struct Contract {
    pub id: String,
    pub counterparty: ProviderName,
    pub parties: Vec<String>,
    /// Sorted by effective date; validated not to overlap.
    pub versions: Vec<ContractVersion>,
    /// The file the contract was read from, for messages.
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct ContractVersion {
    pub id: String,
    pub effective: Timestamp,
    /// The first instant the version is no longer in force.
    pub expires: Timestamp,
    pub clauses: Vec<Clause>,
}

/// One clause, named so that review triggers can suspend it and the ledger can cite it.
#[derive(Debug, Clone)]
pub struct Clause {
    pub name: String,
    pub kind: ClauseKind,
}

#[derive(Debug, Clone)]
pub enum ClauseKind {
    FirstRefusal(FirstRefusal),
    Exclusivity(Exclusivity),
    Commitment(Commitment),
    Diversification(Diversification),
    RevenueShare(RevenueShare),
    ReviewTrigger(ReviewTrigger),
}

impl ClauseKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::FirstRefusal(_) => "first_refusal",
            Self::Exclusivity(_) => "exclusivity",
            Self::Commitment(_) => "commitment",
            Self::Diversification(_) => "diversification",
            Self::RevenueShare(_) => "revenue_share",
            Self::ReviewTrigger(_) => "review_trigger",
        }
    }
}

/// What a clause applies to. An empty list means "all".
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scope {
    pub workloads: Vec<WorkloadClass>,
    pub accelerators: Vec<Accelerator>,
    /// Provider-qualified (`azure/eastus`, `azure/*`).
    pub regions: Vec<Location>,
}

impl Scope {
    pub fn covers(
        &self,
        workload: WorkloadClass,
        accelerators: &[Accelerator],
        regions: &[Location],
    ) -> bool {
        let workload_ok = self.workloads.is_empty() || self.workloads.contains(&workload);
        let accelerator_ok =
            self.accelerators.is_empty() || accelerators.iter().any(|a| self.accelerators.contains(a));
        // A request that allows any region (empty list) is covered by any region scope.
        let region_ok = self.regions.is_empty()
            || regions.is_empty()
            || regions.iter().any(|r| self.regions.iter().any(|s| s.overlaps(r)));
        workload_ok && accelerator_ok && region_ok
    }
}

/// The price per GPU-hour a first-refusal holder is offered: a term of the clause.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, serde::Deserialize)]
#[serde(tag = "basis", rename_all = "snake_case")]
pub enum HolderTerms {
    /// The holder's own list price: its cheapest offer that meets the request.
    #[default]
    List,
    /// A fixed, negotiated price.
    Fixed { price: Price },
    /// A negotiated discount (a fraction, 0 to 1) off the holder's list price.
    Discount { off: f64 },
    /// The market reference: what the best combination of other providers' published offers
    /// would cost for the same capacity at that moment, per GPU-hour.
    Market,
}

impl std::fmt::Display for HolderTerms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::List => f.write_str("the holder's list price"),
            Self::Fixed { price } => write!(f, "a fixed {price}"),
            Self::Discount { off } => write!(f, "{:.0}% off the holder's list price", off * 100.0),
            Self::Market => f.write_str("the market reference price"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalMode {
    /// A right of first offer: the holder is asked first, on the buyer's terms.
    OfferFirst,
    /// A right of first refusal proper: the market is asked first, then the
    /// holder may match the winning terms.
    Match,
}

impl std::fmt::Display for RefusalMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RefusalMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OfferFirst => "offer-first",
            Self::Match => "match",
        }
    }
}

/// After the holder declined (offer-first), what happens when the market's terms turn out
/// pricier than those it declined: the contract's choice, stated in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoBetterTerms {
    /// The award goes back to the holder on the market's terms: the price per GPU-hour and
    /// the GPUs it may take. What is disclosed is those terms only, never who offered them
    /// or any other quote.
    #[default]
    ShowTerms,
    /// Nothing of the market is shown to the holder: the market is held to the price the
    /// holder declined, and what it cannot supply at that price is unfilled.
    HoldMarket,
}

impl NoBetterTerms {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ShowTerms => "show-terms",
            Self::HoldMarket => "hold-market",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FirstRefusal {
    pub holder: ProviderName,
    pub scope: Scope,
    pub mode: RefusalMode,
    /// What the holder is offered in offer-first mode. In match mode it is shown the market's
    /// winning terms, which it may match.
    pub terms: HolderTerms,
    pub window_hours: u32,
    pub covers_spillover: bool,
    pub covers_failover: bool,
    /// Offer-first: what a pricier market award after a decline does (see [`NoBetterTerms`]).
    pub no_better_terms: NoBetterTerms,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exclusivity {
    pub holder: ProviderName,
    pub workloads: Vec<WorkloadClass>,
    /// Whether an exclusive workload may fail over outside the holder when the holder is down.
    pub emergency_release: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Commitment {
    pub provider: ProviderName,
    pub amount: f64,
    pub currency: String,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    /// Workload classes whose spend counts toward the commitment; empty = all.
    pub counts: Vec<WorkloadClass>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareBasis {
    Gpus,
    Spend,
}

impl ShareBasis {
    /// The basis as a screening entry of the ledger names it in its caps (`40% by Gpus
    /// (...)`). Frozen: that text is hashed into every ledger written so far.
    pub fn ledger_name(self) -> &'static str {
        match self {
            Self::Gpus => "Gpus",
            Self::Spend => "Spend",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diversification {
    /// The largest share of the fleet (0 < share <= 1) one provider may hold.
    pub max_share: f64,
    pub basis: ShareBasis,
    pub scope: Scope,
    /// A minimum number of distinct providers per workload class.
    pub min_providers: Vec<(WorkloadClass, u32)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RevenueShare {
    pub partner: String,
    pub rate: f64,
    pub products: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ReviewTrigger {
    pub condition: Condition,
    pub action: TriggerAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum TriggerAction {
    FlagForReview,
    SuspendClauses { clauses: Vec<String>, from: Timestamp },
}

/// The buyer's own policy: price ceilings, allowed regions and diversification rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Provider-qualified; empty means anywhere.
    pub allowed_regions: Vec<Location>,
    /// Providers the market may award to; empty means any. The buyer's own policy: a
    /// first-refusal holder is solicited whatever it says.
    pub allowed_providers: Vec<ProviderName>,
    /// Providers the market may never award to (same reservation).
    pub excluded_providers: Vec<ProviderName>,
    /// Whether a provider with no contract on file is kept out of the market (`uncontracted =
    /// "exclude"`); by default (`"allow"`) it may win market awards on list terms.
    pub exclude_uncontracted: bool,
    pub price_ceilings: Vec<(Accelerator, Price)>,
    pub diversification: Vec<Diversification>,
    pub source: Option<String>,
}

impl Policy {
    pub fn price_ceiling(&self, accelerator: &Accelerator) -> Option<Price> {
        self.price_ceilings.iter().find(|(a, _)| a == accelerator).map(|(_, p)| *p)
    }
}

/// A clause in force, with the contract and version it came from.
#[derive(Debug, Clone)]
pub struct InForce<'a, T> {
    pub contract: &'a str,
    pub version: &'a str,
    pub clause: &'a str,
    pub terms: &'a T,
}

/// The clauses in force at one instant.
#[derive(Debug, Clone, Default)]
pub struct TermsInForce<'a> {
    pub at: Option<Timestamp>,
    /// `(contract id, version id)` of every version in force.
    pub versions: Vec<(&'a str, &'a str)>,
    pub first_refusals: Vec<InForce<'a, FirstRefusal>>,
    pub exclusivities: Vec<InForce<'a, Exclusivity>>,
    pub commitments: Vec<InForce<'a, Commitment>>,
    pub diversifications: Vec<InForce<'a, Diversification>>,
    pub revenue_shares: Vec<InForce<'a, RevenueShare>>,
    pub review_triggers: Vec<InForce<'a, ReviewTrigger>>,
}

/// A clause suspended by a review trigger's action, from an instant on.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Suspension {
    pub contract: String,
    pub clause: String,
    pub from: Timestamp,
}

impl Contract {
    /// The version in force at `at`, if any.
    pub fn version_at(&self, at: Timestamp) -> Option<&ContractVersion> {
        self.versions.iter().find(|v| v.effective <= at && at < v.expires)
    }
}

/// What to say of providers with no contract on file ([`ContractSet::uncontracted`]).
pub fn uncontracted_warning(providers: &[ProviderName]) -> String {
    let names: Vec<&str> = providers.iter().map(|p| p.as_str()).collect();
    format!(
        "no contract on file with {}: they may win market awards on list terms (the policy's uncontracted = \"exclude\" keeps them out)",
        names.join(", ")
    )
}

impl ContractSet {
    /// The clauses in force at `at`, leaving out those suspended by then.
    pub fn in_force(&self, at: Timestamp, suspended: &[Suspension]) -> TermsInForce<'_> {
        let mut terms = TermsInForce { at: Some(at), ..TermsInForce::default() };
        for contract in &self.contracts {
            let Some(version) = contract.version_at(at) else { continue };
            terms.versions.push((&contract.id, &version.id));
            for clause in &version.clauses {
                let is_suspended = suspended
                    .iter()
                    .any(|s| s.contract == contract.id && s.clause == clause.name && s.from <= at);
                if is_suspended {
                    continue;
                }
                let (contract, version, name) =
                    (contract.id.as_str(), version.id.as_str(), clause.name.as_str());
                macro_rules! push {
                    ($list:ident, $value:expr) => {
                        terms.$list.push(InForce { contract, version, clause: name, terms: $value })
                    };
                }
                match &clause.kind {
                    ClauseKind::FirstRefusal(c) => push!(first_refusals, c),
                    ClauseKind::Exclusivity(c) => push!(exclusivities, c),
                    ClauseKind::Commitment(c) => push!(commitments, c),
                    ClauseKind::Diversification(c) => push!(diversifications, c),
                    ClauseKind::RevenueShare(c) => push!(revenue_shares, c),
                    ClauseKind::ReviewTrigger(c) => push!(review_triggers, c),
                }
            }
        }
        terms
    }
}

impl ContractSet {
    /// Providers that publish offers but have no contract on file, and that the buyer's
    /// policy does not keep out of the market: they may win market awards on list terms,
    /// under no commitment, exclusivity or revenue-share clause.
    pub fn uncontracted(&self, names: &crate::names::Names) -> Vec<ProviderName> {
        let policy = &self.policy;
        if policy.exclude_uncontracted {
            return Vec::new();
        }
        names
            .providers()
            .filter(|p| !self.contracts.iter().any(|c| &c.counterparty == *p))
            .filter(|p| !policy.excluded_providers.contains(p))
            .filter(|p| policy.allowed_providers.is_empty() || policy.allowed_providers.contains(p))
            .cloned()
            .collect()
    }

    /// Names in the contracts and the policy that no offer uses: a holder or committed provider
    /// with no offers (its first refusal would always be skipped, its exclusive workloads never
    /// placed), accelerators and regions that do not exist. Each line names the file and clause.
    pub fn names_not_in(&self, names: &crate::names::Names) -> Vec<String> {
        let mut found = Vec::new();
        let location = |source: &str, what: String, l: &Location| -> Option<String> {
            let known = match &l.region {
                Some(region) => names.has_location(&l.provider, region),
                None => names.has_provider(&l.provider),
            };
            (!known).then(|| format!("{source}: {what}: no offers in {l}"))
        };
        for contract in &self.contracts {
            for version in &contract.versions {
                for clause in &version.clauses {
                    let at = format!(
                        "{}: {} {} (version {})",
                        contract.source,
                        clause.kind.name(),
                        clause.name,
                        version.id
                    );
                    let (provider, consequence) = match &clause.kind {
                        ClauseKind::FirstRefusal(c) => {
                            (&c.holder, "its first refusal would always be skipped")
                        }
                        ClauseKind::Exclusivity(c) => {
                            (&c.holder, "its exclusive workloads could never be placed")
                        }
                        ClauseKind::Commitment(c) => (&c.provider, "no spend could burn the commitment down"),
                        _ => continue,
                    };
                    if !names.has_provider(provider) {
                        found.push(format!("{at}: {provider} has no offers in the catalog; {consequence}"));
                    }
                    if let ClauseKind::FirstRefusal(c) = &clause.kind {
                        for l in &c.scope.regions {
                            let what = format!("{} {}", clause.kind.name(), clause.name);
                            found.extend(location(&contract.source, what, l));
                        }
                    }
                }
            }
        }
        let source = self.policy.source.as_deref().unwrap_or("policy");
        for l in &self.policy.allowed_regions {
            found.extend(location(source, "allowed_regions".to_owned(), l));
        }
        for p in self.policy.allowed_providers.iter().chain(&self.policy.excluded_providers) {
            if !names.has_provider(p) {
                found.push(format!("{source}: provider {p}: no offers in the catalog"));
            }
        }
        for (accelerator, _) in &self.policy.price_ceilings {
            if !names.has_accelerator(accelerator) {
                found.push(format!(
                    "{source}: price ceiling for {accelerator}: no offers of that accelerator"
                ));
            }
        }
        found
    }
}
