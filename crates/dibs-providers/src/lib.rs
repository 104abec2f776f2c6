//! Providers: the protocol dibs speaks with a cloud ([`protocol`]), and simulated providers
//! that answer it from a price catalog.
//!
//! A [`Provider`] answers the calls of the protocol: a first-refusal solicitation, a quote
//! request, a reservation, a cancellation and a release. The simulated provider keeps finite
//! capacity per offer (reservations take from it, cancellations and releases give back) and a
//! behaviour for solicitations, so `dibs place` and `dibs simulate` can play a holder that
//! accepts, declines, takes part, or stays silent. The same provider answers over HTTP in
//! `dibs provider serve`, and the same calls go over HTTP from `dibs serve`.
//!
//! [`ec2`] is the first adapter to a real cloud: AWS EC2 through its own Query API.

pub mod ec2;
pub mod protocol;

pub use protocol::{Answered, Call, Provider, Reply};

use std::collections::BTreeMap;

use dibs_core::engine::{Ask, HolderAnswer, Solicitation};
use dibs_core::placement::PlannedAllocation;
use dibs_core::request::SpotPolicy;
use dibs_core::types::{Location, NodePrice, Offer, OfferKind, ProviderName, Timestamp};

/// A provider's reply to a solicitation, and how long it took to send it.
#[derive(Debug, Clone, PartialEq)]
pub struct HolderReply {
    /// `None`: the holder stays silent and the window lapses.
    pub answer: Option<HolderAnswer>,
    pub after_hours: f64,
}

/// When a reservation will be ready (`None`: never, the provider fails to deliver).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reservation {
    pub ready_at: Option<Timestamp>,
}

/// How a simulated holder answers solicitations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HolderBehaviour {
    /// Takes everything it has capacity for.
    Accept,
    Decline,
    /// Never answers; the response window lapses.
    Silent,
    /// Takes at most this many GPUs.
    Partial(u32),
    /// Accepts (everything it can) with this probability, else declines; drawn from the provider's seeded RNG.
    AcceptRate(f64),
}

impl HolderBehaviour {
    /// Parses `accept`, `decline`, `silent`, `partial:N` or `rate:P` (0 <= P <= 1).
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid =
            || format!("{text:?} is not accept, decline, silent, partial:N (N > 0 GPUs) or rate:P (0 to 1)");
        match text {
            "accept" => Ok(Self::Accept),
            "decline" => Ok(Self::Decline),
            "silent" => Ok(Self::Silent),
            _ => {
                if let Some(n) = text.strip_prefix("partial:") {
                    return n.parse::<u32>().ok().filter(|n| *n > 0).map(Self::Partial).ok_or_else(invalid);
                }
                if let Some(p) = text.strip_prefix("rate:") {
                    return p
                        .parse::<f64>()
                        .ok()
                        .filter(|p| (0.0..=1.0).contains(p))
                        .map(Self::AcceptRate)
                        .ok_or_else(invalid);
                }
                Err(invalid())
            }
        }
    }
}

/// A simulated holder sells for no less than this fraction of its list price per GPU-hour:
/// about the deepest discount a hyperscaler gives a committed buyer (on-demand list prices of
/// H100 run near $12/GPU-h, three-year commitments and negotiated rates near $2.5-3), so it
/// matches a neocloud's market price but not $0.01 (terms capped by a buyer's price ceiling
/// far below any market): offered less, it declines, as a real one would.
pub const HOLDER_FLOOR: f64 = 0.2;

/// Knobs of a simulated provider.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulatedBehaviour {
    pub holder: HolderBehaviour,
    /// Hours the provider takes to answer a solicitation (the mean, when
    /// `answer_exponential` is set).
    pub answer_hours: f64,
    /// Draw each answer time from an exponential distribution with mean
    /// `answer_hours` (from the provider's seeded RNG) instead of a fixed delay:
    /// some answers come quickly, some after the window has lapsed.
    pub answer_exponential: bool,
    /// Hours the provider takes to quote.
    pub quote_hours: f64,
    /// Extra hours beyond the offer's lead time before a reservation is ready;
    /// `None` means reservations are never delivered.
    pub delivery_delay_hours: Option<f64>,
}

impl Default for SimulatedBehaviour {
    fn default() -> Self {
        Self {
            holder: HolderBehaviour::Decline,
            answer_hours: 4.0,
            answer_exponential: false,
            quote_hours: 0.25,
            delivery_delay_hours: Some(0.0),
        }
    }
}

/// The part of a simulated provider its answers change (see [`SimulatedProvider::state`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderState {
    reserved: BTreeMap<String, u32>,
    reservations: BTreeMap<u64, (String, u32)>,
    ready: BTreeMap<u64, Option<Timestamp>>,
    rng: u64,
}

