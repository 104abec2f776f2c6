//! Benchmarks for one placement decision.
//!
//! `cargo bench -p dibs-core --bench decision` prints, for each case, p50 and
//! p95 over repeated runs and the ratio to a baseline measured in the same
//! run (a filter-only pass over the same offers), so the figures survive a
//! noisy machine. Targets (issues 2 and 10): one decision against all the shared
//! price catalogs p50 < 1 ms once loaded; a split award (spend caps included, and
//! 2,048 GPUs over the shared catalogs) < 50 ms. Node counts are the integers.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use dibs_core::catalog;
use dibs_core::contract::ShareBasis;
use dibs_core::names::Names;
use dibs_core::placement::{Cap, Demand, Rules, SolverConfig, place};
use dibs_core::request::{Request, RequestSpec};
use dibs_core::types::{
    Accelerator, GpuCount, NodePrice, Offer, OfferKind, Price, ProviderName, Region, Timestamp,
};

// The allocator the `dibs` binary runs with, so the figures are those of a decision there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SHARED_CATALOGS: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/catalogs/skypilot-v8");

fn request(accelerator: &str, gpus: u32, offers: &[Offer]) -> Request {
    RequestSpec {
        id: "bench".into(),
        accelerators: vec![accelerator.into()],
        gpus,
        block: Some(8),
        duration_hours: 720,
        earliest_start: Timestamp::parse("2026-01-01").unwrap(),
        workload: "training".into(),
        ..RequestSpec::default()
    }
    .validate(&Names::from_offers(offers))
    .unwrap()
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() * 95 / 100])
}

fn time(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    f(); // Warm up.
    percentiles(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect(),
    )
}

fn report(name: &str, runs: usize, (p50, p95): (Duration, Duration), baseline: Duration, target: Duration) {
    let verdict = if p50 <= target { "meets" } else { "MISSES" };
    println!(
        "{name:<52} p50 {:>9.3} ms  p95 {:>9.3} ms  ({runs} runs; {:.1}x the filter-only baseline; {verdict} target {} ms)",
        p50.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3,
        p50.as_secs_f64() / baseline.as_secs_f64().max(1e-9),
        target.as_secs_f64() * 1e3,
    );
}

/// The same offers, with a ceiling of zero so every offer fails a filter and nothing is optimized.
fn baseline(request: &Request, offers: &[Offer]) -> Duration {
    let rules = Rules { price_ceiling: Some(Price::new(0.0).unwrap()), ..Rules::default() };
    let demand = Demand { request, gpus: request.gpus.get(), now: request.earliest_start, joining: &[] };
    time(50, || {
        black_box(place(demand, offers, &rules, SolverConfig::default()));
    })
    .0
}

