//! The market: asking the eligible providers for quotes, taking their answers, and deciding
//! the round over the quotes in hand (with the match and no-better-terms rules).

use std::collections::BTreeSet;

use super::first_refusal::{Offered, first_offer_room, holder_room};
use super::round::{AfterHolder, Phase, Round, Running, Step, round_request};
use super::screen::remaining_min_providers;
use super::*;
use crate::contract::{NoBetterTerms, RefusalMode};

impl Engine {
    /// Asks every provider that may win for quotes; the round waits for them until the
    /// deadline.
    pub(super) fn ask_market(&mut self, out: &mut Out, state: &mut RequestState, round: Box<Round>) -> Step {
        state.status = Status::Market;
        let rules = &round.screened.rules;
        let holder_waits = round
            .screened
            .refusal
            .as_ref()
            .filter(|r| r.mode == RefusalMode::Match)
            .map(|r| r.holder.clone());
        let mut providers: BTreeSet<ProviderName> = self.published.keys().cloned().collect();
        providers.retain(|p| {
            !rules.excluded.contains_key(p)
                && rules.exclusive_to.as_ref().is_none_or(|(holder, _)| holder == p)
                && holder_waits.as_ref() != Some(p)
        });
        // Only a provider one of whose offers could meet the request hears of it.
        // The filters read the request's own terms (its GPUs and hours are the round's, here
        // in `gpus`), so the request itself will do: no copy of it per round.
        let demand = Demand { request: &state.request, gpus: round.gpus, now: out.now, joining: &[] };
        let eligible = providers.clone();
        providers.retain(|p| {
            self.published.get(p).is_some_and(|offers| placement::could_quote(demand, offers, rules))
        });
        let number = round.number;
        if providers.is_empty() && !eligible.is_empty() {
            // Say why, offer by offer, as a placement over everything they publish would.
            let offers: Vec<Offer> =
                eligible.iter().flat_map(|p| self.published[p].iter().cloned()).collect();
            let placement = placement::place(demand, &offers, rules, self.config.solver);
            let reason =
                placement.infeasible.unwrap_or_else(|| "no provider can meet the request".to_owned());
            return Step::Unfilled(round, format!("no provider was asked for quotes: {reason}"));
        }
        if providers.is_empty() {
            let reason = match (&rules.exclusive_to, rules.excluded.is_empty()) {
                (Some((holder, clause)), _) => {
                    format!("workload is exclusive to {holder} ({clause}), which is not available")
                }
                (None, false) => "every provider is excluded (declined, down or already used)".to_owned(),
                (None, true) => "no provider publishes any offer".to_owned(),
            };
            return Step::Unfilled(round, reason);
        }
        let respond_by = out.now.plus_hours(self.config.quote_window_hours);
        let phase = Phase::Quotes { respond_by, asked: providers.clone(), answered: BTreeSet::new() };
        let providers: Vec<ProviderName> = providers.into_iter().collect();
        let id = &state.request.id;
        let ask = Ask::new(id, number, &state.request, round.gpus, round.hours, respond_by);
        out.ledger(
            Some(id),
            EventKind::QuotesRequested {
                round: number,
                providers: providers.clone(),
                respond_by,
                wanted: Some(ask.wanted.clone()),
            },
        );
        out.effects.push(Effect::RequestQuotes { providers, ask });
        out.effects.push(Effect::SetTimer {
            at: respond_by,
            timer: Timer::QuoteDeadline { request: id.clone(), round: number },
        });
        Step::Await(round, phase)
    }

    /// One provider's quotes; the round is decided when the last one asked has answered.
    pub(super) fn quotes(
        &mut self,
        out: &mut Out,
        state: &mut RequestState,
        running: Running,
        round_number: u32,
        provider: ProviderName,
        mut offers: Vec<Offer>,
    ) -> Step {
        let Running { mut round, phase } = running;
        let id = &state.request.id;
        let Phase::Quotes { respond_by, asked, mut answered } = phase else {
            out.ledger(Some(id), EventKind::LateAnswerIgnored { round: round_number, from: provider });
            return Step::Await(round, phase);
        };
        if round.number != round_number
            || out.now > respond_by
            || !asked.contains(&provider)
            || answered.contains(&provider)
        {
            out.ledger(Some(id), EventKind::LateAnswerIgnored { round: round_number, from: provider });
            return Step::Await(round, Phase::Quotes { respond_by, asked, answered });
        }
        // A provider speaks only for itself, of things that exist, and within bounds.
        let quoted = offers.len();
        offers.truncate(MAX_QUOTES_PER_ANSWER);
        offers.retain(|o| self.names.check_quoted(&provider, o).is_ok());
        out.ledger(
            Some(id),
            EventKind::QuoteReceived {
                round: round_number,
                provider: provider.clone(),
                offers: offers.len(),
                rejected: quoted - offers.len(),
            },
        );
        answered.insert(provider);
        round.quotes.extend(offers);
        if answered == asked {
            Step::Decide(round)
        } else {
            Step::Await(round, Phase::Quotes { respond_by, asked, answered })
        }
    }

