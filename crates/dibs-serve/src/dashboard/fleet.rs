//! The fleet: GPUs held and spend by provider and region over time, with the
//! diversification cap drawn as a line; open incidents, and how each provider is reached.
//!
//! The engine's allocations are copied out compactly (provider and region as indices) on
//! the broker thread; the series are computed here, on the HTTP side. GPUs held are the
//! GPUs bought of allocations awarded and not yet ended (reserved or active), as the
//! engine measures caps; spend is what has billed so far, whole nodes at their all-in
//! price from ready until ended (`dibs_core::settlement`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use dibs_core::contract::ShareBasis;
use dibs_core::engine::AllocationState;
use dibs_core::types::{Timestamp, WorkloadClass};
use maud::{Markup, html};

use super::format::{instant, thousands, usd};
use super::{Dashboard, Section, charts, drawn_page};

/// Points per series on the charts.
pub const SAMPLES: usize = 96;
/// The charts span at least this many hours back from now, so a young fleet's lines are
/// drawn over a readable axis rather than over the seconds since its first award.
pub const MIN_WINDOW_HOURS: f64 = 24.0;
/// ... and at most this many, however old the first award.
pub const MAX_WINDOW_HOURS: f64 = 180.0 * 24.0;

/// One allocation, as the fleet and contract pages need it.
pub(super) struct Held {
    pub provider: u16,
    pub region: u16,
    pub workload: WorkloadClass,
    /// GPUs bought (whole nodes).
    pub gpus: u32,
    /// GPUs in one node: a cap binds within one of the provider's units.
    pub node_gpus: u32,
    pub spend_per_hour: f64,
    pub awarded_at: Timestamp,
    pub ready_at: Option<Timestamp>,
    /// When it stops billing: ended, or ready plus its hours; `None` while not ready.
    pub bills_until: Option<Timestamp>,
    /// When it stopped being held (released or cancelled); `None` while held.
    pub ended_at: Option<Timestamp>,
    pub active: bool,
}

impl Held {
    fn held_at(&self, at: Timestamp) -> bool {
        self.awarded_at <= at && self.ended_at.is_none_or(|end| at < end)
    }

    /// What it has billed by `at`: the hours between ready and the end of billing.
    pub fn spend_at(&self, at: Timestamp) -> f64 {
        match (self.ready_at, self.bills_until) {
            (Some(ready), Some(until)) => (at.min(until).hours_since(ready)).max(0.0) * self.spend_per_hour,
            _ => 0.0,
        }
    }
}

/// A diversification cap in force.
pub(super) struct Cap {
    pub source: String,
    pub max_share: f64,
    pub basis: ShareBasis,
    pub workloads: Vec<WorkloadClass>,
}

impl Cap {
    fn covers(&self, workload: WorkloadClass) -> bool {
        self.workloads.is_empty() || self.workloads.contains(&workload)
    }

    fn scope(&self) -> String {
        if self.workloads.is_empty() {
            "all".into()
        } else {
            self.workloads.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(", ")
        }
    }
}

pub(super) struct ProviderRow {
    pub name: String,
    pub reached: String,
    /// Open incidents: id and region (`None`: the whole provider).
    pub incidents: Vec<(String, Option<String>)>,
}

/// The fleet as of `now`, copied out on the broker thread.
pub(super) struct Snapshot {
    pub now: Timestamp,
    pub time_speed: Option<f64>,
    pub providers: Vec<String>,
    pub regions: Vec<String>,
    pub held: Vec<Held>,
    pub caps: Vec<Cap>,
    pub rows: Vec<ProviderRow>,
}

