//! Ledger entries: the engine's record of every input and decision.
//!
//! The engine emits [`Event`]s as effects; a shell appends them to a store.
//! [`Chain`] hash-links them (SHA-256 over the previous hash and the entry's
//! canonical JSON) so that any edit to history is detectable, and so that
//! two runs that made the same decisions end on the same head.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::contract::RefusalMode;
use crate::placement::{PlannedAllocation, SolverPath, Verdict};
use crate::request::SpotPolicy;
use crate::types::{Location, Price, ProviderName, Region, Timestamp};

/// One ledger entry's content. `kind` names the step of the lifecycle. Entries read back
/// into the same types that wrote them: the story page, a provider's sealed view and the
/// reports read these, never a copy of their format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    RequestSubmitted {
        gpus: u32,
        accelerators: Vec<String>,
        workload: String,
        duration_hours: u32,
    },
    RequestRejected {
        reason: String,
    },
    Screened {
        round: u32,
        purpose: Purpose,
        gpus: u32,
        /// `contract@version` of every contract version in force.
        versions: Vec<String>,
        exclusive_to: Option<String>,
        first_refusal: Option<String>,
        caps: Vec<String>,
    },
    FirstRefusalSkipped {
        round: u32,
        holder: ProviderName,
        /// Why each of the holder's published offers cannot meet the hard requirements.
        evidence: Vec<String>,
    },
    Solicited {
        round: u32,
        holder: ProviderName,
        mode: RefusalMode,
        /// GPUs offered, of the round's `of_gpus` (fewer when the buyer's caps limit the holder).
        gpus: u32,
        of_gpus: u32,
        /// Per GPU-hour.
        price: Price,
        /// How the price was arrived at, by the clause's terms.
        terms: String,
        respond_by: Timestamp,
        /// What the holder is asked for, as the solicitation it is sent says (entries from
        /// before it was recorded have none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wanted: Option<Wanted>,
    },
    HolderAnswered {
        round: u32,
        holder: ProviderName,
        outcome: HolderOutcome,
        gpus: u32,
    },
    HolderLapsed {
        round: u32,
        holder: ProviderName,
    },
    NoBetterTerms {
        round: u32,
        holder: ProviderName,
        declined_price: f64,
        market_price: f64,
    },
    QuotesRequested {
        round: u32,
        providers: Vec<ProviderName>,
        respond_by: Timestamp,
        /// What the providers are asked to quote for, as the call each is sent says (entries
        /// from before it was recorded have none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wanted: Option<Wanted>,
    },
    QuoteReceived {
        round: u32,
        provider: ProviderName,
        offers: usize,
        /// Offers dropped as not the provider's own, malformed or out of bounds.
        #[serde(default, skip_serializing_if = "is_zero")]
        rejected: usize,
    },
    /// A call for quotes got no usable answer by its deadline.
    QuoteFailed {
        round: u32,
        provider: ProviderName,
        error: String,
    },
    LateAnswerIgnored {
        round: u32,
        from: ProviderName,
    },
    Placed {
        round: u32,
        solver: SolverPath,
        list_cost: f64,
        effective_cost: f64,
        notes: Vec<String>,
        verdicts: Vec<Verdict>,
    },
    Awarded {
        round: u32,
        allocations: Vec<AllocationRecord>,
    },
    Unfilled {
        round: u32,
        gpus: u32,
        hours: u32,
        reason: String,
    },
    AllocationReady {
        allocation: u64,
    },
    /// The request's held parts start together: nothing more is coming and every part is
    /// delivered. Their hours run from `starts_at`.
    PartsStarted {
        allocations: Vec<u64>,
        starts_at: Timestamp,
    },
    RequestActive {},
    Spillover {
        allocation: u64,
        gpus: u32,
        promised: Timestamp,
    },
    /// Its provider said it cannot deliver the allocation (with its evidence): the GPUs go
    /// back to the market, without that provider.
    ReservationFailed {
        allocation: u64,
        gpus: u32,
        reason: String,
    },
    IncidentOpened {
        id: String,
        provider: ProviderName,
        region: Option<Region>,
    },
    IncidentResolved {
        id: String,
    },
    Failover {
        allocation: u64,
        incident: String,
        gpus: u32,
        remaining_hours: u32,
    },
    /// The provider said a live allocation's nodes are gone (a spot interruption, nodes
    /// terminated under it): it failed over for the hours it had left.
    AllocationLost {
        allocation: u64,
        reason: String,
        gpus: u32,
        remaining_hours: u32,
    },
    AllocationReleased {
        allocation: u64,
        gpu_hours: f64,
        spend: f64,
    },
    RequestReleased {},
    RequestCancelled {},
    /// Revenue reported to dibs, counted in `month` (`YYYY-MM`).
    RevenueReported {
        month: String,
        amount: f64,
    },
    /// An event declared for review-trigger conditions.
    EventDeclared {
        name: String,
    },
    /// A settlement tick's figures.
    Settled(SettledFigures),
    /// A review trigger's condition held: the contract is flagged, or clauses are suspended.
    TriggerFired {
        contract: String,
        clause: String,
        condition: String,
        action: crate::contract::TriggerAction,
    },
    /// A clause stops applying from `from` (a trigger's action); decisions from then on
    /// screen without it.
    ClauseSuspended {
        contract: String,
        clause: String,
        from: Timestamp,
    },
}

