//! The fleet: GPUs held and spend by provider and region over time, with the
//! diversification cap drawn as a line; open incidents, and how each provider is reached.
//!
//! The charts and the table beside them count the same allocations: those of one workload
//! class, or of all (`?workload=`), by default the class the GPU cap covers, so its line is
//! drawn against what it limits. The charts look back over a window the query chooses
//! (`?window=24h|7d|30d`, default 24 h). The caps' own tables count what each cap covers.
//!
//! The engine's allocations are copied out compactly (provider and region as indices) on
//! the broker thread; the series are computed here, on the HTTP side. GPUs held are the
//! GPUs bought of allocations awarded and not yet ended (reserved or active), as the
//! engine measures caps; spend is what has billed so far, whole nodes at their all-in
//! price from ready until ended (`dibs_core::settlement`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use dibs_core::contract::ShareBasis;
use dibs_core::engine::AllocationState;
use dibs_core::types::{Timestamp, WorkloadClass};
use maud::{Markup, html};
use serde::Deserialize;

use super::format::{instant, thousands, usd};
use super::{Dashboard, Section, charts, drawn_page};

/// Points per series on the charts.
pub const SAMPLES: usize = 96;

/// How far back the charts look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(super) enum Window {
    #[default]
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "7d")]
    Week,
    #[serde(rename = "30d")]
    Month,
}

impl Window {
    const ALL: [Window; 3] = [Window::Day, Window::Week, Window::Month];

    fn as_str(self) -> &'static str {
        match self {
            Window::Day => "24h",
            Window::Week => "7d",
            Window::Month => "30d",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Window::Day => "the last 24 hours",
            Window::Week => "the last 7 days",
            Window::Month => "the last 30 days",
        }
    }

    fn hours(self) -> f64 {
        match self {
            Window::Day => 24.0,
            Window::Week => 7.0 * 24.0,
            Window::Month => 30.0 * 24.0,
        }
    }
}

/// What the page shows, as the query string gives it.
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct Choice {
    #[serde(default)]
    window: Window,
    /// A workload class, `all`, or empty: the class the GPU cap covers (all when it covers
    /// every class or several).
    #[serde(default)]
    workload: String,
}

impl Choice {
    /// The class counted (`None`: every class), or why the query is wrong.
    fn workload(&self, caps: &[Cap]) -> Result<Option<WorkloadClass>, String> {
        match self.workload.as_str() {
            "" => Ok(caps
                .iter()
                .find(|c| c.basis == ShareBasis::Gpus)
                .and_then(|c| (c.workloads.len() == 1).then(|| c.workloads[0]))),
            "all" => Ok(None),
            name => WorkloadClass::parse(name).map(Some).map_err(|e| e.to_string()),
        }
    }
}

/// The allocations a view counts: those of `class`, or all.
fn counted(class: Option<WorkloadClass>, h: &Held) -> bool {
    class.is_none_or(|c| h.workload == c)
}

/// How a view names what it counts.
fn class_words(class: Option<WorkloadClass>) -> String {
    match class {
        Some(c) => format!("{} workloads", c.as_str()),
        None => "every workload".to_owned(),
    }
}

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

fn gpu_chart(
    snapshot: &Snapshot,
    class: Option<WorkloadClass>,
    cap: Option<&Cap>,
    from: Timestamp,
) -> dibs_charts::Chart {
    let at = instants(from, snapshot.now);
    let sums =
        by_provider(
            snapshot,
            &at,
            |h, t| if counted(class, h) && h.held_at(t) { f64::from(h.gpus) } else { 0.0 },
        );
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
            format!("GPUs held by provider ({}), with the diversification cap", class_words(class))
        }
        None => format!("GPUs held by provider ({})", class_words(class)),
    };
    dibs_charts::Chart {
        title,
        x_label: "hours before now".into(),
        y_label: "GPUs".into(),
        kind: dibs_charts::ChartKind::Line,
        series,
    }
}

fn spend_chart(snapshot: &Snapshot, class: Option<WorkloadClass>, from: Timestamp) -> dibs_charts::Chart {
    let at = instants(from, snapshot.now);
    let sums = by_provider(snapshot, &at, |h, t| if counted(class, h) { h.spend_at(t) } else { 0.0 });
    dibs_charts::Chart {
        title: format!("Spend billed by provider (USD, cumulative, stacked; {})", class_words(class)),
        x_label: "hours before now".into(),
        y_label: "USD".into(),
        kind: dibs_charts::ChartKind::StackedArea,
        series: series(snapshot, &at, sums),
    }
}

/// Per provider and region now: GPUs held, spend per hour of active capacity, spend billed.
fn table(snapshot: &Snapshot, class: Option<WorkloadClass>) -> Markup {
    let now = snapshot.now;
    let mut rows: BTreeMap<(&str, &str), (u64, f64, f64)> = BTreeMap::new();
    for h in snapshot.held.iter().filter(|h| counted(class, h)) {
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
            caption { "By provider and region, now (" (class_words(class)) ", as the charts above)" }
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

/// The window and class choices, as a form that works without JavaScript.
fn choices(choice: &Choice, class: Option<WorkloadClass>) -> Markup {
    let current = class.map_or("all", |c| c.as_str());
    html! {
        form.filters #fleet-choice method="get" action="/fleet" aria-label="What the charts show" {
            div.field {
                label for="window" { "Window" }
                select #window name="window" {
                    @for window in Window::ALL {
                        option value=(window.as_str()) selected[window == choice.window] { (window.label()) }
                    }
                }
            }
            div.field {
                label for="workload" { "Workload" }
                select #workload name="workload" {
                    option value="all" selected[class.is_none()] { "every workload" }
                    @for w in WorkloadClass::ALL {
                        option value=(w.as_str()) selected[w.as_str() == current] { (w.as_str()) }
                    }
                }
            }
            button type="submit" { "Show" }
        }
    }
}

