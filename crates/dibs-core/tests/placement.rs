//! Placement: filter, optimize, explain. Scenarios go through `check`, which
//! renders a placement as readable text; properties run through proptest.

use std::collections::BTreeMap;

use dibs_core::contract::ShareBasis;
use dibs_core::placement::{Cap, Demand, Outcome, Placement, Rules, SolverConfig, SolverPath, place};
use dibs_core::request::{Request, RequestSpec};
use dibs_core::types::{Accelerator, Offer, OfferKind, Price, ProviderName, Region, Timestamp};
use proptest::prelude::*;

fn at() -> Timestamp {
    Timestamp::parse("2026-01-01").unwrap()
}

fn offer(provider: &str, region: &str, accelerator: &str, price: f64, gpus: u32, lead: u32) -> Offer {
    Offer {
        id: format!("{provider}/{region}/{accelerator}/on-demand"),
        provider: ProviderName::new(provider).unwrap(),
        region: Region::new(region).unwrap(),
        accelerator: Accelerator::new(accelerator).unwrap(),
        gpus_available: gpus,
        gpus_per_node: 8,
        price: Price::new(price).unwrap(),
        lead_time_hours: lead,
        kind: OfferKind::OnDemand,
        valid_until: None,
        instance_type: "x".into(),
    }
}

fn request(gpus: u32, block: u32) -> Request {
    RequestSpec {
        id: "r1".into(),
        accelerators: vec!["H100".into()],
        gpus,
        min_block: Some(block),
        duration_hours: 100,
        earliest_start: at(),
        deliver_by: None,
        regions: vec![],
        workload: "training".into(),
        max_price: None,
        allow_spot: false,
    }
    .validate()
    .unwrap()
}

fn gpu_cap(share: f64) -> Cap {
    Cap { max_share: share, basis: ShareBasis::Gpus, source: "test-cap".into() }
}

fn run(request: &Request, offers: &[Offer], rules: &Rules) -> Placement {
    place(Demand { request, gpus: request.gpus.get(), now: at() }, offers, rules, SolverConfig::default())
}

/// Renders the award and every verdict as text, one line each.
fn render(placement: &Placement) -> String {
    let mut lines = Vec::new();
    match &placement.infeasible {
        Some(why) => lines.push(format!("infeasible: {why}")),
        None => {
            let award: Vec<String> = placement
                .allocations
                .iter()
                .map(|a| format!("{}:{}@{}", a.provider, a.gpus, a.price.get()))
                .collect();
            lines.push(format!("award: {}", award.join(" ")));
        }
    }
    for verdict in &placement.verdicts {
        let outcome = match &verdict.outcome {
            Outcome::Awarded { gpus } => format!("awarded {gpus}"),
            Outcome::Rejected(reason) => reason.to_string(),
        };
        lines.push(format!("{}: {outcome}", verdict.offer_id));
    }
    lines.join("\n")
}

fn check(request: &Request, offers: &[Offer], rules: &Rules, expected: &str) -> Placement {
    let placement = run(request, offers, rules);
    let actual = render(&placement);
    assert_eq!(actual.trim(), expected.trim(), "\n--- actual ---\n{actual}\n");
    placement
}

#[test]
fn single_cheapest_offer_takes_the_whole_request_without_a_solver() {
    let offers = [
        offer("aws", "us-east-1", "H100", 6.88, 1024, 24),
        offer("lambda", "us-east-1", "H100", 2.99, 1024, 4),
    ];
    let placement = check(
        &request(512, 8),
        &offers,
        &Rules::default(),
        "award: lambda:512@2.99
aws/us-east-1/H100/on-demand: effective price $6.8800/GPU-h above the award's marginal $2.9900
lambda/us-east-1/H100/on-demand: awarded 512",
    );
    assert_eq!(placement.solver, SolverPath::SingleOffer);
}

