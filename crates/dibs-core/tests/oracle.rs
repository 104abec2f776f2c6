//! dibs's placement against an independent MILP: HiGHS, from PyPI's `highspy`, on a model
//! written from the offers in `tests/oracle/highs_oracle.py` (not from dibs's merged groups).
//!
//! Instances: the oracle case of issue 10 and the benchmark cases on the shared catalogs (when
//! `../shared/data` is there), and a few hundred generated ones (seeded) with mixed node sizes,
//! tied prices, GPU and spend caps, commitment credits, a fleet already held and minimums of
//! providers. For each, dibs's effective cost must equal HiGHS's optimum when dibs says it is
//! proven optimal, and lie within the gap it states otherwise; when HiGHS finds no award, dibs
//! must find none either.
//!
//! The Python it runs is `DIBS_HIGHS_PYTHON`, else `python3`. Without `highspy` the test says
//! so and passes, unless `DIBS_REQUIRE_ORACLE` is set (as `.ci/run` sets it), when it fails.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dibs_core::catalog;
use dibs_core::contract::ShareBasis;
use dibs_core::placement::{Cap, Demand, Fleet, Optimality, Placement, Rules, SolverConfig, place};
use dibs_core::request::{Objective, Preference, Request, SpotPolicy};
use dibs_core::types::{
    Accelerator, GpuCount, NodePrice, Offer, OfferKind, ProviderName, Region, Timestamp, WorkloadClass,
};
use serde_json::{Value, json};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oracle/highs_oracle.py");
const SHARED_CATALOGS: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/catalogs/skypilot-v8");
/// Generated instances.
const GENERATED: usize = 300;

struct Instance {
    label: String,
    request: Request,
    offers: Vec<Offer>,
    rules: Rules,
}