pub(super) fn snapshot(view: &crate::broker::ReadView<'_>) -> Snapshot {
    let engine = view.engine;
    let mut providers: Vec<String> = Vec::new();
    let mut regions: Vec<String> = Vec::new();
    let mut provider_index: BTreeMap<&str, u16> = BTreeMap::new();
    let mut region_index: BTreeMap<&str, u16> = BTreeMap::new();
    let mut held = Vec::new();
    for a in engine.allocations() {
        let provider = *provider_index.entry(a.plan.provider.as_str()).or_insert_with(|| {
            providers.push(a.plan.provider.to_string());
            (providers.len() - 1) as u16
        });
        let region = *region_index.entry(a.plan.region.as_str()).or_insert_with(|| {
            regions.push(a.plan.region.to_string());
            (regions.len() - 1) as u16
        });
        let ended_at = a.ended_at();
        let bills_until = a.ready_at().map(|ready| {
            let contracted = ready.plus_hours(f64::from(a.hours));
            a.ended_at().map_or(contracted, |end| end.min(contracted))
        });
        held.push(Held {
            provider,
            region,
            workload: a.workload,
            gpus: a.plan.gpus_bought(),
            node_gpus: a.plan.gpus_per_node.get(),
            spend_per_hour: a.plan.spend_per_hour(),
            awarded_at: a.awarded_at,
            ready_at: a.ready_at(),
            bills_until,
            ended_at,
            active: matches!(a.state, AllocationState::Active(_)),
        });
    }
    let terms = engine.contracts().in_force(view.now, &[]);
    let mut caps: Vec<Cap> = engine
        .contracts()
        .policy
        .diversification
        .iter()
        .map(|d| Cap {
            source: "policy".into(),
            max_share: d.max_share,
            basis: d.basis,
            workloads: d.scope.workloads.clone(),
        })
        .collect();
    caps.extend(terms.diversifications.iter().map(|d| Cap {
        source: format!("{}/{}", d.contract, d.clause),
        max_share: d.terms.max_share,
        basis: d.terms.basis,
        workloads: d.terms.scope.workloads.clone(),
    }));
    let rows = engine
        .published_providers()
        .map(|name| ProviderRow {
            name: name.to_string(),
            reached: view.reached(name),
            incidents: engine
                .open_incidents()
                .filter(|(_, p, _)| *p == name)
                .map(|(id, _, region)| (id.to_owned(), region.map(|r| r.to_string())))
                .collect(),
        })
        .collect();
    Snapshot {
        now: view.now,
        time_speed: view.configuration.and_then(|c| c.time_speed),
        providers,
        regions,
        held,
        caps,
        rows,
    }
}

/// The sample instants, oldest first, from the first award to now.
pub(super) fn instants(from: Timestamp, now: Timestamp) -> Vec<Timestamp> {
    let span = (now.unix() - from.unix()).max(1);
    (0..SAMPLES).map(|i| from.plus_seconds(span * i as i64 / (SAMPLES as i64 - 1))).collect()
}

/// Hours before `now`, for the x axis.
pub(super) fn hours_before(at: Timestamp, now: Timestamp) -> f64 {
    -now.hours_since(at)
}

/// Per provider, `value` summed over the allocations at each instant: one pass over the
/// allocations per instant, whatever the number of providers.
pub(super) fn by_provider(
    snapshot: &Snapshot,
    at: &[Timestamp],
    value: impl Fn(&Held, Timestamp) -> f64,
) -> Vec<Vec<f64>> {
    let mut sums = vec![vec![0.0; at.len()]; snapshot.providers.len()];
    for (i, t) in at.iter().enumerate() {
        for h in &snapshot.held {
            sums[usize::from(h.provider)][i] += value(h, *t);
        }
    }
    sums
}

fn series(snapshot: &Snapshot, at: &[Timestamp], sums: Vec<Vec<f64>>) -> Vec<dibs_charts::Series> {
    snapshot
        .providers
        .iter()
        .zip(sums)
        .map(|(name, values)| dibs_charts::Series {
            name: name.clone(),
            points: at.iter().zip(values).map(|(t, v)| (hours_before(*t, snapshot.now), v)).collect(),
        })
        .collect()
}

