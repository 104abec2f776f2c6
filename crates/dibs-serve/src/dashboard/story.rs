//! One request's story: what it asked for, then each round as the ledger recorded it
//! (screening with the contracts and caps in force, the solicitation and the holder's
//! answer with its deadline, the quotes, the award with every losing offer and its reason),
//! its allocations with their states and times, spillovers and failovers, and the ledger
//! entries with their hashes.
//!
//! The ledger entries are read back into the ledger's own types (`dibs_core::ledger::Event`,
//! the broker's `RecordedInput`), the ones that wrote them: the page reads what was recorded
//! (an entry this page cannot read is listed among the entries, not dropped).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use dibs_core::engine::{Allocation, HolderAnswer, Input};
use dibs_core::ledger::{Event, EventKind};
use dibs_core::placement::{Outcome, Verdict};
use dibs_core::request::Request;
use dibs_core::types::{Offer, Timestamp};
use maud::{Markup, html};

use super::format::{hash, instant, price, relative, status_badge, thousands, usd};
use super::session::{require, require_posted};
use super::{Dashboard, PageError, Section, Viewer, layout, read, respond, with_store};
use crate::broker::{Command, INPUT_KIND, RecordedInput};
use crate::view;

/// A story reads at most this many ledger entries about one request.
pub const MAX_STORY_ENTRIES: usize = 20_000;

/// An input about a request that this page shows: the quotes and the holder's answer.
enum Recorded {
    Quotes { round: u32, provider: String, offers: Vec<Offer> },
    HolderAnswer { round: u32, answer: HolderAnswer },
}

/// One ledger entry, read.
struct Read {
    seq: u64,
    at: Timestamp,
    kind: String,
    hash: String,
    decision: Option<EventKind>,
    input: Option<Recorded>,
}

fn read_entry(entry: dibs_store::Entry) -> Read {
    let at = Timestamp::parse(&entry.at).unwrap_or_default();
    // Entries read back into the types that wrote them; one this page cannot read (from a
    // later version) is still listed among the entries.
    let (decision, input) = if entry.kind == INPUT_KIND {
        let recorded = serde_json::from_str::<RecordedInput>(&entry.body).ok();
        let input = recorded.and_then(|r| match r.input {
            Input::Quotes { round, provider, offers, .. } => {
                Some(Recorded::Quotes { round, provider: provider.to_string(), offers })
            }
            Input::HolderAnswer { round, answer, .. } => Some(Recorded::HolderAnswer { round, answer }),
            _ => None,
        });
        (None, input)
    } else {
        (serde_json::from_str::<Event>(&entry.body).ok().map(|event| event.kind), None)
    };
    Read { seq: entry.seq, at, kind: entry.kind, hash: dibs_core::ledger::hex(&entry.hash), decision, input }
}

