//! The requests board: requests by lifecycle state, filtered by state, workload, provider
//! and accelerator, and the form that submits a request.
//!
//! Every state is a column with its count and its newest [`CARDS_PER_COLUMN`] requests; a
//! state filter shows that state alone as a table of [`ROWS_PER_PAGE`] rows, paged. The
//! form posts the API's own body through the broker, so it validates as the API does and
//! shows the API's message beside the field the API names.

use std::sync::Arc;
use std::time::Instant;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use dibs_core::types::Timestamp;
use maud::{Markup, html};
use serde::Deserialize;

use super::format::{encode, relative, status_badge, status_label, thousands, usd};
use super::session::{require, require_posted};
use super::{Dashboard, PageError, Section, Viewer, layout, read, respond};
use crate::broker::{Command, SubmitBody};
use crate::view::{STATUSES, status_index};

/// The newest requests each column shows.
pub const CARDS_PER_COLUMN: usize = 12;
/// The rows one page of a single state shows.
pub const ROWS_PER_PAGE: usize = 100;

/// The board's filters, as the query string gives them (empty means any).
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct Filters {
    #[serde(default)]
    state: String,
    #[serde(default)]
    workload: String,
    #[serde(default)]
    provider: String,
    #[serde(default)]
    accelerator: String,
    /// With a state: the request number to page after (newest first, so older ones).
    #[serde(default)]
    before: Option<u64>,
    /// The request just submitted through the form, to point out.
    #[serde(default)]
    submitted: Option<String>,
}

impl Filters {
    fn query(&self, state: &str, before: Option<u64>) -> String {
        let mut pairs = Vec::new();
        for (name, value) in [
            ("state", state),
            ("workload", &self.workload),
            ("provider", &self.provider),
            ("accelerator", &self.accelerator),
        ] {
            if !value.is_empty() {
                pairs.push(format!("{name}={}", encode(value)));
            }
        }
        if let Some(before) = before {
            pairs.push(format!("before={before}"));
        }
        if pairs.is_empty() { "/requests".into() } else { format!("/requests?{}", pairs.join("&")) }
    }
}

/// One request on the board.
struct Card {
    id: String,
    number: u64,
    gpus: u32,
    accelerators: String,
    workload: &'static str,
    hours: u32,
    earliest_start: Timestamp,
    /// Providers supplying it (live allocations), comma-separated.
    providers: String,
    /// What its live allocations cost per hour, all-in.
    cost_per_hour: f64,
    /// When all its live capacity is (or is promised to be) ready.
    ready: Option<Timestamp>,
    unfilled: Option<String>,
    /// An ended request that went without some GPUs: its reason is in its stored view.
    reason_stored: bool,
}

/// What the board shows, copied out on the broker thread.
struct Snapshot {
    now: Timestamp,
    total: usize,
    /// Requests per state that pass the filters (not the state filter).
    counts: [usize; STATUSES.len()],
    /// Per state, the newest cards (all states), or one state's page.
    columns: Vec<Vec<Card>>,
    providers: Vec<String>,
    accelerators: Vec<String>,
}

/// A request id's number, for newest-first order (`r-10` after `r-9`).
pub(super) fn id_number(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// One request as the board filters and shows it: open (the engine holds it) or ended
/// (the broker's record of it).
struct Listed<'a> {
    id: &'a str,
    status: dibs_core::engine::Status,
    workload: dibs_core::types::WorkloadClass,
    accelerators: &'a [dibs_core::types::Accelerator],
    allocations: &'a [u64],
    gpus: u32,
    hours: u32,
    earliest_start: Timestamp,
    /// Why it went unfilled, when the engine still holds it; an ended request's reason is
    /// in its stored view (see [`fill_reasons`]).
    unfilled: Option<&'a String>,
    reason_stored: bool,
}