fn gpu_chart(snapshot: &Snapshot, cap: Option<&Cap>, from: Timestamp) -> dibs_charts::Chart {
    let at = instants(from, snapshot.now);
    let in_scope = |h: &Held| cap.is_none_or(|c| c.covers(h.workload));
    let sums =
        by_provider(snapshot, &at, |h, t| if in_scope(h) && h.held_at(t) { f64::from(h.gpus) } else { 0.0 });
    let totals: Vec<f64> = (0..at.len()).map(|i| sums.iter().map(|s| s[i]).sum()).collect();
    let mut series = series(snapshot, &at, sums);
    let title = match cap {
        Some(cap) => {
            series.push(dibs_charts::Series {
                name: format!("cap: {:.0}% of {} GPUs", cap.max_share * 100.0, cap.scope()),
                points: at
                    .iter()
                    .zip(&totals)
                    .map(|(t, total)| (hours_before(*t, snapshot.now), total * cap.max_share))
                    .collect(),
            });
            format!("GPUs held by provider ({} workloads), with the diversification cap", cap.scope())
        }
        None => "GPUs held by provider".to_owned(),
    };
    dibs_charts::Chart {
        title,
        x_label: "hours before now".into(),
        y_label: "GPUs".into(),
        kind: dibs_charts::ChartKind::Line,
        series,
    }
}

fn spend_chart(snapshot: &Snapshot, from: Timestamp) -> dibs_charts::Chart {
    let at = instants(from, snapshot.now);
    let sums = by_provider(snapshot, &at, |h, t| h.spend_at(t));
    dibs_charts::Chart {
        title: "Spend billed by provider (USD, cumulative, stacked)".into(),
        x_label: "hours before now".into(),
        y_label: "USD".into(),
        kind: dibs_charts::ChartKind::StackedArea,
        series: series(snapshot, &at, sums),
    }
}

/// Per provider and region now: GPUs held, spend per hour of active capacity, spend billed.
fn table(snapshot: &Snapshot) -> Markup {
    let now = snapshot.now;
    let mut rows: BTreeMap<(&str, &str), (u64, f64, f64)> = BTreeMap::new();
    for h in &snapshot.held {
        let key = (
            snapshot.providers[usize::from(h.provider)].as_str(),
            snapshot.regions[usize::from(h.region)].as_str(),
        );
        let row = rows.entry(key).or_default();
        if h.held_at(now) {
            row.0 += u64::from(h.gpus);
        }
        if h.active {
            row.1 += h.spend_per_hour;
        }
        row.2 += h.spend_at(now);
    }
    let total_gpus: u64 = rows.values().map(|r| r.0).sum();
    html! {
        table #by-region {
            caption { "By provider and region, now (every workload; the chart above counts the workloads its cap covers)" }
            thead { tr {
                th scope="col" { "Provider" } th scope="col" { "Region" } th scope="col" { "GPUs held" }
                th scope="col" { "Share" } th scope="col" { "Spend per hour (active)" } th scope="col" { "Spend billed" }
            } }
            tbody {
                @for ((provider, region), (gpus, rate, spend)) in &rows {
                    tr {
                        td { (provider) } td { (region) } td.number { (thousands(*gpus)) }
                        td.number { @if total_gpus > 0 { (format!("{:.1}%", *gpus as f64 * 100.0 / total_gpus as f64)) } @else { "–" } }
                        td.number { (usd(*rate)) } td.number { (usd(*spend)) }
                    }
                }
            }
            tfoot { tr {
                th scope="row" colspan="2" { "All" } td.number { (thousands(total_gpus)) } td {}
                td.number { (usd(rows.values().map(|r| r.1).sum())) } td.number { (usd(rows.values().map(|r| r.2).sum())) }
            } }
        }
    }
}