/// The page's body: the choices, the charts (drawn here), the table, the caps and the
/// providers.
fn body(snapshot: &Snapshot, choice: &Choice) -> Markup {
    let class = match choice.workload(&snapshot.caps) {
        Ok(class) => class,
        Err(e) => {
            return html! { h1 { "Fleet" } p.error role="alert" { "workload: " (e) } (choices(&Choice::default(), None)) };
        }
    };
    let from = snapshot.now.plus_hours(-choice.window.hours());
    let awarded = snapshot.held.iter().any(|h| counted(class, h));
    // The cap's line is drawn against exactly what it limits: its one class, or all.
    let gpu_cap = snapshot.caps.iter().find(|c| {
        c.basis == ShareBasis::Gpus
            && match class {
                Some(w) => c.workloads == [w],
                None => c.workloads.is_empty(),
            }
    });
    html! {
        h1 { "Fleet" }
        p {
            "As of " (instant(snapshot.now))
            @if let Some(speed) = snapshot.time_speed { " on a demo clock running " (speed) "× the wall clock" }
            ". "
            span #fleet-shown { "Charts of " (choice.window.label()) ", counting " (class_words(class)) "." }
        }
        (choices(choice, class))
        @if awarded {
            (charts::inline(&gpu_chart(snapshot, class, gpu_cap, from), "gpus-chart"))
            (charts::inline(&spend_chart(snapshot, class, from), "spend-chart"))
        } @else {
            p { "No capacity has been awarded for " (class_words(class)) " yet." }
        }
        (table(snapshot, class))
        (caps(snapshot))
        (providers(snapshot))
    }
}

pub(super) async fn page(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    choice: Result<Query<Choice>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // A window that does not parse shows the default window (the form shows which).
    let choice = choice.map(|Query(choice)| choice).unwrap_or_default();
    drawn_page(&dashboard, &headers, ("Fleet", Section::Fleet), snapshot, move |s| body(s, &choice)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(provider: u16, workload: WorkloadClass, gpus: u32, now: Timestamp) -> Held {
        Held {
            provider,
            region: 0,
            workload,
            gpus,
            node_gpus: 8,
            spend_per_hour: 10.0,
            awarded_at: now.plus_hours(-100.0),
            ready_at: Some(now.plus_hours(-90.0)),
            bills_until: None,
            ended_at: None,
            active: true,
        }
    }

    /// A fleet of 64 training GPUs at lambda and 96 inference GPUs at nebius, under a cap
    /// on training GPUs.
    fn fleet() -> Snapshot {
        let now = Timestamp::from_unix(1_800_000_000);
        Snapshot {
            now,
            time_speed: None,
            providers: vec!["lambda".into(), "nebius".into()],
            regions: vec!["us-east-1".into()],
            held: vec![held(0, WorkloadClass::Training, 64, now), held(1, WorkloadClass::Inference, 96, now)],
            caps: vec![Cap {
                source: "policy".into(),
                max_share: 0.4,
                basis: ShareBasis::Gpus,
                workloads: vec![WorkloadClass::Training],
            }],
            rows: Vec::new(),
        }
    }

    /// What the page says it shows, and the table's total GPUs, for a query.
    fn check(query: &str, shown: &str, total_gpus: &str, cap_drawn: bool) {
        let choice: Choice = choice_of(query);
        let page = body(&fleet(), &choice).into_string();
        let said =
            page.split("id=\"fleet-shown\">").nth(1).and_then(|rest| rest.split('<').next()).unwrap_or("");
        assert_eq!(said, shown, "{query}");
        let footer = page.split("<tfoot>").nth(1).unwrap_or("");
        assert!(footer.contains(&format!("<td class=\"number\">{total_gpus}</td>")), "{query}: {footer}");
        assert_eq!(page.contains("cap: 40% of training GPUs"), cap_drawn, "{query}");
    }

    /// The query string as the handler's `Query` reads it.
    fn choice_of(query: &str) -> Choice {
        let uri: axum::http::Uri = format!("/fleet?{query}").parse().unwrap();
        axum::extract::Query::try_from_uri(&uri).unwrap().0
    }

    #[test]
    fn the_charts_and_the_table_count_the_same_class_over_the_chosen_window() {
        // By default both count the class the GPU cap covers, and the cap is drawn.
        check("", "Charts of the last 24 hours, counting training workloads.", "64", true);
        check("window=7d&workload=all", "Charts of the last 7 days, counting every workload.", "160", false);
        check(
            "window=30d&workload=inference",
            "Charts of the last 30 days, counting inference workloads.",
            "96",
            false,
        );
        check("workload=training", "Charts of the last 24 hours, counting training workloads.", "64", true);
    }
}
