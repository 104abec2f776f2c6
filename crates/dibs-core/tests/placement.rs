//! Placement: filter, optimize, explain, over whole nodes. Scenarios go through `check`,
//! which renders a placement as readable text; properties run through proptest against a
//! brute-force oracle on small instances (and `tests/oracle.rs` checks larger ones against
//! HiGHS).

use std::collections::{BTreeMap, BTreeSet};

use dibs_core::contract::ShareBasis;
use dibs_core::placement::{
    Cap, Demand, Optimality, Outcome, Placement, Rejection, Rules, SolverConfig, SolverPath, place,
};
use dibs_core::request::{Objective, Preference, Request, SpotPolicy};
use dibs_core::types::{
    Accelerator, GpuCount, Location, NodePrice, Offer, OfferKind, Price, ProviderName, Region, Timestamp,
    WorkloadClass,
};
use proptest::prelude::*;

fn at() -> Timestamp {
    Timestamp::parse("2026-01-01").unwrap()
}

/// `nodes` nodes of `gpus_per_node` GPUs at `price` per GPU-hour.
fn node_offer(
    provider: &str,
    region: &str,
    accelerator: &str,
    gpus_per_node: u32,
    price: f64,
    nodes: u32,
    lead: u32,
) -> Offer {
    Offer {
        id: format!("{provider}/{region}/{accelerator}x{gpus_per_node}/on-demand"),
        provider: ProviderName::new(provider).unwrap(),
        region: Region::new(region).unwrap(),
        zone: None,
        instance_type: format!("{accelerator}x{gpus_per_node}"),
        accelerator: Accelerator::new(accelerator).unwrap(),
        gpus_per_node: GpuCount::new(gpus_per_node).unwrap(),
        nodes_available: nodes,
        node_price: NodePrice::new(price * f64::from(gpus_per_node)).unwrap(),
        lead_time_hours: lead,
        kind: OfferKind::OnDemand,
        valid_until: None,
        bills_from_delivery: true,
        price_source: None,
    }
}

/// `gpus` GPUs in 8-GPU nodes at `price` per GPU-hour.
fn offer(provider: &str, region: &str, accelerator: &str, price: f64, gpus: u32, lead: u32) -> Offer {
    let mut offer = node_offer(provider, region, accelerator, 8, price, gpus / 8, lead);
    offer.id = format!("{provider}/{region}/{accelerator}/on-demand");
    offer
}

fn request(gpus: u32, block: u32) -> Request {
    Request {
        id: "r1".into(),
        accelerators: vec![Accelerator::new("H100").unwrap()],
        providers: vec![],
        exclude_providers: vec![],
        regions: vec![],
        gpus: GpuCount::new(gpus).unwrap(),
        block: GpuCount::new(block).unwrap(),
        duration_hours: 100,
        earliest_start: at(),
        deliver_by: None,
        workload: WorkloadClass::Training,
        max_price: None,
        spot: SpotPolicy::Never,
        same_region: false,
        objective: Objective::Cost,
        preference: Preference::Any,
        apart: false,
    }
}

fn provider(name: &str) -> ProviderName {
    ProviderName::new(name).unwrap()
}

fn gpu_cap(share: f64) -> Cap {
    Cap { max_share: share, basis: ShareBasis::Gpus, source: "test-cap".into() }
}

