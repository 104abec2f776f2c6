//! `dibs simulate` runs: determinism by seed, and variants that share demand
//! and faults but not their decisions.

use dibs_core::catalog;
use dibs_core::contract;
use dibs_core::types::{ProviderName, Timestamp};
use dibs_providers::HolderBehaviour;
use dibs_sim::incidents;
use dibs_sim::prices::PricePath;
use dibs_sim::simulate::{self, Scenario, VariantReport};
use dibs_sim::trace::{self, TraceOptions};

/// Sixteen training jobs over four days; grouped per 12 hours they make a
/// handful of capacity requests of a few hundred GPUs.
const TRACE: &str = "\
id,submit_time_s,gpus,duration_s
0,0,64,86400
1,3600,128,172800
2,7200,32,36000
3,40000,256,259200
4,50000,64,86400
5,90000,128,43200
6,100000,512,172800
7,130000,64,86400
8,170000,256,259200
9,180000,16,7200
10,200000,128,86400
11,230000,64,36000
12,260000,256,172800
13,280000,512,86400
14,300000,64,43200
15,330000,128,86400
";

fn scenario(seed: u64) -> Scenario {
    let start = Timestamp::parse("2026-01-01").unwrap();
    let options = TraceOptions { group_hours: 12.0, ..TraceOptions::new(start) };
    let demand = trace::read_training_trace("inline", TRACE, &options).unwrap();
    let offers = catalog::bundled_catalog().offers;
    let providers: Vec<ProviderName> = {
        let mut names: Vec<ProviderName> = offers.iter().map(|o| o.provider.clone()).collect();
        names.sort();
        names.dedup();
        names
    };
    let incidents = incidents::generate_incidents(&providers, start, 24.0 * 10.0, 3.0, 12.0, seed);
    Scenario {
        contracts: contract::builtin_contracts("default").unwrap(),
        offers,
        demand: demand.requests,
        accelerators: vec!["H100".into()],
        incidents,
        price_path: PricePath::Static,
        holder: HolderBehaviour::AcceptRate(0.5),
        holder_answer_hours: 36.0,
        seed,
        start,
        revenue_per_gpu_hour: 2.0,
        declared: Vec::new(),
        settle_every_hours: 24.0,
    }
}

fn run(seed: u64, vary: &str) -> Vec<VariantReport> {
    let scenario = scenario(seed);
    let variants = simulate::variants(&[simulate::parse_vary(vary).unwrap()]).unwrap();
    variants.iter().map(|v| simulate::run_variant(&scenario, v, &mut |_| {})).collect()
}

fn heads(reports: &[VariantReport]) -> Vec<String> {
    reports.iter().map(|r| r.ledger_head.clone()).collect()
}

#[test]
fn one_seed_gives_one_ledger_head_and_another_seed_differs() {
    let first = run(7, "window=24,none");
    let again = run(7, "window=24,none");
    assert_eq!(heads(&first), heads(&again));
    for report in &first {
        assert_eq!(report.invariant_violation, None, "{}", report.name);
        assert!(report.engine_inputs > 0 && report.ledger_entries > 0);
    }
    let other = run(8, "window=24,none");
    assert_ne!(heads(&first), heads(&other), "seeds 7 and 8 made the same runs");
}

#[test]
fn variants_share_demand_and_faults_but_not_decisions() {
    let reports = run(3, "window=24,none");
    let (with_refusal, without) = (&reports[0], &reports[1]);
    assert_eq!(with_refusal.requests, without.requests);
    assert_eq!(with_refusal.incidents, without.incidents);
    assert!(
        with_refusal.first_refusal.solicited > 0,
        "the default contracts give azure first refusal in 2026"
    );
    assert_eq!(without.first_refusal.solicited, 0);
    assert_ne!(with_refusal.ledger_head, without.ledger_head);
    for report in &reports {
        let by_provider: f64 = report.spend_by_provider.values().sum();
        assert!((by_provider - report.spend_total).abs() < 1e-6 * report.spend_total.max(1.0));
        let shares: f64 = report.share_by_provider.values().sum();
        assert!(report.share_by_provider.is_empty() || (shares - 1.0).abs() < 1e-9);
        assert!((0.0..=10_000.0).contains(&report.hhi));
    }
}
