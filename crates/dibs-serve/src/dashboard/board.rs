//! The requests board: requests by lifecycle state, filtered by state, workload, provider,
//! accelerator and a search (id, accelerator, provider, workload), sorted, exported as CSV,
//! and the form that submits a request.
//!
//! Every state is a column with its count and its first [`CARDS_PER_COLUMN`] requests in
//! the chosen order (newest first unless asked otherwise); a state filter shows that state
//! alone as a table of [`ROWS_PER_PAGE`] rows, paged. `/requests.csv` takes the same query
//! and gives every request it selects, in the same order, up to [`MAX_CSV_ROWS`]. The form
//! posts the API's own body through the broker, so it validates as the API does; it shows
//! every field that is wrong at once (`broker::every_field_error`), each message beside its
//! field, where the API answers only the first.

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
/// The most rows `/requests.csv` gives.
pub const MAX_CSV_ROWS: usize = 10_000;
/// The longest search the board takes, in bytes.
pub const MAX_SEARCH_LEN: usize = 200;

/// The board's orders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Sort {
    /// Newest first, by request number.
    #[default]
    Newest,
    /// Oldest first.
    Oldest,
    /// Dearest live capacity per hour first (newest first among equals).
    Cost,
    /// Most GPUs asked first (newest first among equals).
    Gpus,
}

impl Sort {
    const ALL: [Sort; 4] = [Sort::Newest, Sort::Oldest, Sort::Cost, Sort::Gpus];

    fn as_str(self) -> &'static str {
        match self {
            Sort::Newest => "newest",
            Sort::Oldest => "oldest",
            Sort::Cost => "cost",
            Sort::Gpus => "gpus",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Sort::Newest => "newest first",
            Sort::Oldest => "oldest first",
            Sort::Cost => "cost per hour, dearest first",
            Sort::Gpus => "GPUs, most first",
        }
    }

    /// The order of two requests, by what a card shows of them.
    fn compare(self, a: &Rank, b: &Rank) -> std::cmp::Ordering {
        let newest = b.number.cmp(&a.number);
        match self {
            Sort::Newest => newest,
            Sort::Oldest => a.number.cmp(&b.number),
            Sort::Cost => b.cost_per_hour.total_cmp(&a.cost_per_hour).then(newest),
            Sort::Gpus => b.gpus.cmp(&a.gpus).then(newest),
        }
    }
}

/// What a request is ordered by.
#[derive(Debug, Clone, Copy)]
struct Rank {
    number: u64,
    gpus: u32,
    cost_per_hour: f64,
}

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
    /// Words that an id, an accelerator, a provider or the workload contains (any case).
    #[serde(default)]
    q: String,
    #[serde(default)]
    sort: Sort,
    /// With a state, newest first: the request number to page after (older ones).
    #[serde(default)]
    before: Option<u64>,
    /// With a state, in another order: the rows to skip (earlier pages).
    #[serde(default)]
    skip: Option<usize>,
    /// The request just submitted through the form, to point out.
    #[serde(default)]
    submitted: Option<String>,
}

/// Where a page of one state starts.
#[derive(Debug, Clone, Copy)]
enum PageStart {
    First,
    /// Newest first: older than this request number.
    Before(u64),
    /// Any other order: after this many rows.
    Skip(usize),
}

impl Filters {
    fn query(&self, state: &str, start: PageStart) -> String {
        self.query_at("/requests", state, start)
    }

    /// `path` with these filters (state `state`) and `start`, as a query string.
    fn query_at(&self, path: &str, state: &str, start: PageStart) -> String {
        let mut pairs = Vec::new();
        for (name, value) in [
            ("state", state),
            ("workload", &self.workload),
            ("provider", &self.provider),
            ("accelerator", &self.accelerator),
            ("q", self.q.trim()),
        ] {
            if !value.is_empty() {
                pairs.push(format!("{name}={}", encode(value)));
            }
        }
        if self.sort != Sort::Newest {
            pairs.push(format!("sort={}", self.sort.as_str()));
        }
        match start {
            PageStart::First => {}
            PageStart::Before(before) => pairs.push(format!("before={before}")),
            PageStart::Skip(skip) => pairs.push(format!("skip={skip}")),
        }
        if pairs.is_empty() { path.into() } else { format!("{path}?{}", pairs.join("&")) }
    }