fn run(request: &Request, offers: &[Offer], rules: &Rules) -> Placement {
    place(
        Demand { request, gpus: request.gpus.get(), now: at(), joining: &[] },
        offers,
        rules,
        SolverConfig::default(),
    )
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
                .map(|a| {
                    let over = if a.gpus_overbought() > 0 {
                        format!("+{}", a.gpus_overbought())
                    } else {
                        String::new()
                    };
                    format!(
                        "{}:{}x{}={}{over}@{}",
                        a.provider,
                        a.nodes,
                        a.gpus_per_node,
                        a.gpus,
                        a.price_per_gpu_hour()
                    )
                })
                .collect();
            lines.push(format!("award: {}", award.join(" ")));
        }
    }
    for verdict in &placement.verdicts {
        let outcome = match &verdict.outcome {
            Outcome::Awarded { gpus, nodes } => format!("awarded {gpus} in {nodes} nodes"),
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

fn award_line(placement: &Placement) -> String {
    render(placement).lines().next().unwrap().to_owned()
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
        "award: lambda:64x8=512@2.99
aws/us-east-1/H100/on-demand: effective price $6.8800/GPU-h above the award's marginal $2.9900
lambda/us-east-1/H100/on-demand: awarded 512 in 64 nodes",
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
        "award: aws:32x8=256@6.88 lambda:32x8=256@2.99
aws/us-east-1/H100/on-demand: awarded 256 in 32 nodes
gcp/us-central1/H100/on-demand: effective price $11.0600/GPU-h above the award's marginal $6.8800
lambda/us-east-1/H100/on-demand: awarded 256 in 32 nodes",
    );
    assert!(
        matches!(placement.solver, SolverPath::Milp { optimality: Optimality::Proven, .. }),
        "{:?}",
        placement.solver
    );
    // The parts start together: lambda's nodes (ready in 4 h) are held, billed, until aws's
    // (ready in 24 h), 20 hours.
    assert_eq!(placement.allocations.iter().map(|a| a.held_hours).collect::<Vec<_>>(), [0, 20]);
    assert!((placement.held_cost - 256.0 * 2.99 * 20.0).abs() < 1e-6, "{}", placement.held_cost);
    assert!(
        (placement.list_cost - ((256.0 * 6.88 + 256.0 * 2.99) * 100.0 + 256.0 * 2.99 * 20.0)).abs() < 1e-6
    );
}

/// Issue 10: an 8-GPU block needs a node that holds 8 GPUs. Eight 1-GPU VMs are cheaper per GPU
/// here, and not eligible.
#[test]
fn an_eight_gpu_block_is_never_eight_one_gpu_vms() {
    let offers = [
        node_offer("hyperbolic", "default", "H100", 1, 1.29, 64, 2),
        node_offer("nebius", "eu-north1", "H100", 8, 2.95, 16, 12),
    ];
    check(
        &request(8, 8),
        &offers,
        &Rules::default(),
        "award: nebius:1x8=8@2.95
hyperbolic/default/H100x1/on-demand: a node of 1 GPU(s) cannot hold a block of 8 GPUs (nodes of 8 GPUs of this accelerator exist)
nebius/eu-north1/H100x8/on-demand: awarded 8 in 1 nodes",
    );
    // With a block of one GPU, the 1-GPU VMs are the cheaper purchase.
    assert_eq!(award_line(&run(&request(8, 1), &offers, &Rules::default())), "award: hyperbolic:8x1=8@1.29");
}

/// A block larger than every node is a gang of whole nodes of one offer (one region).
#[test]
fn a_gang_larger_than_a_node_takes_whole_nodes_of_one_offer() {
    let offers = [
        node_offer("lambda", "us-east-1", "H100", 8, 2.99, 3, 4),
        node_offer("nebius", "eu-north1", "H100", 8, 3.50, 6, 12),
        node_offer("aws", "us-east-1", "H100", 8, 6.88, 4, 24),
    ];
    check(
        &request(64, 32),
        &offers,
        &Rules::default(),
        "award: aws:4x8=32@6.88 nebius:4x8=32@3.5
lambda/us-east-1/H100x8/on-demand: 3 node(s) available; a 32-GPU gang needs 4 nodes of one offer
nebius/eu-north1/H100x8/on-demand: awarded 32 in 4 nodes
aws/us-east-1/H100x8/on-demand: awarded 32 in 4 nodes",
    );
}

/// When the GPUs asked do not fill the nodes, the award over-buys, counts the cost, and says so.
#[test]
fn an_award_that_overbuys_says_how_many_gpus_and_what_they_cost() {
    let offers = [node_offer("aws", "us-east-1", "H100", 8, 5.0, 4, 24)];
    let placement = check(
        &request(12, 4),
        &offers,
        &Rules::default(),
        "award: aws:2x8=12+4@5
aws/us-east-1/H100x8/on-demand: awarded 12 in 2 nodes",
    );
    assert_eq!(placement.overbought_gpus, 4);
    assert!((placement.overbought_cost - 4.0 * 5.0 * 100.0).abs() < 1e-6);
    assert!((placement.list_cost - 16.0 * 5.0 * 100.0).abs() < 1e-6);
    assert!(placement.notes.iter().any(|n| n.contains("over-buys 4 GPU(s)")), "{:?}", placement.notes);
    // A 4-GPU node at a higher price per GPU fills the gap more cheaply than a second 8-GPU node.
    let offers = [
        node_offer("aws", "us-east-1", "H100", 8, 5.0, 4, 24),
        node_offer("gcp", "us-central1", "H100", 4, 6.0, 4, 24),
    ];
    let placement = run(&request(12, 4), &offers, &Rules::default());
    assert_eq!(award_line(&placement), "award: aws:1x8=8@5 gcp:1x4=4@6");
    assert_eq!(placement.overbought_gpus, 0);
}

/// The 40% cap binds to whole nodes: a provider may exceed its share by less than one node.
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
        "award: aws:12x8=96@6.88 lambda:26x8=208@2.99 nebius:26x8=208@2.95
aws/us-east-1/H100/on-demand: awarded 96 in 12 nodes
lambda/us-east-1/H100/on-demand: awarded 208 in 26 nodes
nebius/eu-north1/H100/on-demand: awarded 208 in 26 nodes
gcp/us-central1/H100/on-demand: effective price $11.0600/GPU-h above the award's marginal $6.8800",
    );
}

