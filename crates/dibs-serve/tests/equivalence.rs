//! One engine, two shells: a scripted scenario run through the virtual-time runner
//! (`dibs_sim::VirtualRun`, as `dibs simulate` runs it) and through the live broker on SQLite
//! (as `dibs serve` runs it, its clock driven by the test) gives the same decisions, the same
//! settlement figures and the same trigger outcome; the broker's ledger then verifies by replay.
//!
//! The script: three requests, an incident and its end, a revenue report, and an
//! `agi_declared` event that fires a review trigger suspending the first refusal from a date.
//! The first two requests come before that date and meet first refusal; the third comes after
//! it and does not.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use dibs_core::contract::{ContractSet, contract_set_from_texts};
use dibs_core::engine::{Engine, Input};
use dibs_core::ledger::Event;
use dibs_core::types::{Accelerator, GpuCount, NodePrice, Offer, OfferKind, ProviderName, Region, Timestamp};
use dibs_providers::HolderBehaviour;
use dibs_serve::broker::{Broker, Command, Configuration, SubmitBody};
use dibs_sim::VirtualRun;
use dibs_store::{SqliteStore, Store};

const AZURE: &str = r#"
[contract]
id = "azure-primary"
counterparty = "azure"
parties = ["buyer", "azure"]

[[version]]
id = "v1"
effective = 2026-01-01
expires = 2030-12-31

[[version.first_refusal]]
name = "rofr"
holder = "azure"
mode = "offer-first"
no_better_terms = "show-terms"
terms = { discount = 0.4 }
window_hours = 24
covers_spillover = true
covers_failover = true
scope = { workloads = ["training", "inference", "batch"] }

[[version.revenue_share]]
name = "revenue-share"
partner = "azure"
rate = 0.20
products = ["api"]

[[version.commitment]]
name = "commit"
provider = "azure"
amount = 1e6
currency = "USD"
period_start = 2026-03-01
period_end = 2026-04-01
counts = ["training"]

[[version.review_trigger]]
name = "agi-review"
condition = 'metrics.cumulative_revenue >= 1000000.0 && "agi_declared" in events'
action = "suspend_clauses"
clauses = ["rofr"]
from = 2026-03-04
"#;