/// The capacity a solicitation or a quote request asks for, as the ledger records it: what
/// the providers asked were told (a provider's sealed view shows it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wanted {
    pub gpus: u32,
    /// GPUs that must sit together.
    pub block: u32,
    pub accelerators: Vec<String>,
    /// Where the capacity may be; empty means anywhere.
    pub regions: Vec<Location>,
    pub spot: SpotPolicy,
    pub duration_hours: u32,
    pub deliver_by: Option<Timestamp>,
}

/// Why a round exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Initial,
    Spillover,
    Failover,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Spillover => "spillover",
            Self::Failover => "failover",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a first-refusal holder answered a solicitation. Written as one string (`declined`,
/// `accepted`, `accepted_part`, or `invalid: WHY`), as the ledger always has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum HolderOutcome {
    Declined,
    Accepted,
    /// It took part of what it was offered.
    AcceptedPart,
    /// Its answer could not be taken (why); counted as a decline.
    Invalid(String),
}

impl fmt::Display for HolderOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Declined => f.write_str("declined"),
            Self::Accepted => f.write_str("accepted"),
            Self::AcceptedPart => f.write_str("accepted_part"),
            Self::Invalid(why) => write!(f, "invalid: {why}"),
        }
    }
}

impl From<HolderOutcome> for String {
    fn from(outcome: HolderOutcome) -> Self {
        outcome.to_string()
    }
}

impl From<String> for HolderOutcome {
    fn from(text: String) -> Self {
        match text.as_str() {
            "declined" => Self::Declined,
            "accepted" => Self::Accepted,
            "accepted_part" => Self::AcceptedPart,
            other => Self::Invalid(other.strip_prefix("invalid: ").unwrap_or(other).to_owned()),
        }
    }
}

/// What a settlement records: spend, commitments, revenue share, and a billing invariant that
/// failed, if one did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettledFigures {
    pub spend_total: f64,
    pub spend_by_provider: std::collections::BTreeMap<ProviderName, f64>,
    pub gpus_active: u64,
    pub commitments: Vec<crate::commitments::CommitmentStatus>,
    pub cumulative_revenue: f64,
    pub revenue_share_owed: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violation: Option<String>,
}