/// Issue 10, item 8: 40% of 8 GPUs is less than one 8-GPU node, yet the request is placeable.
#[test]
fn a_cap_never_makes_a_request_of_one_node_impossible() {
    let offers = [
        offer("lambda", "us-east-1", "H100", 2.99, 1024, 4),
        offer("aws", "us-east-1", "H100", 6.88, 1024, 24),
    ];
    let rules = Rules { caps: vec![gpu_cap(0.4)], ..Rules::default() };
    assert_eq!(award_line(&run(&request(8, 8), &offers, &rules)), "award: lambda:1x8=8@2.99");
    // Two nodes: 40% of 16 is 6.4, plus one node is 14.4: one node each.
    assert_eq!(award_line(&run(&request(16, 8), &offers, &rules)), "award: aws:1x8=8@6.88 lambda:1x8=8@2.99");
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
    assert_eq!(award_line(&placement), "award: aws:1x8=8@6.88 lambda:7x8=56@2.99");
    assert!(matches!(placement.solver, SolverPath::Milp { optimality: Optimality::Proven, .. }));
}

/// The old enumeration tried subsets of the 8 cheapest providers only; a minimum above 8 is met.
#[test]
fn a_minimum_of_more_than_eight_providers_is_met() {
    let names = ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "a10", "a11"];
    let offers: Vec<Offer> =
        names.iter().enumerate().map(|(i, p)| offer(p, "r", "H100", 2.0 + i as f64, 64, 4)).collect();
    let rules = Rules { min_providers: Some((10, "policy".into())), ..Rules::default() };
    let placement = run(&request(128, 8), &offers, &rules);
    let providers: BTreeSet<_> = placement.allocations.iter().map(|a| a.provider.as_str()).collect();
    assert_eq!(providers.len(), 10, "{}", render(&placement));
    assert!(!providers.contains("a11"), "the dearest provider is left out");
    assert_eq!(placement.solver.optimality(), Optimality::Proven);
}

#[test]
fn a_minimum_of_providers_a_request_cannot_meet_says_what_would() {
    let offers = [
        offer("aws", "us-east-1", "H100", 6.88, 1024, 24),
        offer("lambda", "us-east-1", "H100", 2.99, 1024, 4),
    ];
    let rules = Rules { min_providers: Some((2, "policy:inference".into())), ..Rules::default() };
    let placement = run(&request(8, 8), &offers, &rules);
    assert_eq!(
        placement.infeasible.as_deref(),
        Some(
            "the minimum of 2 providers (policy:inference) needs at least 2 blocks, and 8 GPUs is 1 block(s) of 8: \
             ask for at least 16 GPUs, or a block of at most 4 GPUs"
        )
    );
}

/// The oracle case of issue 10: under a commitment credit the committed provider costs nothing,
/// and the minimum of two providers takes one node from the cheapest other provider, however
/// far down the list price order the committed one stands.
#[test]
fn a_credited_provider_ninth_by_list_price_is_still_found_under_a_minimum_of_providers() {
    let mut offers: Vec<Offer> =
        (0..8).map(|i| offer(&format!("p{i}"), "r", "H100", 1.0 + f64::from(i), 1024, 4)).collect();
    offers.push(offer("azure", "eastus", "H100", 12.29, 2048, 72));
    let credits = BTreeMap::from([(provider("azure"), 250e9)]);
    let rules = Rules { credits, min_providers: Some((2, "policy".into())), ..Rules::default() };
    let mut request = request(512, 8);
    request.duration_hours = 720;
    let placement = run(&request, &offers, &rules);
    assert_eq!(award_line(&placement), "award: azure:63x8=504@12.29 p0:1x8=8@1");
    // p0's node (ready in 4 h) is held, billed, until azure's (72 h): 68 hours more.
    assert!(
        (placement.effective_cost - 8.0 * 1.0 * (720.0 + 68.0)).abs() < 1e-6,
        "{}",
        placement.effective_cost
    );
    assert_eq!(placement.solver.optimality(), Optimality::Proven);
}

#[test]
fn a_commitment_shortfall_makes_the_committed_provider_cheaper_and_says_so() {
    let offers = [
        offer("azure", "eastus", "H100", 6.98, 1024, 48),
        offer("lambda", "us-east-1", "H100", 2.99, 1024, 4),
    ];
    let credits = BTreeMap::from([(provider("azure"), 1e9)]);
    let rules = Rules { credits, ..Rules::default() };
    let placement = run(&request(256, 8), &offers, &rules);
    assert_eq!(award_line(&placement), "award: azure:32x8=256@6.98");
    assert!(placement.effective_cost.abs() < 1e-6, "all spend falls within the shortfall");
    assert!(
        placement.notes.iter().any(|n| n.contains("commitment") && n.contains("azure")),
        "{:?}",
        placement.notes
    );
}