fn request(accelerator: &str, gpus: u32, block: u32, hours: u32) -> Request {
    Request {
        id: "oracle".into(),
        accelerators: vec![Accelerator::new(accelerator).unwrap()],
        providers: vec![],
        exclude_providers: vec![],
        regions: vec![],
        gpus: GpuCount::new(gpus).unwrap(),
        block: GpuCount::new(block).unwrap(),
        duration_hours: hours,
        earliest_start: Timestamp::parse("2026-01-01").unwrap(),
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

/// The problem as the oracle reads it: only offers that pass dibs's filters other than node
/// size (the oracle applies that rule itself), with their raw numbers.
fn problem_json(instance: &Instance) -> Value {
    let request = &instance.request;
    let offers: Vec<Value> = instance
        .offers
        .iter()
        .filter(|o| request.accelerators.contains(&o.accelerator) && o.kind == OfferKind::OnDemand)
        .map(|o| {
            json!({
                "id": o.id, "provider": o.provider.as_str(), "accelerator": o.accelerator.as_str(),
                "gpus_per_node": o.gpus_per_node.get(), "nodes": o.nodes_available, "node_price": o.node_price.get(),
                "lead": o.lead_time_hours, "bills_from_delivery": o.bills_from_delivery,
            })
        })
        .collect();
    let caps: Vec<Value> = instance
        .rules
        .caps
        .iter()
        .map(|c| {
            json!({ "basis": match c.basis { ShareBasis::Gpus => "gpus", ShareBasis::Spend => "spend" }, "share": c.max_share })
        })
        .collect();
    let names = |map: &BTreeMap<ProviderName, f64>| -> Value {
        map.iter().map(|(p, v)| (p.to_string(), json!(v))).collect::<serde_json::Map<_, _>>().into()
    };
    json!({
        "hours": request.duration_hours,
        "gpus": request.gpus.get(),
        "block": request.block.get(),
        "offers": offers,
        "caps": caps,
        "credits": names(&instance.rules.credits),
        "fleet": { "gpus": names(&instance.rules.fleet.gpus), "spend_per_hour": names(&instance.rules.fleet.spend_per_hour) },
        "min_providers": instance.rules.min_providers.as_ref().map_or(1, |(k, _)| *k),
        "together": !request.apart,
    })
}

/// A deterministic pseudo-random sequence (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn generated(seed: u64) -> Instance {
    let mut random = SplitMix(seed);
    let provider_names = ["azure", "aws", "gcp", "oci", "lambda", "nebius", "vast", "verda"];
    let providers = 2 + random.below(6) as usize;
    let tied = random.below(2) == 0;
    let count = 3 + random.below(28) as usize;
    let offers: Vec<Offer> = (0..count)
        .map(|i| {
            let provider = provider_names[i % providers];
            let gpus_per_node = [1u32, 2, 4, 8, 8, 8][random.below(6) as usize];
            let gpu_price = if tied {
                1.0 + (i % providers) as f64 * 0.75 + random.below(2) as f64 * 0.5
            } else {
                1.0 + random.below(900) as f64 / 100.0
            };
            Offer {
                id: format!("{provider}/r{i}/n{gpus_per_node}/on-demand"),
                provider: ProviderName::new(provider).unwrap(),
                region: Region::new(&format!("r{i}")).unwrap(),
                zone: None,
                instance_type: format!("n{gpus_per_node}"),
                accelerator: Accelerator::new("H100").unwrap(),
                gpus_per_node: GpuCount::new(gpus_per_node).unwrap(),
                nodes_available: random.below(40) as u32,
                node_price: NodePrice::new(gpu_price * f64::from(gpus_per_node)).unwrap(),
                lead_time_hours: [0u32, 4, 4, 12, 24, 72][random.below(6) as usize],
                kind: OfferKind::OnDemand,
                valid_until: None,
                bills_from_delivery: random.below(4) != 0,
                price_source: None,
            }
        })
        .collect();
    let block = [1u32, 2, 4, 8, 8, 16][random.below(6) as usize];
    let gpus = block * (1 + random.below(24) as u32);
    let mut rules = Rules::default();
    match random.below(5) {
        0 => rules.caps.push(Cap {
            max_share: 0.3 + random.below(4) as f64 * 0.1,
            basis: ShareBasis::Gpus,
            source: "g".into(),
        }),
        1 => rules.caps.push(Cap {
            max_share: 0.3 + random.below(4) as f64 * 0.1,
            basis: ShareBasis::Spend,
            source: "s".into(),
        }),
        2 => {
            rules.caps.push(Cap { max_share: 0.5, basis: ShareBasis::Gpus, source: "g".into() });
            rules.caps.push(Cap { max_share: 0.4, basis: ShareBasis::Spend, source: "s".into() });
        }
        _ => {}
    }
    if random.below(3) == 0 {
        rules.min_providers = Some((2 + random.below(2) as u32, "k".into()));
    }
    if random.below(3) == 0 {
        let p = ProviderName::new(provider_names[random.below(providers as u64) as usize]).unwrap();
        rules.credits.insert(p, random.below(5000) as f64 * 10.0);
    }
    if random.below(3) == 0 && !rules.caps.is_empty() {
        let mut fleet = Fleet::default();
        for name in provider_names.iter().take(providers) {
            let p = ProviderName::new(name).unwrap();
            let held = random.below(200) as f64;
            fleet.gpus.insert(p.clone(), held);
            fleet.spend_per_hour.insert(p, held * 3.0);
        }
        rules.fleet = fleet;
    }
    Instance {
        label: format!("generated #{seed}"),
        request: request("H100", gpus, block, 100),
        offers,
        rules,
    }
}

fn shared_instances() -> Vec<Instance> {
    let path = Path::new(SHARED_CATALOGS);
    if !path.is_dir() {
        eprintln!("skipping the shared-catalog oracle cases: {SHARED_CATALOGS} not found");
        return Vec::new();
    }
    let offers = catalog::load_catalog(&[path.to_path_buf()], None).unwrap().offers;
    let spend = |share| Cap { max_share: share, basis: ShareBasis::Spend, source: "spend".into() };
    let gpu = |share| Cap { max_share: share, basis: ShareBasis::Gpus, source: "gpus".into() };
    let mut instances = Vec::new();
    // Issue 10: azure's $250B credit under the 2025 amendment, 512 x H100 for 720 h, inference
    // (at least two providers).
    let credits = BTreeMap::from([(ProviderName::new("azure").unwrap(), 250e9)]);
    instances.push(Instance {
        label: "issue 10: credit + minimum of 2 providers, 512 GPUs".into(),
        request: request("H100", 512, 8, 720),
        offers: offers.clone(),
        rules: Rules { credits, min_providers: Some((2, "inference".into())), ..Rules::default() },
    });
    for (gpus, caps, k) in [
        (512, vec![spend(0.3)], None),
        (2048, vec![spend(0.3)], None),
        (2048, vec![gpu(0.25)], None),
        (512, vec![gpu(0.4)], Some(3)),
        (2048, vec![gpu(0.25), spend(0.3)], None),
    ] {
        instances.push(Instance {
            label: format!("shared catalogs: {gpus} GPUs, caps {caps:?}, k {k:?}"),
            request: request("H100", gpus, 8, 720),
            offers: offers.clone(),
            rules: Rules { caps, min_providers: k.map(|k| (k, "k".into())), ..Rules::default() },
        });
    }
    instances
}

fn python() -> Option<String> {
    let candidate = std::env::var("DIBS_HIGHS_PYTHON").unwrap_or_else(|_| "python3".into());
    let works = Command::new(&candidate)
        .args(["-c", "import highspy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    works.then_some(candidate)
}

#[test]
fn placement_matches_an_independent_milp() {
    let Some(python) = python() else {
        let message = "skipping: no Python with highspy (pip install highspy, or set DIBS_HIGHS_PYTHON)";
        assert!(std::env::var_os("DIBS_REQUIRE_ORACLE").is_none(), "{message}");
        eprintln!("{message}");
        return;
    };
    let mut oracle = Command::new(python)
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the oracle");
    let mut to_oracle = oracle.stdin.take().unwrap();
    let mut from_oracle = BufReader::new(oracle.stdout.take().unwrap());

    let mut instances = shared_instances();
    instances.extend((1..=GENERATED as u64).map(generated));
    let (mut agreed, mut both_infeasible, mut within_gap) = (0, 0, 0);
    let (mut ours, mut theirs) = (Duration::ZERO, 0.0);
    let mut slowest: (Duration, String) = (Duration::ZERO, String::new());
    for instance in &instances {
        let started = Instant::now();
        let placement: Placement = place(
            Demand {
                request: &instance.request,
                gpus: instance.request.gpus.get(),
                now: instance.request.earliest_start,
                joining: &[],
            },
            &instance.offers,
            &instance.rules,
            SolverConfig::default(),
        );
        let took = started.elapsed();
        ours += took;
        if took > slowest.0 {
            slowest = (took, instance.label.clone());
        }
        writeln!(to_oracle, "{}", problem_json(instance)).unwrap();
        // HiGHS prints a banner on standard output when a solver is created: skip to the answer.
        let mut line = String::new();
        while !line.starts_with('{') {
            line.clear();
            assert!(from_oracle.read_line(&mut line).unwrap() > 0, "the oracle stopped");
        }
        let answer: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        theirs += answer["seconds"].as_f64().unwrap_or(0.0);
        let label = &instance.label;
        if !label.starts_with("generated") {
            eprintln!(
                "{label}: dibs ${:.2} in {:.1} ms ({}); HiGHS {} ${:.2} in {:.1} ms",
                placement.effective_cost,
                took.as_secs_f64() * 1e3,
                placement.solver,
                answer["status"].as_str().unwrap_or("?"),
                answer["objective"].as_f64().unwrap_or(f64::NAN),
                answer["seconds"].as_f64().unwrap_or(0.0) * 1e3
            );
        }
        match answer["status"].as_str() {
            Some("infeasible") => {
                assert!(
                    placement.infeasible.is_some(),
                    "{label}: HiGHS finds no award, dibs awarded {:?}",
                    placement.allocations
                );
                both_infeasible += 1;
            }
            Some("optimal") => {
                let best = answer["objective"].as_f64().unwrap();
                let why = placement.infeasible.as_deref().unwrap_or("");
                assert!(placement.infeasible.is_none(), "{label}: HiGHS finds ${best:.2}, dibs none: {why}");
                let cost = placement.effective_cost;
                let tolerance = 1e-6 * best.abs().max(1.0);
                match placement.solver.optimality() {
                    Optimality::Proven => {
                        assert!(
                            (cost - best).abs() <= tolerance,
                            "{label}: dibs ${cost:.2} (proven) vs HiGHS ${best:.2}; {}",
                            placement.solver
                        );
                        agreed += 1;
                    }
                    Optimality::Gap { gap } => {
                        assert!(
                            cost >= best - tolerance && cost <= best * (1.0 + gap) + tolerance,
                            "{label}: dibs ${cost:.2} (gap {gap}) vs HiGHS ${best:.2}"
                        );
                        within_gap += 1;
                    }
                    Optimality::Unknown => {
                        assert!(
                            cost >= best - tolerance,
                            "{label}: dibs ${cost:.2} below the optimum ${best:.2}"
                        );
                        within_gap += 1;
                    }
                }
            }
            other => panic!("{label}: the oracle answered {other:?}: {answer}"),
        }
    }
    drop(to_oracle);
    let _ = oracle.wait();
    eprintln!(
        "{} instances: {agreed} proven optimal and equal to HiGHS, {within_gap} within the stated gap, \
         {both_infeasible} infeasible for both; dibs {:.1} ms in all (slowest {:.1} ms: {}), HiGHS {:.1} ms",
        instances.len(),
        ours.as_secs_f64() * 1e3,
        slowest.0.as_secs_f64() * 1e3,
        slowest.1,
        theirs * 1e3
    );
    assert!(agreed + within_gap > instances.len() / 2, "too few instances had an award to compare");
}