fn snapshot(view: &crate::broker::ReadView<'_>, filters: &Filters) -> Snapshot {
    let engine = view.engine;
    let open = engine.requests().map(|state| Listed {
        id: &state.request.id,
        status: state.status,
        workload: state.request.workload,
        accelerators: &state.request.accelerators,
        allocations: &state.allocations,
        gpus: state.request.gpus.get(),
        hours: state.request.duration_hours,
        earliest_start: state.request.earliest_start,
        unfilled: state.unfilled_reason.as_ref(),
        reason_stored: false,
    });
    let ended = view.finished.iter().map(|(id, f)| Listed {
        id,
        status: f.status,
        workload: f.workload,
        accelerators: &f.accelerators,
        allocations: &f.allocations,
        gpus: f.gpus,
        hours: f.hours,
        earliest_start: f.earliest_start,
        unfilled: None,
        reason_stored: f.unfilled_gpus > 0,
    });
    let state_filter = STATUSES.iter().position(|s| *s == filters.state);
    let mut counts = [0; STATUSES.len()];
    let mut chosen: Vec<Vec<(u64, Listed<'_>)>> = (0..STATUSES.len()).map(|_| Vec::new()).collect();
    let mut accelerators = std::collections::BTreeSet::new();
    let mut total = 0;
    for listed in open.chain(ended) {
        total += 1;
        for a in listed.accelerators {
            if !accelerators.contains(a.as_str()) {
                accelerators.insert(a.as_str().to_owned());
            }
        }
        if !filters.workload.is_empty() && listed.workload.as_str() != filters.workload {
            continue;
        }
        if !filters.accelerator.is_empty()
            && !listed.accelerators.iter().any(|a| a.as_str() == filters.accelerator)
        {
            continue;
        }
        if !filters.provider.is_empty()
            && !listed
                .allocations
                .iter()
                .filter_map(|id| engine.allocation(*id))
                .any(|a| a.plan.provider.as_str() == filters.provider)
        {
            continue;
        }
        let column = status_index(listed.status);
        counts[column] += 1;
        if state_filter.is_none_or(|only| only == column) {
            let number = id_number(listed.id);
            if filters.before.is_none_or(|before| number < before) {
                chosen[column].push((number, listed));
            }
        }
    }
    let limit = if state_filter.is_some() { ROWS_PER_PAGE } else { CARDS_PER_COLUMN };
    let columns = chosen
        .into_iter()
        .map(|mut listed| {
            // Newest first: the largest numbers, without sorting every request.
            if listed.len() > limit {
                listed.select_nth_unstable_by(limit - 1, |a, b| b.0.cmp(&a.0));
                listed.truncate(limit);
            }
            listed.sort_unstable_by_key(|(number, _)| std::cmp::Reverse(*number));
            listed.into_iter().map(|(number, listed)| card(engine, number, &listed)).collect()
        })
        .collect();
    Snapshot {
        now: view.now,
        total,
        counts,
        columns,
        providers: engine.published_providers().map(|p| p.to_string()).collect(),
        accelerators: accelerators.into_iter().collect(),
    }
}

fn card(engine: &dibs_core::engine::Engine, number: u64, listed: &Listed<'_>) -> Card {
    let held = || {
        listed
            .allocations
            .iter()
            .filter_map(|id| engine.allocation(*id))
            .filter(|a| !matches!(a.state, dibs_core::engine::AllocationState::Cancelled { .. }))
    };
    let live = || held().filter(|a| a.state.is_live());
    let mut providers: Vec<&str> = held().map(|a| a.plan.provider.as_str()).collect();
    providers.sort_unstable();
    providers.dedup();
    Card {
        id: listed.id.to_owned(),
        number,
        gpus: listed.gpus,
        accelerators: listed.accelerators.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", "),
        workload: listed.workload.as_str(),
        hours: listed.hours,
        earliest_start: listed.earliest_start,
        providers: providers.join(", "),
        cost_per_hour: live().map(|a| a.plan.spend_per_hour()).sum(),
        ready: live().filter_map(crate::view::all_ready).max(),
        unfilled: listed.unfilled.cloned(),
        reason_stored: listed.reason_stored,
    }
}

