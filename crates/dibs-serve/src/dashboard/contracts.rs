//! Contracts: each contract's versions on a timeline, the clauses in force today, review
//! triggers and their state, commitments with their burn-down and projected shortfall, and
//! revenue-share terms.
//!
//! Everything money-related is the engine's own settlement books (`Engine::settler`): a
//! trigger's state is whether it fired, else how its condition reads on the metrics a
//! settlement now would read; revenue share shows the statements for the revenue reported;
//! burn-down and shortfall are `Engine::commitment_statuses` now.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use dibs_core::commitments::CommitmentStatus;
use dibs_core::contract::Metrics;
use dibs_core::contract::Suspension;
use dibs_core::contract::{ClauseKind, ContractSet, Scope, ShareBasis, TriggerAction};
use dibs_core::settlement::{Accruals, RevenueShareStatement};
use dibs_core::types::Timestamp;
use maud::{Markup, html};

use super::format::{instant, price, usd};
use super::{Dashboard, Section, charts, drawn_page, fleet, trusted};

/// The timeline shows at most this many years after today.
const TIMELINE_YEARS_AHEAD: i64 = 12;

struct Snapshot {
    now: Timestamp,
    contracts: ContractSet,
    /// Revenue-share statements for the revenue reported so far.
    statements: Vec<RevenueShareStatement>,
    /// The metrics triggers would read if the engine settled now, and their accruals.
    metrics: Metrics,
    accruals: Accruals,
    /// Triggers that have fired, by (contract, clause).
    fired: Vec<(String, String)>,
    suspensions: Vec<Suspension>,
    commitments: Vec<CommitmentStatus>,
    /// The allocations, for the burn-down chart (only when a commitment is in force).
    fleet: Option<fleet::Snapshot>,
}

fn snapshot(view: &crate::broker::ReadView<'_>) -> Snapshot {
    let engine = view.engine;
    let (metrics, accruals) = engine.settler().metrics_at(engine.allocation_book(), view.now);
    let contracts = engine.contracts().clone();
    let commitments = engine.commitment_statuses(view.now);
    let fleet = (!commitments.is_empty()).then(|| fleet::snapshot(view));
    let fired = contracts
        .in_force(view.now, &[])
        .review_triggers
        .iter()
        .filter(|t| engine.settler().has_fired(t.contract, t.clause))
        .map(|t| (t.contract.to_owned(), t.clause.to_owned()))
        .collect();
    Snapshot {
        now: view.now,
        contracts,
        statements: engine.settler().statements(engine.contracts()),
        metrics,
        accruals,
        fired,
        suspensions: engine.suspensions().to_vec(),
        commitments,
        fleet,
    }
}

fn scope(scope: &Scope) -> String {
    let mut parts = Vec::new();
    if !scope.workloads.is_empty() {
        parts.push(scope.workloads.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(", "));
    }
    if !scope.accelerators.is_empty() {
        parts.push(scope.accelerators.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", "));
    }
    if !scope.regions.is_empty() {
        parts.push(scope.regions.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "));
    }
    if parts.is_empty() { "everything".into() } else { parts.join("; ") }
}

fn clause_terms(kind: &ClauseKind) -> String {
    match kind {
        ClauseKind::FirstRefusal(c) => format!(
            "{} holds it ({}), offered {}; {} h to answer; covers {}{}{}",
            c.holder,
            c.mode.as_str(),
            c.terms,
            c.window_hours,
            scope(&c.scope),
            if c.covers_spillover { "; spillovers too" } else { "" },
            if c.covers_failover { "; failovers too" } else { "" },
        ),
        ClauseKind::Exclusivity(c) => format!(
            "{} workloads only on {}{}",
            c.workloads.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(", "),
            c.holder,
            if c.emergency_release { "; released in an emergency" } else { "; even in an emergency" }
        ),
        ClauseKind::Commitment(c) => format!(
            "{} with {} from {} to {}{}",
            if c.currency == "USD" { usd(c.amount) } else { format!("{} {}", c.amount, c.currency) },
            c.provider,
            date(c.period_start),
            date(c.period_end),
            if c.counts.is_empty() {
                String::new()
            } else {
                format!("; counts {}", c.counts.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(", "))
            }
        ),
        ClauseKind::Diversification(c) => {
            let mut text = format!(
                "at most {:.0}% of {} per provider, for {}",
                c.max_share * 100.0,
                if c.basis == ShareBasis::Gpus { "GPUs" } else { "spend" },
                scope(&c.scope)
            );
            for (workload, count) in &c.min_providers {
                let _ = write!(text, "; at least {count} providers for {}", workload.as_str());
            }
            text
        }
        ClauseKind::RevenueShare(c) => {
            format!("{:.0}% to {} on {}", c.rate * 100.0, c.partner, c.products.join(", "))
        }
        ClauseKind::ReviewTrigger(c) => format!("when {}: {}", c.condition.source(), action(&c.action)),
    }
}

