//! Screening: the rules a round runs under, derived from the contracts and the buyer's
//! policy in force at its start (exclusivity, price ceilings, caps, commitments'
//! credits, exclusions, and whether first refusal applies).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::*;
use crate::commitments::CommitmentKey;
use crate::contract::{HolderTerms, NoBetterTerms, RefusalMode};

/// A minimum of `k` providers per request, less the providers the request already uses.
pub(super) fn remaining_min_providers(
    rule: &Option<(u32, String)>,
    in_use: &BTreeSet<ProviderName>,
) -> Option<(u32, String)> {
    let (k, source) = rule.as_ref()?;
    let left = k.saturating_sub(in_use.len() as u32);
    (left > 1).then(|| (left, source.clone()))
}

/// The key of a commitment clause in force.
pub(super) fn commitment_key(c: &crate::contract::InForce<'_, crate::contract::Commitment>) -> CommitmentKey {
    CommitmentKey {
        contract: c.contract.to_owned(),
        version: c.version.to_owned(),
        clause: c.clause.to_owned(),
    }
}

/// The first-refusal terms that apply to a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct RefusalTerms {
    pub(super) holder: ProviderName,
    pub(super) mode: RefusalMode,
    pub(super) terms: HolderTerms,
    pub(super) window_hours: u32,
    pub(super) no_better_terms: NoBetterTerms,
    pub(super) reference: String,
}

/// The rules screening derived for a round, fixed for its life.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Screened {
    pub(super) refusal: Option<RefusalTerms>,
    pub(super) rules: Rules,
    /// The minimum-provider rule as written; `rules.min_providers` is what is left of it
    /// once the providers the request already uses are counted.
    pub(super) min_providers: Option<(u32, String)>,
}