/// Reads the unfilled reasons of the ended requests on show from their stored views.
async fn fill_reasons(dashboard: &Dashboard, snapshot: &mut Snapshot) -> Result<(), PageError> {
    let wanted: Vec<String> = snapshot
        .columns
        .iter()
        .flatten()
        .filter(|card| card.reason_stored)
        .map(|card| card.id.clone())
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let reasons = super::with_store(&dashboard.app, move |store| {
        let mut reasons = std::collections::HashMap::new();
        for id in &wanted {
            let reason = store.request_view(id)?.as_deref().and_then(crate::view::stored_unfilled_reason);
            if let Some(reason) = reason {
                reasons.insert(id.clone(), reason);
            }
        }
        Ok(reasons)
    })
    .await?;
    for card in snapshot.columns.iter_mut().flatten() {
        if card.unfilled.is_none()
            && let Some(reason) = reasons.get(&card.id)
        {
            card.unfilled = Some(reason.clone());
        }
    }
    Ok(())
}

/// What the form was given, to show again beside an error.
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct SubmitForm {
    #[serde(default)]
    accelerators: String,
    #[serde(default)]
    gpus: String,
    #[serde(default)]
    block: String,
    #[serde(default)]
    duration_hours: String,
    #[serde(default)]
    workload: String,
    #[serde(default)]
    regions: String,
    #[serde(default)]
    providers: String,
    #[serde(default)]
    exclude_providers: String,
    #[serde(default)]
    max_price: String,
    #[serde(default)]
    deliver_within_hours: String,
    #[serde(default)]
    spot: String,
    #[serde(default)]
    objective: String,
    #[serde(default)]
    preference: String,
    #[serde(default)]
    same_region: Option<String>,
    #[serde(default)]
    apart: Option<String>,
    /// Made when the form was drawn: posting the same form twice submits once.
    #[serde(default)]
    idempotency_key: String,
}

/// An error to show beside a field (`None`: above the form).
struct FieldError {
    field: Option<String>,
    message: String,
}

/// The fields the form shows, by the API's name: an error naming another field goes above.
const FORM_FIELDS: [&str; 13] = [
    "accelerators",
    "gpus",
    "block",
    "duration_hours",
    "workload",
    "regions",
    "providers",
    "exclude_providers",
    "max_price",
    "deliver_within_hours",
    "spot",
    "objective",
    "preference",
];

fn list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn optional(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The API's body from the form; a number that does not parse is the form's own error.
fn body_of(form: &SubmitForm) -> Result<SubmitBody, FieldError> {
    fn number<T: std::str::FromStr>(field: &str, text: &str, what: &str) -> Result<Option<T>, FieldError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| FieldError {
            field: Some(field.to_owned()),
            message: format!("{text:?} is not {what}"),
        })
    }
    let required = |field: &str, value: Option<u32>| {
        value.ok_or_else(|| FieldError { field: Some(field.to_owned()), message: "required".into() })
    };
    // The form's key is held to the API's rule for Idempotency-Key.
    let key = &form.idempotency_key;
    if key.len() > crate::app::MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FieldError {
            field: Some("idempotency_key".into()),
            message: format!("must be 1 to {} visible ASCII characters", crate::app::MAX_KEY_LEN),
        });
    }
    Ok(SubmitBody {
        accelerators: list(&form.accelerators),
        gpus: required("gpus", number("gpus", &form.gpus, "a whole number of GPUs")?)?,
        block: number("block", &form.block, "a whole number of GPUs")?,
        duration_hours: required(
            "duration_hours",
            number("duration_hours", &form.duration_hours, "a whole number of hours")?,
        )?,
        earliest_start: None,
        deliver_by: None,
        regions: optional(&form.regions).into_iter().collect(),
        providers: list(&form.providers),
        exclude_providers: list(&form.exclude_providers),
        workload: form.workload.trim().to_owned(),
        max_price: number("max_price", &form.max_price, "a price in USD per GPU-hour")?,
        spot: optional(&form.spot),
        same_region: form.same_region.is_some(),
        apart: form.apart.is_some(),
        objective: optional(&form.objective),
        preference: optional(&form.preference),
        deliver_within_hours: number(
            "deliver_within_hours",
            &form.deliver_within_hours,
            "a whole number of hours",
        )?,
    })
}