/// What the engine holds of the request now.
/// A request as the story page finds it.
enum Found {
    Open(Box<Snapshot>),
    Ended { now: Timestamp, status: &'static str, unfilled_gpus: u32, allocations: Vec<Allocation> },
}

struct Snapshot {
    now: Timestamp,
    request: Request,
    status: &'static str,
    unfilled: Option<(u32, String)>,
    allocations: Vec<Allocation>,
}

/// Everything the ledger says about one round.
#[derive(Default)]
struct Round<'a> {
    screened: Option<(&'a Read, &'a EventKind)>,
    refusal: Vec<(&'a Read, &'a EventKind)>,
    holder_answers: Vec<(&'a Read, &'a HolderAnswer)>,
    quotes_requested: Option<(&'a Read, &'a EventKind)>,
    quotes: Vec<(&'a Read, &'a str, &'a [Offer])>,
    placed: Option<(&'a Read, &'a EventKind)>,
    outcome: Vec<(&'a Read, &'a EventKind)>,
}

fn rounds(entries: &[Read]) -> BTreeMap<u32, Round<'_>> {
    let mut rounds: BTreeMap<u32, Round<'_>> = BTreeMap::new();
    for entry in entries {
        if let Some(Recorded::Quotes { round, provider, offers }) = &entry.input {
            rounds.entry(*round).or_default().quotes.push((entry, provider, offers));
        }
        if let Some(Recorded::HolderAnswer { round, answer }) = &entry.input {
            rounds.entry(*round).or_default().holder_answers.push((entry, answer));
        }
        let Some(decision) = &entry.decision else { continue };
        match decision {
            EventKind::Screened { round, .. } => {
                rounds.entry(*round).or_default().screened = Some((entry, decision))
            }
            EventKind::FirstRefusalSkipped { round, .. }
            | EventKind::Solicited { round, .. }
            | EventKind::HolderAnswered { round, .. }
            | EventKind::HolderLapsed { round, .. }
            | EventKind::NoBetterTerms { round, .. } => {
                rounds.entry(*round).or_default().refusal.push((entry, decision))
            }
            EventKind::QuotesRequested { round, .. } => {
                rounds.entry(*round).or_default().quotes_requested = Some((entry, decision))
            }
            EventKind::Placed { round, .. } => {
                rounds.entry(*round).or_default().placed = Some((entry, decision))
            }
            EventKind::Awarded { round, .. }
            | EventKind::Unfilled { round, .. }
            | EventKind::LateAnswerIgnored { round, .. } => {
                rounds.entry(*round).or_default().outcome.push((entry, decision))
            }
            _ => {}
        }
    }
    rounds
}

/// Whether a placement awarded anything.
fn awarded_any(verdicts: &[Verdict]) -> bool {
    verdicts.iter().any(|v| matches!(v.outcome, Outcome::Awarded { .. }))
}

/// When the holder answered (or let its window lapse) after the solicitation at entry `seq`.
fn answered_after(refusal: &[(&Read, &EventKind)], seq: u64) -> Option<Timestamp> {
    refusal
        .iter()
        .find(|(entry, decision)| {
            entry.seq > seq
                && matches!(decision, EventKind::HolderAnswered { .. } | EventKind::HolderLapsed { .. })
        })
        .map(|(entry, _)| entry.at)
}

