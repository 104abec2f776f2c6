//! Replay benchmark: the Philly dev trace through the engine.
//!
//! `cargo bench -p dibs-sim --bench replay` runs the full dev trace (43,640
//! jobs, one capacity request per job) with generated incidents under the
//! embedded default contracts and the bundled price table, and prints wall
//! time, engine inputs per second and ledger entries per second. Beside it,
//! the same number of inputs pushed through and popped from a binary heap
//! alone: the floor any discrete-event loop pays. Targets (issue 4): the
//! whole run under 2 s in release, at least 1 M events/s.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use dibs_core::catalog;
use dibs_core::contract;
use dibs_core::types::{ProviderName, Timestamp};
use dibs_providers::HolderBehaviour;
use dibs_sim::incidents;
use dibs_sim::prices::PricePath;
use dibs_sim::simulate::{self, Scenario};
use dibs_sim::trace::{self, TraceOptions};

// The same allocator as the `dibs` binary: the run allocates per event.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PHILLY: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/traces/philly_demand_dev.csv");

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let path = Path::new(PHILLY);
    if !path.is_file() {
        println!("skipping the replay benchmark: {PHILLY} not found");
        return;
    }
    let start = Timestamp::parse("2026-01-01").unwrap();
    for (label, group_hours) in [("one request per job", 0.0), ("jobs grouped per hour", 1.0)] {
        let options = TraceOptions {
            start,
            group_hours,
            gpu_scale: 1.0,
            time_scale: 1.0,
            block: 8,
            tokens_per_gpu_second: 2500.0,
            max_requests: None,
        };
        let read = Instant::now();
        let demand = trace::read_trace_file(path, &options).expect("the dev trace loads");
        let read_seconds = read.elapsed().as_secs_f64();
        let offers = catalog::bundled_catalog().offers;
        let providers: Vec<ProviderName> = offers
            .iter()
            .map(|o| o.provider.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let horizon = 24.0 * 70.0;
        let scenario = Scenario {
            contracts: contract::builtin_contracts("default").unwrap(),
            offers,
            demand: demand.requests,
            accelerators: vec!["H100".into()],
            incidents: incidents::generate_incidents(&providers, start, horizon, 2.0, 12.0, 7),
            price_path: PricePath::Static,
            holder: HolderBehaviour::AcceptRate(0.5),
            holder_answer_hours: 36.0,
            seed: 7,
            start,
            revenue_per_gpu_hour: 0.0,
            declared: Vec::new(),
            settle_every_hours: 24.0,
        };
        let variant = simulate::variants(&[]).unwrap().remove(0);
        let report = simulate::run_variant(&scenario, &variant, &mut |_| {});
        let inputs = report.engine_inputs;

        // The floor: the same number of timed inputs through a binary heap.
        let heap = Instant::now();
        let mut queue = BinaryHeap::new();
        for i in 0..inputs as u64 {
            queue.push(Reverse((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20, i)));
        }
        while let Some(item) = queue.pop() {
            black_box(item);
        }
        let heap_seconds = heap.elapsed().as_secs_f64();

        println!(
            "{label}: {} requests, {} incidents; trace read in {:.3} s; run {:.3} s wall ({} target 2 s)",
            report.requests,
            report.incidents,
            read_seconds,
            report.wall_seconds,
            if report.wall_seconds < 2.0 { "meets" } else { "MISSES" },
        );
        println!(
            "    {} engine inputs = {:.0}/s ({} target 1 M/s); {} ledger entries = {:.0}/s; heap-only floor {:.0} inputs/s ({:.0}x faster)",
            inputs,
            inputs as f64 / report.wall_seconds,
            if inputs as f64 / report.wall_seconds >= 1e6 { "meets" } else { "MISSES" },
            report.ledger_entries,
            report.ledger_entries as f64 / report.wall_seconds,
            inputs as f64 / heap_seconds,
            report.wall_seconds / heap_seconds,
        );
        println!(
            "    spend ${:.0}, time to capacity p50 {:.1} h p95 {:.1} h, {} failovers, {} spillovers, ledger head {}",
            report.spend_total,
            report.time_to_capacity_hours.p50,
            report.time_to_capacity_hours.p95,
            report.failovers,
            report.spillovers,
            &report.ledger_head[..16]
        );
    }
}
