//! First refusal: what the holder is offered and on what terms, its answer, what it takes,
//! and how much room the buyer's caps leave it.

use super::round::{AfterHolder, HolderAsked, Phase, Round, Running, Step};
use super::screen::RefusalTerms;
use super::*;
use crate::contract::HolderTerms;

/// The most GPUs the buyer may give the holder in a round: the round's GPUs, limited by the
/// GPU caps (given the fleet, with the same one-unit tolerance placement uses: one of the
/// holder's nodes) and by the minimum-provider rule (which leaves a block to each other
/// provider needed), in whole blocks; possibly none. Spend caps limit the market's awards,
/// not what the holder is offered. See [`first_offer_room`] for the first solicitation.
pub(super) fn holder_room(rules: &Rules, holder: &ProviderName, request: &Request, node_gpus: u32) -> u32 {
    let gpus = request.gpus.get();
    let block = request.block.get();
    let mut room = f64::from(gpus);
    let fleet_total: f64 = rules.fleet.gpus.values().sum();
    let held = rules.fleet.gpus.get(holder).copied().unwrap_or(0.0);
    for cap in rules.caps.iter().filter(|c| c.basis == ShareBasis::Gpus) {
        let allowed =
            cap.max_share * (fleet_total + f64::from(gpus)) - held + f64::from(node_gpus.max(block));
        room = room.min(allowed);
    }
    if let Some((k, _)) = &rules.min_providers {
        room = room.min(f64::from(gpus.saturating_sub(k.saturating_sub(1) * block)));
    }
    // A tolerance keeps 0.4 * 500 from rounding down to 199.99.
    let room = (room.max(0.0) + 1e-9).floor() as u32;
    (room / block * block).min(gpus)
}

/// What the holder is offered when first solicited in a round: its room, but never less than
/// one block. A contractual right of first refusal is exercised even when the buyer's own
/// diversification policy would leave the holder nothing; the policy decides how much, not
/// whether.
pub(super) fn first_offer_room(
    rules: &Rules,
    holder: &ProviderName,
    request: &Request,
    node_gpus: u32,
) -> u32 {
    let block = request.block.get();
    holder_room(rules, holder, request, node_gpus).max(block).min(request.gpus.get())
}

/// What the holder took in first refusal.
#[derive(Debug)]
pub(super) struct Taken {
    pub(super) gpus: u32,
    pub(super) region: Region,
    pub(super) accelerator: Accelerator,
    pub(super) instance_type: String,
    pub(super) gpus_per_node: GpuCount,
    pub(super) lead_time_hours: u32,
}

/// What is put to the holder in one solicitation.
pub(super) struct Offered {
    pub(super) gpus: u32,
    /// Per GPU-hour.
    pub(super) price: Price,
    /// How the price was arrived at, for the ledger.
    pub(super) basis: String,
}

/// What a first-refusal holder is offered in offer-first mode.
pub(super) struct HolderOffer {
    pub(super) price: Price,
    /// How the price was arrived at, for the ledger.
    pub(super) basis: String,
    /// The largest node among the holder's offers that meet the request: the one-unit
    /// tolerance of the caps.
    pub(super) node_gpus: u32,
}

impl Engine {
    /// What the holder is offered, by the clause's terms (its list price, a fixed price, a
    /// discount off list, or the market reference), capped at the price ceiling; or the
    /// evidence that no offer of the holder's meets the hard requirements (accelerator, spot
    /// policy, the request's providers and regions, node size, deliver-by).
    pub(super) fn holder_offer(
        &self,
        request: &Request,
        refusal: &RefusalTerms,
        rules: &Rules,
        now: Timestamp,
    ) -> Result<HolderOffer, Vec<String>> {
        if let Some(incident) = self.provider_down(&refusal.holder, None) {
            return Err(vec![format!("holder is down (incident {incident})")]);
        }
        let holder_offers: &[Offer] = self.published.get(&refusal.holder).map_or(&[], Vec::as_slice);
        if holder_offers.is_empty() {
            return Err(vec![format!("{} publishes no offers", refusal.holder)]);
        }
        // Hard requirements only: no price ceiling, no caps, no exclusions.
        let hard = self.hard_rules(rules);
        let mut one_block = request.clone();
        one_block.gpus = request.block;
        let demand = Demand::whole(&one_block, now);
        let check = placement::place(demand, holder_offers, &hard, self.config.solver);
        let mut evidence = Vec::new();
        let mut best: Option<f64> = None;
        let mut node_gpus = request.block.get();
        for (verdict, offer) in check.verdicts.iter().zip(holder_offers) {
            match &verdict.outcome {
                placement::Outcome::Rejected(reason) if reason.is_hard_requirement() => {
                    evidence.push(format!("{}: {reason}", verdict.offer_id))
                }
                _ => {
                    best = Some(best.map_or(verdict.price, |b: f64| b.min(verdict.price)));
                    node_gpus = node_gpus.max(offer.gpus_per_node.get());
                }
            }
        }
        let Some(list) = best else { return Err(evidence) };
        let (price, mut basis) = match refusal.terms {
            HolderTerms::List => (list, format!("the holder's list price ${list:.4}/GPU-h")),
            HolderTerms::Fixed { price } => {
                (price.get(), format!("the fixed price ${:.4}/GPU-h", price.get()))
            }
            HolderTerms::Discount { off } => (
                list * (1.0 - off),
                format!("{:.0}% off the holder's list price ${list:.4}/GPU-h", off * 100.0),
            ),
            HolderTerms::Market => match self.market_reference(request, &refusal.holder, &hard, now) {
                Some(reference) => (reference, format!("the market reference ${reference:.4}/GPU-h")),
                None => (
                    list,
                    format!(
                        "the holder's list price ${list:.4}/GPU-h (the market cannot supply the same capacity)"
                    ),
                ),
            },
        };
        let price = match rules.price_ceiling {
            Some(ceiling) if ceiling.get() < price => {
                basis.push_str(&format!(", capped at the ceiling ${:.4}", ceiling.get()));
                ceiling.get()
            }
            _ => price,
        };
        Ok(HolderOffer {
            price: Price::new(price).expect("a published price is a valid price"),
            basis,
            node_gpus,
        })
    }

