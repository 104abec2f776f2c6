//! What the API shows of a request. Its own structs, so the engine's types
//! can change without changing the API.

use dibs_core::engine::{Allocation, AllocationState, Engine, RequestState, Status};
use dibs_core::types::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestView {
    pub id: String,
    #[schema(value_type = String)]
    pub status: Status,
    pub accelerators: Vec<String>,
    pub gpus: u32,
    pub duration_hours: u32,
    pub workload: String,
    pub earliest_start: String,
    /// Whether its parts may run apart (`batch` only); by default they start together.
    #[serde(default)]
    pub apart: bool,
    /// When all of its GPUs are (or are promised to be) ready: its parts start together
    /// then. None before an award, and for a request that got nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_ready_at: Option<String>,
    /// GPUs of the request awarded (live or ended), and those running now.
    #[serde(default)]
    pub gpus_awarded: u32,
    #[serde(default)]
    pub gpus_running: u32,
    /// USD, total over the request: what its allocations bill or will bill, their whole
    /// nodes for their hours and the hours a part is held for the others (as planned until
    /// it started, as billed after).
    #[serde(default)]
    pub committed_cost: f64,
    pub allocations: Vec<AllocationView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfilled: Option<UnfilledView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AllocationView {
    pub id: u64,
    pub request: String,
    pub provider: String,
    pub region: String,
    /// The availability zone the offer was priced in, when the catalog names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub instance_type: String,
    pub accelerator: String,
    pub gpus_per_node: u32,
    pub nodes: u32,
    /// GPUs of the request this allocation carries; `nodes * gpus_per_node` are bought.
    pub gpus: u32,
    pub price_per_node_hour: f64,
    pub price_per_gpu_hour: f64,
    pub via: String,
    pub state: String,
    pub promised: String,
    /// When the provider delivered it (it may then be held for the request's other parts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    /// When its hours started: the request's parts start together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<String>,
    /// Hours it is held and billed, delivered before its hours start, while the request's
    /// other parts are readied (as planned until it started). None when its provider bills
    /// from a start date.
    #[serde(default)]
    pub held_hours: f64,
    /// Whether its provider bills from delivery (else from the start date dibs names).
    #[serde(default = "dibs_core::types::bills_from_delivery_default")]
    pub bills_from_delivery: bool,
    /// USD, total: its nodes for its hours, and its held hours when billed.
    #[serde(default)]
    pub cost: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UnfilledView {
    pub gpus: u32,
    pub reason: String,
}

/// Every request status, in lifecycle order: what `GET /v1/requests?status=` takes and the
/// dashboard's board shows as columns.
pub const STATUSES: [&str; 8] =
    ["screening", "first_refusal", "market", "provisioning", "active", "released", "unfilled", "cancelled"];

/// The statuses as a sentence lists them: "screening, first_refusal, ... unfilled or cancelled".
pub fn statuses_in_words() -> String {
    let (last, others) = STATUSES.split_last().expect("there are statuses");
    format!("{} or {last}", others.join(", "))
}

/// A status's place in [`STATUSES`]. The match has no wildcard, so a new status does not
/// compile until it has a place.
pub fn status_index(status: Status) -> usize {
    match status {
        Status::Screening => 0,
        Status::FirstRefusal => 1,
        Status::Market => 2,
        Status::Provisioning => 3,
        Status::Active => 4,
        Status::Released => 5,
        Status::Unfilled => 6,
        Status::Cancelled => 7,
    }
}

pub fn request(engine: &Engine, state: &RequestState) -> RequestView {
    let r = &state.request;
    let parts: Vec<&Allocation> = state.allocations.iter().filter_map(|id| engine.allocation(*id)).collect();
    RequestView {
        id: r.id.clone(),
        status: state.status,
        accelerators: r.accelerators.iter().map(ToString::to_string).collect(),
        gpus: r.gpus.get(),
        duration_hours: r.duration_hours,
        workload: r.workload.as_str().to_owned(),
        earliest_start: r.earliest_start.to_string(),
        apart: r.apart,
        all_ready_at: all_ready_at(&parts).map(|t| t.to_string()),
        gpus_awarded: parts.iter().filter(|a| !cancelled_unrun(a)).map(|a| a.plan.gpus).sum(),
        gpus_running: parts
            .iter()
            .filter(|a| matches!(a.state, AllocationState::Active(_)))
            .map(|a| a.plan.gpus)
            .sum(),
        committed_cost: committed_cost(&parts),
        allocations: parts.iter().map(|a| allocation(a)).collect(),
        unfilled: state
            .unfilled_reason
            .as_ref()
            .map(|reason| UnfilledView { gpus: state.unfilled_gpus, reason: reason.clone() }),
    }
}

/// Why a request went without GPUs, as its stored view (a `requests` row) says.
pub fn stored_unfilled_reason(view: &str) -> Option<String> {
    let view: RequestView = serde_json::from_str(view).ok()?;
    view.unfilled.map(|u| u.reason)
}

pub fn allocation(a: &Allocation) -> AllocationView {
    AllocationView {
        id: a.id,
        request: a.request.clone(),
        provider: a.plan.provider.to_string(),
        region: a.plan.region.to_string(),
        zone: a.plan.zone.clone(),
        instance_type: a.plan.instance_type.clone(),
        accelerator: a.plan.accelerator.to_string(),
        gpus_per_node: a.plan.gpus_per_node.get(),
        nodes: a.plan.nodes,
        gpus: a.plan.gpus,
        price_per_node_hour: a.plan.node_price.get(),
        price_per_gpu_hour: a.plan.price_per_gpu_hour(),
        via: a.via.clone(),
        state: a.state.stage().as_str().to_owned(),
        promised: a.promised.to_string(),
        delivered_at: a.delivered_at().filter(|_| !cancelled_unrun(a)).map(|t| t.to_string()),
        ready_at: a.ready_at().filter(|_| !cancelled_unrun(a)).map(|t| t.to_string()),
        held_hours: held_hours(a),
        bills_from_delivery: a.plan.bills_from_delivery,
        cost: cost(a),
    }
}

/// Cancelled before its hours started (a held part's bill is a run of no hours).
pub fn cancelled_unrun(a: &Allocation) -> bool {
    matches!(a.state, AllocationState::Cancelled { run, .. } if run.is_none_or(|r| r.ends_at == r.ready_at))
}

/// When a part is (or is promised to be) ready for its request's start: none if it was
/// cancelled before it started.
pub fn all_ready(a: &Allocation) -> Option<Timestamp> {
    match a.state {
        AllocationState::Reserved => Some(a.promised),
        AllocationState::Held { delivered_at, .. } => Some(delivered_at),
        _ if cancelled_unrun(a) => None,
        _ => a.ready_at(),
    }
}

/// Hours a part is held before its hours start: as planned until it starts, as it was after.
pub fn held_hours(a: &Allocation) -> f64 {
    match a.state.run() {
        Some(run) => run.held_hours(),
        None => f64::from(a.plan.held_hours),
    }
}

/// What a request's parts bill in all, USD.
pub fn committed_cost(parts: &[&Allocation]) -> f64 {
    parts.iter().map(|a| cost(a)).sum::<f64>() + 0.0
}

/// When all of a request's GPUs are (or are promised to be) ready.
pub fn all_ready_at(parts: &[&Allocation]) -> Option<Timestamp> {
    parts.iter().filter_map(|a| all_ready(a)).max()
}

/// What a part bills in all, USD: as billed once it ended, as it will bill while it is live
/// (its hours, and its held hours when its provider bills from delivery).
pub fn cost(a: &Allocation) -> f64 {
    let spend = a.plan.spend_per_hour();
    match a.state.ended_at() {
        Some(ended) => spend * dibs_core::settlement::billed_hours(a, ended),
        None => spend * (f64::from(a.hours) + held_hours(a)),
    }
}

/// A request id's place in list order: shorter ids first, then by text. For the broker's
/// ids (`r-1`, `r-2`, ..., `r-10`) this is the order they were submitted in, oldest first,
/// where text order alone would put `r-10` before `r-2`. The engine's and the broker's maps
/// keep text order (a snapshot's bytes depend on it), so lists order by this key instead.
pub fn list_key(id: &str) -> (usize, &str) {
    (id.len(), id)
}

/// Whether `id` comes after the cursor `after` in list order (`list_key`).
pub fn id_order(id: &str, after: &str) -> bool {
    list_key(id) > list_key(after)
}

/// A contract: who with, and its versions (amendments) with their dates.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ContractView {
    pub id: String,
    pub counterparty: String,
    pub parties: Vec<String>,
    /// The file it was read from.
    pub source: String,
    pub versions: Vec<ContractVersionView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ContractVersionView {
    pub id: String,
    pub effective: String,
    pub expires: String,
    /// The clauses, in `GET /v1/contracts/{id}` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clauses: Option<Vec<ClauseView>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClauseView {
    pub name: String,
    /// `first_refusal`, `exclusivity`, `commitment`, `diversification`, `revenue_share` or
    /// `review_trigger`.
    pub kind: &'static str,
    /// The clause's terms, as its contract file states them (their fields depend on `kind`).
    #[schema(value_type = Object)]
    pub terms: serde_json::Value,
}

pub fn contract(c: &dibs_core::contract::Contract, with_clauses: bool) -> ContractView {
    use dibs_core::contract::ClauseKind;
    let clause = |clause: &dibs_core::contract::Clause| {
        let terms = match &clause.kind {
            ClauseKind::FirstRefusal(t) => serde_json::to_value(t),
            ClauseKind::Exclusivity(t) => serde_json::to_value(t),
            ClauseKind::Commitment(t) => serde_json::to_value(t),
            ClauseKind::Diversification(t) => serde_json::to_value(t),
            ClauseKind::RevenueShare(t) => serde_json::to_value(t),
            ClauseKind::ReviewTrigger(t) => Ok(serde_json::json!({
                "condition": t.condition.source(),
                "action": t.action,
            })),
        }
        .unwrap_or(serde_json::Value::Null);
        ClauseView { name: clause.name.clone(), kind: clause.kind.name(), terms }
    };
    ContractView {
        id: c.id.clone(),
        counterparty: c.counterparty.to_string(),
        parties: c.parties.iter().map(|p| p.to_string()).collect(),
        source: c.source.clone(),
        versions: c
            .versions
            .iter()
            .map(|v| ContractVersionView {
                id: v.id.clone(),
                effective: v.effective.to_string(),
                expires: v.expires.to_string(),
                clauses: with_clauses.then(|| v.clauses.iter().map(clause).collect()),
            })
            .collect(),
    }
}

/// `GET /v1/contracts`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ContractList {
    pub contracts: Vec<ContractView>,
}

/// `POST /v1/contracts`: the set now in force, from `from`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ContractsLoaded {
    pub loaded: Vec<String>,
    pub from: String,
}