/// A provider that answers from its catalog offers with finite capacity, in whole nodes.
#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    name: ProviderName,
    offers: Vec<Offer>,
    /// Nodes taken from each offer, by offer id.
    reserved: BTreeMap<String, u32>,
    /// Live reservations: allocation -> (offer id, nodes).
    reservations: BTreeMap<u64, (String, u32)>,
    /// When each reservation ever made is ready, so a repeat gives the same answer.
    ready: BTreeMap<u64, Option<Timestamp>>,
    pub behaviour: SimulatedBehaviour,
    /// Price multipliers over time, sorted by instant: quotes use the last step at or before now.
    pub price_steps: Vec<(Timestamp, f64)>,
    rng: fastrand::Rng,
}

impl SimulatedProvider {
    pub fn new(name: ProviderName, offers: Vec<Offer>, behaviour: SimulatedBehaviour) -> Self {
        Self {
            name,
            offers,
            reserved: BTreeMap::new(),
            reservations: BTreeMap::new(),
            ready: BTreeMap::new(),
            behaviour,
            price_steps: Vec::new(),
            rng: fastrand::Rng::with_seed(0),
        }
    }

    /// Seeds the provider's random choices from a run seed and its name, so
    /// each provider draws its own stream and a run is reproducible.
    pub fn seed(&mut self, seed: u64) {
        let name_hash = self
            .name
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        self.rng = fastrand::Rng::with_seed(seed ^ name_hash);
    }

    /// What the provider's answers so far changed (its reservations and where its random
    /// stream stands), for a service's snapshot.
    pub fn state(&self) -> ProviderState {
        ProviderState {
            reserved: self.reserved.clone(),
            reservations: self.reservations.clone(),
            ready: self.ready.clone(),
            rng: self.rng.get_seed(),
        }
    }

    /// Puts back a state [`SimulatedProvider::state`] gave.
    pub fn restore(&mut self, state: ProviderState) {
        self.reserved = state.reserved;
        self.reservations = state.reservations;
        self.ready = state.ready;
        self.rng.seed(state.rng);
    }

    fn price_multiplier(&self, now: Timestamp) -> f64 {
        self.price_steps.iter().take_while(|(at, _)| *at <= now).last().map_or(1.0, |(_, m)| *m)
    }

    /// One simulated provider per provider named in the offers.
    pub fn from_catalog(
        offers: &[Offer],
        behaviour: SimulatedBehaviour,
    ) -> BTreeMap<ProviderName, SimulatedProvider> {
        let mut by_provider: BTreeMap<ProviderName, Vec<Offer>> = BTreeMap::new();
        for offer in offers {
            by_provider.entry(offer.provider.clone()).or_default().push(offer.clone());
        }
        by_provider
            .into_iter()
            .map(|(name, offers)| (name.clone(), SimulatedProvider::new(name, offers, behaviour)))
            .collect()
    }

    /// Nodes of an offer not reserved.
    fn free(&self, offer: &Offer) -> u32 {
        offer.nodes_available.saturating_sub(self.reserved.get(&offer.id).copied().unwrap_or(0))
    }

    /// Offers that match an ask's accelerators, regions and spot policy, with the nodes free now.
    fn matching(&self, ask: &Ask) -> Vec<Offer> {
        self.offers
            .iter()
            .filter(|o| ask.wanted.accelerators.iter().any(|a| a == o.accelerator.as_str()))
            .filter(|o| {
                ask.wanted.regions.is_empty()
                    || ask.wanted.regions.iter().any(|l: &Location| l.contains(&o.provider, &o.region))
            })
            .filter(|o| match ask.wanted.spot {
                SpotPolicy::Never => o.kind != OfferKind::Spot,
                SpotPolicy::Allow => true,
                SpotPolicy::Only => o.kind == OfferKind::Spot,
            })
            .map(|o| Offer { nodes_available: self.free(o), ..o.clone() })
            .filter(|o| o.nodes_available > 0)
            .collect()
    }
}

impl Provider for SimulatedProvider {
    fn name(&self) -> &ProviderName {
        &self.name
    }

    fn answer(&mut self, call: &Call, now: Timestamp) -> Answered {
        match call {
            Call::Solicit(solicitation) => {
                let reply = self.solicit(solicitation, now);
                let answer = protocol::SolicitReply { answer: reply.answer };
                Answered { reply: Reply::Holder(answer), after_hours: reply.after_hours }
            }
            Call::Quote { ask, .. } => {
                let (offers, after_hours) = self.quote(ask, now);
                Answered { reply: Reply::Quotes(protocol::QuoteReply { offers }), after_hours }
            }
            Call::Reserve { allocation, plan, .. } => {
                let reservation = self.reserve(*allocation, plan, now);
                let reply = protocol::ReserveReply { ready_at: reservation.ready_at, failed: None };
                Answered { reply: Reply::Reserved(reply), after_hours: 0.0 }
            }
            Call::Cancel { allocation, .. } | Call::Release { allocation, .. } => {
                self.cancel(*allocation);
                Answered { reply: Reply::Done, after_hours: 0.0 }
            }
        }
    }
}