/// An instant's date: `2025-10-28`.
fn date(at: Timestamp) -> String {
    let text = at.to_string();
    text.get(..10).unwrap_or(&text).to_owned()
}

fn action(action: &TriggerAction) -> String {
    match action {
        TriggerAction::FlagForReview => "flag the contract for review".into(),
        TriggerAction::SuspendClauses { clauses, from } => {
            format!("suspend {} from {}", clauses.join(", "), date(*from))
        }
    }
}

/// Every contract's versions as bars on one time axis, with today marked.
fn timeline(set: &ContractSet, now: Timestamp) -> Markup {
    const WIDTH: f64 = 1000.0;
    const LABEL: f64 = 170.0;
    const ROW: f64 = 34.0;
    let first =
        set.contracts.iter().flat_map(|c| &c.versions).map(|v| v.effective).min().unwrap_or(now).min(now);
    let horizon = now.plus_hours((TIMELINE_YEARS_AHEAD * 365 * 24) as f64);
    let last = set
        .contracts
        .iter()
        .flat_map(|c| &c.versions)
        .map(|v| v.expires)
        .max()
        .unwrap_or(now)
        .clamp(now, horizon);
    let span = (last.unix() - first.unix()).max(1) as f64;
    let x = |at: Timestamp| {
        LABEL + (WIDTH - LABEL - 10.0) * ((at.unix() - first.unix()) as f64 / span).clamp(0.0, 1.0)
    };
    let height = ROW * set.contracts.len() as f64 + 40.0;
    let year = |at: Timestamp| at.to_string().get(..4).and_then(|y| y.parse::<i32>().ok()).unwrap_or(2026);
    let years: Vec<(i32, Timestamp)> = (year(first) + 1..=year(last))
        .filter_map(|y| Timestamp::from_date(y, 1, 1).ok().map(|t| (y, t)))
        .collect();
    let step = years.len().div_ceil(12).max(1);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="timeline" viewBox="0 0 {WIDTH} {height}" role="group" aria-labelledby="timeline-title" xmlns="http://www.w3.org/2000/svg"><title id="timeline-title">Contract versions over time; today is marked</title>"#
    );
    for (i, (y, at)) in years.iter().enumerate().filter(|(i, _)| i % step == 0) {
        let _ = write!(
            svg,
            r##"<line x1="{0:.1}" y1="0" x2="{0:.1}" y2="{1:.1}" stroke="#d0d4da"/><text x="{0:.1}" y="{2:.1}" font-size="12" text-anchor="middle" fill="#333">{y}</text>"##,
            x(*at),
            height - 24.0,
            height - 8.0
        );
        let _ = i;
    }
    for (row, contract) in set.contracts.iter().enumerate() {
        let top = ROW * row as f64 + 6.0;
        let _ = write!(
            svg,
            r##"<text x="4" y="{:.1}" font-size="13" fill="#111">{}</text>"##,
            top + 17.0,
            html! { (contract.id) }.into_string()
        );
        for version in &contract.versions {
            let (left, right) = (x(version.effective), x(version.expires));
            let (fill, text) = if version.effective <= now && now < version.expires {
                ("#1f4e8c", "#fff")
            } else if version.expires <= now {
                ("#8a9099", "#fff")
            } else {
                ("#9cc3f0", "#111")
            };
            let label = html! { (contract.id) " " (version.id) " (" (version.effective.to_string().get(..10).unwrap_or("")) " to " (version.expires.to_string().get(..10).unwrap_or("")) ")" }.into_string();
            // A link, not only a hover title: a tap or a keyboard focus reaches the bar, and
            // follows it to the version's row in the table under the chart.
            let _ = write!(
                svg,
                r##"<a href="#{}" aria-label="{label}"><g><title>{label}</title><rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="24" rx="3" fill="{fill}" stroke="#fff"/><text x="{:.1}" y="{:.1}" font-size="12" fill="{text}">{}</text></g></a>"##,
                version_anchor(&contract.id, &version.id),
                (right - left).max(2.0),
                left + 4.0,
                top + 16.0,
                html! { (version.id) }.into_string()
            );
        }
    }
    let _ = write!(
        svg,
        r##"<line x1="{0:.1}" y1="0" x2="{0:.1}" y2="{1:.1}" stroke="#b00020" stroke-width="2" stroke-dasharray="4 3"/><text x="{0:.1}" y="{2:.1}" font-size="12" fill="#b00020" text-anchor="middle">today</text>"##,
        x(now),
        height - 24.0,
        height - 28.0 - 0.0
    );
    svg.push_str("</svg>");
    html! {
        figure.chart {
            (trusted(svg))
            figcaption { "Dark: the version in force today; grey: ended; light: not yet in force. Tap, focus or hover a bar for its dates; every version's dates are in the table below." }
        }
        table #versions {
            caption { "Every version and its dates" }
            thead { tr { th scope="col" { "Contract" } th scope="col" { "Version" } th scope="col" { "From" } th scope="col" { "Until" } th scope="col" { "Now" } } }
            tbody {
                @for contract in &set.contracts {
                    @for version in &contract.versions {
                        tr id=(version_anchor(&contract.id, &version.id)) {
                            td { (contract.id) } td { (version.id) }
                            td { (instant(version.effective)) } td { (instant(version.expires)) }
                            td {
                                @if version.effective <= now && now < version.expires { "in force" }
                                @else if version.expires <= now { "ended" }
                                @else { "not yet in force" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The id of a version's row in the table under the timeline: its contract's and its own
/// id, with anything but letters, digits, `-` and `_` as `-`.
fn version_anchor(contract: &str, version: &str) -> String {
    let safe = |text: &str| -> String {
        text.chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
            .collect()
    };
    format!("version-{}-{}", safe(contract), safe(version))
}

fn in_force(snapshot: &Snapshot) -> Markup {
    let now = snapshot.now;
    html! {
        @for contract in &snapshot.contracts.contracts {
            section.contract aria-labelledby={ "contract-" (contract.id) } {
                h3 id={ "contract-" (contract.id) } { (contract.id) " with " (contract.counterparty) }
                p.muted { "Parties: " (contract.parties.join(", ")) "; from " code { (contract.source) } }
                @match contract.version_at(now) {
                    None => p { "No version is in force today." },
                    Some(version) => {
                        p { "In force: version " strong { (version.id) } ", from " (instant(version.effective)) " until " (instant(version.expires)) "." }
                        @if version.clauses.is_empty() {
                            p { "No clauses: the provider quotes in the open market like any other." }
                        } @else {
                            table {
                                thead { tr { th scope="col" { "Clause" } th scope="col" { "Kind" } th scope="col" { "Terms" } } }
                                tbody {
                                    @for clause in &version.clauses {
                                        tr { td { (clause.name) } td { (clause.kind.name()) } td { (clause_terms(&clause.kind)) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @let policy = &snapshot.contracts.policy;
        section.contract aria-labelledby="policy" {
            h3 #policy { "The buyer's policy" }
            p.muted { "From " code { (policy.source.as_deref().unwrap_or("no policy file")) } }
            ul {
                li { "Regions: " @if policy.allowed_regions.is_empty() { "any" } @else { (policy.allowed_regions.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")) } }
                @if !policy.allowed_providers.is_empty() { li { "Market providers: " (policy.allowed_providers.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")) } }
                @if !policy.excluded_providers.is_empty() { li { "Never: " (policy.excluded_providers.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")) } }
                @for (accelerator, ceiling) in &policy.price_ceilings { li { "Price ceiling " (accelerator) ": " (price(ceiling.get())) "/GPU-h" } }
                @for rule in &policy.diversification { li { "Diversification: " (clause_terms(&ClauseKind::Diversification(rule.clone()))) } }
            }
        }
    }
}

fn triggers(snapshot: &Snapshot) -> Markup {
    let terms = snapshot.contracts.in_force(snapshot.now, &[]);
    html! {
        @if terms.review_triggers.is_empty() {
            p { "No review trigger is in force." }
        } @else {
            table #triggers {
                thead { tr { th scope="col" { "Contract" } th scope="col" { "Trigger" } th scope="col" { "Condition" } th scope="col" { "Action" } th scope="col" { "State" } } }
                tbody {
                    @for trigger in &terms.review_triggers {
                        @let fired = snapshot.fired.iter().any(|(c, k)| c == trigger.contract && k == trigger.clause);
                        tr {
                            td { (trigger.contract) } td { (trigger.clause) } td { code { (trigger.terms.condition.source()) } }
                            td { (action(&trigger.terms.action)) }
                            td {
                                @if fired {
                                    span.badge.status-unfilled { "fired" }
                                } @else {
                                    @match trigger.terms.condition.evaluate(&snapshot.metrics) {
                                        Ok(true) => span.badge.status-unfilled { "met (fires at the next settlement)" },
                                        Ok(false) => span.badge.status-active { "not met" },
                                        Err(e) => span.badge.status-market { "cannot evaluate: " (e.to_string()) },
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !snapshot.suspensions.is_empty() {
                p { "Suspended by a trigger: "
                    @for (i, s) in snapshot.suspensions.iter().enumerate() {
                        @if i > 0 { ", " }
                        (s.contract) " / " (s.clause) " from " (date(s.from))
                    }
                }
            }
            p.muted {
                "Read now, as a settlement now would: cumulative spend " (usd(snapshot.accruals.total_spend()))
                ", revenue reported " (usd(snapshot.metrics.metrics.get("cumulative_revenue").copied().unwrap_or(0.0))) ", GPUs active "
                (snapshot.accruals.gpus_active) ", events declared: "
                @if snapshot.metrics.events.is_empty() { "none" } @else {
                    (snapshot.metrics.events.iter().cloned().collect::<Vec<_>>().join(", "))
                }
                ". The engine settles every hour of service time; a trigger fires at the settlement that finds it met."
            }
        }
    }
}

/// A commitment's period, from the clause in force.
fn period_of(snapshot: &Snapshot, status: &CommitmentStatus) -> Option<(Timestamp, Timestamp)> {
    let terms = snapshot.contracts.in_force(snapshot.now, &[]);
    let clause =
        terms.commitments.iter().find(|c| c.contract == status.contract && c.clause == status.clause)?;
    Some((clause.terms.period_start, clause.terms.period_end))
}

fn burn_down(snapshot: &Snapshot, status: &CommitmentStatus) -> Option<dibs_charts::Chart> {
    let fleet = snapshot.fleet.as_ref()?;
    let commitment = snapshot
        .contracts
        .in_force(snapshot.now, &[])
        .commitments
        .into_iter()
        .find(|c| c.contract == status.contract && c.clause == status.clause)?;
    let (start, end) = (commitment.terms.period_start, commitment.terms.period_end);
    let provider = fleet.providers.iter().position(|p| p.as_str() == status.provider.as_str());
    let counts = &commitment.terms.counts;
    let days = |at: Timestamp| at.hours_since(start) / 24.0;
    let at = fleet::instants(start, snapshot.now.max(start));
    let burned: Vec<(f64, f64)> = at
        .iter()
        .map(|t| {
            let spend: f64 = fleet
                .held
                .iter()
                .filter(|h| {
                    Some(usize::from(h.provider)) == provider
                        && (counts.is_empty() || counts.contains(&h.workload))
                })
                .map(|h| h.spend_at(*t))
                .sum();
            (days(*t), spend)
        })
        .collect();
    let projected_end = status.amount - status.projected_shortfall;
    Some(dibs_charts::Chart {
        title: format!("{} with {}: burn-down", status.clause, status.provider),
        x_label: format!("days since {}", start.to_string().get(..10).unwrap_or("")),
        y_label: "USD".into(),
        kind: dibs_charts::ChartKind::Line,
        series: vec![
            dibs_charts::Series { name: "burned".into(), points: burned },
            dibs_charts::Series {
                name: "projected at the current rate".into(),
                points: vec![(days(snapshot.now), status.burned), (days(end), projected_end)],
            },
            dibs_charts::Series {
                name: "commitment".into(),
                points: vec![(0.0, status.amount), (days(end), status.amount)],
            },
        ],
    })
}

fn commitments(snapshot: &Snapshot) -> Markup {
    html! {
        @if snapshot.commitments.is_empty() {
            p { "No spend commitment is in force today." }
        } @else {
            table #commitments {
                thead { tr { th scope="col" { "Contract" } th scope="col" { "Clause" } th scope="col" { "Provider" } th scope="col" { "Period" } th scope="col" { "Committed" } th scope="col" { "Burned" } th scope="col" { "Projected shortfall" } } }
                tbody {
                    @for c in &snapshot.commitments {
                        @let period = period_of(snapshot, c);
                        tr {
                            td { (c.contract) } td { (c.clause) } td { (c.provider) }
                            td { @if let Some((start, end)) = period { (date(start)) " to " (date(end)) @if end <= snapshot.now { " (ended)" } } }
                            td.number { (usd(c.amount)) }
                            td.number { (usd(c.burned)) } td.number { (usd(c.projected_shortfall)) }
                        }
                    }
                }
            }
            p.muted { "Projected shortfall: what is left of the commitment at the period's end if spend goes on at today's rate." }
            @for (i, c) in snapshot.commitments.iter().enumerate() {
                @if let Some(chart) = burn_down(snapshot, c) { (charts::inline(&chart, &format!("burn-down-{i}"))) }
            }
        }
    }
}

fn revenue_share(snapshot: &Snapshot) -> Markup {
    let terms = snapshot.contracts.in_force(snapshot.now, &[]);
    let statements = &snapshot.statements;
    html! {
        @if terms.revenue_shares.is_empty() && statements.is_empty() {
            p { "No revenue share is in force today." }
        } @else {
            ul {
                @for share in &terms.revenue_shares {
                    li { (share.contract) " / " (share.clause) ": " (clause_terms(&ClauseKind::RevenueShare(share.terms.clone()))) }
                }
            }
            @if statements.is_empty() {
                p.muted { "No revenue has been reported (" code { "POST /v1/revenue" } "), so nothing is owed yet." }
            } @else {
                table #statements {
                    thead { tr { th scope="col" { "Month" } th scope="col" { "Contract" } th scope="col" { "Partner" } th scope="col" { "Revenue" } th scope="col" { "Rate" } th scope="col" { "Owed" } } }
                    tbody {
                        @for s in statements {
                            tr {
                                td { (s.month) } td { (s.contract) " / " (s.clause) } td { (s.partner) }
                                td.number { (usd(s.revenue)) } td.number { (format!("{:.0}%", s.rate * 100.0)) } td.number { (usd(s.owed)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The page's body (the burn-down charts are drawn here).
fn body(snapshot: &Snapshot) -> Markup {
    html! {
        h1 { "Contracts" }
        p { "As of " (instant(snapshot.now)) "." }
        section aria-labelledby="timeline" {
            h2 #timeline { "Versions over time" }
            (timeline(&snapshot.contracts, snapshot.now))
        }
        section aria-labelledby="in-force" {
            h2 #in-force { "Clauses in force today" }
            (in_force(snapshot))
        }
        section aria-labelledby="review" {
            h2 #review { "Review triggers" }
            (triggers(snapshot))
        }
        section aria-labelledby="commitments-title" {
            h2 #commitments-title { "Commitments" }
            (commitments(snapshot))
        }
        section aria-labelledby="revenue" {
            h2 #revenue { "Revenue share" }
            (revenue_share(snapshot))
        }
    }
}

pub(super) async fn page(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    drawn_page(&dashboard, &headers, ("Contracts", Section::Contracts), snapshot, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bar_of_the_timeline_is_a_link_to_its_version_s_dates() {
        let texts = dibs_core::contract::builtin_contract_texts("historical").unwrap();
        let set = dibs_core::contract::contract_set_from_texts(&texts).unwrap();
        let page = timeline(&set, Timestamp::parse("2026-12-01T00:00:00Z").unwrap()).into_string();
        let bars = page.matches("<rect ").count();
        let links: Vec<&str> =
            page.split("<a href=\"#").skip(1).filter_map(|rest| rest.split('"').next()).collect();
        let versions: usize = set.contracts.iter().map(|c| c.versions.len()).sum();
        assert!(versions > 1, "the historical set has an amendment");
        // A bar per version, each a link (a tap or a focus reaches it, not only a hover) to a
        // row of the table under the chart that says its dates.
        assert_eq!((bars, links.len()), (versions, versions));
        for anchor in links {
            assert!(page.contains(&format!("<tr id=\"{anchor}\">")), "no row {anchor}");
        }
        assert!(!page.contains("role=\"img\""), "links inside role=img are hidden from screen readers");
    }
}