/// A page of requests, in id order; `next_after` is the cursor for the next page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RequestPage {
    /// Each a [`RequestView`]: open requests' made now, ended ones' as their `requests`
    /// row keeps it.
    #[schema(value_type = Vec<RequestView>)]
    pub requests: Vec<RequestView>,
    pub next_after: Option<String>,
}

/// A page of allocations, in id order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AllocationPage {
    pub allocations: Vec<AllocationView>,
    pub next_after: Option<u64>,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatsView {
    /// Requests by state.
    pub requests: std::collections::BTreeMap<String, usize>,
    /// Inputs due later (timers, answers in flight).
    pub pending_inputs: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IncidentView {
    pub id: String,
    pub provider: String,
    /// `None`: the whole provider.
    pub region: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IncidentList {
    pub incidents: Vec<IncidentView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IncidentResolvedView {
    pub id: String,
    pub resolved: bool,
}

/// A provider as the service reaches it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProviderView {
    pub name: String,
    /// `in-process`, `pull`, the URL it is called at, or the cloud API it is reached
    /// through (`EC2 at http://...`).
    pub reached: String,
    pub open_incidents: Vec<String>,
    /// Whether its health endpoint answered, or its cloud API took a cheap call (providers
    /// called over HTTP or through a cloud API only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Why it is not healthy, when that is known (`credentials refused: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProviderList {
    pub providers: Vec<ProviderView>,
}

/// A provider's answer, taken.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AnswerTaken {
    pub request: String,
    pub accepted: bool,
}

/// What a revenue report recorded.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RevenueReportedView {
    pub amount: f64,
    /// The calendar month it counts in, `YYYY-MM`.
    pub month: String,
}