#[test]
fn capacity_shortfall_splits_the_award_cheapest_first() {
    let offers = [
        offer("aws", "us-east-1", "H100", 6.88, 1024, 24),
        offer("gcp", "us-central1", "H100", 11.06, 1024, 24),
        offer("lambda", "us-east-1", "H100", 2.99, 256, 4),
    ];
    let placement = check(
        &request(512, 8),
        &offers,
        &Rules::default(),
        "award: aws:256@6.88 lambda:256@2.99
aws/us-east-1/H100/on-demand: awarded 256
gcp/us-central1/H100/on-demand: effective price $11.0600/GPU-h above the award's marginal $6.8800
lambda/us-east-1/H100/on-demand: awarded 256",
    );
    assert!(matches!(placement.solver, SolverPath::Milp { .. }), "{:?}", placement.solver);
    assert!((placement.list_cost - (256.0 * 6.88 + 256.0 * 2.99) * 100.0).abs() < 1e-6);
}

#[test]
fn a_forty_percent_cap_forces_three_providers() {
    let offers = [
        offer("aws", "us-east-1", "H100", 6.88, 1024, 24),
        offer("lambda", "us-east-1", "H100", 2.99, 1024, 4),
        offer("nebius", "eu-north1", "H100", 2.95, 1024, 4),
        offer("gcp", "us-central1", "H100", 11.06, 1024, 24),
    ];
    let rules = Rules { caps: vec![gpu_cap(0.4)], ..Rules::default() };
    check(
        &request(512, 8),
        &offers,
        &rules,
        "award: aws:112@6.88 lambda:200@2.99 nebius:200@2.95
aws/us-east-1/H100/on-demand: awarded 112
lambda/us-east-1/H100/on-demand: awarded 200
nebius/eu-north1/H100/on-demand: awarded 200
gcp/us-central1/H100/on-demand: effective price $11.0600/GPU-h above the award's marginal $6.8800",
    );
}

#[test]
fn minimum_providers_splits_even_when_one_offer_could_do_it() {
    let offers = [
        offer("aws", "us-east-1", "H100", 6.88, 1024, 24),
        offer("lambda", "us-east-1", "H100", 2.99, 1024, 4),
        offer("gcp", "us-central1", "H100", 11.06, 1024, 24),
    ];
    let rules = Rules { min_providers: Some((2, "policy".into())), ..Rules::default() };
    let placement = run(&request(64, 8), &offers, &rules);
    assert_eq!(render(&placement).lines().next().unwrap(), "award: aws:8@6.88 lambda:56@2.99");
    let SolverPath::Milp { solves, .. } = placement.solver else { panic!("expected the MILP path") };
    assert!(solves > 1, "the minimum-provider rule enumerates subsets after the first solve");
}

#[test]
fn a_commitment_shortfall_makes_the_committed_provider_cheaper_and_says_so() {
    let offers = [
        offer("azure", "eastus", "H100", 6.98, 1024, 48),
        offer("lambda", "us-east-1", "H100", 2.99, 1024, 4),
    ];
    let credits = BTreeMap::from([(ProviderName::new("azure").unwrap(), 1e9)]);
    let rules = Rules { credits, ..Rules::default() };
    let placement = run(&request(256, 8), &offers, &rules);
    assert_eq!(render(&placement).lines().next().unwrap(), "award: azure:256@6.98");
    assert!(placement.effective_cost.abs() < 1e-6, "all spend falls within the shortfall");
    assert!(
        placement.notes.iter().any(|n| n.contains("commitment") && n.contains("azure")),
        "{:?}",
        placement.notes
    );
}

#[test]
fn a_small_commitment_credit_is_used_up_first_then_the_market() {
    let offers = [
        offer("azure", "eastus", "H100", 6.98, 1024, 48),
        offer("lambda", "us-east-1", "H100", 2.99, 1024, 4),
    ];
    // Enough credit for exactly 2 blocks of 8 GPUs for 100 hours at 6.98.
    let credits = BTreeMap::from([(ProviderName::new("azure").unwrap(), 2.0 * 8.0 * 100.0 * 6.98)]);
    let placement = run(&request(256, 8), &offers, &Rules { credits, ..Rules::default() });
    assert_eq!(render(&placement).lines().next().unwrap(), "award: azure:16@6.98 lambda:240@2.99");
}

#[test]
fn a_spend_cap_limits_the_share_of_spend() {
    let offers = [
        offer("aws", "us-east-1", "H100", 6.0, 1024, 24),
        offer("lambda", "us-east-1", "H100", 2.0, 1024, 4),
    ];
    let rules = Rules {
        caps: vec![Cap { max_share: 0.5, basis: ShareBasis::Spend, source: "spend-cap".into() }],
        ..Rules::default()
    };
    let placement = run(&request(64, 8), &offers, &rules);
    // Spend shares: lambda 2x, aws 6y with x + y = 64 and each <= half: y = 16, x = 48.
    assert_eq!(render(&placement).lines().next().unwrap(), "award: aws:16@6 lambda:48@2");
}

