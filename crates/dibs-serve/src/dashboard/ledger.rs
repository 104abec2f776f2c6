//! The ledger: browse it newest first, search it by request, and verify its hash chain
//! from the page (what `GET /v1/ledger/verify` does). Admin and auditors only, as in the API.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use dibs_store::Entry;
use maud::{Markup, html};
use serde::Deserialize;

use super::format::{encode, hash, instant, thousands};
use super::session::{require, require_posted};
use super::{Dashboard, PageError, Section, Viewer, layout, respond, with_store};

/// Entries one page shows.
pub const ENTRIES_PER_PAGE: usize = 100;
/// A body longer than this is cut on the page (the API gives it whole).
pub const MAX_BODY_SHOWN: usize = 4000;

#[derive(Debug, Default, Deserialize)]
pub(super) struct LedgerQuery {
    /// Only this request's entries, oldest first.
    #[serde(default)]
    request: String,
    /// Newest first, before this sequence number.
    #[serde(default)]
    before: Option<u64>,
    /// With `request`: after this sequence number.
    #[serde(default)]
    after: Option<u64>,
}

/// A page of entries and where the next page starts.
struct Page {
    length: u64,
    entries: Vec<Entry>,
    /// The link to the next page, if there is one.
    next: Option<String>,
}

async fn page_of(dashboard: &Dashboard, query: &LedgerQuery) -> Result<Page, PageError> {
    let request = query.request.trim().to_owned();
    let (before, after) = (query.before, query.after.unwrap_or(0));
    with_store(&dashboard.app, move |store| {
        let (length, _) = store.head()?;
        if !request.is_empty() {
            let entries = store.request_entries(&request, after, ENTRIES_PER_PAGE)?;
            let next = (entries.len() == ENTRIES_PER_PAGE)
                .then(|| {
                    entries.last().map(|e| format!("/ledger?request={}&after={}", encode(&request), e.seq))
                })
                .flatten();
            return Ok(Page { length, entries, next });
        }
        // `before` counts from 1: before=0 (or 1) is the empty page before the first entry.
        let end = before.unwrap_or(length + 1).clamp(1, length + 1);
        let start = end.saturating_sub(ENTRIES_PER_PAGE as u64 + 1);
        let mut entries = store.entries(start, (end - 1 - start) as usize)?;
        entries.reverse();
        let next = (start > 0).then(|| format!("/ledger?before={}", start + 1));
        Ok(Page { length, entries, next })
    })
    .await
}

/// One line saying what an entry records: a decision as the story says it, an input by what
/// came in, a configuration or a snapshot by its kind.
fn summary(entry: &Entry) -> Markup {
    use dibs_core::engine::{HolderAnswer, Input, Timer};
    if entry.kind == crate::broker::INPUT_KIND {
        let Ok(recorded) = serde_json::from_str::<crate::broker::RecordedInput>(&entry.body) else {
            return html! { "an input this version cannot read" };
        };
        return match recorded.input {
            Input::Submit(r) => {
                html! { "Submitted: " (r.gpus.get()) " GPUs for " (r.duration_hours) " h (" (r.workload.as_str()) ")." }
            }
            Input::HolderAnswer { answer: HolderAnswer::Decline, .. } => {
                html! { "The holder's answer: decline." }
            }
            Input::HolderAnswer { answer: HolderAnswer::Accept { gpus, .. }, .. } => {
                html! { "The holder's answer: accept " (gpus) " GPUs." }
            }
            Input::Quotes { provider, offers, .. } => {
                html! { (provider) " quoted " (offers.len()) " offers." }
            }
            Input::QuoteFailed { provider, error, .. } => {
                html! { (provider) "'s quote call failed: " (error) }
            }
            Input::Timer(Timer::HolderWindow { .. }) => html! { "The holder's window closed." },
            Input::Timer(Timer::QuoteDeadline { .. }) => html! { "The quote deadline passed." },
            Input::Timer(Timer::DeliveryDue { allocation }) => {
                html! { "Allocation " (allocation) " came due." }
            }
            Input::Timer(Timer::Release { allocation }) => {
                html! { "Allocation " (allocation) " ran its hours." }
            }
            Input::Timer(Timer::Settle) => html! { "Settlement tick." },
            Input::AllocationReady { allocation } => html! { "Allocation " (allocation) " is ready." },
            Input::ReservationFailed { allocation, reason } => {
                html! { "Allocation " (allocation) " cannot be delivered: " (reason) }
            }
            Input::AllocationLost { allocation, reason } => {
                html! { "Allocation " (allocation) " lost its nodes: " (reason) }
            }
            Input::IncidentOpened { id, provider, region } => {
                html! { "Incident " (id) " opened on " (provider) @if let Some(r) = region { "/" (r) } "." }
            }
            Input::IncidentResolved { id } => html! { "Incident " (id) " resolved." },
            Input::Cancel { .. } => html! { "Cancel asked." },
            Input::RevenueReported { amount } => {
                html! { "Revenue reported: " (super::format::usd(amount)) "." }
            }
            Input::EventDeclared { name } => html! { "Event declared: " (name) "." },
        };
    }
    match serde_json::from_str::<dibs_core::ledger::Event>(&entry.body) {
        Ok(event) => super::story::line(&event.kind).unwrap_or_else(|| html! { (entry.kind) }),
        Err(_) => html! { (entry.kind.replace('_', " ")) },
    }
}