fn submit_form(form: &SubmitForm, error: Option<&FieldError>, workloads: &[&str]) -> Markup {
    let beside = |field: &str| error.filter(|e| e.field.as_deref() == Some(field)).map(|e| e.message.clone());
    let above = error.filter(|e| e.field.as_deref().is_none_or(|f| !FORM_FIELDS.contains(&f)));
    let key = if form.idempotency_key.is_empty() {
        crate::app::new_token().unwrap_or_default()
    } else {
        form.idempotency_key.clone()
    };
    let text = |name: &str, label: &str, value: &str, hint: &str, required: bool| {
        let error = beside(name);
        let described =
            format!("{name}-hint{}", if error.is_some() { format!(" {name}-error") } else { String::new() });
        html! {
            div.field {
                label for=(name) { (label) @if required { " " abbr title="required" { "*" } } }
                input id=(name) name=(name) type="text" value=(value) required[required]
                    aria-invalid=[error.as_ref().map(|_| "true")] aria-describedby=(described);
                p.hint id={ (name) "-hint" } { (hint) }
                @if let Some(message) = &error {
                    p.field-error id={ (name) "-error" } role="alert" { (message) }
                }
            }
        }
    };
    let choice = |name: &str, label: &str, value: &str, options: &[&str], hint: &str| {
        let error = beside(name);
        html! {
            div.field {
                label for=(name) { (label) }
                select id=(name) name=(name) aria-invalid=[error.as_ref().map(|_| "true")]
                    aria-describedby={ (name) "-hint" @if error.is_some() { " " (name) "-error" } } {
                    @for option in options {
                        option value=(option) selected[*option == value] { (option) }
                    }
                }
                p.hint id={ (name) "-hint" } { (hint) }
                @if let Some(message) = &error {
                    p.field-error id={ (name) "-error" } role="alert" { (message) }
                }
            }
        }
    };
    let or_default = |value: &str, default: &'static str| {
        if value.is_empty() { default.to_owned() } else { value.to_owned() }
    };
    html! {
        form.card.submit #submit method="post" action="/requests" aria-labelledby="submit-title" {
            h2 #submit-title { "Submit a request" }
            @if let Some(error) = above {
                p.error role="alert" {
                    @if let Some(field) = &error.field { strong { (field) ": " } }
                    (error.message)
                }
            }
            input type="hidden" name="idempotency_key" value=(key);
            div.fields {
                (text("accelerators", "Accelerators", &or_default(&form.accelerators, "H100"), "In order of preference, comma-separated: H100, A100-80GB", true))
                (text("gpus", "GPUs", &form.gpus, "How many GPUs", true))
                (text("duration_hours", "Hours", &form.duration_hours, "How long, in hours", true))
                (choice("workload", "Workload", &or_default(&form.workload, "training"), workloads, "Contracts scope clauses by it"))
                (text("block", "Block", &form.block, "GPUs that must sit together; default 8 when GPUs is a multiple of 8", false))
                (text("deliver_within_hours", "Deliver within (hours)", &form.deliver_within_hours, "All capacity ready within this many hours", false))
                (text("max_price", "Max price", &form.max_price, "USD per GPU-hour, all-in", false))
                (text("regions", "Regions", &form.regions, "aws/us-east-1, gcp/*; empty: anywhere", false))
                (text("providers", "Providers", &form.providers, "In order of preference; empty: any", false))
                (text("exclude_providers", "Exclude providers", &form.exclude_providers, "Never these", false))
                (choice("spot", "Spot", &or_default(&form.spot, "never"), &["never", "allow", "only"], "Capacity the provider may reclaim"))
                (choice("objective", "Objective", &or_default(&form.objective, "cost"), &["cost", "time"], "Cheapest, or soonest all ready"))
                (text("preference", "Preference", &form.preference, "any, fallback or premium:P", false))
                div.field.check {
                    input #same_region name="same_region" type="checkbox" value="on" checked[form.same_region.is_some()];
                    label for="same_region" { "All nodes identical, in one region" }
                }
                div.field.check {
                    input #apart name="apart" type="checkbox" value="on" checked[form.apart.is_some()];
                    label for="apart" { "Parts may run apart (batch only)" }
                }
            }
            button type="submit" { "Submit" }
        }
    }
}