/// Each cap and each provider's share of what it covers, now.
fn caps(snapshot: &Snapshot) -> Markup {
    let now = snapshot.now;
    html! {
        @for cap in &snapshot.caps {
            @let covered: Vec<&Held> = snapshot.held.iter().filter(|h| cap.covers(h.workload) && h.held_at(now)).collect();
            @let measure = |h: &Held| if cap.basis == ShareBasis::Gpus { f64::from(h.gpus) } else { h.spend_per_hour };
            @let total: f64 = covered.iter().map(|h| measure(h)).sum();
            table {
                caption {
                    "Cap (" (cap.source) "): at most " (format!("{:.0}%", cap.max_share * 100.0)) " of "
                    (cap.scope()) " " @if cap.basis == ShareBasis::Gpus { "GPUs" } @else { "spend" } " per provider"
                }
                thead { tr { th scope="col" { "Provider" } th scope="col" { "Share now" } th scope="col" { "Room" } } }
                tbody {
                    @for (index, name) in snapshot.providers.iter().enumerate() {
                        @let mine: Vec<&&Held> = covered.iter().filter(|h| usize::from(h.provider) == index).collect();
                        @let held: f64 = mine.iter().map(|h| measure(h)).sum();
                        @let share = if total > 0.0 { held / total } else { 0.0 };
                        @let over = held - cap.max_share * total;
                        // The engine lets a provider's last unit (a node) cross the cap.
                        @let unit = mine.iter().map(|h| if cap.basis == ShareBasis::Gpus { f64::from(h.node_gpus) } else { h.spend_per_hour / f64::from(h.gpus.max(1)) * f64::from(h.node_gpus) }).fold(0.0, f64::max);
                        tr.over[over > unit + 1e-9] {
                            td { (name) } td.number { (format!("{:.1}%", share * 100.0)) }
                            td {
                                @if over <= 1e-9 { (format!("{:.1} points", (cap.max_share - share) * 100.0)) }
                                @else if over <= unit + 1e-9 { "at the cap: its last node crosses it, as the cap allows" }
                                @else { "over the cap by more than a node" }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn providers(snapshot: &Snapshot) -> Markup {
    html! {
        table #providers {
            caption { "Providers and incidents" }
            thead { tr { th scope="col" { "Provider" } th scope="col" { "Reached" } th scope="col" { "State" } th scope="col" { "Open incidents" } } }
            tbody {
                @for row in &snapshot.rows {
                    tr {
                        td { (row.name) } td { (row.reached) }
                        td {
                            @if row.incidents.iter().any(|(_, region)| region.is_none()) { span.badge.status-unfilled { "down" } }
                            @else if !row.incidents.is_empty() { span.badge.status-market { "degraded" } }
                            @else { span.badge.status-active { "up" } }
                        }
                        td {
                            @if row.incidents.is_empty() { "none" }
                            @for (id, region) in &row.incidents {
                                (id) " (" (region.as_deref().unwrap_or("every region")) ") "
                            }
                        }
                    }
                }
            }
        }
        p.muted {
            "Calls to providers over HTTP time out, retry with backoff and give up at their deadline; "
            "there are no circuit breakers yet. Incidents are reported with "
            code { "POST /v1/incidents" } "; their allocations fail over."
        }
    }
}

/// The page's body: the charts (drawn here), the table, the caps and the providers.
fn body(snapshot: &Snapshot) -> Markup {
    let from = snapshot.held.iter().map(|h| h.awarded_at).min().map(|first| {
        let earliest = snapshot.now.plus_hours(-MAX_WINDOW_HOURS);
        first.min(snapshot.now.plus_hours(-MIN_WINDOW_HOURS)).max(earliest)
    });
    let gpu_cap = snapshot.caps.iter().find(|c| c.basis == ShareBasis::Gpus);
    html! {
        h1 { "Fleet" }
        p {
            "As of " (instant(snapshot.now))
            @if let Some(speed) = snapshot.time_speed { " on a demo clock running " (speed) "× the wall clock" }
            "."
        }
        @match from {
            None => p { "No capacity has been awarded yet." },
            Some(from) => {
                (charts::inline(&gpu_chart(snapshot, gpu_cap, from), "gpus-chart"))
                (charts::inline(&spend_chart(snapshot, from), "spend-chart"))
            }
        }
        (table(snapshot))
        (caps(snapshot))
        (providers(snapshot))
    }
}

pub(super) async fn page(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    drawn_page(&dashboard, &headers, ("Fleet", Section::Fleet), snapshot, body).await
}