impl SimulatedProvider {
    fn solicit(&mut self, solicitation: &Solicitation, now: Timestamp) -> HolderReply {
        let after_hours = if self.behaviour.answer_exponential {
            // Inverse transform: 1 - u is in (0, 1], so the logarithm is finite.
            -self.behaviour.answer_hours * (1.0 - self.rng.f64()).ln()
        } else {
            self.behaviour.answer_hours
        };
        let limit = match self.behaviour.holder {
            HolderBehaviour::Silent => return HolderReply { answer: None, after_hours },
            HolderBehaviour::Decline => {
                return HolderReply { answer: Some(HolderAnswer::Decline), after_hours };
            }
            HolderBehaviour::Accept => solicitation.ask.wanted.gpus,
            HolderBehaviour::Partial(n) => n.min(solicitation.ask.wanted.gpus),
            HolderBehaviour::AcceptRate(rate) => {
                if self.rng.f64() < rate {
                    solicitation.ask.wanted.gpus
                } else {
                    return HolderReply { answer: Some(HolderAnswer::Decline), after_hours };
                }
            }
        };
        // Supply from the offer that can carry the most of the request and meets the deadline;
        // nodes that hold a whole block come before gangs of smaller nodes.
        let answer_at = now.plus_hours(after_hours);
        let block = solicitation.ask.wanted.block.max(1);
        let best = self
            .matching(&solicitation.ask)
            .into_iter()
            .filter(|o| o.kind != OfferKind::Spot)
            .filter(|o| {
                solicitation
                    .ask
                    .wanted
                    .deliver_by
                    .is_none_or(|by| answer_at.plus_hours(f64::from(o.lead_time_hours)) <= by)
            })
            .max_by(|a, b| {
                let holds = |o: &Offer| o.gpus_per_node.get() >= block;
                holds(a)
                    .cmp(&holds(b))
                    .then(carries(a, block).cmp(&carries(b, block)))
                    .then_with(|| b.id.cmp(&a.id))
            });
        let answer = match best {
            Some(offer) => {
                let gpus = (limit.min(carries(&offer, block)) / block) * block;
                let list = offer.gpu_price() * self.price_multiplier(now);
                if gpus == 0 || solicitation.price.get() < HOLDER_FLOOR * list {
                    HolderAnswer::Decline
                } else {
                    HolderAnswer::Accept {
                        gpus,
                        region: offer.region,
                        accelerator: offer.accelerator,
                        instance_type: offer.instance_type,
                        gpus_per_node: offer.gpus_per_node,
                        lead_time_hours: offer.lead_time_hours,
                    }
                }
            }
            None => HolderAnswer::Decline,
        };
        HolderReply { answer: Some(answer), after_hours }
    }

    /// Quotes for a request, and how many hours the answer takes.
    fn quote(&mut self, ask: &Ask, now: Timestamp) -> (Vec<Offer>, f64) {
        let multiplier = self.price_multiplier(now);
        let offers = self
            .matching(ask)
            .into_iter()
            .map(|o| {
                let node_price = NodePrice::new(o.node_price.get() * multiplier).unwrap_or(o.node_price);
                Offer { valid_until: Some(ask.respond_by.plus_hours(24.0)), node_price, ..o }
            })
            .collect();
        (offers, self.behaviour.quote_hours)
    }

    fn reserve(&mut self, allocation: u64, plan: &PlannedAllocation, now: Timestamp) -> Reservation {
        // A repeated reservation (a retry, or a replay after a restart) changes nothing.
        if let Some(ready_at) = self.ready.get(&allocation) {
            return Reservation { ready_at: *ready_at };
        }
        // A first-refusal allocation names no catalog offer: take from the holder's offer of
        // that instance type in that region with the most free nodes.
        let offer_id = if self.offers.iter().any(|o| o.id == plan.offer_id) {
            Some(plan.offer_id.clone())
        } else {
            self.offers
                .iter()
                .filter(|o| o.region == plan.region && o.instance_type == plan.instance_type)
                .max_by_key(|o| self.free(o))
                .map(|o| o.id.clone())
        };
        if let Some(offer_id) = offer_id {
            *self.reserved.entry(offer_id.clone()).or_default() += plan.nodes;
            self.reservations.insert(allocation, (offer_id, plan.nodes));
        }
        let ready_at = self
            .behaviour
            .delivery_delay_hours
            .map(|delay| now.plus_hours(f64::from(plan.lead_time_hours) + delay));
        self.ready.insert(allocation, ready_at);
        Reservation { ready_at }
    }