impl Engine {
    /// Derives the rules for a round from the contracts and policy in force now.
    pub(super) fn screen(&self, state: &RequestState, purpose: Purpose, now: Timestamp) -> Screened {
        let request = &state.request;
        let terms = self.contracts.in_force(now, &self.suspensions);
        let policy = &self.contracts.policy;
        let mut rules = Rules {
            policy_regions: policy.allowed_regions.clone(),
            largest_node: self.largest_node.clone(),
            ..Rules::default()
        };

        // Exclusivity narrows the field to the holder, unless it is down and the clause releases in emergencies.
        for exclusive in &terms.exclusivities {
            if exclusive.terms.workloads.contains(&request.workload) {
                let holder = exclusive.terms.holder.clone();
                let released = purpose == Purpose::Failover
                    && exclusive.terms.emergency_release
                    && self.provider_down(&holder, None).is_some();
                if !released {
                    rules.exclusive_to = Some((
                        holder,
                        format!("{}/{}/{}", exclusive.contract, exclusive.version, exclusive.clause),
                    ));
                }
            }
        }

        // Price ceiling: the lower of the request's and the policy's for each acceptable accelerator.
        let policy_ceiling = request
            .accelerators
            .iter()
            .filter_map(|a| policy.price_ceiling(a))
            .map(Price::get)
            .fold(None, |acc: Option<f64>, p| Some(acc.map_or(p, |a| a.max(p))));
        rules.price_ceiling = match (request.max_price.map(Price::get), policy_ceiling) {
            (Some(a), Some(b)) => Price::new(a.min(b)).ok(),
            (Some(a), None) | (None, Some(a)) => Price::new(a).ok(),
            (None, None) => None,
        };

        // Diversification: the policy's rules and the contracts' clauses that cover this request.
        let diversifications = policy
            .diversification
            .iter()
            .map(|d| (d, format!("policy:{}", policy.source.as_deref().unwrap_or("policy"))))
            .chain(
                terms
                    .diversifications
                    .iter()
                    .map(|d| (d.terms, format!("{}/{}/{}", d.contract, d.version, d.clause))),
            );
        for (rule, source) in diversifications {
            if rule.scope.covers(request.workload, &request.accelerators, &request.regions)
                && rule.max_share < 1.0
            {
                rules.caps.push(Cap { max_share: rule.max_share, basis: rule.basis, source: source.clone() });
            }
            for (class, k) in &rule.min_providers {
                if *class == request.workload && rules.min_providers.as_ref().is_none_or(|(m, _)| *k > *m) {
                    rules.min_providers = Some((*k, source.clone()));
                }
            }
        }
        if !rules.caps.is_empty() {
            rules.fleet = self.fleet(request.workload);
        }

        // Commitments: the projected shortfall is spend the buyer owes anyway (the one formula,
        // `commitments`, that settlement uses too).
        for commitment in &terms.commitments {
            let c = commitment.terms;
            let counts = c.counts.is_empty() || c.counts.contains(&request.workload);
            if counts
                && c.period_start <= now
                && now < c.period_end
                && let Some(status) =
                    self.commitments.status(&commitment_key(commitment), &self.allocations, now)
            {
                *rules.credits.entry(c.provider.clone()).or_default() += status.projected_shortfall;
            }
        }

        // The buyer's policy on providers: the market only (a first-refusal holder is still
        // solicited; its own rules, below, decide that).
        for provider in &policy.excluded_providers {
            rules.excluded.insert(provider.clone(), "excluded by the buyer's policy".into());
        }
        if !policy.allowed_providers.is_empty() {
            for provider in self.published.keys().filter(|p| !policy.allowed_providers.contains(p)) {
                rules
                    .excluded
                    .insert(provider.clone(), "not among the providers the buyer's policy allows".into());
            }
        }
        // Providers with no contract on file, when the policy keeps them out.
        if policy.exclude_uncontracted {
            for provider in self
                .published
                .keys()
                .filter(|p| !self.contracts.contracts.iter().any(|c| &c.counterparty == *p))
            {
                rules.excluded.entry(provider.clone()).or_insert_with(|| {
                    "no contract on file (the buyer's policy: uncontracted = \"exclude\")".into()
                });
            }
        }
        // Providers that failed this request before are not asked again.
        for (provider, why) in &state.failed_providers {
            rules.excluded.insert(provider.clone(), why.clone());
        }
        // Providers that are down may not be used.
        for (incident_id, incident) in &self.incidents {
            let why = format!("down (incident {incident_id})");
            match &incident.region {
                None => {
                    rules.excluded.insert(incident.provider.clone(), why);
                }
                Some(region) => {
                    rules.excluded_regions.insert((incident.provider.clone(), region.clone()), why);
                }
            }
        }

        // First refusal applies when a clause in force covers the request and this kind of round.
        let refusal = terms
            .first_refusals
            .iter()
            .find(|f| {
                f.terms.scope.covers(request.workload, &request.accelerators, &request.regions)
                    && match purpose {
                        Purpose::Initial => true,
                        Purpose::Spillover => f.terms.covers_spillover,
                        Purpose::Failover => f.terms.covers_failover,
                    }
            })
            .map(|f| RefusalTerms {
                holder: f.terms.holder.clone(),
                mode: f.terms.mode,
                terms: f.terms.terms,
                window_hours: f.terms.window_hours,
                no_better_terms: f.terms.no_better_terms,
                reference: format!("{}/{}/{}", f.contract, f.version, f.clause),
            });
        // In match mode the holder must be shown the market's terms whatever the buyer's
        // policy says of it (it is never asked for market quotes in that mode anyway).
        if let Some(r) = refusal.as_ref().filter(|r| r.mode == RefusalMode::Match)
            && rules.excluded.get(&r.holder).is_some_and(|why| why.contains("policy"))
        {
            rules.excluded.remove(&r.holder);
        }
        let min_providers = rules.min_providers.clone();
        rules.min_providers = remaining_min_providers(&min_providers, &self.providers_in_use(state));
        Screened { refusal, rules, min_providers }
    }

    /// The providers of the request's live (reserved or active) allocations.
    pub(super) fn providers_in_use(&self, state: &RequestState) -> BTreeSet<ProviderName> {
        state
            .allocations
            .iter()
            .filter_map(|a| self.allocations.get(a))
            .filter(|a| a.state.is_live())
            .map(|a| a.plan.provider.clone())
            .collect()
    }

    /// Live allocations of requests of one workload class, per provider.
    pub(super) fn fleet(&self, workload: WorkloadClass) -> Fleet {
        self.live_fleet.get(&workload).cloned().unwrap_or_default()
    }

    pub(super) fn provider_down(&self, provider: &ProviderName, region: Option<&Region>) -> Option<&str> {
        self.incidents
            .iter()
            .find(|(_, i)| &i.provider == provider && (i.region.is_none() || i.region.as_ref() == region))
            .map(|(id, _)| id.as_str())
    }
}
