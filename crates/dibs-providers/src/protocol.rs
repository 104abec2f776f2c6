//! The provider protocol: one set of messages that the simulated providers, the HTTP client
//! (`dibs serve`'s workers) and the HTTP server (`dibs provider serve`) all speak.
//!
//! A [`Call`] is what dibs asks of a provider; the engine's effects become calls
//! ([`calls_for`]). A [`Reply`] is what comes back; [`Call::input`] turns it into the engine
//! input it causes. Over HTTP each call is `POST /{path}` with [`Call::body`]:
//!
//! | call      | path      | body                         | reply                                   |
//! |-----------|-----------|------------------------------|-----------------------------------------|
//! | solicit   | `solicit` | `Solicitation`               | `{"answer": HolderAnswer \| null}` (null: silent) |
//! | quote     | `quote`   | `Ask`                        | `{"offers": [Offer]}`                   |
//! | reserve   | `reserve` | `{"allocation", "request", "plan"}` | `{"ready_at": unix \| null, "failed": reason?}` |
//! | cancel    | `cancel`  | `{"allocation"}`             | `{}`                                    |
//! | release   | `release` | `{"allocation"}`             | `{}`                                    |
//!
//! and `GET /health` answers `{"status": "ok"}` while the provider is up.

use dibs_core::engine::{Ask, Effect, HolderAnswer, Input, Solicitation};
use dibs_core::placement::PlannedAllocation;
use dibs_core::types::{Offer, ProviderName, Timestamp};
use serde::{Deserialize, Serialize};

/// One call to a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    /// First refusal: the holder is offered (or shown) terms.
    Solicit(Solicitation),
    /// The market: quotes for an ask.
    Quote { provider: ProviderName, ask: Ask },
    /// The award: reserve these nodes (for `request`; empty in calls recorded before it was
    /// said).
    Reserve {
        allocation: u64,
        #[serde(default)]
        request: String,
        plan: PlannedAllocation,
    },
    /// Spillover, failover or the buyer: the reservation is off.
    Cancel { provider: ProviderName, allocation: u64 },
    /// The allocation ran its hours: the provider takes its nodes back.
    Release { provider: ProviderName, allocation: u64 },
}

/// The body of a reservation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReserveBody {
    pub allocation: u64,
    #[serde(default)]
    pub request: String,
    pub plan: PlannedAllocation,
}

/// The body of a cancellation or a release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllocationBody {
    pub allocation: u64,
}

/// A holder's answer; `None` is silence (the window lapses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolicitReply {
    pub answer: Option<HolderAnswer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuoteReply {
    pub offers: Vec<Offer>,
}

/// When the reserved nodes will be ready; `None`: not known yet, or never (the engine's
/// delivery timer then spills them over). `failed`: the provider cannot deliver them, and
/// why (its evidence): the GPUs go back to the market at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReserveReply {
    pub ready_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// An empty acknowledgement (cancel, release).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Ack {}

/// A provider's reply to a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Holder(SolicitReply),
    Quotes(QuoteReply),
    Reserved(ReserveReply),
    Done,
}

/// A reply, and how many hours the provider took to give it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub reply: Reply,
    pub after_hours: f64,
}

/// The provider side of the protocol.
pub trait Provider {
    fn name(&self) -> &ProviderName;
    /// Answers one call made at `now`.
    fn answer(&mut self, call: &Call, now: Timestamp) -> Answered;
}

/// The calls an engine effect makes (none for timers and ledger entries).
pub fn calls_for(effect: &Effect) -> Vec<Call> {
    match effect {
        Effect::Solicit(solicitation) => vec![Call::Solicit(solicitation.clone())],
        Effect::RequestQuotes { providers, ask } => providers
            .iter()
            .map(|provider| Call::Quote { provider: provider.clone(), ask: ask.clone() })
            .collect(),
        Effect::Reserve { allocation, request, plan, .. } => {
            vec![Call::Reserve { allocation: *allocation, request: request.clone(), plan: plan.clone() }]
        }
        Effect::Cancel { allocation, provider, .. } => {
            vec![Call::Cancel { provider: provider.clone(), allocation: *allocation }]
        }
        Effect::Release { allocation, provider } => {
            vec![Call::Release { provider: provider.clone(), allocation: *allocation }]
        }
        Effect::SetTimer { .. } | Effect::Ledger(_) => Vec::new(),
    }
}

impl Call {
    pub fn provider(&self) -> &ProviderName {
        match self {
            Call::Solicit(s) => &s.holder,
            Call::Quote { provider, .. } | Call::Cancel { provider, .. } | Call::Release { provider, .. } => {
                provider
            }
            Call::Reserve { plan, .. } => &plan.provider,
        }
    }