#[test]
fn every_filter_names_its_reason() {
    let mut expired = offer("oci", "us-ashburn-1", "H100", 5.0, 512, 24);
    expired.valid_until = Some(Timestamp::parse("2025-12-01").unwrap());
    let offers = [
        offer("aws", "us-east-1", "A100-80GB", 3.0, 512, 24),
        offer("lambda", "us-west-1", "H100", 2.99, 512, 4),
        offer("gcp", "us-central1", "H100", 20.0, 512, 24),
        offer("nebius", "us-east-1", "H100", 2.95, 4, 4),
        offer("azure", "us-east-1", "H100", 6.98, 512, 400),
        expired,
        offer("vast", "us-east-1", "H100", 1.5, 512, 1),
        offer("verda", "us-east-1", "H100", 4.0, 512, 4),
    ];
    let mut request = request(64, 8);
    request.regions = vec![
        Region::new("us-east-1").unwrap(),
        Region::new("us-central1").unwrap(),
        Region::new("us-ashburn-1").unwrap(),
    ];
    request.deliver_by = Some(at().plus_hours(72.0));
    let rules = Rules {
        price_ceiling: Some(Price::new(12.0).unwrap()),
        excluded: BTreeMap::from([(
            ProviderName::new("vast").unwrap(),
            "provider down (open incident)".into(),
        )]),
        ..Rules::default()
    };
    check(
        &request,
        &offers,
        &rules,
        "award: verda:64@4
aws/us-east-1/A100-80GB/on-demand: accelerator A100-80GB was not requested
lambda/us-west-1/H100/on-demand: region us-west-1 not in the request's regions
gcp/us-central1/H100/on-demand: price $20.0000/GPU-h above the ceiling $12.0000
nebius/us-east-1/H100/on-demand: 4 GPUs available, less than one 8-GPU block
azure/us-east-1/H100/on-demand: ready at 2026-01-17T16:00:00Z, after the deliver-by 2026-01-04T00:00:00Z
oci/us-ashburn-1/H100/on-demand: offer expired at 2025-12-01T00:00:00Z
vast/us-east-1/H100/on-demand: provider excluded: provider down (open incident)
verda/us-east-1/H100/on-demand: awarded 64",
    );
}

#[test]
fn exclusivity_leaves_only_the_holder() {
    let offers = [
        offer("azure", "eastus", "H100", 6.98, 1024, 48),
        offer("lambda", "us-east-1", "H100", 2.99, 1024, 4),
    ];
    let rules = Rules {
        exclusive_to: Some((ProviderName::new("azure").unwrap(), "azure-primary/v1/api-exclusive".into())),
        ..Rules::default()
    };
    check(
        &request(64, 8),
        &offers,
        &rules,
        "award: azure:64@6.98
azure/eastus/H100/on-demand: awarded 64
lambda/us-east-1/H100/on-demand: workload is exclusive to azure (azure-primary/v1/api-exclusive)",
    );
}

#[test]
fn not_enough_capacity_is_infeasible_with_the_numbers() {
    let offers =
        [offer("aws", "us-east-1", "H100", 6.88, 128, 24), offer("lambda", "us-east-1", "H100", 2.99, 64, 4)];
    let placement = run(&request(512, 8), &offers, &Rules::default());
    assert_eq!(
        placement.infeasible.as_deref(),
        Some("not enough capacity: 192 GPUs can be placed, 512 needed")
    );
    assert!(placement.allocations.is_empty());
}

#[test]
fn ties_break_by_offer_id_every_time() {
    let offers = [offer("oci", "r", "H100", 5.0, 64, 10), offer("aws", "r", "H100", 5.0, 64, 10)];
    for _ in 0..3 {
        let placement = run(&request(64, 8), &offers, &Rules::default());
        assert_eq!(render(&placement).lines().next().unwrap(), "award: aws:64@5");
    }
}