    /// The search, lower-cased, as words that must all match; bounded.
    fn words(&self) -> Vec<String> {
        // The first MAX_SEARCH_LEN bytes, cut at a character's start.
        let end =
            (0..=MAX_SEARCH_LEN.min(self.q.len())).rev().find(|&i| self.q.is_char_boundary(i)).unwrap_or(0);
        let q = &self.q[..end];
        q.split_whitespace().map(str::to_lowercase).collect()
    }
}

/// One request on the board.
struct Card {
    id: String,
    status: &'static str,
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

/// How many cards [`snapshot`] keeps, and from where.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// The board: per state, a column or (with a state filter) one page.
    Board,
    /// Every request the filters select, up to [`MAX_CSV_ROWS`] in all, in one list.
    Export,
}

fn snapshot(view: &crate::broker::ReadView<'_>, filters: &Filters, shape: Shape) -> Snapshot {
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
    let words = filters.words();
    let mut counts = [0; STATUSES.len()];
    let mut chosen: Vec<Vec<(Rank, Listed<'_>)>> = (0..STATUSES.len()).map(|_| Vec::new()).collect();
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
            && !providers_of(engine, listed.allocations).any(|p| p == filters.provider)
        {
            continue;
        }
        let found = |word: &str| {
            listed.id.to_lowercase().contains(word)
                || listed.workload.as_str().contains(word)
                || listed.accelerators.iter().any(|a| a.as_str().to_lowercase().contains(word))
                || providers_of(engine, listed.allocations).any(|p| p.to_lowercase().contains(word))
        };
        if !words.iter().all(|word| found(word)) {
            continue;
        }
        let column = status_index(listed.status);
        counts[column] += 1;
        if state_filter.is_none_or(|only| only == column) {
            let number = id_number(listed.id);
            let paged_before = filters.sort == Sort::Newest && matches!(shape, Shape::Board);
            if !paged_before || filters.before.is_none_or(|before| number < before) {
                let cost_per_hour =
                    if filters.sort == Sort::Cost { live_cost_per_hour(engine, &listed) } else { 0.0 };
                chosen[column].push((Rank { number, gpus: listed.gpus, cost_per_hour }, listed));
            }
        }
    }
    let columns = match shape {
        Shape::Board => {
            let (skip, limit) = match state_filter {
                Some(_) if filters.sort != Sort::Newest => (filters.skip.unwrap_or(0), ROWS_PER_PAGE),
                Some(_) => (0, ROWS_PER_PAGE),
                None => (0, CARDS_PER_COLUMN),
            };
            chosen.into_iter().map(|listed| in_order(engine, filters.sort, listed, skip, limit)).collect()
        }
        Shape::Export => {
            vec![in_order(engine, filters.sort, chosen.into_iter().flatten().collect(), 0, MAX_CSV_ROWS)]
        }
    };
    Snapshot {
        now: view.now,
        total,
        counts,
        columns,
        providers: engine.published_providers().map(|p| p.to_string()).collect(),
        accelerators: accelerators.into_iter().collect(),
    }
}

/// The providers of a request's allocations (one per allocation).
fn providers_of<'e>(
    engine: &'e dibs_core::engine::Engine,
    allocations: &'e [u64],
) -> impl Iterator<Item = &'e str> {
    allocations.iter().filter_map(|id| engine.allocation(*id)).map(|a| a.plan.provider.as_str())
}

