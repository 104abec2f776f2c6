//! The terms in force at an instant, as text for people
//! (`dibs contract check FILE... --at DATE`).
//!
//! One line per contract (with the version in force, or "no version in force"),
//! one indented line per clause with its key terms, then the policy. The order
//! is the order of the set (files in sorted order) and of clauses in each file,
//! so the output is stable enough to diff and to test against.

use std::fmt::Write as _;

use super::{
    ClauseKind, Commitment, ContractSet, Diversification, Exclusivity, FirstRefusal, NoBetterTerms, Policy,
    RefusalMode, RevenueShare, ReviewTrigger, Scope, ShareBasis, TriggerAction,
};
use crate::types::Timestamp;

/// Renders the contracts, versions and clauses in force at `at`, and the policy.
///
/// Suspensions by review triggers are not applied: they depend on metrics and
/// events recorded at run time, which a contract set does not hold.
pub fn describe_in_force(set: &ContractSet, at: Timestamp) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "terms in force at {}", instant(at));
    if set.contracts.is_empty() {
        text.push_str("no contracts\n");
    }
    for contract in &set.contracts {
        let _ =
            write!(text, "contract {} with {} ({}): ", contract.id, contract.counterparty, contract.source);
        let Some(version) = contract.version_at(at) else {
            text.push_str("no version in force\n");
            continue;
        };
        let _ = writeln!(
            text,
            "version {}, in force from {} until {}",
            version.id,
            instant(version.effective),
            instant(version.expires)
        );
        if version.clauses.is_empty() {
            text.push_str("  no clauses\n");
        }
        for clause in &version.clauses {
            let terms = match &clause.kind {
                ClauseKind::FirstRefusal(c) => first_refusal(c),
                ClauseKind::Exclusivity(c) => exclusivity(c),
                ClauseKind::Commitment(c) => commitment(c, at),
                ClauseKind::Diversification(c) => diversification(c),
                ClauseKind::RevenueShare(c) => revenue_share(c),
                ClauseKind::ReviewTrigger(c) => review_trigger(c),
            };
            let _ = writeln!(text, "  {} {}: {terms}", clause.kind.name(), clause.name);
        }
    }
    policy(&mut text, &set.policy);
    text
}