/// The greedy reference: cheapest first within per-provider GPU caps. Optimal
/// when the only constraints are capacities and GPU caps (a laminar family).
fn greedy_cost(request: &Request, offers: &[Offer], cap: Option<f64>) -> Option<f64> {
    let block = request.min_block.get();
    let mut sorted: Vec<&Offer> = offers.iter().filter(|o| o.gpus_available >= block).collect();
    sorted.sort_by(|a, b| a.price.get().total_cmp(&b.price.get()));
    let limit = cap.map(|share| {
        ((share * f64::from(request.gpus.get()) + 1e-9) / f64::from(block)).floor() as u32 * block
    });
    let mut used: BTreeMap<&ProviderName, u32> = BTreeMap::new();
    let (mut left, mut cost) = (request.gpus.get(), 0.0);
    for offer in sorted {
        let room =
            limit.map_or(u32::MAX, |l| l.saturating_sub(used.get(&offer.provider).copied().unwrap_or(0)));
        let take = (offer.gpus_available / block * block).min(room).min(left);
        *used.entry(&offer.provider).or_default() += take;
        left -= take;
        cost += f64::from(take) * offer.price.get() * f64::from(request.duration_hours);
    }
    (left == 0).then_some(cost)
}

fn arbitrary_offers() -> impl Strategy<Value = Vec<Offer>> {
    let providers = ["azure", "aws", "gcp", "oci", "lambda", "nebius"];
    prop::collection::vec((0..providers.len(), 0u32..4, 1u32..2000, 0u32..400, 0u32..100), 1..30).prop_map(
        move |rows| {
            rows.into_iter()
                .enumerate()
                .map(|(i, (p, region, cents, gpus, lead))| {
                    let mut o = offer(
                        providers[p],
                        &format!("region-{region}"),
                        "H100",
                        f64::from(cents) / 100.0,
                        gpus,
                        lead,
                    );
                    o.id = format!("{}/{i}", o.id);
                    o
                })
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The award covers exactly the request in whole blocks, never takes more
    /// than an offer has, respects the cap, and costs what the greedy
    /// reference (optimal here) costs.
    #[test]
    fn awards_are_exact_within_caps_and_optimal(
        offers in arbitrary_offers(),
        blocks in 1u32..40,
        block in prop::sample::select(vec![1u32, 4, 8]),
        cap in prop::option::of(prop::sample::select(vec![0.25f64, 0.4, 0.5, 0.75])),
    ) {
        let request = request(blocks * block, block);
        let rules = Rules { caps: cap.map(gpu_cap).into_iter().collect(), ..Rules::default() };
        let placement = run(&request, &offers, &rules);
        let reference = greedy_cost(&request, &offers, cap);
        match &placement.infeasible {
            Some(_) => prop_assert!(reference.is_none(), "placement found none, greedy found {reference:?}"),
            None => {
                prop_assert_eq!(placement.awarded_gpus(), request.gpus.get());
                let mut per_provider: BTreeMap<&ProviderName, u32> = BTreeMap::new();
                for a in &placement.allocations {
                    prop_assert_eq!(a.gpus % block, 0);
                    let source = offers.iter().find(|o| o.id == a.offer_id).unwrap();
                    prop_assert!(a.gpus <= source.gpus_available);
                    *per_provider.entry(&a.provider).or_default() += a.gpus;
                }
                if let Some(share) = cap {
                    for gpus in per_provider.values() {
                        prop_assert!(f64::from(*gpus) <= share * f64::from(request.gpus.get()) + 1e-6);
                    }
                }
                let reference = reference.expect("greedy finds an award when the solver does");
                prop_assert!((placement.list_cost - reference).abs() <= 1e-6 * reference.max(1.0),
                    "solver {} vs greedy {}", placement.list_cost, reference);
            }
        }
    }

    /// With a minimum-provider rule, an award uses at least that many providers.
    #[test]
    fn minimum_providers_hold(offers in arbitrary_offers(), blocks in 2u32..40) {
        let request = request(blocks * 8, 8);
        let rules = Rules { min_providers: Some((2, "p".into())), ..Rules::default() };
        let placement = run(&request, &offers, &rules);
        if placement.infeasible.is_none() {
            let providers: std::collections::BTreeSet<_> = placement.allocations.iter().map(|a| &a.provider).collect();
            prop_assert!(providers.len() >= 2);
            prop_assert_eq!(placement.awarded_gpus(), request.gpus.get());
        }
    }
}