#[test]
fn a_small_commitment_credit_is_used_up_first_then_the_market() {
    // Both ready as soon: no part is held for the other (see the held-hours tests).
    let offers = [
        offer("azure", "eastus", "H100", 6.98, 1024, 4),
        offer("lambda", "us-east-1", "H100", 2.99, 1024, 4),
    ];
    // Enough credit for exactly 2 nodes of 8 GPUs for 100 hours at 6.98.
    let credits = BTreeMap::from([(provider("azure"), 2.0 * 8.0 * 100.0 * 6.98)]);
    let placement = run(&request(256, 8), &offers, &Rules { credits, ..Rules::default() });
    assert_eq!(award_line(&placement), "award: azure:2x8=16@6.98 lambda:30x8=240@2.99");
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
    // Spend shares: lambda 16x, aws 48y per node-hour with x + y = 8 nodes, each at most half
    // the spend plus one node's: y = 2 (96 vs 96) and x = 6 is the cheapest that fits.
    assert_eq!(award_line(&placement), "award: aws:2x8=16@6 lambda:6x8=48@2");
}

#[test]
fn every_filter_names_its_reason() {
    let mut expired = offer("oci", "us-ashburn-1", "H100", 5.0, 512, 24);
    expired.valid_until = Some(Timestamp::parse("2025-12-01").unwrap());
    let mut spot = offer("aws", "us-east-1", "H100", 1.0, 512, 1);
    spot.kind = OfferKind::Spot;
    spot.id = "aws/us-east-1/H100/spot".into();
    let offers = [
        offer("aws", "us-east-1", "A100-80GB", 3.0, 512, 24),
        spot,
        offer("lambda", "us-west-1", "H100", 2.99, 512, 4),
        offer("gcp", "us-central1", "H100", 20.0, 512, 24),
        node_offer("nebius", "us-east-1", "H100", 4, 2.95, 64, 4),
        offer("azure", "us-east-1", "H100", 6.98, 512, 400),
        expired,
        offer("vast", "us-east-1", "H100", 1.5, 512, 1),
        offer("mithril", "us-east-1", "H100", 1.0, 512, 1),
        offer("verda", "us-east-1", "H100", 4.0, 512, 4),
    ];
    let mut request = request(64, 8);
    request.regions = [
        "aws/us-east-1",
        "gcp/*",
        "oci/us-ashburn-1",
        "nebius/*",
        "azure/*",
        "vast/*",
        "mithril/*",
        "verda/*",
    ]
    .iter()
    .map(|l| Location::parse_qualified(l).unwrap())
    .collect();
    request.exclude_providers = vec![provider("mithril")];
    request.deliver_by = Some(at().plus_hours(72.0));
    let rules = Rules {
        price_ceiling: Some(Price::new(12.0).unwrap()),
        excluded: BTreeMap::from([(provider("vast"), "provider down (open incident)".into())]),
        ..Rules::default()
    };
    check(
        &request,
        &offers,
        &rules,
        "award: verda:8x8=64@4
aws/us-east-1/A100-80GB/on-demand: accelerator A100-80GB was not requested
aws/us-east-1/H100/spot: spot capacity, and the request does not allow spot
lambda/us-west-1/H100/on-demand: region lambda/us-west-1 not in the request's regions
gcp/us-central1/H100/on-demand: price $20.0000/GPU-h above the ceiling $12.0000
nebius/us-east-1/H100x4/on-demand: a node of 4 GPU(s) cannot hold a block of 8 GPUs (nodes of 8 GPUs of this accelerator exist)
azure/us-east-1/H100/on-demand: ready at 2026-01-17T16:00:00Z, after the deliver-by 2026-01-04T00:00:00Z
oci/us-ashburn-1/H100/on-demand: offer expired at 2025-12-01T00:00:00Z
vast/us-east-1/H100/on-demand: provider excluded: provider down (open incident)
mithril/us-east-1/H100/on-demand: the request excludes provider mithril
verda/us-east-1/H100/on-demand: awarded 64 in 8 nodes",
    );
}

#[test]
fn providers_pin_the_request_and_spot_only_takes_spot() {
    let mut spot = offer("aws", "us-east-1", "H100", 2.5, 512, 1);
    spot.kind = OfferKind::Spot;
    spot.id = "aws/us-east-1/H100/spot".into();
    let offers = [
        offer("aws", "us-east-1", "H100", 6.88, 512, 24),
        spot,
        offer("lambda", "us-east-1", "H100", 2.99, 512, 4),
    ];
    let mut pinned = request(64, 8);
    pinned.providers = vec![provider("aws")];
    assert_eq!(award_line(&run(&pinned, &offers, &Rules::default())), "award: aws:8x8=64@6.88");
    pinned.spot = SpotPolicy::Allow;
    assert_eq!(award_line(&run(&pinned, &offers, &Rules::default())), "award: aws:8x8=64@2.5");
    let mut spot_only = request(64, 8);
    spot_only.spot = SpotPolicy::Only;
    let placement = run(&spot_only, &offers, &Rules::default());
    assert_eq!(award_line(&placement), "award: aws:8x8=64@2.5");
    assert!(
        render(&placement).contains(
            "lambda/us-east-1/H100/on-demand: not spot capacity, and the request asks for spot only"
        )
    );
}