fn board(snapshot: &Snapshot, filters: &Filters) -> Markup {
    let single = STATUSES.iter().position(|s| *s == filters.state);
    let workloads: Vec<&str> = dibs_core::types::WorkloadClass::ALL.iter().map(|w| w.as_str()).collect();
    let select = |name: &str, label: &str, current: &str, options: &[String]| {
        html! {
            div.field {
                label for={ "filter-" (name) } { (label) }
                select id={ "filter-" (name) } name=(name) {
                    option value="" selected[current.is_empty()] { "any" }
                    @for option in options {
                        option value=(option) selected[option == current] { (option) }
                    }
                }
            }
        }
    };
    let states: Vec<String> = STATUSES.iter().map(|s| s.to_string()).collect();
    let workload_names: Vec<String> = workloads.iter().map(|s| s.to_string()).collect();
    html! {
        form.filters method="get" action="/requests" aria-label="Filters" {
            (select("state", "State", &filters.state, &states))
            (select("workload", "Workload", &filters.workload, &workload_names))
            (select("provider", "Provider", &filters.provider, &snapshot.providers))
            (select("accelerator", "Accelerator", &filters.accelerator, &snapshot.accelerators))
            button type="submit" { "Filter" }
            a href="/requests" { "Clear" }
        }
        div #board data-live="3000" {
            p.summary aria-live="polite" {
                (thousands(snapshot.total as u64)) " requests; as of " (super::format::instant(snapshot.now)) ". "
                a href=(filters.query(&filters.state, None)) { "Refresh" }
            }
            ul.counts aria-label="Requests per state" {
                @for (i, status) in STATUSES.iter().enumerate() {
                    li {
                        a href=(filters.query(status, None)) aria-current=[(single == Some(i)).then_some("true")] {
                            (status_badge(status)) " " strong { (thousands(snapshot.counts[i] as u64)) }
                        }
                    }
                }
            }
            @match single {
                None => {
                    div.columns {
                        @for (i, status) in STATUSES.iter().enumerate() {
                            section.column aria-labelledby={ "col-" (status) } {
                                h2 id={ "col-" (status) } { (status_label(status)) " " span.count { (snapshot.counts[i]) } }
                                ul.cards {
                                    @for card in &snapshot.columns[i] {
                                        li.card-item.highlight[filters.submitted.as_deref() == Some(card.id.as_str())] data-request=(card.id) {
                                            a href={ "/requests/" (card.id) } { strong { (card.id) } }
                                            " " (card.gpus) " × " (card.accelerators) ", " (card.hours) " h, " (card.workload)
                                            @if !card.providers.is_empty() { br; span.muted { "from " (card.providers) } }
                                            @if card.cost_per_hour > 0.0 {
                                                br; span.muted { (usd(card.cost_per_hour)) "/h" @if let Some(ready) = card.ready { ", all ready " (relative(ready, snapshot.now)) } }
                                            }
                                            br; span.muted { "start: " (relative(card.earliest_start, snapshot.now)) }
                                            @if let Some(reason) = &card.unfilled { br; span.muted { (reason) } }
                                        }
                                    }
                                }
                                @if snapshot.counts[i] > snapshot.columns[i].len() {
                                    a href=(filters.query(status, None)) { "All " (snapshot.counts[i]) " " (status_label(status).to_lowercase()) }
                                }
                            }
                        }
                    }
                }
                Some(i) => {
                    table.requests {
                        caption { (status_label(STATUSES[i])) ": " (snapshot.counts[i]) " requests, newest first" }
                        thead { tr {
                            th scope="col" { "Request" } th scope="col" { "GPUs" } th scope="col" { "Accelerators" }
                            th scope="col" { "Hours" } th scope="col" { "Workload" } th scope="col" { "Providers" }
                            th scope="col" { "Submitted" }
                        } }
                        tbody {
                            @for card in &snapshot.columns[i] {
                                tr data-request=(card.id) {
                                    td { a href={ "/requests/" (card.id) } { (card.id) } }
                                    td.number { (card.gpus) } td { (card.accelerators) } td.number { (card.hours) }
                                    td { (card.workload) } td { (card.providers) }
                                    td { (relative(card.earliest_start, snapshot.now)) }
                                }
                            }
                        }
                    }
                    @if let Some(last) = snapshot.columns[i].last().filter(|_| snapshot.columns[i].len() == ROWS_PER_PAGE) {
                        p { a href=(filters.query(&filters.state, Some(last.number))) { "Older requests" } }
                    }
                }
            }
        }
    }
}