/// The cards of `listed` from `skip` to `skip + limit` in `sort`'s order, without sorting
/// every request.
fn in_order(
    engine: &dibs_core::engine::Engine,
    sort: Sort,
    mut listed: Vec<(Rank, Listed<'_>)>,
    skip: usize,
    limit: usize,
) -> Vec<Card> {
    let keep = skip.saturating_add(limit);
    if listed.len() > keep && keep > 0 {
        listed.select_nth_unstable_by(keep - 1, |a, b| sort.compare(&a.0, &b.0));
    }
    listed.truncate(keep);
    listed.sort_unstable_by(|a, b| sort.compare(&a.0, &b.0));
    listed.drain(..skip.min(listed.len()));
    listed.into_iter().map(|(rank, listed)| card(engine, rank.number, &listed)).collect()
}

/// What a request's live allocations cost per hour, all-in (as its card shows).
fn live_cost_per_hour(engine: &dibs_core::engine::Engine, listed: &Listed<'_>) -> f64 {
    listed
        .allocations
        .iter()
        .filter_map(|id| engine.allocation(*id))
        .filter(|a| a.state.is_live())
        .map(|a| a.plan.spend_per_hour())
        .sum()
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
        status: listed.status.as_str(),
        number,
        gpus: listed.gpus,
        accelerators: listed.accelerators.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", "),
        workload: listed.workload.as_str(),
        hours: listed.hours,
        earliest_start: listed.earliest_start,
        providers: providers.join(", "),
        cost_per_hour: live_cost_per_hour(engine, listed),
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

/// The API's body from the form, and every field the form itself cannot read (a number
/// that does not parse, a required one missing, a bad key): such a field is left out of the
/// body (or zero), and its error is the form's own.
fn body_of(form: &SubmitForm) -> (SubmitBody, Vec<FieldError>) {
    let mut errors = Vec::new();
    let mut number = |field: &str, text: &str, what: &str| -> Option<u32> {
        parsed(field, text, what).unwrap_or_else(|error| {
            errors.push(error);
            None
        })
    };
    let gpus = number("gpus", &form.gpus, "a whole number of GPUs");
    let block = number("block", &form.block, "a whole number of GPUs");
    let duration_hours = number("duration_hours", &form.duration_hours, "a whole number of hours");
    let deliver_within_hours =
        number("deliver_within_hours", &form.deliver_within_hours, "a whole number of hours");
    let max_price =
        parsed("max_price", &form.max_price, "a price in USD per GPU-hour").unwrap_or_else(|error| {
            errors.push(error);
            None
        });
    for (field, value) in [("gpus", gpus), ("duration_hours", duration_hours)] {
        if value.is_none() && !errors.iter().any(|e| e.field.as_deref() == Some(field)) {
            errors.push(FieldError { field: Some(field.to_owned()), message: "required".into() });
        }
    }
    // The form's key is held to the API's rule for Idempotency-Key.
    let key = &form.idempotency_key;
    if key.len() > crate::app::MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        errors.push(FieldError {
            field: Some("idempotency_key".into()),
            message: format!("must be 1 to {} visible ASCII characters", crate::app::MAX_KEY_LEN),
        });
    }
    let body = SubmitBody {
        accelerators: list(&form.accelerators),
        gpus: gpus.unwrap_or(0),
        block,
        duration_hours: duration_hours.unwrap_or(0),
        earliest_start: None,
        deliver_by: None,
        regions: optional(&form.regions).into_iter().collect(),
        providers: list(&form.providers),
        exclude_providers: list(&form.exclude_providers),
        workload: form.workload.trim().to_owned(),
        max_price,
        spot: optional(&form.spot),
        same_region: form.same_region.is_some(),
        apart: form.apart.is_some(),
        objective: optional(&form.objective),
        preference: optional(&form.preference),
        deliver_within_hours,
    };
    (body, errors)
}

/// A number from a field of the form (`None`: left empty), or the form's error naming it.
fn parsed<T: std::str::FromStr>(field: &str, text: &str, what: &str) -> Result<Option<T>, FieldError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| FieldError { field: Some(field.to_owned()), message: format!("{text:?} is not {what}") })
}

/// Every field of `body` the API would refuse, checked one field at a time, except those
/// the form already found wrong.
async fn api_errors(
    dashboard: &Dashboard,
    body: SubmitBody,
    known: &[FieldError],
) -> Result<Vec<FieldError>, PageError> {
    let found = read(&dashboard.app, move |view| {
        crate::broker::every_field_error(view.engine.names(), view.now, body)
    })
    .await?;
    Ok(found
        .into_iter()
        .filter(|(field, _)| !known.iter().any(|e| e.field.as_deref() == Some(field.as_str())))
        .map(|(field, message)| FieldError { field: Some(field), message })
        .collect())
}