#[test]
fn same_region_takes_every_node_from_one_offer() {
    let offers = [
        offer("lambda", "us-east-1", "H100", 2.99, 16, 4),
        offer("nebius", "eu-north1", "H100", 2.95, 16, 12),
        offer("aws", "us-east-1", "H100", 6.88, 64, 24),
    ];
    let mut request = request(32, 8);
    assert_eq!(
        award_line(&run(&request, &offers, &Rules::default())),
        "award: lambda:2x8=16@2.99 nebius:2x8=16@2.95"
    );
    request.same_region = true;
    let placement = check(
        &request,
        &offers,
        &Rules::default(),
        "award: aws:4x8=32@6.88
lambda/us-east-1/H100/on-demand: holds 16 of the 32 GPUs alone, and the request takes all its nodes from one offer (same region)
nebius/eu-north1/H100/on-demand: holds 16 of the 32 GPUs alone, and the request takes all its nodes from one offer (same region)
aws/us-east-1/H100/on-demand: awarded 32 in 4 nodes",
    );
    assert_eq!(placement.solver, SolverPath::SingleRegion { candidates: 1 });
    request.gpus = GpuCount::new(128).unwrap();
    let placement = run(&request, &offers, &Rules::default());
    assert!(
        placement.infeasible.as_deref().unwrap().starts_with("same region: no single offer holds 128 GPUs"),
        "{placement:?}"
    );
}

#[test]
fn objective_time_takes_the_earliest_ready_award_then_the_cheapest() {
    let offers = [
        offer("aws", "us-east-1", "H100", 6.88, 64, 24),
        offer("lambda", "us-east-1", "H100", 2.99, 32, 48),
        offer("gcp", "us-central1", "H100", 9.0, 64, 24),
        offer("nebius", "eu-north1", "H100", 12.0, 64, 2),
    ];
    let mut request = request(64, 8);
    request.objective = Objective::Time;
    let placement = run(&request, &offers, &Rules::default());
    assert_eq!(award_line(&placement), "award: nebius:8x8=64@12");
    request.gpus = GpuCount::new(128).unwrap();
    let placement = run(&request, &offers, &Rules::default());
    // All capacity is ready after 24 hours either way (nebius alone is too small); then cost.
    assert_eq!(award_line(&placement), "award: aws:8x8=64@6.88 gcp:8x8=64@9");
    assert!(
        render(&placement).contains("lambda/us-east-1/H100/on-demand: ready at 2026-01-03T00:00:00Z, later than the award's 2026-01-02T00:00:00Z (objective: time)"),
        "{}",
        render(&placement)
    );
}

#[test]
fn preferences_fallback_and_premium() {
    let offers = [
        offer("aws", "us-east-1", "H100", 6.88, 64, 24),
        offer("lambda", "us-east-1", "A100-80GB", 1.79, 64, 4),
        offer("gcp", "us-central1", "A100-80GB", 5.0, 64, 4),
    ];
    let mut request = request(64, 8);
    request.accelerators = vec![Accelerator::new("H100").unwrap(), Accelerator::new("A100-80GB").unwrap()];
    // Any: the cheapest wins.
    assert_eq!(award_line(&run(&request, &offers, &Rules::default())), "award: lambda:8x8=64@1.79");
    // Fallback: the first choice fills the request, so the second is not used.
    request.preference = Preference::Fallback;
    let placement = run(&request, &offers, &Rules::default());
    assert_eq!(award_line(&placement), "award: aws:8x8=64@6.88");
    assert!(render(&placement).contains(
        "lambda/us-east-1/A100-80GB/on-demand: the 2nd choice in the request's order of preference; choices up to the 1st fill the request"
    ));
    // ... unless it cannot: then the first choice as far as it goes, and the cheapest of the rest.
    request.gpus = GpuCount::new(96).unwrap();
    assert_eq!(
        award_line(&run(&request, &offers, &Rules::default())),
        "award: aws:8x8=64@6.88 lambda:4x8=32@1.79"
    );
    // Premium: a later choice only when at least 70% cheaper: 1.79 is 74% below 6.88, 5.0 is not.
    request.gpus = GpuCount::new(64).unwrap();
    request.preference = Preference::Premium { percent: 70.0 };
    assert_eq!(award_line(&run(&request, &offers, &Rules::default())), "award: lambda:8x8=64@1.79");
    request.preference = Preference::Premium { percent: 80.0 };
    assert_eq!(award_line(&run(&request, &offers, &Rules::default())), "award: aws:8x8=64@6.88");
    // Providers in order of preference count the same way.
    let mut by_provider = self::request(64, 8);
    by_provider.providers = vec![provider("aws"), provider("lambda")];
    by_provider.accelerators = request.accelerators.clone();
    by_provider.preference = Preference::Fallback;
    assert_eq!(award_line(&run(&by_provider, &offers, &Rules::default())), "award: aws:8x8=64@6.88");
}