async fn render(
    dashboard: &Dashboard,
    viewer: &Viewer,
    filters: Filters,
    form: Option<(SubmitForm, FieldError)>,
    started: Instant,
) -> Response {
    let filters_for_read = filters.clone();
    let mut snapshot = match read(&dashboard.app, move |view| snapshot(view, &filters_for_read)).await {
        Ok(snapshot) => snapshot,
        Err(e) => return e.into_response(Some(viewer)),
    };
    if let Err(e) = fill_reasons(dashboard, &mut snapshot).await {
        return e.into_response(Some(viewer));
    }
    let workloads: Vec<&str> = dibs_core::types::WorkloadClass::ALL.iter().map(|w| w.as_str()).collect();
    let status = if form.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    let body = html! {
        h1 { "Requests" }
        @if let Some(id) = &filters.submitted {
            p.notice role="status" { "Submitted " a href={ "/requests/" (id) } { (id) } "; it moves across the board as it is decided." }
        }
        @if viewer.may_change_requests() {
            // The board comes first once there is one: the form folds away, open when it has
            // something to say (an error) or nothing is on the board yet.
            details.submit-panel open[form.is_some() || snapshot.total == 0] {
                summary { "Submit a request" }
                @match &form {
                    Some((values, error)) => (submit_form(values, Some(error), &workloads)),
                    None => (submit_form(&SubmitForm::default(), None, &workloads)),
                }
            }
        }
        (board(&snapshot, &filters))
    };
    respond(started, status, layout(Some(viewer), "Requests", Section::Requests, body))
}

pub(super) async fn page(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    filters: Result<Query<Filters>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let started = Instant::now();
    let viewer = match require(&dashboard, &headers, Viewer::may_read) {
        Ok(viewer) => viewer,
        Err((error, viewer)) => return error.into_response(viewer.as_ref()),
    };
    let Ok(Query(filters)) = filters else {
        return PageError::NotFound("Those filters do not parse.".into()).into_response(Some(&viewer));
    };
    render(&dashboard, &viewer, filters, None, started).await
}