    /// A cancelled or released reservation gives its nodes back.
    fn cancel(&mut self, allocation: u64) {
        if let Some((offer_id, nodes)) = self.reservations.remove(&allocation)
            && let Some(reserved) = self.reserved.get_mut(&offer_id)
        {
            *reserved = reserved.saturating_sub(nodes);
        }
    }
}

/// GPUs of `block`-GPU blocks the free nodes of an offer can carry: whole blocks per node,
/// or whole gangs of nodes.
fn carries(offer: &Offer, block: u32) -> u32 {
    let g = offer.gpus_per_node.get();
    if block <= g {
        offer.nodes_available.saturating_mul(g / block * block)
    } else {
        (offer.nodes_available / block.div_ceil(g)).saturating_mul(block)
    }
}

/// Carries out one engine effect against in-process simulated providers and
/// returns the inputs it will cause, each with the instant it is due: a
/// holder's answer, quotes, an allocation becoming ready, a timer firing.
/// Ledger entries are the caller's to record.
pub fn carry_out<P: Provider>(
    providers: &mut BTreeMap<ProviderName, P>,
    now: Timestamp,
    effect: &dibs_core::engine::Effect,
) -> Vec<(Timestamp, dibs_core::engine::Input)> {
    if let dibs_core::engine::Effect::SetTimer { at, timer } = effect {
        return vec![(*at, dibs_core::engine::Input::Timer(timer.clone()))];
    }
    protocol::calls_for(effect).iter().filter_map(|call| call_in_process(providers, call, now)).collect()
}

/// Makes one call to an in-process provider (any [`Provider`]: the simulated one today):
/// the input its answer causes, and when.
pub fn call_in_process<P: Provider>(
    providers: &mut BTreeMap<ProviderName, P>,
    call: &Call,
    now: Timestamp,
) -> Option<(Timestamp, dibs_core::engine::Input)> {
    let provider = providers.get_mut(call.provider())?;
    let answered = provider.answer(call, now);
    let answered_at = now.plus_hours(answered.after_hours);
    call.input(answered.reply).map(|(at, input)| (at.unwrap_or(answered_at), input))
}

#[cfg(test)]
mod tests {
    use dibs_core::contract::RefusalMode;
    use dibs_core::engine::{Ask, HolderAnswer, Solicitation};
    use dibs_core::ledger::Wanted;
    use dibs_core::request::SpotPolicy;
    use dibs_core::types::{Price, ProviderName, Timestamp};

    use super::{HOLDER_FLOOR, HolderBehaviour, SimulatedBehaviour, SimulatedProvider};

    #[test]
    fn a_holder_that_takes_everything_still_declines_a_price_below_its_floor() {
        let offers = dibs_core::catalog::bundled_catalog().offers;
        let behaviour =
            SimulatedBehaviour { holder: HolderBehaviour::Accept, ..SimulatedBehaviour::default() };
        let mut providers = SimulatedProvider::from_catalog(&offers, behaviour);
        let holder = providers.get_mut(&ProviderName::new("azure").unwrap()).unwrap();
        let now = Timestamp::parse("2026-06-01T00:00:00Z").unwrap();
        let prices: Vec<f64> = offers
            .iter()
            .filter(|o| o.provider.as_str() == "azure" && o.accelerator.as_str() == "H100")
            .map(|o| o.gpu_price())
            .collect();
        let cheapest = prices.iter().copied().fold(f64::INFINITY, f64::min);
        let dearest = prices.iter().copied().fold(0.0, f64::max);
        let solicit = |holder: &mut SimulatedProvider, price: f64| {
            let solicitation = Solicitation {
                holder: ProviderName::new("azure").unwrap(),
                mode: RefusalMode::OfferFirst,
                price: Price::new(price).unwrap(),
                ask: Ask {
                    request: "r-1".into(),
                    round: 1,
                    wanted: Wanted {
                        gpus: 8,
                        block: 8,
                        accelerators: vec!["H100".into()],
                        regions: Vec::new(),
                        spot: SpotPolicy::Never,
                        duration_hours: 24,
                        deliver_by: None,
                    },
                    respond_by: now.plus_hours(72.0),
                },
            };
            holder.solicit(&solicitation, now).answer.unwrap()
        };
        assert_eq!(solicit(holder, 0.01), HolderAnswer::Decline, "H100 at $0.01/GPU-h");
        assert_eq!(solicit(holder, HOLDER_FLOOR * cheapest * 0.99), HolderAnswer::Decline);
        let answer = solicit(holder, HOLDER_FLOOR * dearest);
        assert!(matches!(answer, HolderAnswer::Accept { gpus: 8, .. }), "{answer:?}");
    }
}