#[test]
fn exclusivity_leaves_only_the_holder() {
    let offers = [
        offer("azure", "eastus", "H100", 6.98, 1024, 48),
        offer("lambda", "us-east-1", "H100", 2.99, 1024, 4),
    ];
    let rules = Rules {
        exclusive_to: Some((provider("azure"), "azure-primary/v1/api-exclusive".into())),
        ..Rules::default()
    };
    check(
        &request(64, 8),
        &offers,
        &rules,
        "award: azure:8x8=64@6.98
azure/eastus/H100/on-demand: awarded 64 in 8 nodes
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
        Some("not enough capacity: 192 GPUs can be placed in whole 8-GPU blocks, 512 needed")
    );
    assert!(placement.allocations.is_empty());
}

#[test]
fn when_every_offer_is_above_the_ceiling_the_reason_quotes_the_cheapest() {
    let offers = [
        offer("aws", "us-east-1", "H100", 6.88, 64, 24),
        offer("lambda", "us-east-1", "H100", 2.95, 64, 4),
        offer("gcp", "us-central1", "H100", 11.06, 64, 24),
    ];
    let rules = Rules { price_ceiling: Some(Price::new(2.5).unwrap()), ..Rules::default() };
    let placement = run(&request(8, 8), &offers, &rules);
    assert_eq!(
        placement.infeasible.as_deref(),
        Some(
            "no offer passed the filters: 3 offers, the nearest to passing: price $2.9500/GPU-h above the ceiling $2.5000"
        )
    );
}

#[test]
fn when_nothing_passes_the_filters_the_reason_names_them() {
    let offers =
        [offer("aws", "us-east-1", "A100", 3.0, 64, 24), offer("lambda", "us-west-1", "A100", 1.0, 64, 24)];
    let placement = run(&request(8, 8), &offers, &Rules::default());
    assert_eq!(
        placement.infeasible.as_deref(),
        Some("no offer passed the filters: 2 x accelerator A100 was not requested")
    );
}

#[test]
fn ties_break_by_offer_id_every_time() {
    let offers = [offer("oci", "r", "H100", 5.0, 64, 10), offer("aws", "r", "H100", 5.0, 64, 10)];
    for _ in 0..3 {
        let placement = run(&request(64, 8), &offers, &Rules::default());
        assert_eq!(award_line(&placement), "award: aws:8x8=64@5");
    }
}

/// With no work allowed beyond the root relaxation, the fallback decides, and never breaks a
/// rule: the spend cap and the minimum of providers hold, or there is no award.
#[test]
fn the_fallback_never_breaks_a_rule() {
    let offers: Vec<Offer> = (0..6)
        .map(|i| node_offer(&format!("p{i}"), "r", "H100", 8 - i % 2 * 4, 2.0 + 0.37 * f64::from(i), 40, 4))
        .collect();
    let rules = Rules {
        caps: vec![Cap { max_share: 0.3, basis: ShareBasis::Spend, source: "spend".into() }],
        min_providers: Some((3, "min".into())),
        ..Rules::default()
    };
    let request = request(100, 4);
    let placement = place(
        Demand { request: &request, gpus: 100, now: at(), joining: &[] },
        &offers,
        &rules,
        SolverConfig { node_limit: 0 },
    );
    if placement.infeasible.is_none() {
        assert_rules_hold(&request, &offers, &placement, &rules);
    }
    assert!(
        !matches!(placement.solver, SolverPath::Milp { optimality: Optimality::Proven, .. })
            || placement.infeasible.is_none(),
        "{:?}",
        placement.solver
    );
}

/// Every rule an award must meet, checked from the outside. A cap holds within one unit (a
/// node, or a gang) of the provider's largest among `offers`.
fn assert_rules_hold(request: &Request, offers: &[Offer], placement: &Placement, rules: &Rules) {
    assert_eq!(placement.awarded_gpus(), request.gpus.get(), "{}", render(placement));
    let mut gpus: BTreeMap<&ProviderName, f64> = BTreeMap::new();
    let mut spend: BTreeMap<&ProviderName, f64> = BTreeMap::new();
    let mut unit: BTreeMap<&ProviderName, (f64, f64)> = BTreeMap::new();
    for a in &placement.allocations {
        *gpus.entry(&a.provider).or_default() += f64::from(a.gpus_bought());
        *spend.entry(&a.provider).or_default() += a.spend_per_hour();
    }
    for o in offers {
        let u = unit.entry(&o.provider).or_default();
        let g = o.gpus_per_node.get();
        let nodes_per_unit = if request.block.get() <= g { 1 } else { request.block.get().div_ceil(g) };
        u.0 = u.0.max(f64::from(nodes_per_unit * g));
        u.1 = u.1.max(o.node_price.get() * f64::from(nodes_per_unit));
    }
    let total_spend: f64 = spend.values().sum();
    for cap in &rules.caps {
        for (p, g) in &gpus {
            match cap.basis {
                ShareBasis::Gpus => assert!(
                    *g <= cap.max_share * f64::from(request.gpus.get()) + unit[p].0 + 1e-6,
                    "{p} over the GPU cap"
                ),
                ShareBasis::Spend => assert!(
                    spend[p] <= cap.max_share * total_spend + unit[p].1 + 1e-6,
                    "{p} over the spend cap"
                ),
            }
        }
    }
    if let Some((k, _)) = &rules.min_providers {
        assert!(gpus.len() >= *k as usize, "{} providers, {k} required", gpus.len());
    }
}

