//! What one provider may see of the ledger: its sealed view.
//!
//! A provider sees the solicitations sent to it, the quote requests that name it (not who
//! else was asked), its own quotes, and its own allocations; never a competitor's offer,
//! price or award. Each entry it may see is read back into the ledger's own types (`Event`,
//! the broker's `RecordedInput`) and rebuilt as a [`SealedEvent`], whose fields are listed
//! here one by one: a field the ledger gains is not shown until it is added below.

use dibs_core::engine::Input;
use dibs_core::ledger::{Event, EventKind, Wanted};
use dibs_core::types::Offer;
use serde::Serialize;

use crate::broker::{INPUT_KIND, RecordedInput};

/// One entry of a provider's feed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProviderEvent {
    /// The ledger entry's sequence number (the feed's cursor).
    pub seq: u64,
    pub at: String,
    /// The event's kind, as in `body`.
    pub kind: &'static str,
    pub body: SealedEvent,
}

/// A page of a provider's feed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProviderEventPage {
    pub events: Vec<ProviderEvent>,
    /// Scan on after this ledger sequence number; `None` at the end.
    pub next_after: Option<u64>,
}

/// What a provider is shown of one ledger entry.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SealedEvent {
    /// First refusal, offered to this provider (the holder): the terms it may take.
    Solicited {
        request: String,
        round: u32,
        /// `offer_first` or `match`.
        mode: String,
        gpus: u32,
        of_gpus: u32,
        /// Per GPU-hour.
        price: f64,
        /// How the price was arrived at, by the clause's terms.
        terms: String,
        respond_by: String,
        /// What it is asked for: accelerators, block, regions, spot, hours, deliver-by.
        #[serde(skip_serializing_if = "Option::is_none")]
        wanted: Option<SealedWanted>,
    },
    /// This provider is asked for quotes (who else was asked is not shown).
    QuotesRequested {
        request: String,
        round: u32,
        respond_by: String,
        /// What to quote for: accelerators, GPUs, block, regions, spot, hours, deliver-by.
        #[serde(skip_serializing_if = "Option::is_none")]
        wanted: Option<SealedWanted>,
    },
    /// The quotes this provider gave.
    Quoted {
        request: String,
        round: u32,
        #[schema(value_type = Vec<Object>)]
        offers: Vec<Offer>,
    },
    /// This provider's part of an award (the other providers' parts are not shown).
    Awarded { request: String, round: u32, allocations: Vec<SealedAllocation> },
}

impl SealedEvent {
    fn kind(&self) -> &'static str {
        match self {
            SealedEvent::Solicited { .. } => "solicited",
            SealedEvent::QuotesRequested { .. } => "quotes_requested",
            SealedEvent::Quoted { .. } => "quoted",
            SealedEvent::Awarded { .. } => "awarded",
        }
    }
}

/// The capacity a provider is asked for, as its feed shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SealedWanted {
    pub gpus: u32,
    /// GPUs that must sit together (in one node, or a gang of whole nodes of one offer).
    pub block: u32,
    /// Acceptable accelerators, in order of preference.
    pub accelerators: Vec<String>,
    /// Where the capacity may be (`aws/us-east-1`, `gcp/*`); empty: anywhere.
    pub regions: Vec<String>,
    /// `never`, `allow` or `only`.
    pub spot: String,
    pub duration_hours: u32,
    pub deliver_by: Option<String>,
}

impl From<Wanted> for SealedWanted {
    fn from(w: Wanted) -> Self {
        Self {
            gpus: w.gpus,
            block: w.block,
            accelerators: w.accelerators,
            regions: w.regions.iter().map(ToString::to_string).collect(),
            spot: w.spot.as_str().to_owned(),
            duration_hours: w.duration_hours,
            deliver_by: w.deliver_by.map(|t| t.to_string()),
        }
    }
}

/// One of this provider's allocations in an award.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SealedAllocation {
    pub id: u64,
    pub region: String,
    pub instance_type: String,
    pub accelerator: String,
    pub gpus_per_node: u32,
    pub nodes: u32,
    pub price_per_node_hour: f64,
    pub lead_time_hours: u32,
    /// When the capacity is promised ready.
    pub promised: String,
}

/// What `provider` may see of a ledger entry: `None` when nothing.
pub fn provider_view(entry: &dibs_store::Entry, provider: &str) -> Option<ProviderEvent> {
    if entry.kind == INPUT_KIND {
        let recorded: RecordedInput = serde_json::from_str(&entry.body).ok()?;
        return match recorded.input {
            Input::Quotes { request, round, provider: from, offers } if from.as_str() == provider => {
                Some(sealed(entry, SealedEvent::Quoted { request, round, offers }))
            }
            _ => None,
        };
    }
    let event: Event = serde_json::from_str(&entry.body).ok()?;
    let request = event.request.unwrap_or_default();
    let body = match event.kind {
        EventKind::Solicited { round, holder, mode, gpus, of_gpus, price, terms, respond_by, wanted }
            if holder.as_str() == provider =>
        {
            SealedEvent::Solicited {
                request,
                round,
                mode: mode.to_string(),
                gpus,
                of_gpus,
                price: price.get(),
                terms,
                respond_by: respond_by.to_string(),
                wanted: wanted.map(SealedWanted::from),
            }
        }
        EventKind::QuotesRequested { round, providers, respond_by, wanted }
            if providers.iter().any(|p| p.as_str() == provider) =>
        {
            let wanted = wanted.map(SealedWanted::from);
            SealedEvent::QuotesRequested { request, round, respond_by: respond_by.to_string(), wanted }
        }
        EventKind::Awarded { round, allocations } => {
            let allocations: Vec<SealedAllocation> = allocations
                .into_iter()
                .filter(|x| x.plan.provider.as_str() == provider)
                .map(|x| SealedAllocation {
                    id: x.id,
                    region: x.plan.region.to_string(),
                    instance_type: x.plan.instance_type,
                    accelerator: x.plan.accelerator.to_string(),
                    gpus_per_node: x.plan.gpus_per_node.get(),
                    nodes: x.plan.nodes,
                    price_per_node_hour: x.plan.node_price.get(),
                    lead_time_hours: x.plan.lead_time_hours,
                    promised: x.promised.to_string(),
                })
                .collect();
            if allocations.is_empty() {
                return None;
            }
            SealedEvent::Awarded { request, round, allocations }
        }
        _ => return None,
    };
    Some(sealed(entry, body))
}

fn sealed(entry: &dibs_store::Entry, body: SealedEvent) -> ProviderEvent {
    ProviderEvent { seq: entry.seq, at: entry.at.clone(), kind: body.kind(), body }
}