/// One line of the story for a decision, or `None` for the inputs and the unknown.
pub(super) fn line(decision: &EventKind) -> Option<Markup> {
    let text = match decision {
        EventKind::RequestSubmitted { .. } => html! { "Submitted." },
        EventKind::RequestRejected { reason } => html! { "Rejected: " (reason) },
        EventKind::Screened { round, purpose, gpus, .. } => {
            html! { "Round " (round) " (" (purpose) ") screened for " (gpus) " GPUs." }
        }
        EventKind::FirstRefusalSkipped { holder, .. } => {
            html! { "First refusal skipped: " (holder) " cannot meet the hard requirements." }
        }
        EventKind::Solicited { holder, gpus, of_gpus, price: p, respond_by, .. } => html! {
            "Solicited " strong { (holder) } " for " (gpus) " of " (of_gpus) " GPUs at " (price(p.get())) "/GPU-h; answer by "
            (instant(*respond_by)) "."
        },
        EventKind::HolderAnswered { holder, outcome, gpus, .. } => {
            html! { (holder) " answered: " strong { (outcome) } " (" (gpus) " GPUs)." }
        }
        EventKind::HolderLapsed { holder, .. } => {
            html! { (holder) " did not answer in its window: a decline." }
        }
        EventKind::NoBetterTerms { holder, declined_price, market_price, .. } => html! {
            "No better terms: the market's " (price(*market_price)) " is above the " (price(*declined_price)) " " (holder) " declined; back to " (holder) "."
        },
        EventKind::QuotesRequested { providers, respond_by, .. } => html! {
            "Quotes asked of " (providers.len()) " providers by " (instant(*respond_by)) "."
        },
        EventKind::QuoteReceived { provider, offers, .. } => {
            html! { (provider) " quoted " (offers) " offers." }
        }
        EventKind::LateAnswerIgnored { from, .. } => html! { "A late answer from " (from) " was ignored." },
        EventKind::Placed { solver, effective_cost, verdicts, .. } => {
            if awarded_any(verdicts) {
                html! { "Placed by " (solver.to_string()) "; effective cost " (usd(*effective_cost)) " in total." }
            } else {
                html! { "Placed by " (solver.to_string()) ": no award (the reason follows)." }
            }
        }
        EventKind::Awarded { allocations, .. } => html! {
            "Awarded " (allocations.iter().map(|a| a.plan.gpus).sum::<u32>()) " GPUs from "
            (allocations.iter().map(|a| a.plan.provider.as_str()).collect::<Vec<_>>().join(", ")) "."
        },
        EventKind::Unfilled { gpus, hours, reason, .. } => {
            html! { "Unfilled: " (gpus) " GPUs for " (hours) " h. " (reason) }
        }
        EventKind::AllocationReady { allocation } => html! { "Allocation " (allocation) " delivered." },
        EventKind::PartsStarted { allocations, starts_at } => html! {
            "Allocations " (allocations.iter().map(u64::to_string).collect::<Vec<_>>().join(", "))
            " start together at " (instant(*starts_at)) ": every part is delivered."
        },
        EventKind::RequestActive {} => html! { strong { "Active" } ": all capacity is ready." },
        EventKind::Spillover { allocation, gpus, promised } => html! {
            "Spillover: allocation " (allocation) " was not ready by " (instant(*promised)) " and its grace; " (gpus) " GPUs back to the market."
        },
        EventKind::ReservationFailed { allocation, gpus, reason } => html! {
            "Allocation " (allocation) " cannot be delivered (" (reason) "); " (gpus) " GPUs back to the market without that provider."
        },
        EventKind::AllocationLost { allocation, reason, gpus, remaining_hours } => html! {
            "Failover: allocation " (allocation) " lost its nodes (" (reason) "); " (gpus) " GPUs for the " (remaining_hours) " h left back to the market."
        },
        EventKind::Failover { allocation, incident, gpus, remaining_hours } => html! {
            "Failover: allocation " (allocation) " hit by " (incident) "; " (gpus) " GPUs for the " (remaining_hours) " h left back to the market."
        },
        EventKind::AllocationReleased { allocation, gpu_hours, spend } => html! {
            "Allocation " (allocation) " released after " (thousands(gpu_hours.round() as u64)) " GPU-hours; it cost " (usd(*spend)) "."
        },
        EventKind::RequestReleased {} => html! { "Released." },
        EventKind::RequestCancelled {} => html! { "Cancelled." },
        _ => return None,
    };
    Some(text)
}

fn summary(snapshot: &Snapshot) -> Markup {
    let r = &snapshot.request;
    let parts: Vec<&Allocation> = snapshot.allocations.iter().collect();
    let running: u32 = parts
        .iter()
        .filter(|a| matches!(a.state, dibs_core::engine::AllocationState::Active(_)))
        .map(|a| a.plan.gpus)
        .sum();
    let join =
        |items: Vec<String>, empty: &str| if items.is_empty() { empty.to_owned() } else { items.join(", ") };
    html! {
        dl.summary-list {
            dt { "Status" } dd { (status_badge(snapshot.status)) }
            dt { "GPUs" } dd { (r.gpus.get()) " in blocks of " (r.block.get()) }
            dt { "Accelerators" } dd { (join(r.accelerators.iter().map(|a| a.to_string()).collect(), "–")) " (" (r.preference.to_string()) ")" }
            dt { "Duration" } dd { (r.duration_hours) " h" }
            dt { "Workload" } dd { (r.workload.as_str()) }
            dt { "Earliest start" } dd { (instant(r.earliest_start)) }
            dt { "Deliver by" } dd { @match r.deliver_by { Some(by) => (instant(by)), None => "no deadline" } }
            dt { "Regions" } dd { (join(r.regions.iter().map(|l| l.to_string()).collect(), "anywhere")) }
            dt { "Providers" } dd {
                (join(r.providers.iter().map(|p| p.to_string()).collect(), "any"))
                @if !r.exclude_providers.is_empty() { "; never " (join(r.exclude_providers.iter().map(|p| p.to_string()).collect(), "")) }
            }
            dt { "Price ceiling" } dd { @match r.max_price { Some(p) => { (price(p.get())) "/GPU-h" }, None => "the policy's" } }
            dt { "Spot" } dd { (r.spot.as_str()) }
            dt { "Objective" } dd { (r.objective.as_str()) @if r.same_region { ", all nodes in one region" } @if r.apart { ", parts may run apart" } @else { ", parts start together" } }
            @if let Some(at) = view::all_ready_at(&parts) {
                dt { "All GPUs ready" } dd { (instant(at)) @if !r.apart && parts.len() > 1 { " (the parts start together)" } }
            }
            @if !parts.is_empty() {
                dt { "Running" } dd { (running) " of " (r.gpus.get()) " GPUs" }
                dt { "Committed cost" } dd { (usd(view::committed_cost(&parts))) " total, held hours included" }
            }
            @if let Some((gpus, reason)) = &snapshot.unfilled {
                dt { "Unfilled" } dd { (gpus) " GPUs: " (reason) }
            }
        }
    }
}