    /// The request's hard requirements and the policy's regions; nothing else.
    pub(super) fn hard_rules(&self, rules: &Rules) -> Rules {
        Rules {
            policy_regions: rules.policy_regions.clone(),
            largest_node: self.largest_node.clone(),
            ..Rules::default()
        }
    }

    /// The best price per GPU-hour the rest of the market's published offers give the same
    /// capacity now: the cheapest award of the request's GPUs among providers other than the
    /// holder, under the hard requirements, its list cost spread over the GPU-hours asked.
    pub(super) fn market_reference(
        &self,
        request: &Request,
        holder: &ProviderName,
        hard: &Rules,
        now: Timestamp,
    ) -> Option<f64> {
        let market: Vec<Offer> = self
            .published
            .iter()
            .filter(|(provider, _)| *provider != holder)
            .flat_map(|(_, offers)| offers.iter().cloned())
            .collect();
        let demand = Demand::whole(request, now);
        let placement = placement::place(demand, &market, hard, self.config.solver);
        let gpu_hours = f64::from(request.gpus.get()) * f64::from(request.duration_hours);
        (placement.infeasible.is_none() && gpu_hours > 0.0).then(|| placement.list_cost / gpu_hours)
    }

    /// Puts `offered` to the holder; the round waits for its answer, and `then` says what
    /// follows it.
    pub(super) fn solicit(
        &mut self,
        out: &mut Out,
        state: &mut RequestState,
        mut round: Box<Round>,
        refusal: &RefusalTerms,
        offered: Offered,
        then: AfterHolder,
    ) -> Step {
        let Offered { gpus, price, basis } = offered;
        let respond_by = out.now.plus_hours(f64::from(refusal.window_hours));
        state.status = Status::FirstRefusal;
        round.solicitations += 1;
        let (number, solicitation) = (round.number, round.solicitations);
        let id = &state.request.id;
        let ask = Ask::new(id, number, &state.request, gpus, round.hours, respond_by);
        out.ledger(
            Some(id),
            EventKind::Solicited {
                round: number,
                holder: refusal.holder.clone(),
                mode: refusal.mode,
                gpus,
                of_gpus: round.gpus,
                price,
                terms: basis,
                respond_by,
                wanted: Some(ask.wanted.clone()),
            },
        );
        out.effects.push(Effect::Solicit(Solicitation {
            holder: refusal.holder.clone(),
            mode: refusal.mode,
            price,
            ask,
        }));
        out.effects.push(Effect::SetTimer {
            at: respond_by,
            timer: Timer::HolderWindow { request: id.clone(), round: number, solicitation },
        });
        Step::Await(round, Phase::Holder { solicitation, respond_by, offered_gpus: gpus, price, then })
    }