fn t(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn offer(provider: &str, region: &str, gpu_price: f64, nodes: u32, lead: u32) -> Offer {
    Offer {
        id: format!("{provider}/{region}/n8/on-demand"),
        provider: ProviderName::new(provider).unwrap(),
        region: Region::new(region).unwrap(),
        zone: None,
        instance_type: "n8".into(),
        accelerator: Accelerator::new("H100").unwrap(),
        gpus_per_node: GpuCount::new(8).unwrap(),
        nodes_available: nodes,
        node_price: NodePrice::new(gpu_price * 8.0).unwrap(),
        lead_time_hours: lead,
        kind: OfferKind::OnDemand,
        valid_until: None,
        bills_from_delivery: true,
        price_source: None,
    }
}

fn offers() -> Vec<Offer> {
    vec![
        offer("azure", "eastus", 6.0, 64, 3),
        offer("lambda", "us-east-1", 3.0, 16, 2),
        offer("nebius", "eu-north1", 3.5, 32, 5),
    ]
}

fn contracts() -> (Vec<(String, String)>, ContractSet) {
    let texts = vec![("azure.toml".to_owned(), AZURE.to_owned())];
    let set = contract_set_from_texts(&texts).unwrap();
    (texts, set)
}

fn body(gpus: u32, hours: u32) -> SubmitBody {
    SubmitBody {
        accelerators: vec!["H100".into()],
        gpus,
        duration_hours: hours,
        workload: "training".into(),
        ..SubmitBody::default()
    }
}

/// The script: external inputs at instants that no timer of either shell shares (timers
/// fall on whole hours and seconds after them; these fall on odd minutes).
enum Step {
    Submit(u32, u32),
    Incident(&'static str),
    Resolve,
    Revenue(f64),
    Declare(&'static str),
}

fn script() -> Vec<(Timestamp, Step)> {
    vec![
        (t("2026-03-01T00:07:00Z"), Step::Submit(64, 100)),
        (t("2026-03-01T02:13:00Z"), Step::Submit(128, 200)),
        (t("2026-03-01T09:17:00Z"), Step::Incident("lambda")),
        (t("2026-03-01T20:19:00Z"), Step::Resolve),
        (t("2026-03-02T05:23:00Z"), Step::Revenue(1_500_000.0)),
        (t("2026-03-02T07:29:00Z"), Step::Declare("agi_declared")),
        (t("2026-03-04T10:31:00Z"), Step::Submit(64, 50)),
    ]
}

/// The live broker on SQLite, its clock moved by the test from one due instant to the next.
fn run_broker(dir: &std::path::Path) -> (Vec<String>, Vec<(String, String)>) {
    let (texts, _) = contracts();
    let store = SqliteStore::open(&dir.join("ledger.db")).unwrap();
    let clock = Arc::new(AtomicI64::new(t("2026-03-01").unix()));
    let reading = clock.clone();
    let providers = dibs_serve::simulated_providers(&offers(), HolderBehaviour::Accept, 7);
    let configuration = Configuration::at_start(texts, offers());
    let (mut broker, _) = Broker::recover(
        Box::new(store),
        providers,
        None,
        Box::new(move || Timestamp::from_unix(reading.load(Ordering::SeqCst))),
        Some(configuration),
    )
    .unwrap();
    let mut steps = script().into_iter().peekable();
    let mut incident_id = None;
    for _ in 0..100_000 {
        let due = broker.next_due();
        let next_step = steps.peek().map(|(at, _)| *at);
        let (at, command) = match (due, next_step) {
            (None, None) => break,
            (Some(d), Some(s)) if d <= s => (d, None),
            (Some(d), None) => (d, None),
            (_, Some(s)) => (s, steps.next().map(|(_, step)| step)),
        };
        clock.store(at.unix(), Ordering::SeqCst);
        fn reply<T>() -> dibs_serve::broker::Replier<T> {
            tokio::sync::oneshot::channel().0
        }
        let commands = match command {
            None => vec![],
            Some(Step::Submit(gpus, hours)) => {
                vec![Command::Submit { body: Box::new(body(gpus, hours)), idempotency: None, reply: reply() }]
            }
            Some(Step::Incident(provider)) => {
                incident_id = Some("inc-1".to_owned());
                vec![Command::OpenIncident {
                    provider: provider.into(),
                    region: None,
                    idempotency: None,
                    reply: reply(),
                }]
            }
            Some(Step::Resolve) => {
                vec![Command::ResolveIncident { id: incident_id.clone().unwrap(), reply: reply() }]
            }
            Some(Step::Revenue(amount)) => vec![Command::ReportRevenue { amount, reply: reply() }],
            Some(Step::Declare(name)) => vec![Command::DeclareEvent { name: name.into(), reply: reply() }],
        };
        broker.turn(commands).unwrap();
    }
    // The broker's ledger: its inputs and its decisions, in order.
    let mut store = SqliteStore::open(&dir.join("ledger.db")).unwrap();
    let mut decisions = Vec::new();
    let mut inputs = Vec::new();
    let mut after = 0;
    loop {
        let page = store.entries(after, dibs_store::MAX_PAGE).unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        for entry in page {
            match entry.kind.as_str() {
                "input" => inputs.push((entry.at.clone(), entry.body.clone())),
                "configured" => {}
                _ => decisions.push(entry.body.clone()),
            }
        }
    }
    (decisions, inputs)
}

/// The virtual-time runner, fed the external inputs the broker recorded, at their instants.
fn run_virtual(inputs: &[(String, String)]) -> Vec<String> {
    let (_, set) = contracts();
    // The live engine forgets requests that ended; this one keeps them: decisions must not
    // depend on it.
    let config =
        dibs_core::engine::EngineConfig { forget_finished: false, ..dibs_serve::broker::engine_config() };
    let engine = Engine::new(set, offers(), config);
    let providers = dibs_serve::simulated_providers(&offers(), HolderBehaviour::Accept, 7);
    let mut run = VirtualRun::new(engine, providers, t("2026-03-01"));
    #[derive(serde::Deserialize)]
    struct Recorded {
        at: Timestamp,
        #[serde(flatten)]
        input: Input,
    }
    for (_, body) in inputs {
        let recorded: Recorded = serde_json::from_str(body).unwrap();
        let external = matches!(
            recorded.input,
            Input::Submit(_)
                | Input::IncidentOpened { .. }
                | Input::IncidentResolved { .. }
                | Input::RevenueReported { .. }
                | Input::EventDeclared { .. }
        );
        if external {
            run.schedule(recorded.at, recorded.input);
        }
    }
    run.run_until(None);
    run.events.iter().map(|e: &Event| serde_json::to_string(e).unwrap()).collect()
}

fn kinds(decisions: &[String], kind: &str) -> Vec<serde_json::Value> {
    decisions
        .iter()
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

#[test]
fn the_live_broker_and_the_virtual_run_decide_and_settle_alike() {
    let dir = tempfile::tempdir().unwrap();
    let (live, inputs) = run_broker(dir.path());
    let simulated = run_virtual(&inputs);
    assert!(live.len() > 40, "a real scenario: {} decisions", live.len());
    for (i, (a, b)) in live.iter().zip(&simulated).enumerate() {
        assert_eq!(a, b, "decision {i} differs between the live broker and the virtual run");
    }
    assert_eq!(live.len(), simulated.len(), "the same number of decisions");

    // The trigger fired once, and suspended the first refusal from its date.
    let fired = kinds(&live, "trigger_fired");
    assert_eq!(fired.len(), 1, "{fired:?}");
    let suspended = kinds(&live, "clause_suspended");
    assert_eq!(suspended.len(), 1);
    assert_eq!(
        (suspended[0]["clause"].as_str(), suspended[0]["from"].as_i64()),
        (Some("rofr"), Some(t("2026-03-04").unix()))
    );
    // Settlement figures: revenue share owed on the reported revenue, the commitment burned.
    let settled = kinds(&live, "settled");
    let last = settled.last().unwrap();
    assert_eq!(last["cumulative_revenue"].as_f64(), Some(1_500_000.0));
    assert!(last["spend_total"].as_f64().unwrap() > 0.0);
    assert_eq!(last["commitments"][0]["clause"], "commit");

    // First refusal: the requests before the suspension date were solicited, the one after not.
    let solicited: Vec<String> =
        kinds(&live, "solicited").iter().map(|e| e["request"].as_str().unwrap().to_owned()).collect();
    assert!(solicited.contains(&"r-1".to_owned()) && solicited.contains(&"r-2".to_owned()), "{solicited:?}");
    assert!(!solicited.contains(&"r-3".to_owned()), "{solicited:?}");
    let screened_r3 = kinds(&live, "screened").into_iter().find(|e| e["request"] == "r-3").unwrap();
    assert!(screened_r3["first_refusal"].is_null(), "{screened_r3}");

    // The broker's ledger verifies by replay: chain, decisions and projection.
    let mut store: Box<dyn Store> = Box::new(SqliteStore::open(&dir.path().join("ledger.db")).unwrap());
    dibs_store::verify(store.as_mut()).unwrap();
    let check = dibs_serve::replay_check(store).unwrap();
    check.projection.unwrap();
    check.snapshot.unwrap();
}