    /// A provider's quote call failed for good: it quoted nothing, and the round records why.
    pub(super) fn quote_failed(
        &mut self,
        out: &mut Out,
        state: &mut RequestState,
        running: Running,
        round_number: u32,
        provider: ProviderName,
        error: String,
    ) -> Step {
        let Running { mut round, phase } = running;
        let waiting = round.number == round_number
            && matches!(&phase, Phase::Quotes { asked, answered, .. }
                if asked.contains(&provider) && !answered.contains(&provider));
        if waiting {
            let error: String = error.chars().take(MAX_FAILURE_TEXT).collect();
            out.ledger(
                Some(&state.request.id),
                EventKind::QuoteFailed {
                    round: round_number,
                    provider: provider.clone(),
                    error: error.clone(),
                },
            );
            round.silent.insert(provider.clone(), format!("its call failed: {error}"));
        }
        self.quotes(out, state, Running { round, phase }, round_number, provider, Vec::new())
    }

    /// The request's parts awarded before and not yet started, which the round's award
    /// starts with (none when its parts run apart).
    fn joining(&self, state: &RequestState) -> Vec<Joining> {
        if state.request.apart {
            return Vec::new();
        }
        let part = |a: &Allocation| {
            let ready_at = match a.state {
                AllocationState::Reserved => a.promised,
                AllocationState::Held { delivered_at, .. } => delivered_at,
                _ => return None,
            };
            let held_spend_per_hour = if a.plan.bills_from_delivery { a.plan.spend_per_hour() } else { 0.0 };
            Some(Joining { ready_at, held_spend_per_hour })
        };
        state.allocations.iter().filter_map(|id| part(&self.allocations[id])).collect()
    }