// --- Properties against a brute-force oracle ----------------------------------------------

/// The cheapest award by exhaustive enumeration of nodes per offer (small instances only),
/// under the same rules, written independently of the solver: per offer, whole units of one
/// node (a block fits a node) or of a gang; cover at least the blocks asked; GPU caps on the
/// GPUs bought against the share of the GPUs asked plus one unit; at least `k` providers.
fn brute_force(request: &Request, offers: &[Offer], cap: Option<f64>, k: usize) -> Option<f64> {
    let block = request.block.get();
    let largest = offers.iter().map(|o| o.gpus_per_node.get()).max().unwrap_or(0);
    let eligible: Vec<(&Offer, u32, u32, u32)> = offers
        .iter()
        .filter_map(|o| {
            let g = o.gpus_per_node.get();
            if g < block && block <= largest {
                return None;
            }
            let (nodes_per_unit, blocks_per_unit) =
                if block <= g { (1, g / block) } else { (block.div_ceil(g), 1) };
            let units = o.nodes_available / nodes_per_unit;
            (units > 0).then_some((o, nodes_per_unit, blocks_per_unit, units))
        })
        .collect();
    let needed = request.gpus.get() / block;
    if (needed as usize) < k {
        return None; // a minimum of k providers needs k blocks
    }
    // An award never buys a whole unit it does not need, beyond one per provider the minimum asks for.
    let most_blocks = needed - 1 + eligible.iter().map(|e| e.2).max().unwrap_or(1) * k as u32;
    let hours = f64::from(request.duration_hours);
    let mut best: Option<f64> = None;
    let mut choice = vec![0u32; eligible.len()];
    loop {
        let blocks: u32 = eligible.iter().zip(&choice).map(|(e, u)| e.2 * u).sum();
        if blocks >= needed && blocks <= most_blocks {
            let mut bought: BTreeMap<&ProviderName, f64> = BTreeMap::new();
            let mut tolerance: BTreeMap<&ProviderName, f64> = BTreeMap::new();
            for (e, u) in eligible.iter().zip(&choice) {
                let unit_gpus = f64::from(e.1 * e.0.gpus_per_node.get());
                let t = tolerance.entry(&e.0.provider).or_default();
                *t = t.max(unit_gpus);
                if *u > 0 {
                    *bought.entry(&e.0.provider).or_default() += f64::from(*u) * unit_gpus;
                }
            }
            let within = cap.is_none_or(|share| {
                bought.iter().all(|(p, g)| *g <= share * f64::from(request.gpus.get()) + tolerance[p] + 1e-9)
            });
            if within && bought.len() >= k {
                let cost: f64 = eligible
                    .iter()
                    .zip(&choice)
                    .map(|(e, u)| f64::from(u * e.1) * e.0.node_price.get() * hours)
                    .sum();
                best = Some(best.map_or(cost, |b: f64| b.min(cost)));
            }
        }
        // Next combination, with each offer's units bounded by what could ever be useful.
        let mut i = 0;
        loop {
            if i == choice.len() {
                return best;
            }
            let limit = eligible[i].3.min(needed.div_ceil(eligible[i].2));
            if choice[i] < limit {
                choice[i] += 1;
                break;
            }
            choice[i] = 0;
            i += 1;
        }
    }
}