fn body_text(body: &str) -> String {
    let pretty = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_owned());
    if pretty.len() <= MAX_BODY_SHOWN {
        return pretty;
    }
    let mut cut = MAX_BODY_SHOWN;
    while !pretty.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n… ({} bytes in all; GET /v1/ledger gives it whole)", &pretty[..cut], pretty.len())
}

fn render(query: &LedgerQuery, page: &Page, verified: Option<Result<String, String>>) -> Markup {
    html! {
        h1 { "Ledger" }
        p { (thousands(page.length)) " entries, each chained to the one before by SHA-256." }
        form.card.verify method="post" action="/ledger/verify" {
            // The page shown after verifying keeps the search.
            input type="hidden" name="request" value=(query.request);
            button type="submit" { "Verify the hash chain" }
            span.muted { " Reads every entry and recomputes its hash. " code { "dibs ledger verify" } " also replays the decisions." }
        }
        @match &verified {
            Some(Ok(message)) => p.notice.ok #verify-result role="status" { (message) },
            Some(Err(message)) => p.error #verify-result role="alert" { (message) },
            None => {}
        }
        form.filters method="get" action="/ledger" role="search" {
            div.field {
                label for="request" { "Request" }
                input #request name="request" type="search" value=(query.request) placeholder="r-1";
            }
            button type="submit" { "Search" }
            @if !query.request.is_empty() { a href="/ledger" { "All entries" } }
        }
        table.ledger {
            caption {
                @if query.request.is_empty() { "Newest first" } @else { "Entries about " (query.request) ", oldest first" }
            }
            thead { tr { th scope="col" { "Seq" } th scope="col" { "At" } th scope="col" { "Kind" } th scope="col" { "What" } th scope="col" { "Request" } th scope="col" { "Hash" } th scope="col" { "Body" } } }
            tbody {
                @for entry in &page.entries {
                    tr {
                        td.number { (entry.seq) }
                        td { @match dibs_core::types::Timestamp::parse(&entry.at) { Ok(at) => (instant(at)), Err(_) => (entry.at) } }
                        td { (entry.kind) } td.reason { (summary(entry)) }
                        td { @if let Some(request) = &entry.request { a href={ "/requests/" (request) } { (request) } } }
                        td { (hash(&dibs_core::ledger::hex(&entry.hash))) }
                        td { details { summary { "body" } pre title="as recorded and hashed; instants in Unix seconds" { (body_text(&entry.body)) } } }
                    }
                }
            }
        }
        @if page.entries.is_empty() { p { "No entries." } }
        @if let Some(next) = &page.next { p { a href=(next) { @if query.request.is_empty() { "Older entries" } @else { "More entries" } } } }
    }
}

pub(super) async fn page(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    query: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let started = Instant::now();
    let viewer = match require(&dashboard, &headers, Viewer::may_audit) {
        Ok(viewer) => viewer,
        Err((error, viewer)) => return error.into_response(viewer.as_ref()),
    };
    let Ok(Query(query)) = query else {
        return PageError::NotFound("That search does not parse.".into()).into_response(Some(&viewer));
    };
    match page_of(&dashboard, &query).await {
        Ok(page) => respond(
            started,
            StatusCode::OK,
            layout(Some(&viewer), "Ledger", Section::Ledger, render(&query, &page, None)),
        ),
        Err(e) => e.into_response(Some(&viewer)),
    }
}

pub(super) async fn verify(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    form: Result<axum::Form<LedgerQuery>, axum::extract::rejection::FormRejection>,
) -> Response {
    let started = Instant::now();
    let viewer = match require_posted(&dashboard, &headers, Viewer::may_audit) {
        Ok(viewer) => viewer,
        Err((error, viewer)) => return error.into_response(viewer.as_ref()),
    };
    // The whole ledger is read on a handle of its own, as the API's verify does.
    let open = dashboard.app.open.clone();
    let result =
        tokio::task::spawn_blocking(move || open().map(|mut store| dibs_store::verify(store.as_mut()))).await;
    let verified = match result {
        Ok(Ok(Ok(v))) => {
            Ok(format!("The chain is intact: {} entries, head {}.", thousands(v.entries), v.head))
        }
        Ok(Ok(Err(e))) => Err(format!("The chain is broken: {e}")),
        _ => Err("The store did not answer.".into()),
    };
    let query = form.map(|axum::Form(query)| query).unwrap_or_default();
    match page_of(&dashboard, &query).await {
        Ok(page) => {
            let status = if verified.is_ok() { StatusCode::OK } else { StatusCode::CONFLICT };
            respond(
                started,
                status,
                layout(Some(&viewer), "Ledger", Section::Ledger, render(&query, &page, Some(verified))),
            )
        }
        Err(e) => e.into_response(Some(&viewer)),
    }
}