    /// The holder's answer: it takes all, part or nothing of what it was offered.
    pub(super) fn holder_answer(
        &mut self,
        out: &mut Out,
        state: &mut RequestState,
        running: Running,
        round_number: u32,
        answer: HolderAnswer,
    ) -> Step {
        let Running { round, phase } = running;
        let Some(refusal) = round.screened.refusal.clone() else { return Step::Await(round, phase) };
        let id = state.request.id.clone();
        let (offered_gpus, asked) = match phase {
            Phase::Holder { respond_by, offered_gpus, price, then, .. }
                if out.now <= respond_by && round.number == round_number =>
            {
                (offered_gpus, HolderAsked { holder: refusal.holder.clone(), price, then })
            }
            phase => {
                out.ledger(
                    Some(&id),
                    EventKind::LateAnswerIgnored { round: round_number, from: refusal.holder },
                );
                return Step::Await(round, phase);
            }
        };
        let answered = |out: &mut Out, outcome: HolderOutcome, gpus: u32| {
            out.ledger(
                Some(&id),
                EventKind::HolderAnswered {
                    round: round_number,
                    holder: refusal.holder.clone(),
                    outcome,
                    gpus,
                },
            )
        };
        match answer {
            HolderAnswer::Decline => {
                answered(out, HolderOutcome::Declined, 0);
                Step::HolderPassed(round, asked)
            }
            HolderAnswer::Accept {
                gpus,
                region,
                accelerator,
                instance_type,
                gpus_per_node,
                lead_time_hours,
            } => {
                if !state.request.accelerators.contains(&accelerator) {
                    answered(
                        out,
                        HolderOutcome::Invalid(format!("accelerator {accelerator} not requested")),
                        0,
                    );
                    return Step::HolderPassed(round, asked);
                }
                let block = state.request.block.get();
                let taken = (gpus.min(offered_gpus) / block) * block;
                let outcome = if taken == 0 {
                    HolderOutcome::Declined
                } else if taken == offered_gpus {
                    HolderOutcome::Accepted
                } else {
                    HolderOutcome::AcceptedPart
                };
                answered(out, outcome, taken);
                if taken == 0 {
                    return Step::HolderPassed(round, asked);
                }
                let taken =
                    Taken { gpus: taken, region, accelerator, instance_type, gpus_per_node, lead_time_hours };
                Step::HolderTakes(round, asked, taken)
            }
        }
    }

    /// The holder's window closed with no answer: a decline.
    pub(super) fn holder_lapsed(
        &mut self,
        out: &mut Out,
        state: &mut RequestState,
        running: Running,
        round_number: u32,
    ) -> Step {
        let Running { round, phase } = running;
        match (phase, round.screened.refusal.as_ref()) {
            (Phase::Holder { price, then, .. }, Some(refusal)) => {
                let holder = refusal.holder.clone();
                out.ledger(
                    Some(&state.request.id),
                    EventKind::HolderLapsed { round: round_number, holder: holder.clone() },
                );
                Step::HolderPassed(round, HolderAsked { holder, price, then })
            }
            (phase, _) => Step::Await(round, phase),
        }
    }

    /// The holder takes `gpus` of the round on the solicited terms.
    pub(super) fn holder_takes(
        &mut self,
        out: &mut Out,
        state: &mut RequestState,
        mut round: Box<Round>,
        asked: HolderAsked,
        taken: Taken,
    ) -> Step {
        let Taken { gpus, region, accelerator, instance_type, gpus_per_node, lead_time_hours } = taken;
        let HolderAsked { holder, price, then } = asked;
        // The holder takes the terms it was offered: the buyer's (offer-first) or the market's (match),
        // per GPU-hour, in whole nodes of its instance type.
        debug_assert!(state.request.accelerators.contains(&accelerator));
        let block = state.request.block.get();
        let g = gpus_per_node.get();
        let nodes =
            if block <= g { (gpus / block).div_ceil(g / block) } else { (gpus / block) * block.div_ceil(g) };
        let plan = PlannedAllocation {
            offer_id: format!("{holder}/{region}/{instance_type}/first-refusal"),
            provider: holder.clone(),
            region,
            zone: None,
            instance_type,
            accelerator,
            gpus_per_node,
            nodes,
            gpus,
            node_price: NodePrice::from_gpu_price(price, gpus_per_node),
            lead_time_hours,
            kind: OfferKind::OnDemand,
            bills_from_delivery: true,
            held_hours: 0,
        };
        self.award(out, state, &round, vec![plan], "first_refusal");
        round.gpus -= gpus;
        round.screened.rules.excluded.insert(holder, "took its part in first refusal".into());
        if round.gpus > 0 && !matches!(then, AfterHolder::Match(_)) {
            // Taking part is declining the rest at these terms: the no-better-terms rule covers the remainder.
            round.declined_price = Some(round.declined_price.map_or(price.get(), |d| d.max(price.get())));
        }
        match then {
            _ if round.gpus == 0 => Step::Finish,
            // Match mode or a re-solicitation: the quotes are in hand; place the rest.
            AfterHolder::Match(_) | AfterHolder::Decide => Step::Decide(round),
            AfterHolder::AskMarket => Step::AskMarket(round),
        }
    }

    /// The holder declined or let the window lapse.
    pub(super) fn holder_passed(
        &mut self,
        out: &mut Out,
        state: &mut RequestState,
        mut round: Box<Round>,
        asked: HolderAsked,
    ) -> Step {
        let HolderAsked { holder, price, then } = asked;
        round.declined_price = Some(round.declined_price.map_or(price.get(), |d| d.max(price.get())));
        round.screened.rules.excluded.insert(holder, "declined in first refusal".into());
        match then {
            // Match mode: the market award the holder was shown stands.
            AfterHolder::Match(plan) => {
                self.award(out, state, &round, plan, "market");
                Step::Finish
            }
            // A no-better-terms re-solicitation: the quotes are in hand.
            AfterHolder::Decide => Step::Decide(round),
            AfterHolder::AskMarket => Step::AskMarket(round),
        }
    }
}