impl SettledFigures {
    pub fn of(settlement: &crate::settlement::Settlement) -> Self {
        Self {
            spend_total: settlement.accruals.total_spend(),
            spend_by_provider: settlement.accruals.spend.clone(),
            gpus_active: settlement.accruals.gpus_active,
            commitments: settlement.commitments.clone(),
            cumulative_revenue: settlement.cumulative_revenue,
            revenue_share_owed: settlement.revenue_share.iter().map(|s| s.owed).sum::<f64>() + 0.0,
            violation: settlement.violation.clone(),
        }
    }
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::RequestSubmitted { .. } => "request_submitted",
            Self::RequestRejected { .. } => "request_rejected",
            Self::Screened { .. } => "screened",
            Self::FirstRefusalSkipped { .. } => "first_refusal_skipped",
            Self::Solicited { .. } => "solicited",
            Self::HolderAnswered { .. } => "holder_answered",
            Self::HolderLapsed { .. } => "holder_lapsed",
            Self::NoBetterTerms { .. } => "no_better_terms",
            Self::QuotesRequested { .. } => "quotes_requested",
            Self::QuoteReceived { .. } => "quote_received",
            Self::QuoteFailed { .. } => "quote_failed",
            Self::LateAnswerIgnored { .. } => "late_answer_ignored",
            Self::Placed { .. } => "placed",
            Self::Awarded { .. } => "awarded",
            Self::Unfilled { .. } => "unfilled",
            Self::AllocationReady { .. } => "allocation_ready",
            Self::PartsStarted { .. } => "parts_started",
            Self::RequestActive { .. } => "request_active",
            Self::Spillover { .. } => "spillover",
            Self::ReservationFailed { .. } => "reservation_failed",
            Self::IncidentOpened { .. } => "incident_opened",
            Self::IncidentResolved { .. } => "incident_resolved",
            Self::Failover { .. } => "failover",
            Self::AllocationLost { .. } => "allocation_lost",
            Self::AllocationReleased { .. } => "allocation_released",
            Self::RequestReleased { .. } => "request_released",
            Self::RequestCancelled { .. } => "request_cancelled",
            Self::RevenueReported { .. } => "revenue_reported",
            Self::EventDeclared { .. } => "event_declared",
            Self::Settled(_) => "settled",
            Self::TriggerFired { .. } => "trigger_fired",
            Self::ClauseSuspended { .. } => "clause_suspended",
        }
    }
}

/// An allocation as the ledger records it at award time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationRecord {
    pub id: u64,
    pub via: String,
    #[serde(flatten)]
    pub plan: PlannedAllocation,
    pub promised: Timestamp,
}

/// The hash of a chain's entry number `index` (0-based) whose predecessor
/// hashed to `previous` (all zeros for the first): SHA-256(previous ‖ index as
/// 8 big-endian bytes ‖ body). The in-memory [`Chain`] and the stores agree on
/// this, so a ledger replayed from storage has the head the engine computed.
pub fn next_hash(previous: &[u8; 32], index: u64, body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(index.to_be_bytes());
    hasher.update(body);
    hasher.finalize().into()
}

/// Lowercase hex of a hash.
pub fn hex(hash: &[u8; 32]) -> String {
    hex::encode(hash)
}

/// A SHA-256 hash chain over events.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    head: [u8; 32],
    length: u64,
    /// Reused serialization buffer: one allocation for the whole chain.
    scratch: Vec<u8>,
}

impl Chain {
    /// Appends one event, serialized as JSON.
    pub fn append(&mut self, event: &Event) {
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, event).expect("ledger events serialize to JSON");
        let body = std::mem::take(&mut self.scratch);
        self.append_bytes(&body);
        self.scratch = body;
    }

    /// Appends one entry: the new head is [`next_hash`] of the old.
    pub fn append_bytes(&mut self, body: &[u8]) {
        self.head = next_hash(&self.head, self.length, body);
        self.length += 1;
    }

    /// The head: all zeros for an empty chain.
    pub fn head(&self) -> [u8; 32] {
        self.head
    }

    /// The head as lowercase hex.
    pub fn head_hex(&self) -> String {
        hex(&self.head)
    }

    pub fn len(&self) -> u64 {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}
