//! Benchmarks for one placement decision.
//!
//! `cargo bench -p dibs-core --bench decision` prints, for each case, p50 and
//! p95 over repeated runs and the ratio to a baseline measured in the same
//! run (a filter-only pass over the same offers), so the figures survive a
//! noisy machine. Targets (issue 2): one decision against all the shared
//! price catalogs p50 < 1 ms once loaded; a split award over 1,000 offers with caps
//! < 50 ms.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use dibs_core::catalog::{self, CatalogDefaults};
use dibs_core::contract::ShareBasis;
use dibs_core::placement::{Cap, Demand, Rules, SolverConfig, place};
use dibs_core::request::{Request, RequestSpec};
use dibs_core::types::{Accelerator, Offer, OfferKind, Price, ProviderName, Region, Timestamp};

const SHARED_CATALOGS: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/catalogs/skypilot-v8");

fn request(accelerator: &str, gpus: u32) -> Request {
    RequestSpec {
        id: "bench".into(),
        accelerators: vec![accelerator.into()],
        gpus,
        min_block: Some(8),
        duration_hours: 720,
        earliest_start: Timestamp::parse("2026-01-01").unwrap(),
        deliver_by: None,
        regions: vec![],
        workload: "training".into(),
        max_price: None,
        allow_spot: false,
    }
    .validate()
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
    let demand = Demand { request, gpus: request.gpus.get(), now: request.earliest_start };
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
    let catalog =
        catalog::load_catalog_path(path, &CatalogDefaults::default()).expect("shared catalogs load");
    let load = started.elapsed();
    println!(
        "catalog load: {} offers from the nine shared price catalogs in {:.1} ms",
        catalog.offers.len(),
        load.as_secs_f64() * 1e3
    );
    let offers = &catalog.offers;
    for (label, gpus, caps) in [
        ("decision, 64 x H100, all catalogs (single offer)", 64, vec![]),
        ("decision, 512 x H100, all catalogs, 40% cap (MILP)", 512, vec![0.4]),
        ("decision, 2048 x H100, all catalogs, 25% cap (MILP)", 2048, vec![0.25]),
    ] {
        let request = request("H100", gpus);
        let rules = Rules {
            caps: caps
                .iter()
                .map(|s| Cap { max_share: *s, basis: ShareBasis::Gpus, source: "bench".into() })
                .collect(),
            ..Rules::default()
        };
        let demand = Demand { request: &request, gpus, now: request.earliest_start };
        let result = place(demand, offers, &rules, SolverConfig::default());
        let base = baseline(&request, offers);
        let runs = 200;
        let timing = time(runs, || {
            black_box(place(demand, offers, &rules, SolverConfig::default()));
        });
        report(label, runs, timing, base, Duration::from_millis(1));
        println!(
            "    -> {} allocation(s), solver: {}{}",
            result.allocations.len(),
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

fn synthetic_offers(count: usize) -> Vec<Offer> {
    let providers =
        ["azure", "aws", "gcp", "oci", "lambda", "nebius", "coreweave", "crusoe", "vast", "verda"];
    let mut random = SplitMix(42);
    (0..count)
        .map(|i| {
            let provider = providers[i % providers.len()];
            let region = format!("region-{}", random.next() % 20);
            Offer {
                id: format!("{provider}/{region}/{i}"),
                provider: ProviderName::new(provider).unwrap(),
                region: Region::new(&region).unwrap(),
                accelerator: Accelerator::new("H100").unwrap(),
                gpus_available: 8 * (1 + (random.next() % 64) as u32),
                gpus_per_node: 8,
                price: Price::new(2.0 + (random.next() % 1000) as f64 / 100.0).unwrap(),
                lead_time_hours: (random.next() % 72) as u32,
                kind: OfferKind::OnDemand,
                valid_until: None,
                instance_type: "synthetic".into(),
            }
        })
        .collect()
}

fn split_award_over_1000_offers() {
    let offers = synthetic_offers(1000);
    for (label, gpus, cap, basis, min_providers) in [
        ("split, 1,000 offers, 4096 GPUs, 25% GPU cap", 4096, 0.25, ShareBasis::Gpus, None),
        ("split, 1,000 offers, 4096 GPUs, 25% spend cap", 4096, 0.25, ShareBasis::Spend, None),
        ("split, 1,000 offers, 256 GPUs, no cap, >= 3 providers", 256, 1.0, ShareBasis::Gpus, Some(3)),
    ] {
        let request = request("H100", gpus);
        let rules = Rules {
            caps: vec![Cap { max_share: cap, basis, source: "bench".into() }],
            min_providers: min_providers.map(|k| (k, "bench".to_owned())),
            ..Rules::default()
        };
        let demand = Demand { request: &request, gpus, now: request.earliest_start };
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