fn submit_form(form: &SubmitForm, errors: &[FieldError], workloads: &[&str]) -> Markup {
    let beside =
        |field: &str| errors.iter().find(|e| e.field.as_deref() == Some(field)).map(|e| e.message.clone());
    let above: Vec<&FieldError> =
        errors.iter().filter(|e| e.field.as_deref().is_none_or(|f| !FORM_FIELDS.contains(&f))).collect();
    let beside_fields: Vec<&str> =
        errors.iter().filter_map(|e| e.field.as_deref()).filter(|f| FORM_FIELDS.contains(f)).collect();
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
            @if beside_fields.len() > 1 {
                p.error #form-errors role="alert" {
                    (beside_fields.len()) " fields need a change: "
                    @for (i, field) in beside_fields.iter().enumerate() {
                        @if i > 0 { ", " }
                        a href={ "#" (field) } { (field) }
                    }
                    "."
                }
            }
            @for error in &above {
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
            div.field {
                label for="filter-q" { "Search" }
                input #filter-q name="q" type="search" value=(filters.q) maxlength=(MAX_SEARCH_LEN)
                    placeholder="id, accelerator, provider, workload";
            }
            div.field {
                label for="filter-sort" { "Sort" }
                select #filter-sort name="sort" {
                    @for sort in Sort::ALL {
                        option value=(sort.as_str()) selected[sort == filters.sort] { (sort.label()) }
                    }
                }
            }
            button type="submit" { "Filter" }
            a href="/requests" { "Clear" }
            a #export href=(filters.query_at("/requests.csv", &filters.state, PageStart::First)) download {
                "CSV of these requests"
            }
        }
        div #board data-live="3000" {
            p.summary aria-live="polite" {
                (thousands(snapshot.total as u64)) " requests; as of " (super::format::instant(snapshot.now)) ". "
                a href=(filters.query(&filters.state, PageStart::First)) { "Refresh" }
                @if !filters.q.trim().is_empty() || filters.sort != Sort::Newest {
                    " "
                    span #board-order {
                        @if !filters.q.trim().is_empty() { "Matching “" (filters.q.trim()) "”; " }
                        (filters.sort.label()) "."
                    }
                }
            }
            ul.counts aria-label="Requests per state" {
                @for (i, status) in STATUSES.iter().enumerate() {
                    li {
                        a href=(filters.query(status, PageStart::First)) aria-current=[(single == Some(i)).then_some("true")] {
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
                                    a href=(filters.query(status, PageStart::First)) { "All " (snapshot.counts[i]) " " (status_label(status).to_lowercase()) }
                                }
                            }
                        }
                    }
                }
                Some(i) => {
                    table.requests {
                        caption { (status_label(STATUSES[i])) ": " (snapshot.counts[i]) " requests, " (filters.sort.label()) }
                        thead { tr {
                            th scope="col" { "Request" } th scope="col" { "GPUs" } th scope="col" { "Accelerators" }
                            th scope="col" { "Hours" } th scope="col" { "Workload" } th scope="col" { "Providers" }
                            th scope="col" { "Cost per hour" } th scope="col" { "Start" }
                        } }
                        tbody {
                            @for card in &snapshot.columns[i] {
                                tr data-request=(card.id) {
                                    td { a href={ "/requests/" (card.id) } { (card.id) } }
                                    td.number { (card.gpus) } td { (card.accelerators) } td.number { (card.hours) }
                                    td { (card.workload) } td { (card.providers) }
                                    td.number { @if card.cost_per_hour > 0.0 { (usd(card.cost_per_hour)) } @else { "–" } }
                                    td { (relative(card.earliest_start, snapshot.now)) }
                                }
                            }
                        }
                    }
                    @if let Some(last) = snapshot.columns[i].last().filter(|_| snapshot.columns[i].len() == ROWS_PER_PAGE) {
                        @let next = match filters.sort {
                            Sort::Newest => PageStart::Before(last.number),
                            _ => PageStart::Skip(filters.skip.unwrap_or(0) + ROWS_PER_PAGE),
                        };
                        p { a href=(filters.query(&filters.state, next)) { "Next " (ROWS_PER_PAGE) } }
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
    form: Option<(SubmitForm, Vec<FieldError>)>,
    started: Instant,
) -> Response {
    let filters_for_read = filters.clone();
    let mut snapshot =
        match read(&dashboard.app, move |view| snapshot(view, &filters_for_read, Shape::Board)).await {
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
                    Some((values, errors)) => (submit_form(values, errors, &workloads)),
                    None => (submit_form(&SubmitForm::default(), &[], &workloads)),
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

/// `/requests.csv`: every request the board's query selects, in its order, as CSV.
pub(super) async fn export(
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
    let mut snapshot = match read(&dashboard.app, move |view| snapshot(view, &filters, Shape::Export)).await {
        Ok(snapshot) => snapshot,
        Err(e) => return e.into_response(Some(&viewer)),
    };
    if let Err(e) = fill_reasons(&dashboard, &mut snapshot).await {
        return e.into_response(Some(&viewer));
    }
    match csv_of(snapshot.columns.iter().flatten()) {
        Ok(text) => {
            // As long as a page takes, for the same header a page gives.
            let timing = format!("render;dur={:.2}", started.elapsed().as_secs_f64() * 1000.0);
            (
                [
                    (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                    (
                        axum::http::header::CONTENT_DISPOSITION,
                        "attachment; filename=\"requests.csv\"".to_owned(),
                    ),
                    (axum::http::header::CACHE_CONTROL, "no-store".to_owned()),
                    (axum::http::header::HeaderName::from_static("server-timing"), timing),
                ],
                text,
            )
                .into_response()
        }
        Err(e) => PageError::Unavailable(e.to_string()).into_response(Some(&viewer)),
    }
}

/// The export's columns.
const CSV_HEADER: [&str; 11] = [
    "id",
    "state",
    "gpus",
    "accelerators",
    "hours",
    "workload",
    "providers",
    "cost_per_hour_usd",
    "all_ready_at",
    "earliest_start",
    "unfilled_reason",
];

/// Cards as CSV, quoted where a value needs it (the `csv` crate's rules, RFC 4180).
fn csv_of<'a>(cards: impl Iterator<Item = &'a Card>) -> Result<String, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_HEADER)?;
    for card in cards {
        writer.write_record([
            card.id.clone(),
            card.status.to_owned(),
            card.gpus.to_string(),
            card.accelerators.clone(),
            card.hours.to_string(),
            card.workload.to_owned(),
            card.providers.clone(),
            format!("{:.4}", card.cost_per_hour),
            card.ready.map(|t| t.to_string()).unwrap_or_default(),
            card.earliest_start.to_string(),
            card.unfilled.clone().unwrap_or_default(),
        ])?;
    }
    let bytes = writer.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
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
                Some((SubmitForm::default(), vec![error])),
                started,
            )
            .await;
        }
    };
    // Every wrong field at once: the form's own errors, then the API's checks one field at
    // a time, before anything is submitted.
    let (body, mut errors) = body_of(&form);
    match api_errors(&dashboard, body.clone(), &errors).await {
        Ok(found) => errors.extend(found),
        Err(e) => return e.into_response(Some(&viewer)),
    }
    if !errors.is_empty() {
        return render(&dashboard, &viewer, Filters::default(), Some((form, errors)), started).await;
    }
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
            render(&dashboard, &viewer, Filters::default(), Some((form, vec![error])), started).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body the form gives, or every error it finds, as (field, message).
    fn check(form: SubmitForm, expected: Result<&str, &[(&str, &str)]>) {
        let (body, errors) = body_of(&form);
        let errors: Vec<(&str, &str)> =
            errors.iter().map(|e| (e.field.as_deref().unwrap_or("?"), e.message.as_str())).collect();
        match expected {
            Ok(json) => {
                assert_eq!(errors, [], "unexpected errors");
                assert_eq!(
                    serde_json::to_value(&body).unwrap(),
                    serde_json::from_str::<serde_json::Value>(json).unwrap()
                );
            }
            Err(expected) => assert_eq!(errors, expected),
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
        check(form("lots", "24"), Err(&[("gpus", "\"lots\" is not a whole number of GPUs")]));
        check(form("64", ""), Err(&[("duration_hours", "required")]));
        check(
            SubmitForm { max_price: "cheap".into(), ..form("8", "1") },
            Err(&[("max_price", "\"cheap\" is not a price in USD per GPU-hour")]),
        );
        // Every field the form cannot read, at once, not only the first.
        check(
            SubmitForm { block: "x".into(), max_price: "cheap".into(), ..form("lots", "") },
            Err(&[
                ("gpus", "\"lots\" is not a whole number of GPUs"),
                ("block", "\"x\" is not a whole number of GPUs"),
                ("max_price", "\"cheap\" is not a price in USD per GPU-hour"),
                ("duration_hours", "required"),
            ]),
        );
        // The form's idempotency key is held to the API's rule.
        let long = SubmitForm { idempotency_key: "k".repeat(60_000), ..form("8", "1") };
        check(long, Err(&[("idempotency_key", "must be 1 to 200 visible ASCII characters")]));
        let spaced = SubmitForm { idempotency_key: "a key".into(), ..form("8", "1") };
        check(spaced, Err(&[("idempotency_key", "must be 1 to 200 visible ASCII characters")]));
    }

    #[test]
    fn the_api_s_checks_find_every_wrong_field_not_only_the_first() {
        let names = dibs_core::names::Names::from_offers(&dibs_core::catalog::bundled_catalog().offers);
        let now = Timestamp::from_unix(1_800_000_000);
        let body = SubmitBody {
            accelerators: vec!["H100".into()],
            gpus: 12,
            block: Some(8),
            duration_hours: 0,
            workload: "gaming".into(),
            preference: Some("premium:lots".into()),
            ..SubmitBody::default()
        };
        let fields: Vec<String> = crate::broker::every_field_error(&names, now, body.clone())
            .into_iter()
            .map(|(field, _)| field)
            .collect();
        assert_eq!(fields, ["block", "duration_hours", "workload", "preference"]);
        // The API answers the first alone; a right body has none.
        let good = SubmitBody {
            block: None,
            duration_hours: 1,
            workload: "training".into(),
            preference: None,
            ..body
        };
        assert_eq!(crate::broker::every_field_error(&names, now, good), []);
    }

    #[test]
    fn the_csv_export_quotes_what_needs_quoting() {
        let card = Card {
            id: "r-7".into(),
            status: "active",
            number: 7,
            gpus: 16,
            accelerators: "H100, A100-80GB".into(),
            workload: "training",
            hours: 24,
            earliest_start: Timestamp::from_unix(0),
            providers: "aws, nebius".into(),
            cost_per_hour: 49.5,
            ready: None,
            unfilled: Some("8 GPUs: price \"too high\"".into()),
            reason_stored: false,
        };
        let text = csv_of([&card].into_iter()).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(CSV_HEADER.join(",").as_str()));
        assert_eq!(
            lines.next(),
            Some(
                r#"r-7,active,16,"H100, A100-80GB",24,training,"aws, nebius",49.5000,,1970-01-01T00:00:00Z,"8 GPUs: price ""too high""""#
            )
        );
    }

    #[test]
    fn each_order_sorts_by_what_the_card_shows() {
        let ranks = [(1, 8, 0.0), (2, 64, 40.0), (10, 16, 40.0), (9, 64, 12.5)]
            .map(|(number, gpus, cost_per_hour)| Rank { number, gpus, cost_per_hour });
        let order = |sort: Sort| {
            let mut sorted = ranks.to_vec();
            sorted.sort_by(|a, b| sort.compare(a, b));
            sorted.iter().map(|r| format!("r-{}", r.number)).collect::<Vec<_>>().join(" ")
        };
        assert_eq!(order(Sort::Newest), "r-10 r-9 r-2 r-1");
        assert_eq!(order(Sort::Oldest), "r-1 r-2 r-9 r-10");
        // Dearest first, the newer of two equal costs first.
        assert_eq!(order(Sort::Cost), "r-10 r-2 r-9 r-1");
        assert_eq!(order(Sort::Gpus), "r-9 r-2 r-10 r-1");
    }

    #[test]
    fn request_numbers_order_newest_first() {
        let mut ids = ["r-9", "r-10", "r-1"];
        ids.sort_by_key(|id| std::cmp::Reverse(id_number(id)));
        assert_eq!(ids, ["r-10", "r-9", "r-1"]);
    }
}