fn round_section(number: u32, round: &Round<'_>, now: Timestamp) -> Markup {
    let heading = match round.screened.map(|(_, d)| d) {
        Some(EventKind::Screened { purpose, gpus, .. }) => format!("Round {number}: {purpose}, {gpus} GPUs"),
        _ => format!("Round {number}"),
    };
    html! {
        section.round aria-labelledby={ "round-" (number) } {
            h2 id={ "round-" (number) } { (heading) }
            @if let Some((entry, EventKind::Screened { versions, exclusive_to, first_refusal, caps, .. })) = round.screened {
                h3 { "Screening" }
                dl.summary-list {
                    dt { "When" } dd { (instant(entry.at)) }
                    dt { "Contracts in force" } dd { @if versions.is_empty() { "none" } @else { (versions.join(", ")) } }
                    dt { "Exclusive to" } dd { (exclusive_to.as_deref().unwrap_or("no one (no exclusivity covers this workload)")) }
                    dt { "First refusal" } dd { (first_refusal.as_deref().unwrap_or("none in force for this request")) }
                    dt { "Caps" } dd { @if caps.is_empty() { "none" } @else { ul { @for cap in caps { li { (cap) } } } } }
                }
            }
            @if !round.refusal.is_empty() {
                h3 { "First refusal" }
                ul.events {
                    @for (entry, decision) in &round.refusal {
                        li {
                            (instant(entry.at)) ": "
                            @match decision {
                                EventKind::Solicited { holder, mode, gpus, of_gpus, price: p, terms, respond_by, .. } => {
                                    "solicited " strong { (holder) } " (" (mode) ") for " (gpus) " of " (of_gpus) " GPUs at "
                                    (price(p.get())) "/GPU-h, " (terms) ". Deadline: " strong { (instant(*respond_by)) }
                                    @match answered_after(&round.refusal, entry.seq) {
                                        Some(at) => { " (answered " (instant(at)) ")." }
                                        None => { " (" (relative(*respond_by, now)) ")." }
                                    }
                                }
                                EventKind::FirstRefusalSkipped { holder, evidence, .. } => {
                                    "skipped " (holder) ": it cannot meet the hard requirements."
                                    ul { @for line in evidence { li { (line) } } }
                                }
                                decision => { @if let Some(text) = line(decision) { (text) } }
                            }
                        }
                    }
                    @for (entry, answer) in &round.holder_answers {
                        li {
                            (instant(entry.at)) ": the holder's answer as received: "
                            @match answer {
                                HolderAnswer::Decline => "decline",
                                HolderAnswer::Accept { gpus, region, instance_type, lead_time_hours, .. } => {
                                    "accept " (gpus) " GPUs as " (instance_type) " in " (region) ", ready in " (lead_time_hours) " h"
                                }
                            }
                        }
                    }
                }
            }
            @if let Some((entry, EventKind::QuotesRequested { providers, respond_by, .. })) = round.quotes_requested {
                h3 { "Quotes" }
                p {
                    "Asked " (providers.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")) " at " (instant(entry.at)) "; deadline " (instant(*respond_by)) "."
                }
                @if !round.quotes.is_empty() {
                    table {
                        caption { "Quotes received" }
                        thead { tr { th scope="col" { "Provider" } th scope="col" { "When" } th scope="col" { "Offers" } th scope="col" { "Cheapest $/GPU-h" } th scope="col" { "Nodes offered" } } }
                        tbody {
                            @for (entry, provider, offers) in &round.quotes {
                                tr {
                                    td { (provider) } td { (instant(entry.at)) } td.number { (offers.len()) }
                                    td.number { (offers.iter().map(Offer::gpu_price).fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.min(p)))).map(price).unwrap_or_else(|| "–".into())) }
                                    td.number { (thousands(offers.iter().map(|o| u64::from(o.nodes_available)).sum())) }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some((entry, EventKind::Placed { solver, list_cost, effective_cost, notes, verdicts, .. })) = round.placed {
                h3 { "Award" }
                p {
                    @if awarded_any(verdicts) {
                        "Decided at " (instant(entry.at)) " by " (solver.to_string()) ": list cost " (usd(*list_cost))
                        ", effective " (usd(*effective_cost)) ", in total over the round's hours."
                    } @else {
                        "Decided at " (instant(entry.at)) " by " (solver.to_string()) ": no award."
                    }
                }
                @if !notes.is_empty() { ul { @for note in notes { li { (note) } } } }
                @let (won, lost): (Vec<&Verdict>, Vec<&Verdict>) = verdicts.iter().partition(|v| matches!(v.outcome, Outcome::Awarded { .. }));
                table.awarded {
                    caption { "Awarded offers" }
                    thead { tr { th scope="col" { "Offer" } th scope="col" { "Provider" } th scope="col" { "Region" } th scope="col" { "$/GPU-h" } th scope="col" { "GPUs" } th scope="col" { "Nodes" } } }
                    tbody {
                        @for v in &won {
                            @if let Outcome::Awarded { gpus, nodes } = &v.outcome {
                                tr { td { (v.offer_id) } td { (v.provider) } td { (v.region) } td.number { (price(v.price)) } td.number { (gpus) } td.number { (nodes) } }
                            }
                        }
                    }
                }
                table.losing #losing-offers {
                    caption { "Losing offers (" (lost.len()) "), each with its reason" }
                    thead { tr { th scope="col" { "Offer" } th scope="col" { "Provider" } th scope="col" { "Region" } th scope="col" { "$/GPU-h" } th scope="col" { "Why it lost" } } }
                    tbody {
                        @for v in &lost {
                            @if let Outcome::Rejected(reason) = &v.outcome {
                                tr { td { (v.offer_id) } td { (v.provider) } td { (v.region) } td.number { (price(v.price)) } td.reason { (reason.to_string()) } }
                            }
                        }
                    }
                }
            }
            @for (entry, decision) in &round.outcome {
                p { (instant(entry.at)) ": " @if let Some(text) = line(decision) { (text) } }
            }
        }
    }
}

fn allocations(snapshot: &Snapshot) -> Markup {
    html! {
        section aria-labelledby="allocations" {
            h2 #allocations { "Allocations" }
            @if snapshot.allocations.is_empty() {
                p { "None yet." }
            } @else {
                table {
                    thead { tr {
                        th scope="col" { "Id" } th scope="col" { "Provider" } th scope="col" { "Where" } th scope="col" { "Instance type" }
                        th scope="col" { "Nodes × GPUs" } th scope="col" { "GPUs carried" } th scope="col" { "$/node-h" } th scope="col" { "Via" }
                        th scope="col" { "State" } th scope="col" { "Awarded" } th scope="col" { "Promised" } th scope="col" { "Delivered" }
                        th scope="col" { "Held (billed)" } th scope="col" { "Starts" } th scope="col" { "Ends / ended" } th scope="col" { "Cost, total" }
                    } }
                    tbody {
                        @for a in &snapshot.allocations {
                            tr {
                                td { (a.id) } td { (a.plan.provider) }
                                td { (a.plan.region) @if let Some(zone) = &a.plan.zone { " (" (zone) ")" } }
                                td { (a.plan.instance_type) }
                                td.number { (a.plan.nodes) " × " (a.plan.gpus_per_node.get()) }
                                td.number { (a.plan.gpus) }
                                td.number { (price(a.plan.node_price.get())) }
                                td { (a.via) }
                                td { span class={ "badge alloc-" (a.state.stage().as_str()) } { (a.state.stage().as_str()) } }
                                td { (instant(a.awarded_at)) }
                                td { (instant(a.promised)) }
                                td { @match a.delivered_at().filter(|_| !view::cancelled_unrun(a)) { Some(at) => (instant(at)), None => "not yet" } }
                                td.number { (format!("{:.1}", view::held_hours(a))) " h" }
                                td { @match a.ready_at().filter(|_| !view::cancelled_unrun(a)) { Some(at) => (instant(at)), None => "not yet" } }
                                td { @match (a.ended_at(), a.ends_at()) { (Some(at), _) => { "ended " (instant(at)) }, (None, Some(at)) => { "ends " (instant(at)) }, _ => "–" } }
                                td.number { (usd(view::cost(a))) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn story(snapshot: &Snapshot, entries: &[Read], viewer: &Viewer, truncated: bool) -> Markup {
    let id = &snapshot.request.id;
    let rounds = rounds(entries);
    let moves: Vec<(&Read, &EventKind)> = entries
        .iter()
        .filter_map(|e| e.decision.as_ref().map(|d| (e, d)))
        .filter(|(_, d)| matches!(d, EventKind::Spillover { .. } | EventKind::Failover { .. }))
        .collect();
    html! {
        h1 { "Request " (id) " " (status_badge(snapshot.status)) }
        (summary(snapshot))
        @if viewer.may_change_requests() && !matches!(snapshot.status, "released" | "unfilled" | "cancelled") {
            form method="post" action={ "/requests/" (id) "/cancel" } {
                button.danger type="submit" { "Cancel " (id) }
            }
        }
        section aria-labelledby="story" {
            h2 #story { "Story" }
            ol.timeline {
                @for entry in entries {
                    @if let Some(text) = entry.decision.as_ref().and_then(line) {
                        li { span.when { (instant(entry.at)) } " " (text) }
                    }
                }
            }
            @if truncated { p.notice { "Only the first " (MAX_STORY_ENTRIES) " ledger entries are read." } }
        }
        @for (number, round) in &rounds {
            (round_section(*number, round, snapshot.now))
        }
        (allocations(snapshot))
        section aria-labelledby="moves" {
            h2 #moves { "Spillovers and failovers" }
            @if moves.is_empty() && snapshot.allocations.is_empty() {
                p { "None: no capacity was awarded." }
            } @else if moves.is_empty() {
                p { "None: every allocation was delivered on time and no incident hit it." }
            } @else {
                ul { @for (entry, decision) in &moves { li { (instant(entry.at)) ": " @if let Some(text) = line(decision) { (text) } } } }
            }
        }
        @if viewer.may_audit() {
            section aria-labelledby="entries" {
                h2 #entries { "Ledger entries" }
                p { a href={ "/ledger?request=" (id) } { "These entries on the ledger page" } ", where the chain can be verified." }
                table.ledger {
                    thead { tr { th scope="col" { "Seq" } th scope="col" { "At" } th scope="col" { "Kind" } th scope="col" { "Hash" } } }
                    tbody {
                        @for entry in entries {
                            tr { td.number { (entry.seq) } td { (instant(entry.at)) } td { (entry.kind) } td { (hash(&entry.hash)) } }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn page(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let started = Instant::now();
    let viewer = match require(&dashboard, &headers, Viewer::may_read) {
        Ok(viewer) => viewer,
        Err((error, viewer)) => return error.into_response(viewer.as_ref()),
    };
    let wanted = id.clone();
    // An open request is the engine's; an ended one is the broker's record of it, its
    // stored view and its submission in the ledger.
    let found = read(&dashboard.app, move |view| {
        if let Some(state) = view.engine.request(&wanted) {
            return Some(Found::Open(Box::new(Snapshot {
                now: view.now,
                request: state.request.clone(),
                status: state.status.as_str(),
                unfilled: state.unfilled_reason.clone().map(|reason| (state.unfilled_gpus, reason)),
                allocations: state
                    .allocations
                    .iter()
                    .filter_map(|a| view.engine.allocation(*a))
                    .cloned()
                    .collect(),
            })));
        }
        let ended = view.finished.get(wanted.as_str())?;
        Some(Found::Ended {
            now: view.now,
            status: ended.status.as_str(),
            unfilled_gpus: ended.unfilled_gpus,
            allocations: ended
                .allocations
                .iter()
                .filter_map(|a| view.engine.allocation(*a))
                .cloned()
                .collect(),
        })
    })
    .await;
    let found = match found {
        Ok(Some(found)) => found,
        Ok(None) => {
            return PageError::NotFound(format!("There is no request {id:?}.")).into_response(Some(&viewer));
        }
        Err(e) => return e.into_response(Some(&viewer)),
    };
    let request = id.clone();
    let stored = with_store(&dashboard.app, move |store| {
        let mut entries = Vec::new();
        let mut after = 0;
        while entries.len() < MAX_STORY_ENTRIES {
            let page = store.request_entries(&request, after, dibs_store::MAX_PAGE)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            entries.extend(page);
        }
        Ok((entries, store.request_view(&request)?))
    })
    .await;
    let (entries, stored_view) = match stored {
        Ok(stored) => stored,
        Err(e) => return e.into_response(Some(&viewer)),
    };
    let snapshot = match found {
        Found::Open(snapshot) => *snapshot,
        Found::Ended { now, status, unfilled_gpus, allocations } => {
            let submitted = entries.iter().filter(|e| e.kind == crate::broker::INPUT_KIND).find_map(|e| {
                match serde_json::from_str::<crate::broker::RecordedInput>(&e.body).ok()?.input {
                    dibs_core::engine::Input::Submit(request) => Some(request),
                    _ => None,
                }
            });
            let Some(request) = submitted else {
                return PageError::Unavailable(format!("{id}'s submission is not in the ledger"))
                    .into_response(Some(&viewer));
            };
            let reason = stored_view.as_deref().and_then(crate::view::stored_unfilled_reason);
            Snapshot { now, request, status, unfilled: reason.map(|r| (unfilled_gpus, r)), allocations }
        }
    };
    let truncated = entries.len() >= MAX_STORY_ENTRIES;
    let entries: Vec<Read> = entries.into_iter().map(read_entry).collect();
    let body = story(&snapshot, &entries, &viewer, truncated);
    respond(started, StatusCode::OK, layout(Some(&viewer), &format!("Request {id}"), Section::Requests, body))
}

pub(super) async fn cancel(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let viewer = match require_posted(&dashboard, &headers, Viewer::may_change_requests) {
        Ok(viewer) => viewer,
        Err((error, viewer)) => return error.into_response(viewer.as_ref()),
    };
    let target = id.clone();
    match crate::app::ask(&dashboard.app, |reply| Command::Cancel { id: target, reply }).await {
        Ok(_) => Redirect::to(&format!("/requests/{id}")).into_response(),
        Err(e) => PageError::NotFound(e.error).into_response(Some(&viewer)),
    }
}