fn small_offers() -> impl Strategy<Value = Vec<Offer>> {
    let providers = ["azure", "aws", "gcp", "lambda"];
    prop::collection::vec(
        (0..providers.len(), prop::sample::select(vec![1u32, 2, 4, 8]), 1u32..1500, 0u32..6),
        1..5,
    )
    .prop_map(move |rows| {
        rows.into_iter()
            .enumerate()
            .map(|(i, (p, g, cents, nodes))| {
                let mut o =
                    node_offer(providers[p], &format!("r{i}"), "H100", g, f64::from(cents) / 100.0, nodes, 4);
                o.id = format!("{}/{i}", o.id);
                o
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The award carries the request in whole nodes, never takes more nodes than an offer has,
    /// respects the cap, and costs what the brute-force oracle's cheapest award costs.
    #[test]
    fn awards_are_whole_nodes_within_the_rules_and_optimal(
        offers in small_offers(),
        blocks in 1u32..6,
        block in prop::sample::select(vec![1u32, 2, 4, 8, 16]),
        cap in prop::option::of(prop::sample::select(vec![0.25f64, 0.4, 0.5, 0.75])),
        k in prop::sample::select(vec![1usize, 2]),
    ) {
        let request = request(blocks * block, block);
        let rules = Rules {
            caps: cap.map(gpu_cap).into_iter().collect(),
            min_providers: (k > 1).then(|| (k as u32, "p".to_owned())),
            ..Rules::default()
        };
        let placement = run(&request, &offers, &rules);
        let reference = brute_force(&request, &offers, cap, k);
        match &placement.infeasible {
            Some(why) => prop_assert!(reference.is_none(), "placement found none ({why}), the oracle found {reference:?}"),
            None => {
                prop_assert_eq!(placement.awarded_gpus(), request.gpus.get());
                for a in &placement.allocations {
                    let source = offers.iter().find(|o| o.id == a.offer_id).unwrap();
                    prop_assert!(a.nodes <= source.nodes_available);
                    prop_assert!(a.gpus <= a.gpus_bought());
                }
                assert_rules_hold(&request, &offers, &placement, &rules);
                let reference = reference.expect("the oracle finds an award when the solver does");
                prop_assert!((placement.list_cost - reference).abs() <= 1e-6 * reference.max(1.0),
                    "solver {} vs oracle {}\n{}", placement.list_cost, reference, render(&placement));
                prop_assert_eq!(placement.solver.optimality(), Optimality::Proven);
            }
        }
    }
}

/// The parts of a split award start together, so a part ready before the slowest is held,
/// billed, until then: the optimizer weighs a cheap slow part against a dear fast one. Over
/// 24 hours the idle hours are dear and one fast offer wins; over 720 hours they are cheap
/// against the run and the cheap split wins; a request whose parts may run apart, or a fast
/// part that bills from a start date, holds nothing.
#[test]
fn held_hours_are_in_the_cost_and_change_the_award_when_they_are_dear() {
    let offers = [
        offer("slow", "r", "H100", 2.00, 32, 72),
        offer("quick", "r", "H100", 2.50, 64, 0),
        offer("mid", "r", "H100", 2.20, 32, 12),
    ];
    let mut day = request(64, 8);
    day.duration_hours = 24;
    // Split slow + mid: 32 x 2.00 x 24 + 32 x 2.20 x (24 + 60 held) = 1,536 + 5,913.6 = 7,449.6;
    // quick alone: 64 x 2.50 x 24 = 3,840; quick + mid: 32 x 2.20 x 24 + 32 x 2.50 x (24 + 12)
    // = 4,569.6. Quick alone wins.
    let placement = run(&day, &offers, &Rules::default());
    assert_eq!(award_line(&placement), "award: quick:8x8=64@2.5");
    assert!((placement.list_cost - 3840.0).abs() < 1e-6, "{}", placement.list_cost);
    assert_eq!(placement.held_cost, 0.0);
    let slow = placement.verdicts.iter().find(|v| v.offer_id.starts_with("slow")).unwrap();
    assert!(
        matches!(slow.outcome, Outcome::Rejected(Rejection::HeldTooLong { .. })),
        "the cheaper, slower offer loses to what holding for it costs: {:?}",
        slow.outcome
    );

    // Over 720 hours: slow + mid = 46,080 + 32 x 2.20 x 780 = 100,992 < quick alone 115,200.
    let mut month = day.clone();
    month.duration_hours = 720;
    let placement = run(&month, &offers, &Rules::default());
    assert_eq!(award_line(&placement), "award: mid:4x8=32@2.2 slow:4x8=32@2");
    assert!((placement.held_cost - 32.0 * 2.20 * 60.0).abs() < 1e-6, "{}", placement.held_cost);
    assert!((placement.list_cost - 100_992.0).abs() < 1e-6, "{}", placement.list_cost);
    assert!(
        placement.notes.iter().any(|n| n.contains("held") && n.contains("mid/r/H100/on-demand 60 h")),
        "{:?}",
        placement.notes
    );

    // Parts that may run apart are never held: the cheapest GPU-hours win over 24 hours too.
    let mut apart = day.clone();
    apart.apart = true;
    apart.workload = WorkloadClass::Batch;
    let placement = run(&apart, &offers, &Rules::default());
    assert_eq!(award_line(&placement), "award: mid:4x8=32@2.2 slow:4x8=32@2");
    assert!((placement.list_cost - (1536.0 + 1689.6)).abs() < 1e-6, "{}", placement.list_cost);

    // A fast part whose provider bills from a start date is not billed while it waits.
    let mut scheduled = offers.clone();
    scheduled[2].bills_from_delivery = false;
    let placement = run(&day, &scheduled, &Rules::default());
    assert_eq!(award_line(&placement), "award: mid:4x8=32@2.2 slow:4x8=32@2");
    assert_eq!(placement.held_cost, 0.0);
    assert!(!placement.allocations.iter().any(|a| a.bills_from_delivery && a.held_hours > 0));
}
