//! Settlement over real engine runs: accrual, commitment burn-down, revenue
//! share, review triggers, and the billing invariants.

use std::collections::BTreeMap;

use dibs_core::contract::{
    Clause, ClauseKind, Commitment, Condition, Contract, ContractSet, ContractVersion, FirstRefusal,
    HolderTerms, NoBetterTerms, RefusalMode, RevenueShare, ReviewTrigger, Scope, TriggerAction,
};
use dibs_core::engine::{Engine, EngineConfig, Input};
use dibs_core::request::RequestSpec;
use dibs_core::settlement::{self, RevenueSeries};
use dibs_core::types::{Accelerator, GpuCount, NodePrice, Offer, OfferKind, ProviderName, Region, Timestamp};
use dibs_providers::{SimulatedBehaviour, SimulatedProvider};
use dibs_sim::VirtualRun;

fn t(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn p(name: &str) -> ProviderName {
    ProviderName::new(name).unwrap()
}

/// `gpus` in 8-GPU nodes at `price` per GPU-hour.
fn offer(provider: &str, price: f64, gpus: u32, lead: u32) -> Offer {
    Offer {
        id: format!("{provider}/r/H100/on-demand"),
        provider: p(provider),
        region: Region::new("r").unwrap(),
        zone: None,
        instance_type: "x".into(),
        accelerator: Accelerator::new("H100").unwrap(),
        gpus_per_node: GpuCount::new(8).unwrap(),
        nodes_available: gpus / 8,
        node_price: NodePrice::new(price * 8.0).unwrap(),
        lead_time_hours: lead,
        kind: OfferKind::OnDemand,
        valid_until: None,
        bills_from_delivery: true,
        price_source: None,
    }
}

fn clause(name: &str, kind: ClauseKind) -> Clause {
    Clause { name: name.into(), kind }
}

fn set(clauses: Vec<Clause>) -> ContractSet {
    ContractSet {
        contracts: vec![Contract {
            id: "azure-primary".into(),
            counterparty: p("azure"),
            parties: vec!["buyer".into(), "azure".into()],
            versions: vec![ContractVersion {
                id: "v1".into(),
                effective: t("2020-01-01"),
                expires: t("2030-12-31"),
                clauses,
            }],
            source: "test".into(),
        }],
        ..ContractSet::default()
    }
}

fn submit(run: &mut VirtualRun, id: &str, gpus: u32, hours: u32, workload: &str, at: Timestamp) {
    let request = RequestSpec {
        id: id.into(),
        accelerators: vec!["H100".into()],
        gpus,
        block: Some(8),
        duration_hours: hours,
        earliest_start: at,
        workload: workload.into(),
        ..RequestSpec::default()
    }
    .validate(run.engine.names())
    .unwrap();
    run.schedule(at, Input::Submit(request));
}

fn start(contracts: ContractSet, offers: Vec<Offer>) -> VirtualRun {
    let providers = SimulatedProvider::from_catalog(&offers, SimulatedBehaviour::default());
    VirtualRun::new(Engine::new(contracts, offers, EngineConfig::default()), providers, t("2026-01-01"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

#[test]
fn spend_accrues_per_allocation_hour_from_ready_to_release() {
    let mut run = start(set(vec![]), vec![offer("lambda", 2.0, 512, 4)]);
    submit(&mut run, "r1", 64, 100, "training", t("2026-01-01"));
    run.run_until(None);
    // Quotes at +0.25 h, ready 4 h later, released 100 h after that.
    let ready = t("2026-01-01").plus_hours(4.25);
    for (hours, expected) in
        [(0.0, 0.0), (50.0, 64.0 * 2.0 * 50.0), (100.0, 64.0 * 2.0 * 100.0), (500.0, 64.0 * 2.0 * 100.0)]
    {
        let accruals = settlement::accrue(run.engine.allocation_book(), ready.plus_hours(hours));
        assert!(
            close(accruals.total_spend(), expected),
            "at +{hours} h: {} vs {expected}",
            accruals.total_spend()
        );
        settlement::check_billing(run.engine.allocation_book(), &accruals, ready.plus_hours(hours)).unwrap();
    }
}

#[test]
fn a_failover_bills_the_failed_hours_and_the_replacement_without_double_counting() {
    let mut run = start(set(vec![]), vec![offer("lambda", 2.0, 512, 4), offer("aws", 6.0, 512, 24)]);
    submit(&mut run, "r1", 64, 100, "training", t("2026-01-01"));
    run.run_until(Some(t("2026-01-02")));
    run.schedule(
        t("2026-01-02"),
        Input::IncidentOpened { id: "inc".into(), provider: p("lambda"), region: None },
    );
    run.run_until(None);
    let end = t("2026-02-01");
    let accruals = settlement::accrue(run.engine.allocation_book(), end);
    settlement::check_billing(run.engine.allocation_book(), &accruals, end).unwrap();
    // lambda ran from +4.25 h to +24 h; aws takes floor(100 - 19.75) = 80 h.
    assert!(close(accruals.spend[&p("lambda")], 64.0 * 2.0 * 19.75));
    assert!(close(accruals.spend[&p("aws")], 64.0 * 6.0 * 80.0));
    let gpu_hours: f64 = accruals.gpu_hours.values().sum();
    assert!(gpu_hours <= 64.0 * 100.0, "{gpu_hours} GPU-hours billed for a 6,400 GPU-hour request");
}

#[test]
fn a_commitment_burns_down_and_projects_its_shortfall() {
    let commitment = Commitment {
        provider: p("lambda"),
        amount: 100_000.0,
        currency: "USD".into(),
        period_start: t("2026-01-01"),
        period_end: t("2026-03-01"),
        counts: vec![],
    };
    let mut run =
        start(set(vec![clause("c", ClauseKind::Commitment(commitment))]), vec![offer("lambda", 2.0, 512, 4)]);
    submit(&mut run, "r1", 32, 1000, "training", t("2026-01-01"));
    let at = t("2026-01-11");
    run.run_until(Some(at));
    let ready = t("2026-01-01").plus_hours(4.25);
    let status = &run.engine.commitment_statuses(at)[0];
    let burned = 32.0 * 2.0 * at.hours_since(ready);
    assert!(close(status.burned, burned), "{} vs {burned}", status.burned);
    // Projected: the $64/h now running continues until its 1,000 hours are up, inside the period.
    let projected = 64.0 * ready.plus_hours(1000.0).hours_since(at);
    assert!(close(status.projected, projected), "{} vs {projected}", status.projected);
    assert!(close(status.projected_shortfall, 100_000.0 - burned - projected));
    // After the allocation ends nothing runs: the shortfall is what was never burned.
    run.run_until(None);
    let later = t("2026-02-28");
    let status = &run.engine.commitment_statuses(later)[0];
    assert!(
        close(status.projected_shortfall, 100_000.0 - 32.0 * 2.0 * 1000.0),
        "{}",
        status.projected_shortfall
    );
}

/// Spend before a commitment's period starts, or after it ends, does not burn it down: the
/// accrual is cut at the period's boundaries.
#[test]
fn a_commitment_counts_only_spend_inside_its_period_and_classes() {
    let commitment = Commitment {
        provider: p("lambda"),
        amount: 1e6,
        currency: "USD".into(),
        period_start: t("2026-01-05"),
        period_end: t("2026-01-10"),
        counts: vec![dibs_core::types::WorkloadClass::Training],
    };
    let mut run =
        start(set(vec![clause("c", ClauseKind::Commitment(commitment))]), vec![offer("lambda", 2.0, 512, 4)]);
    submit(&mut run, "train", 8, 1000, "training", t("2026-01-01"));
    submit(&mut run, "serve", 8, 1000, "inference", t("2026-01-01"));
    run.run_until(Some(t("2026-01-20")));
    let status = &run.engine.commitment_statuses(t("2026-01-08"))[0];
    // One 8-GPU node at $16/h of training, from Jan 5 (not from ready on Jan 1) to Jan 8.
    assert!(close(status.burned, 16.0 * 72.0), "{}", status.burned);
    // Projected: to the period's end on Jan 10, not to the allocation's.
    assert!(close(status.projected, 16.0 * 48.0), "{}", status.projected);
}

#[test]
fn revenue_share_is_owed_per_month_under_the_clause_in_force() {
    let share = RevenueShare { partner: "azure".into(), rate: 0.2, products: vec!["api".into()] };
    let contracts = set(vec![clause("rs", ClauseKind::RevenueShare(share))]);
    let revenue = RevenueSeries::from([("2026-01".to_owned(), 1_000.0), ("2026-02".to_owned(), 500.0)]);
    let first =
        BTreeMap::from([("2026-01".to_owned(), t("2026-01-01")), ("2026-02".to_owned(), t("2026-02-01"))]);
    let statements = settlement::revenue_share(&contracts, &revenue, &first);
    let owed: Vec<(String, f64)> = statements.iter().map(|s| (s.month.clone(), s.owed)).collect();
    assert_eq!(owed, vec![("2026-01".to_owned(), 200.0), ("2026-02".to_owned(), 100.0)]);
}

#[test]
fn a_review_trigger_fires_once_and_its_suspension_ends_first_refusal_inside_the_run() {
    let rofr = FirstRefusal {
        holder: p("azure"),
        scope: Scope::default(),
        mode: RefusalMode::OfferFirst,
        terms: HolderTerms::List,
        window_hours: 24,
        covers_spillover: false,
        covers_failover: false,
        no_better_terms: NoBetterTerms::ShowTerms,
    };
    let trigger = ReviewTrigger {
        condition: Condition::parse(r#"metrics.cumulative_spend > 1000.0 && "agi_declared" in events"#)
            .unwrap(),
        action: TriggerAction::SuspendClauses { clauses: vec!["rofr".into()], from: t("2026-01-01") },
    };
    let contracts = set(vec![
        clause("rofr", ClauseKind::FirstRefusal(rofr)),
        clause("review", ClauseKind::ReviewTrigger(trigger)),
    ]);
    let mut run = start(contracts, vec![offer("azure", 6.0, 512, 4), offer("lambda", 2.0, 512, 4)]);
    submit(&mut run, "r1", 64, 100, "training", t("2026-01-01"));
    // The spend condition holds from the first day on; the event is declared on day 2; the
    // engine settles daily, from its first input.
    run.schedule(t("2026-01-02T12:00:00Z"), Input::EventDeclared { name: "agi_declared".into() });
    run.run_until(Some(t("2026-01-02T11:00:00Z")));
    assert!(!run.events.iter().any(|e| e.kind.name() == "trigger_fired"), "not before the declaration");
    let day3 = t("2026-01-03T01:00:00Z");
    run.run_until(Some(day3));
    let fired: Vec<String> =
        run.events.iter().filter(|e| e.kind.name() == "trigger_fired").map(|e| e.at.to_string()).collect();
    assert_eq!(fired, ["2026-01-03T00:00:00Z"], "fires at the first settlement after the declaration");
    assert!(run.events.iter().any(|e| e.kind.name() == "clause_suspended"));
    assert_eq!(run.engine.suspensions().len(), 1);
    // The first request met first refusal; the one after the trigger does not.
    submit(&mut run, "r2", 64, 100, "training", day3);
    run.run_until(None);
    let solicited: Vec<&str> = run
        .events
        .iter()
        .filter(|e| e.kind.name() == "solicited")
        .map(|e| e.request.as_deref().unwrap())
        .collect();
    assert_eq!(solicited, vec!["r1"]);
    assert_eq!(run.events.iter().filter(|e| e.kind.name() == "trigger_fired").count(), 1, "fires once");
}