    /// The allocation a reserve, cancel or release is about.
    pub fn allocation(&self) -> Option<u64> {
        match self {
            Call::Reserve { allocation, .. }
            | Call::Cancel { allocation, .. }
            | Call::Release { allocation, .. } => Some(*allocation),
            Call::Solicit(_) | Call::Quote { .. } => None,
        }
    }

    /// When an answer stops being useful: the holder's window, the quote deadline.
    pub fn respond_by(&self) -> Option<Timestamp> {
        match self {
            Call::Solicit(s) => Some(s.ask.respond_by),
            Call::Quote { ask, .. } => Some(ask.respond_by),
            Call::Reserve { .. } | Call::Cancel { .. } | Call::Release { .. } => None,
        }
    }

    /// The HTTP path, under the provider's URL.
    pub fn path(&self) -> &'static str {
        match self {
            Call::Solicit(_) => "solicit",
            Call::Quote { .. } => "quote",
            Call::Reserve { .. } => "reserve",
            Call::Cancel { .. } => "cancel",
            Call::Release { .. } => "release",
        }
    }

    /// The HTTP body.
    pub fn body(&self) -> serde_json::Value {
        let value = match self {
            Call::Solicit(s) => serde_json::to_value(s),
            Call::Quote { ask, .. } => serde_json::to_value(ask),
            Call::Reserve { allocation, request, plan } => serde_json::to_value(ReserveBody {
                allocation: *allocation,
                request: request.clone(),
                plan: plan.clone(),
            }),
            Call::Cancel { allocation, .. } | Call::Release { allocation, .. } => {
                serde_json::to_value(AllocationBody { allocation: *allocation })
            }
        };
        value.expect("protocol messages serialize")
    }

    /// Reads an HTTP reply to this call; `None` when it is not the reply this call expects.
    pub fn parse_reply(&self, text: &str) -> Option<Reply> {
        match self {
            Call::Solicit(_) => serde_json::from_str(text).ok().map(Reply::Holder),
            Call::Quote { .. } => serde_json::from_str(text).ok().map(Reply::Quotes),
            Call::Reserve { .. } => serde_json::from_str(text).ok().map(Reply::Reserved),
            Call::Cancel { .. } | Call::Release { .. } => Some(Reply::Done),
        }
    }

    /// The engine input a reply causes, and when it is due (`None`: when it arrives).
    pub fn input(&self, reply: Reply) -> Option<(Option<Timestamp>, Input)> {
        match (self, reply) {
            (Call::Solicit(s), Reply::Holder(reply)) => Some((
                None,
                Input::HolderAnswer {
                    request: s.ask.request.clone(),
                    round: s.ask.round,
                    answer: reply.answer?,
                },
            )),
            (Call::Quote { provider, ask }, Reply::Quotes(reply)) => {
                // The engine checks the offers (`Names::check_quoted`) and bounds their number.
                let offers = reply.offers;
                Some((
                    None,
                    Input::Quotes {
                        request: ask.request.clone(),
                        round: ask.round,
                        provider: provider.clone(),
                        offers,
                    },
                ))
            }
            (Call::Reserve { allocation, .. }, Reply::Reserved(reply)) => match reply.failed {
                Some(reason) => Some((None, Input::ReservationFailed { allocation: *allocation, reason })),
                None => {
                    reply.ready_at.map(|at| (Some(at), Input::AllocationReady { allocation: *allocation }))
                }
            },
            _ => None,
        }
    }

    /// What a call that got no usable answer by its deadline means (`error`: the last
    /// failure). A provider that cannot quote has quoted nothing, and the round records why.
    /// A holder that cannot answer is silent, and its window lapses; a reservation the
    /// provider refused or could not confirm by its deadline failed, and its GPUs go back
    /// to the market at once.
    pub fn unanswered(&self, error: &str) -> Option<Input> {
        match self {
            Call::Reserve { allocation, .. } => Some(Input::ReservationFailed {
                allocation: *allocation,
                reason: format!("the reservation was not confirmed: {error}"),
            }),
            Call::Quote { provider, ask } => Some(Input::QuoteFailed {
                request: ask.request.clone(),
                round: ask.round,
                provider: provider.clone(),
                error: error.to_owned(),
            }),
            _ => None,
        }
    }
}

impl Reply {
    /// The reply as its wire message.
    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            Reply::Holder(r) => serde_json::to_value(r),
            Reply::Quotes(r) => serde_json::to_value(r),
            Reply::Reserved(r) => serde_json::to_value(r),
            Reply::Done => serde_json::to_value(Ack {}),
        };
        value.expect("protocol messages serialize")
    }
}