    /// Places the round's GPUs over the quotes in hand, then awards, goes back
    /// to the holder (match mode, or the no-better-terms rule), or gives up.
    pub(super) fn decide(&mut self, out: &mut Out, state: &mut RequestState, mut round: Box<Round>) -> Step {
        let round_request = round_request(state, &round);
        let id = state.request.id.clone();
        let id = id.as_str();
        // The fleet, and the providers this request already uses, moved since screening if the
        // holder took part of this round.
        let fleet = self.fleet(round_request.workload);
        let in_use = self.providers_in_use(state);
        let node_gpus = round_request
            .accelerators
            .iter()
            .filter_map(|a| self.largest_node.get(a))
            .copied()
            .max()
            .unwrap_or(round_request.block.get());
        if !round.screened.rules.caps.is_empty() {
            round.screened.rules.fleet = fleet;
        }
        round.screened.rules.min_providers = remaining_min_providers(&round.screened.min_providers, &in_use);
        // Out of re-offers: the no-better-terms rule becomes a filter.
        let offer_first = round.screened.refusal.as_ref().is_some_and(|r| r.mode == RefusalMode::OfferFirst);
        if offer_first && round.solicitations > MAX_RESOLICITATIONS {
            round.screened.rules.declined_terms = round.declined_price.and_then(|p| Price::new(p).ok());
        }
        let mut quotes = round.quotes.clone();
        quotes.sort_by(|a, b| a.id.cmp(&b.id));
        let joining = self.joining(state);
        // At most two placements: the second when the no-better-terms rule cannot go back to a
        // holder the caps leave no room, and holds the market to the declined terms instead.
        for _ in 0..2 {
            let placement = placement::place(
                Demand { request: &round_request, gpus: round.gpus, now: out.now, joining: &joining },
                &quotes,
                &round.screened.rules,
                self.config.solver,
            );
            let number = round.number;
            out.ledger(
                Some(id),
                EventKind::Placed {
                    round: number,
                    solver: placement.solver.clone(),
                    list_cost: placement.list_cost,
                    effective_cost: placement.effective_cost,
                    notes: placement.notes.clone(),
                    verdicts: placement.verdicts.clone(),
                },
            );
            if let Some(reason) = placement.infeasible {
                return Step::Unfilled(round, reason);
            }
            let max_price =
                placement.allocations.iter().map(PlannedAllocation::price_per_gpu_hour).fold(0.0, f64::max);
            if let Some(refusal) = round.screened.refusal.clone() {
                let holder_excluded = round.screened.rules.excluded.contains_key(&refusal.holder);
                match refusal.mode {
                    // Match: the holder has not yet seen these terms.
                    RefusalMode::Match if !holder_excluded => {
                        let gpus = first_offer_room(
                            &round.screened.rules,
                            &refusal.holder,
                            &round_request,
                            node_gpus,
                        );
                        let basis = format!("the market's winning terms, ${max_price:.4}/GPU-h, to match");
                        let offered = Offered { gpus, price: Price::new(max_price).expect("valid"), basis };
                        let then = AfterHolder::Match(placement.allocations);
                        return self.solicit(out, state, round, &refusal, offered, then);
                    }
                    // Offer-first: the no-better-terms rule.
                    RefusalMode::OfferFirst => {
                        if let Some(declined) = round.declined_price
                            && max_price > declined + 1e-9
                        {
                            out.ledger(
                                Some(id),
                                EventKind::NoBetterTerms {
                                    round: number,
                                    holder: refusal.holder.clone(),
                                    declined_price: declined,
                                    market_price: max_price,
                                },
                            );
                            // The contract may keep the market's terms from the holder: then
                            // the market is held to the price the holder declined.
                            let room = match refusal.no_better_terms {
                                NoBetterTerms::ShowTerms => holder_room(
                                    &round.screened.rules,
                                    &refusal.holder,
                                    &round_request,
                                    node_gpus,
                                ),
                                NoBetterTerms::HoldMarket => 0,
                            };
                            if room > 0 {
                                round.screened.rules.excluded.remove(&refusal.holder);
                                let basis = format!(
                                    "the market's terms, ${max_price:.4}/GPU-h, above the ${declined:.4} declined \
                                     (no-better-terms)"
                                );
                                let price = Price::new(max_price).expect("valid");
                                return self.solicit(
                                    out,
                                    state,
                                    round,
                                    &refusal,
                                    Offered { gpus: room, price, basis },
                                    AfterHolder::Decide,
                                );
                            }
                            // The caps leave the holder no room for more, or the contract keeps the
                            // market's terms from it: the market may not have better terms than
                            // the holder declined, so it is held to them.
                            round.screened.rules.declined_terms = Price::new(declined).ok();
                            let why = match refusal.no_better_terms {
                                NoBetterTerms::HoldMarket => format!(
                                    "{} ({}) is not shown the market's terms (no_better_terms = hold-market)",
                                    refusal.holder, refusal.reference
                                ),
                                NoBetterTerms::ShowTerms => {
                                    format!("{} has no room for more within the buyer's caps", refusal.holder)
                                }
                            };
                            out.ledger(
                                Some(id),
                                EventKind::FirstRefusalSkipped {
                                    round: number,
                                    holder: refusal.holder.clone(),
                                    evidence: vec![format!(
                                        "{why}; the market is held to the ${declined:.4}/GPU-h it declined (no-better-terms)"
                                    )],
                                },
                            );
                            continue;
                        }
                    }
                    // Match, but the holder cannot be shown the terms: record why before the market award.
                    RefusalMode::Match if round.solicitations == 0 => {
                        let why = match round.screened.rules.excluded.get(&refusal.holder) {
                            Some(why) => format!("{}: {why}", refusal.holder),
                            None => format!("{} cannot be shown the terms", refusal.holder),
                        };
                        out.ledger(
                            Some(id),
                            EventKind::FirstRefusalSkipped {
                                round: number,
                                holder: refusal.holder.clone(),
                                evidence: vec![why],
                            },
                        );
                    }
                    RefusalMode::Match => {}
                }
            }
            self.award(out, state, &round, placement.allocations, "market");
            return Step::Finish;
        }
        // Not reached: the second placement holds the market to the declined terms, so it
        // cannot break the no-better-terms rule again. Unfilled rather than a panic.
        Step::Unfilled(round, "no award within the no-better-terms rule".to_owned())
    }
}
