//! One provider's own view: what was sent to it (solicitations, quote requests), its own
//! quotes, and its own allocations; never a competitor's offer, price or award. The ledger
//! part is `sealed::provider_view`, the same sealed view as the API's provider feed; a
//! provider token opens only its own page, the buyer's admin and auditors any.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use dibs_core::engine::Allocation;
use dibs_core::types::Timestamp;
use maud::{Markup, html};

use crate::sealed::{ProviderEvent, SealedEvent};
use serde::Deserialize;

use super::format::{instant, price, thousands};
use super::session::require;
use super::{Dashboard, PageError, Section, layout, read, respond, with_store};

/// Ledger entries scanned for one page of a provider's events.
pub const ENTRIES_SCANNED: usize = dibs_store::MAX_PAGE;
/// The provider's allocations one page lists, newest first.
pub const MAX_ALLOCATIONS_SHOWN: usize = 200;

#[derive(Debug, Default, Deserialize)]
pub(super) struct ProviderQuery {
    /// Scan the ledger before this sequence number (newest first).
    #[serde(default)]
    before: Option<u64>,
}

struct Snapshot {
    now: Timestamp,
    known: bool,
    /// Its allocations, newest first, and how many it has in all.
    allocations: Vec<Allocation>,
    total: usize,
}

fn feed_line(event: &SealedEvent) -> Markup {
    html! {
        @match event {
            SealedEvent::Solicited { gpus, price: p, respond_by, .. } => {
                "First refusal offered: " (gpus) " GPUs at " (price(*p)) "/GPU-h; answer by " (respond_by)
            }
            SealedEvent::QuotesRequested { respond_by, .. } => { "Asked to quote by " (respond_by) }
            SealedEvent::Quoted { offers, .. } => { "Its quote: " (offers.len()) " offers" }
            SealedEvent::Awarded { allocations, .. } => { "Awarded " (allocations.len()) " allocation(s) to it" }
        }
    }
}

/// The request and round an event is about.
fn request_round(event: &SealedEvent) -> (&str, u32) {
    match event {
        SealedEvent::Solicited { request, round, .. }
        | SealedEvent::QuotesRequested { request, round, .. }
        | SealedEvent::Quoted { request, round, .. }
        | SealedEvent::Awarded { request, round, .. } => (request, *round),
    }
}

pub(super) async fn page(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<ProviderQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let started = Instant::now();
    let viewer = match require(&dashboard, &headers, |viewer| viewer.may_see_provider(&name)) {
        Ok(viewer) => viewer,
        Err((error, viewer)) => return error.into_response(viewer.as_ref()),
    };
    let before = query.map(|Query(q)| q.before).unwrap_or_default();
    let provider = name.clone();
    let snapshot = read(&dashboard.app, move |view| {
        let known = view.engine.published_providers().any(|p| p.as_str() == provider);
        let mut mine: Vec<&Allocation> =
            view.engine.allocations().filter(|a| a.plan.provider.as_str() == provider).collect();
        let total = mine.len();
        mine.reverse();
        mine.truncate(MAX_ALLOCATIONS_SHOWN);
        Snapshot { now: view.now, known, allocations: mine.into_iter().cloned().collect(), total }
    })
    .await;
    let snapshot = match snapshot {
        Ok(snapshot) if snapshot.known => snapshot,
        Ok(_) => {
            return PageError::NotFound(format!("No provider {name:?} publishes offers here."))
                .into_response(Some(&viewer));
        }
        Err(e) => return e.into_response(Some(&viewer)),
    };
    let provider = name.clone();
    let scanned = with_store(&dashboard.app, move |store| {
        let (length, _) = store.head()?;
        // `before` counts from 1: before=0 (or 1) is the empty page before the first entry.
        let end = before.unwrap_or(length + 1).clamp(1, length + 1);
        let start = end.saturating_sub(ENTRIES_SCANNED as u64 + 1);
        let entries = store.entries(start, (end - 1 - start) as usize)?;
        let mut events: Vec<ProviderEvent> =
            entries.iter().filter_map(|e| crate::sealed::provider_view(e, &provider)).collect();
        events.reverse();
        Ok((start, end, events))
    })
    .await;
    let (start, end, events) = match scanned {
        Ok(scanned) => scanned,
        Err(e) => return e.into_response(Some(&viewer)),
    };
    let body = html! {
        h1 { "Provider " (name) }
        p { "What dibs sent to " (name) " and what it won, as of " (instant(snapshot.now)) ". Sealed: nothing of any other provider's offers, prices or awards." }
        section aria-labelledby="allocations" {
            h2 #allocations { "Its allocations (" (thousands(snapshot.total as u64)) ")" }
            @if snapshot.allocations.is_empty() { p { "None yet." } } @else {
                table {
                    thead { tr {
                        th scope="col" { "Id" } th scope="col" { "Request" } th scope="col" { "Region" } th scope="col" { "Instance type" }
                        th scope="col" { "Nodes" } th scope="col" { "$/node-h" } th scope="col" { "State" } th scope="col" { "Promised" } th scope="col" { "Ready" }
                    } }
                    tbody {
                        @for a in &snapshot.allocations {
                            tr {
                                td { (a.id) } td { (a.request) } td { (a.plan.region) } td { (a.plan.instance_type) }
                                td.number { (a.plan.nodes) } td.number { (price(a.plan.node_price.get())) }
                                td { (format!("{:?}", a.state).to_lowercase()) } td { (instant(a.promised)) }
                                td { @match a.ready_at() { Some(at) => (instant(at)), None => "not yet" } }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="feed" {
            h2 #feed { "What was sent to it" }
            p.muted { "Ledger entries " (start + 1) " to " (end.saturating_sub(1)) ", newest first; the same as " code { "GET /v1/provider/events" } "." }
            @if events.is_empty() { p { "Nothing for " (name) " in these entries." } } @else {
                table {
                    thead { tr { th scope="col" { "Seq" } th scope="col" { "At" } th scope="col" { "Request" } th scope="col" { "Round" } th scope="col" { "What" } } }
                    tbody {
                        @for event in &events {
                            @let (request, round) = request_round(&event.body);
                            tr {
                                td.number { (event.seq) } td { (event.at) }
                                td { (request) } td.number { (round) }
                                td { (feed_line(&event.body)) }
                            }
                        }
                    }
                }
            }
            @if start > 0 { p { a href={ "/providers/" (name) "?before=" (start + 1) } { "Older entries" } } }
        }
    };
    respond(
        started,
        StatusCode::OK,
        layout(Some(&viewer), &format!("Provider {name}"), Section::Provider, body),
    )
}