fn policy(text: &mut String, policy: &Policy) {
    match &policy.source {
        Some(source) => {
            let _ = writeln!(text, "policy ({source}):");
        }
        None => text.push_str("policy (none given):\n"),
    }
    let regions = if policy.allowed_regions.is_empty() {
        "any".to_owned()
    } else {
        policy.allowed_regions.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(text, "  allowed regions: {regions}");
    let providers = |list: &[crate::types::ProviderName], empty: &str| {
        if list.is_empty() {
            empty.to_owned()
        } else {
            list.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
        }
    };
    if !policy.allowed_providers.is_empty() || !policy.excluded_providers.is_empty() {
        let _ = writeln!(
            text,
            "  providers: {}; excluded: {}",
            providers(&policy.allowed_providers, "any"),
            providers(&policy.excluded_providers, "none")
        );
    }
    if policy.price_ceilings.is_empty() {
        text.push_str("  price ceilings: none\n");
    }
    for (accelerator, price) in &policy.price_ceilings {
        let _ = writeln!(text, "  price ceiling {accelerator}: {price}");
    }
    for rule in &policy.diversification {
        let _ = writeln!(text, "  diversification: {}", diversification(rule));
    }
}

fn first_refusal(c: &FirstRefusal) -> String {
    let covers =
        |yes: bool, what: &str| if yes { format!("covers {what}") } else { format!("does not cover {what}") };
    let after_decline = match (c.mode, c.no_better_terms) {
        (RefusalMode::Match, _) => String::new(),
        (RefusalMode::OfferFirst, NoBetterTerms::ShowTerms) => {
            ", a pricier market after a decline goes back to the holder with its terms".into()
        }
        (RefusalMode::OfferFirst, NoBetterTerms::HoldMarket) => {
            ", after a decline the market is held to the declined price".into()
        }
    };
    format!(
        "holder {}, mode {}, offered {}, window {} h, scope {}, {}, {}{after_decline}",
        c.holder,
        c.mode.as_str(),
        c.terms,
        c.window_hours,
        scope(&c.scope),
        covers(c.covers_spillover, "spillover"),
        covers(c.covers_failover, "failover")
    )
}

fn exclusivity(c: &Exclusivity) -> String {
    let workloads = c.workloads.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(", ");
    let release = if c.emergency_release { "released in emergencies" } else { "no emergency release" };
    format!("holder {}, workloads {workloads}, {release}", c.holder)
}

fn commitment(c: &Commitment, at: Timestamp) -> String {
    let counts = if c.counts.is_empty() {
        "all spend counts".to_owned()
    } else {
        format!("spend on {} counts", c.counts.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(", "))
    };
    // The version may outlive the commitment's period; spend then no longer counts.
    let period = if at < c.period_start {
        " (period not started)"
    } else if c.period_end <= at {
        " (period over)"
    } else {
        ""
    };
    format!(
        "provider {}, {} {} from {} until {}{period}, {counts}",
        c.provider,
        compact(c.amount),
        c.currency,
        instant(c.period_start),
        instant(c.period_end)
    )
}

fn diversification(c: &Diversification) -> String {
    let basis = match c.basis {
        ShareBasis::Gpus => "GPUs",
        ShareBasis::Spend => "spend",
    };
    let mut text =
        format!("at most {} of {basis} per provider, scope {}", percent(c.max_share), scope(&c.scope));
    for (workload, count) in &c.min_providers {
        let _ = write!(text, ", at least {count} providers for {workload}");
    }
    text
}

fn revenue_share(c: &RevenueShare) -> String {
    let products = if c.products.is_empty() { "all products".to_owned() } else { c.products.join(", ") };
    format!("partner {}, {} of revenue from {products}", c.partner, percent(c.rate))
}

fn review_trigger(c: &ReviewTrigger) -> String {
    let action = match &c.action {
        TriggerAction::FlagForReview => "flag the contract for review".to_owned(),
        TriggerAction::SuspendClauses { clauses, from } => {
            format!("suspend {} from {}", clauses.join(", "), instant(*from))
        }
    };
    format!("when {}, {action}", c.condition.source())
}

fn scope(scope: &Scope) -> String {
    fn list<T: std::fmt::Display>(items: &[T], all: &str) -> String {
        if items.is_empty() {
            all.to_owned()
        } else {
            items.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
        }
    }
    format!(
        "[workloads {}; accelerators {}; regions {}]",
        list(&scope.workloads, "all"),
        list(&scope.accelerators, "all"),
        list(&scope.regions, "all")
    )
}

/// A date when the instant is midnight UTC, the full RFC 3339 form otherwise.
fn instant(at: Timestamp) -> String {
    const DAY: i64 = 24 * Timestamp::HOUR;
    let text = at.to_string();
    match text.split_once("T00:00:00Z") {
        Some((date, "")) if at.unix().rem_euclid(DAY) == 0 => date.to_owned(),
        _ => text,
    }
}

fn percent(fraction: f64) -> String {
    format!("{}%", trim(format!("{:.2}", fraction * 100.0)))
}

/// `250e9` as `250B`, `300e6` as `300M`.
fn compact(amount: f64) -> String {
    for (scale, unit) in [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")] {
        if amount.abs() >= scale {
            return format!("{}{unit}", trim(format!("{:.3}", amount / scale)));
        }
    }
    trim(format!("{amount:.2}"))
}

fn trim(number: String) -> String {
    if number.contains('.') { number.trim_end_matches('0').trim_end_matches('.').to_owned() } else { number }
}