/// An event declared for review-trigger conditions.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventDeclaredView {
    pub name: String,
    pub at: String,
}

/// The latest settlement: spend, commitments, revenue share, triggers, suspensions.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SettlementView {
    /// When it was settled; absent before the first settlement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    pub spend_total: f64,
    pub spend_by_provider: std::collections::BTreeMap<String, f64>,
    pub gpus_active: u64,
    pub commitments: Vec<CommitmentView>,
    pub cumulative_revenue: f64,
    pub revenue_share: Vec<RevenueShareView>,
    pub suspended_clauses: Vec<SuspensionView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CommitmentView {
    pub contract: String,
    pub clause: String,
    pub provider: String,
    pub amount: f64,
    pub burned: f64,
    pub projected: f64,
    pub projected_shortfall: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RevenueShareView {
    pub contract: String,
    pub clause: String,
    pub partner: String,
    pub month: String,
    pub revenue: f64,
    pub rate: f64,
    pub owed: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SuspensionView {
    pub contract: String,
    pub clause: String,
    pub from: String,
}

pub fn settlement(engine: &Engine) -> SettlementView {
    let last = engine.settlement();
    SettlementView {
        at: last.at.map(|t| t.to_string()),
        spend_total: last.accruals.total_spend(),
        spend_by_provider: last.accruals.spend.iter().map(|(p, s)| (p.to_string(), *s)).collect(),
        gpus_active: last.accruals.gpus_active,
        commitments: last
            .commitments
            .iter()
            .map(|c| CommitmentView {
                contract: c.contract.clone(),
                clause: c.clause.clone(),
                provider: c.provider.to_string(),
                amount: c.amount,
                burned: c.burned,
                projected: c.projected,
                projected_shortfall: c.projected_shortfall,
            })
            .collect(),
        cumulative_revenue: last.cumulative_revenue,
        revenue_share: last
            .revenue_share
            .iter()
            .map(|r| RevenueShareView {
                contract: r.contract.clone(),
                clause: r.clause.clone(),
                partner: r.partner.clone(),
                month: r.month.clone(),
                revenue: r.revenue,
                rate: r.rate,
                owed: r.owed,
            })
            .collect(),
        suspended_clauses: engine
            .suspensions()
            .iter()
            .map(|s| SuspensionView {
                contract: s.contract.clone(),
                clause: s.clause.clone(),
                from: s.from.to_string(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_sits_at_its_index() {
        for (index, name) in STATUSES.iter().enumerate() {
            let status = [
                Status::Screening,
                Status::FirstRefusal,
                Status::Market,
                Status::Provisioning,
                Status::Active,
                Status::Released,
                Status::Unfilled,
                Status::Cancelled,
            ]
            .into_iter()
            .find(|s| s.as_str() == *name)
            .unwrap();
            assert_eq!(status_index(status), index, "{name}");
        }
    }
}