fn shared_catalog_decisions() {
    let path = Path::new(SHARED_CATALOGS);
    if !path.is_dir() {
        println!("skipping the shared-catalog benchmark: {SHARED_CATALOGS} not found");
        return;
    }
    let started = Instant::now();
    let catalog = catalog::load_catalog(&[path.to_path_buf()], None).expect("shared catalogs load");
    let load = started.elapsed();
    println!(
        "catalog load: {} offers from the nine shared price catalogs in {:.1} ms",
        catalog.offers.len(),
        load.as_secs_f64() * 1e3
    );
    let offers = &catalog.offers;
    let gpu = |share: f64| Cap { max_share: share, basis: ShareBasis::Gpus, source: "bench".into() };
    let spend = |share: f64| Cap { max_share: share, basis: ShareBasis::Spend, source: "bench".into() };
    // (label, GPUs, caps, minimum providers, target)
    type Case = (&'static str, u32, Vec<Cap>, Option<u32>, Duration);
    let cases: [Case; 7] = [
        ("decision, 64 x H100, all catalogs (single offer)", 64, vec![], None, Duration::from_millis(1)),
        (
            "decision, 512 x H100, all catalogs, 40% GPU cap",
            512,
            vec![gpu(0.4)],
            None,
            Duration::from_millis(1),
        ),
        (
            "decision, 2048 x H100, all catalogs, 25% GPU cap",
            2048,
            vec![gpu(0.25)],
            None,
            Duration::from_millis(1),
        ),
        (
            "split, 512 x H100, all catalogs, 30% spend cap",
            512,
            vec![spend(0.3)],
            None,
            Duration::from_millis(50),
        ),
        (
            "split, 2048 x H100, all catalogs, 30% spend cap",
            2048,
            vec![spend(0.3)],
            None,
            Duration::from_millis(50),
        ),
        (
            "split, 2048 x H100, all catalogs, 25% GPU + 30% spend",
            2048,
            vec![gpu(0.25), spend(0.3)],
            None,
            Duration::from_millis(50),
        ),
        ("split, 512 x H100, all catalogs, >= 3 providers", 512, vec![], Some(3), Duration::from_millis(50)),
    ];
    for (label, gpus, caps, min_providers, target) in cases {
        let request = request("H100", gpus, offers);
        let rules =
            Rules { caps, min_providers: min_providers.map(|k| (k, "bench".to_owned())), ..Rules::default() };
        let demand = Demand { request: &request, gpus, now: request.earliest_start, joining: &[] };
        let result = place(demand, offers, &rules, SolverConfig::default());
        let base = baseline(&request, offers);
        let runs = 200;
        let timing = time(runs, || {
            black_box(place(demand, offers, &rules, SolverConfig::default()));
        });
        report(label, runs, timing, base, target);
        let candidates = result.verdicts.iter().filter(|v| v.price > 0.0).count();
        println!(
            "    -> {} allocation(s), ${:.0}, solver: {}{} ({candidates} offers weighed)",
            result.allocations.len(),
            result.list_cost,
            result.solver,
            result.infeasible.map(|w| format!(", infeasible: {w}")).unwrap_or_default()
        );
    }
}

/// A deterministic pseudo-random sequence (SplitMix64), so runs are comparable.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `count` offers of 8-GPU nodes from ten providers. `tied`: each provider sells at two price
/// levels only, as real catalogs do (one instance type at one price in many regions), the case
/// that makes a branch-and-bound without merging explode.
fn synthetic_offers(count: usize, tied: bool) -> Vec<Offer> {
    let providers =
        ["azure", "aws", "gcp", "oci", "lambda", "nebius", "coreweave", "crusoe", "vast", "verda"];
    let mut random = SplitMix(42);
    (0..count)
        .map(|i| {
            let provider = providers[i % providers.len()];
            let region = format!("region-{}", random.next() % 20);
            let gpu_price = if tied {
                2.0 + (i % providers.len()) as f64 * 0.5 + (random.next() % 2) as f64
            } else {
                2.0 + (random.next() % 1000) as f64 / 100.0
            };
            Offer {
                id: format!("{provider}/{region}/{i}"),
                provider: ProviderName::new(provider).unwrap(),
                region: Region::new(&region).unwrap(),
                zone: None,
                instance_type: "synthetic".into(),
                accelerator: Accelerator::new("H100").unwrap(),
                gpus_per_node: GpuCount::new(8).unwrap(),
                nodes_available: 1 + (random.next() % 64) as u32,
                node_price: NodePrice::new(gpu_price * 8.0).unwrap(),
                lead_time_hours: if tied { 24 } else { (random.next() % 72) as u32 },
                kind: OfferKind::OnDemand,
                valid_until: None,
                bills_from_delivery: true,
                price_source: None,
            }
        })
        .collect()
}

fn split_award_over_1000_offers() {
    for (label, tied, gpus, cap, basis, min_providers) in [
        ("split, 1,000 offers, 4096 GPUs, 25% GPU cap", false, 4096, 0.25, ShareBasis::Gpus, None),
        ("split, 1,000 offers, 4096 GPUs, 25% spend cap", false, 4096, 0.25, ShareBasis::Spend, None),
        ("split, 1,000 offers, 256 GPUs, no cap, >= 3 providers", false, 256, 1.0, ShareBasis::Gpus, Some(3)),
        ("split, 1,000 tied offers, 4096 GPUs, 25% spend cap", true, 4096, 0.25, ShareBasis::Spend, None),
        ("split, 1,000 tied offers, 2048 GPUs, 30% spend, >= 4", true, 2048, 0.3, ShareBasis::Spend, Some(4)),
    ] {
        let offers = synthetic_offers(1000, tied);
        let request = request("H100", gpus, &offers);
        let rules = Rules {
            caps: vec![Cap { max_share: cap, basis, source: "bench".into() }],
            min_providers: min_providers.map(|k| (k, "bench".to_owned())),
            ..Rules::default()
        };
        let demand = Demand { request: &request, gpus, now: request.earliest_start, joining: &[] };
        let result = place(demand, &offers, &rules, SolverConfig::default());
        let base = baseline(&request, &offers);
        let runs = 20;
        let timing = time(runs, || {
            black_box(place(demand, &offers, &rules, SolverConfig::default()));
        });
        report(label, runs, timing, base, Duration::from_millis(50));
        let providers: std::collections::BTreeSet<_> =
            result.allocations.iter().map(|a| &a.provider).collect();
        println!(
            "    -> {} allocation(s) across {} providers, ${:.0}, solver: {}",
            result.allocations.len(),
            providers.len(),
            result.list_cost,
            result.solver
        );
    }
}

fn main() {
    // `cargo test --benches` passes --bench-less flags; run quickly then.
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    shared_catalog_decisions();
    split_award_over_1000_offers();
}