pub(super) async fn submit(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    form: Result<Form<SubmitForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let started = Instant::now();
    let viewer = match require_posted(&dashboard, &headers, Viewer::may_change_requests) {
        Ok(viewer) => viewer,
        Err((error, viewer)) => return error.into_response(viewer.as_ref()),
    };
    let form = match form {
        Ok(Form(form)) => form,
        Err(e) => {
            let error = FieldError { field: None, message: e.body_text() };
            return render(
                &dashboard,
                &viewer,
                Filters::default(),
                Some((SubmitForm::default(), error)),
                started,
            )
            .await;
        }
    };
    let body = match body_of(&form) {
        Ok(body) => body,
        Err(error) => {
            return render(&dashboard, &viewer, Filters::default(), Some((form, error)), started).await;
        }
    };
    // A form posted twice (a reload, a double click) carries one key: one submission. Keys
    // are scoped to the caller and to the form, apart from the API's.
    let digest = serde_json::to_vec(&body).unwrap_or_default();
    let idempotency = (!form.idempotency_key.is_empty()).then(|| {
        use sha2::Digest;
        let digest = dibs_core::ledger::hex(&sha2::Sha256::digest(&digest).into());
        (format!("{}:dashboard-requests", viewer.scope), form.idempotency_key.clone(), digest)
    });
    let answer =
        crate::app::ask(&dashboard.app, |reply| Command::Submit { body: Box::new(body), idempotency, reply })
            .await;
    match answer {
        Ok(view) => Redirect::to(&format!("/requests?submitted={}", encode(&view.id))).into_response(),
        Err(e) => {
            let error = FieldError { field: e.field.clone(), message: e.error.clone() };
            render(&dashboard, &viewer, Filters::default(), Some((form, error)), started).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(form: SubmitForm, expected: Result<&str, (&str, &str)>) {
        match (body_of(&form), expected) {
            (Ok(body), Ok(json)) => assert_eq!(
                serde_json::to_value(&body).unwrap(),
                serde_json::from_str::<serde_json::Value>(json).unwrap()
            ),
            (Err(error), Err((field, message))) => {
                assert_eq!((error.field.as_deref(), error.message.as_str()), (Some(field), message))
            }
            (got, _) => panic!(
                "unexpected: {:?}",
                got.map(|b| serde_json::to_string(&b).unwrap()).map_err(|e| e.message)
            ),
        }
    }

    fn form(gpus: &str, hours: &str) -> SubmitForm {
        SubmitForm {
            accelerators: "H100, A100-80GB".into(),
            gpus: gpus.into(),
            duration_hours: hours.into(),
            workload: "training".into(),
            ..SubmitForm::default()
        }
    }

    #[test]
    fn the_form_gives_the_api_s_body_and_names_a_field_that_does_not_parse() {
        check(
            form("64", "24"),
            Ok(r#"{"accelerators":["H100","A100-80GB"],"gpus":64,"block":null,"duration_hours":24,
                "earliest_start":null,"deliver_by":null,"regions":[],"providers":[],"exclude_providers":[],
                "workload":"training","max_price":null,"spot":null,"same_region":false,"apart":false,"objective":null,
                "preference":null,"deliver_within_hours":null}"#),
        );
        check(form("lots", "24"), Err(("gpus", "\"lots\" is not a whole number of GPUs")));
        check(form("64", ""), Err(("duration_hours", "required")));
        check(
            SubmitForm { max_price: "cheap".into(), ..form("8", "1") },
            Err(("max_price", "\"cheap\" is not a price in USD per GPU-hour")),
        );
        // The form's idempotency key is held to the API's rule.
        let long = SubmitForm { idempotency_key: "k".repeat(60_000), ..form("8", "1") };
        check(long, Err(("idempotency_key", "must be 1 to 200 visible ASCII characters")));
        let spaced = SubmitForm { idempotency_key: "a key".into(), ..form("8", "1") };
        check(spaced, Err(("idempotency_key", "must be 1 to 200 visible ASCII characters")));
    }

    #[test]
    fn request_numbers_order_newest_first() {
        let mut ids = ["r-9", "r-10", "r-1"];
        ids.sort_by_key(|id| std::cmp::Reverse(id_number(id)));
        assert_eq!(ids, ["r-10", "r-9", "r-1"]);
    }
}
