//! `dibs simulate`: deterministic what-if over real traces.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use dibs_core::contract;
use dibs_core::ledger::Chain;
use dibs_core::types::{ProviderName, Timestamp};
use dibs_providers::HolderBehaviour;
use dibs_sim::incidents::{self, Incident};
use dibs_sim::prices::{self, PricePath};
use dibs_sim::simulate::{self, Scenario, VariantReport};
use dibs_sim::trace::{self, TraceOptions};
use serde::Serialize;

use crate::exit::Exit;

#[derive(Args)]
pub struct SimulateArgs {
    /// A demand trace: training jobs (id,submit_time_s,gpus,duration_s) or LLM
    /// requests (timestamp_s,context_tokens,generated_tokens).
    #[arg(long, value_name = "PATH")]
    trace: PathBuf,
    /// Contract TOML files or directories. Default: the embedded default set.
    #[arg(long, value_name = "DIR")]
    contracts: Vec<PathBuf>,
    /// A policy file that replaces the contract set's policy.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    catalog: crate::CatalogArgs,
    /// Seed for the holder's choices and generated incidents.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run variants side by side: KEY=V1,V2,... with KEY one of window (hours or
    /// none), cap (share or none), mode (offer-first, match), holder (accept,
    /// decline, silent, partial:N, rate:P), incidents (on, off). Several --vary
    /// flags combine (at most 16 variants).
    #[arg(long, value_name = "KEY=V1,V2")]
    vary: Vec<String>,
    /// Write CSV tables and SVG/PNG plots here.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Where trace time 0 lands (YYYY-MM-DD or RFC 3339); decides which contract versions apply.
    #[arg(long, default_value = "2026-01-01")]
    start: String,
    /// Group jobs submitted within this many hours into one capacity request (0: one request per job).
    #[arg(long, default_value_t = 24.0)]
    group_hours: f64,
    /// Multiply every request's GPUs (replay as a larger buyer).
    #[arg(long, default_value_t = 1.0)]
    gpu_scale: f64,
    /// Multiply trace times and durations (replay over a longer horizon).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// LLM traces: tokens per second one GPU serves (the throughput model).
    #[arg(long, default_value_t = 2500.0)]
    tokens_per_gpu_second: f64,
    /// GPUs per block (requests come in whole blocks).
    #[arg(long, default_value_t = 8)]
    block: u32,
    /// Replay at most this many capacity requests.
    #[arg(long)]
    max_requests: Option<usize>,
    /// Acceptable accelerators, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "H100")]
    accelerator: Vec<String>,
    /// How the first-refusal holder answers: accept, decline, silent, partial:N or rate:P.
    #[arg(long, default_value = "rate:0.5")]
    holder: String,
    /// The holder's mean answer time, hours. Each answer time is drawn from an
    /// exponential distribution with this mean (seeded), so some answers come
    /// after a short window has lapsed.
    #[arg(long, default_value_t = 36.0)]
    holder_answer_hours: f64,
    /// Replay a status-page incident history (gcp_incidents.csv format) onto a provider: PATH[:PROVIDER].
    #[arg(long, value_name = "PATH[:PROVIDER]")]
    incidents: Option<String>,
    /// The instant of the incident or price history that maps to --start.
    #[arg(long, default_value = "2021-01-01")]
    history_from: String,
    /// Generated incidents per provider per 30 days (0: none), from the seed.
    #[arg(long, default_value_t = 0.0)]
    incident_rate: f64,
    /// Mean length of a generated incident, hours.
    #[arg(long, default_value_t = 12.0)]
    incident_mean_hours: f64,
    /// Price path: static, or a price history CSV (fsdl_gpu_price_history.csv format).
    #[arg(long, default_value = "static")]
    prices: String,
    /// Revenue earned per GPU-hour of inference and api work (for revenue share and triggers).
    #[arg(long, default_value_t = 0.0)]
    revenue_per_gpu_hour: f64,
    /// Declare an event for review triggers: NAME@DATE (repeatable).
    #[arg(long, value_name = "NAME@DATE")]
    declare: Vec<String>,
    /// Settle (accrue, evaluate triggers, check invariants) every this many hours of virtual time.
    #[arg(long, default_value_t = 24.0)]
    settle_every_hours: f64,
}

pub fn run(args: SimulateArgs) -> Result<Exit> {
    let start = Timestamp::parse(&args.start).map_err(|e| anyhow::anyhow!("--start: {e}"))?;
    let history_from =
        Timestamp::parse(&args.history_from).map_err(|e| anyhow::anyhow!("--history-from: {e}"))?;
    let holder = HolderBehaviour::parse(&args.holder).map_err(|e| anyhow::anyhow!("--holder: {e}"))?;
    for (name, value) in [
        ("--gpu-scale", args.gpu_scale),
        ("--time-scale", args.time_scale),
        ("--settle-every-hours", args.settle_every_hours),
        ("--tokens-per-gpu-second", args.tokens_per_gpu_second),
    ] {
        if !(value.is_finite() && value > 0.0) {
            bail!("{name}: {value} must be a positive number");
        }
    }
    for (name, value) in [
        ("--group-hours", args.group_hours),
        ("--holder-answer-hours", args.holder_answer_hours),
        ("--incident-rate", args.incident_rate),
        ("--incident-mean-hours", args.incident_mean_hours),
        ("--revenue-per-gpu-hour", args.revenue_per_gpu_hour),
    ] {
        if !(value.is_finite() && value >= 0.0) {
            bail!("{name}: {value} must be zero or positive");
        }
    }
    if args.block == 0 {
        bail!("--block: must be at least 1");
    }
    let varies = args
        .vary
        .iter()
        .map(|v| simulate::parse_vary(v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let variants = simulate::variants(&varies).map_err(anyhow::Error::msg)?;
    let declared = args
        .declare
        .iter()
        .map(|d| {
            let (name, at) =
                d.split_once('@').with_context(|| format!("--declare {d:?}: expected NAME@DATE"))?;
            let at = Timestamp::parse(at).map_err(|e| anyhow::anyhow!("--declare {d:?}: {e}"))?;
            Ok((name.to_owned(), at))
        })
        .collect::<Result<Vec<_>>>()?;

    let mut contracts = if args.contracts.is_empty() {
        contract::builtin_contracts("default").context("the embedded default contract set")?
    } else {
        crate::load_contracts(&args.contracts).map_err(|e| anyhow::anyhow!("{e}"))?
    };
    if let Some(path) = &args.policy {
        let text = std::fs::read_to_string(path).with_context(|| format!("--policy {}", path.display()))?;
        contracts.policy =
            contract::parse_policy(&path.display().to_string(), &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let catalog = crate::load_catalogs(&args.catalog)?;
    crate::warn_unknown_names(&contracts, &catalog);
    crate::warn_uncontracted(&contracts, &catalog);
    let names = dibs_core::names::Names::from_offers(&catalog.offers);
    for accelerator in &args.accelerator {
        names.accelerator(accelerator).map_err(|e| anyhow::anyhow!("--accelerator: {e}"))?;
    }

    let options = TraceOptions {
        start,
        group_hours: args.group_hours,
        gpu_scale: args.gpu_scale,
        time_scale: args.time_scale,
        block: args.block,
        tokens_per_gpu_second: args.tokens_per_gpu_second,
        max_requests: args.max_requests,
    };
    let demand = trace::read_trace_file(&args.trace, &options).map_err(|e| anyhow::anyhow!("{e}"))?;
    if demand.requests.is_empty() {
        bail!("--trace {}: no capacity requests in the trace", args.trace.display());
    }
    let last = demand
        .requests
        .iter()
        .map(|r| r.submit.plus_hours(f64::from(r.duration_hours)))
        .max()
        .unwrap_or(start);
    let horizon_hours = last.hours_since(start).max(1.0);

    let providers: Vec<ProviderName> =
        catalog.offers.iter().map(|o| o.provider.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let mut incident_list: Vec<Incident> = Vec::new();
    if let Some(spec) = &args.incidents {
        let (path, provider) = match spec.rsplit_once(':') {
            Some((path, provider)) if !provider.contains('/') => (path, provider),
            _ => (spec.as_str(), "gcp"),
        };
        let provider = ProviderName::new(provider).map_err(|e| anyhow::anyhow!("--incidents: {e}"))?;
        let text = std::fs::read_to_string(path).with_context(|| format!("--incidents {path}"))?;
        incident_list =
            incidents::replay_incidents(path, &text, &provider, history_from, start, horizon_hours, "medium")
                .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if args.incident_rate > 0.0 {
        incident_list.extend(incidents::generate_incidents(
            &providers,
            start,
            horizon_hours,
            args.incident_rate,
            args.incident_mean_hours,
            args.seed,
        ));
        incident_list.sort_by(|a, b| a.begin.cmp(&b.begin).then_with(|| a.id.cmp(&b.id)));
    }
    let price_path = if args.prices == "static" {
        PricePath::Static
    } else {
        let text =
            std::fs::read_to_string(&args.prices).with_context(|| format!("--prices {}", args.prices))?;
        let family = args.accelerator.first().map(String::as_str).unwrap_or("H100");
        prices::replay_price_history(&args.prices, &text, family, history_from, start, args.time_scale)
            .map_err(|e| anyhow::anyhow!("{e}"))?
    };

    let scenario = Scenario {
        contracts,
        offers: catalog.offers,
        demand: demand.requests,
        accelerators: args.accelerator.clone(),
        incidents: incident_list,
        price_path,
        holder,
        holder_answer_hours: args.holder_answer_hours,
        seed: args.seed,
        start,
        revenue_per_gpu_hour: args.revenue_per_gpu_hour,
        declared,
        settle_every_hours: args.settle_every_hours,
    };

    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new((variants.len() * 1000) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {percent}% {msg}",
            )
            .expect("a valid template"),
        );
        bar
    });
    let mut reports = Vec::new();
    for (index, variant) in variants.iter().enumerate() {
        if let Some(bar) = &bar {
            bar.set_message(variant.name.clone());
        }
        let report = simulate::run_variant(&scenario, variant, &mut |fraction| {
            if let Some(bar) = &bar {
                bar.set_position((index * 1000) as u64 + (fraction * 1000.0) as u64);
            }
        });
        reports.push(report);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    // One head over all variants: each variant's head chained in order.
    let mut chain = Chain::default();
    for report in &reports {
        chain.append_bytes(report.ledger_head.as_bytes());
    }
    let output = Output {
        ledger_head: chain.head_hex(),
        seed: args.seed,
        trace: args.trace.display().to_string(),
        grouping: demand.jobs_per_request_note.clone(),
        requests: scenario.demand.len(),
        incidents: scenario.incidents.len(),
        variants: &reports,
        differences: explain(&reports),
    };
    if let Some(dir) = &args.out {
        write_outputs(dir, &reports)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        print!("{}", table(&output));
        if let Some(dir) = &args.out {
            println!("\nWrote CSV tables and SVG/PNG plots to {}", dir.display());
        }
    }
    for report in &reports {
        if let Some(violation) = &report.invariant_violation {
            eprintln!(
                "invariant violated in variant {:?}: {violation}\nreproduce with --seed {}",
                report.name, args.seed
            );
            return Ok(Exit::InvariantBroken);
        }
    }
    Ok(Exit::Success)
}

/// The `--json` object.
#[derive(Serialize)]
struct Output<'a> {
    /// Each variant's ledger head, hash-chained in variant order.
    ledger_head: String,
    seed: u64,
    trace: String,
    grouping: String,
    requests: usize,
    incidents: usize,
    variants: &'a [VariantReport],
    differences: Vec<String>,
}

fn money(usd: f64) -> String {
    let abs = usd.abs();
    let text = if abs >= 1e9 {
        format!("${:.2}B", abs / 1e9)
    } else if abs >= 1e6 {
        format!("${:.2}M", abs / 1e6)
    } else if abs >= 1e3 {
        format!("${:.1}k", abs / 1e3)
    } else {
        format!("${abs:.0}")
    };
    if usd < 0.0 { format!("-{text}") } else { text }
}

fn table(output: &Output<'_>) -> String {
    let reports = output.variants;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Trace {}: {} capacity requests ({}); {} incidents; seed {}",
        output.trace, output.requests, output.grouping, output.incidents, output.seed
    );
    let width = reports.iter().map(|r| r.name.len()).max().unwrap_or(8).max(14);
    let _ = write!(s, "\n{:<28}", "");
    for r in reports {
        let _ = write!(s, " {:>width$}", r.name);
    }
    let _ = writeln!(s);
    let mut row = |label: &str, value: &dyn Fn(&VariantReport) -> String| {
        let _ = write!(s, "{label:<28}");
        for r in reports {
            let _ = write!(s, " {:>width$}", value(r));
        }
        let _ = writeln!(s);
    };
    row("total spend", &|r| money(r.spend_total));
    let providers: BTreeSet<&String> = reports.iter().flat_map(|r| r.spend_by_provider.keys()).collect();
    for p in &providers {
        row(&format!("  spend {p}"), &|r| money(r.spend_by_provider.get(*p).copied().unwrap_or(0.0)));
    }
    for p in &providers {
        row(&format!("  share {p}"), &|r| {
            format!("{:.1}%", 100.0 * r.share_by_provider.get(*p).copied().unwrap_or(0.0))
        });
    }
    row("GPU-hours delivered", &|r| format!("{:.0}", r.gpu_hours_delivered));
    row("spend per GPU-hour", &|r| format!("${:.2}", r.spend_per_gpu_hour));
    row("concentration (HHI)", &|r| format!("{:.0}", r.hhi));
    row("time to capacity p50", &|r| format!("{:.1} h", r.time_to_capacity_hours.p50));
    row("time to capacity p95", &|r| format!("{:.1} h", r.time_to_capacity_hours.p95));
    row("time to capacity max", &|r| format!("{:.1} h", r.time_to_capacity_hours.max));
    row("requests never filled", &|r| r.time_to_capacity_hours.requests_never_filled.to_string());
    row("unfilled GPU-hours", &|r| format!("{:.0}", r.unfilled_gpu_hours));
    row("first refusal solicited", &|r| r.first_refusal.solicited.to_string());
    row("  accepted / part", &|r| {
        format!("{} / {}", r.first_refusal.accepted, r.first_refusal.accepted_part)
    });
    row("  declined / lapsed", &|r| format!("{} / {}", r.first_refusal.declined, r.first_refusal.lapsed));
    row("  skipped / no-better-terms", &|r| {
        format!("{} / {}", r.first_refusal.skipped, r.first_refusal.no_better_terms)
    });
    row("spillovers", &|r| r.spillovers.to_string());
    row("failovers", &|r| r.failovers.to_string());
    row("revenue", &|r| money(r.revenue));
    row("revenue share owed", &|r| money(r.revenue_share_owed));
    row("triggers fired", &|r| r.triggers_fired.len().to_string());
    let commitments: BTreeSet<(String, String)> = reports
        .iter()
        .flat_map(|r| r.commitments.iter().map(|c| (c.contract.clone(), c.clause.clone())))
        .collect();
    for (contract, clause) in &commitments {
        row(&format!("{clause} burned"), &|r| {
            r.commitments
                .iter()
                .find(|c| &c.contract == contract && &c.clause == clause)
                .map_or("-".into(), |c| format!("{} of {}", money(c.burned), money(c.amount)))
        });
        row("  projected shortfall", &|r| {
            r.commitments
                .iter()
                .find(|c| &c.contract == contract && &c.clause == clause)
                .map_or("-".into(), |c| money(c.projected_shortfall))
        });
    }
    row("engine inputs", &|r| r.engine_inputs.to_string());
    row("ledger entries", &|r| r.ledger_entries.to_string());
    row("wall time", &|r| format!("{:.2} s", r.wall_seconds));
    row("ledger head", &|r| r.ledger_head[..12].to_owned());
    for r in reports {
        for f in &r.triggers_fired {
            let _ = writeln!(
                s,
                "\n[{}] review trigger {}/{} fired at {}: {}",
                r.name, f.contract, f.clause, f.at, f.condition
            );
        }
        for e in &r.trigger_errors {
            let _ = writeln!(s, "\n[{}] review trigger not evaluated: {e}", r.name);
        }
    }
    for r in reports.iter().filter(|r| !r.unfilled_reasons.is_empty()) {
        let reasons: Vec<String> =
            r.unfilled_reasons.iter().map(|(why, count)| format!("{count} x {why}")).collect();
        let _ = writeln!(s, "\n[{}] rounds left unfilled: {}", r.name, reasons.join("; "));
    }
    if !output.differences.is_empty() {
        let _ = writeln!(s, "\nWhat the differences come from:");
        for line in &output.differences {
            let _ = writeln!(s, "  * {line}");
        }
    }
    let _ = writeln!(s, "\nledger head (all variants): {}", output.ledger_head);
    s
}

/// Sentences that attribute each variant's differences from the first one to what happened in it.
fn times(n: usize) -> String {
    if n == 1 { "once".to_owned() } else { format!("{n} times") }
}

fn explain(reports: &[VariantReport]) -> Vec<String> {
    let Some(base) = reports.first() else { return Vec::new() };
    let mut lines = Vec::new();
    for r in &reports[1..] {
        let mut causes = Vec::new();
        let fr = |x: &VariantReport| {
            (
                x.first_refusal.accepted + x.first_refusal.accepted_part,
                x.first_refusal.declined,
                x.first_refusal.lapsed,
                x.first_refusal.solicited,
            )
        };
        let (a0, d0, l0, s0) = fr(base);
        let (a1, d1, l1, s1) = fr(r);
        if s1 != s0 {
            causes.push(format!("the holder was solicited {} instead of {}", times(s1), times(s0)));
        }
        if a1 != a0 {
            causes.push(format!("it took capacity {} instead of {}", times(a1), times(a0)));
        }
        if l1 != l0 || d1 != d0 {
            let mut cause = format!("{l1} windows lapsed and {d1} declined (vs {l0} and {d0})");
            if l1 > 0 || l0 > 0 {
                cause.push_str("; a lapse holds the request for the whole window before the market is asked");
            }
            causes.push(cause);
        }
        if r.spillovers != base.spillovers || r.failovers != base.failovers {
            causes.push(format!(
                "{} spillovers and {} failovers (vs {} and {})",
                r.spillovers, r.failovers, base.spillovers, base.failovers
            ));
        }
        let top = |x: &VariantReport| {
            x.share_by_provider
                .iter()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(p, s)| format!("{p} {:.0}%", s * 100.0))
                .unwrap_or_else(|| "no GPU-hours".to_owned())
        };
        if (r.hhi - base.hhi).abs() >= 50.0 {
            causes.push(format!(
                "concentration moved from HHI {:.0} ({}) to {:.0} ({})",
                base.hhi,
                top(base),
                r.hhi,
                top(r)
            ));
        }
        if (r.unfilled_gpu_hours - base.unfilled_gpu_hours).abs() > 0.5 {
            causes.push(format!(
                "{:.0} GPU-hours went unfilled (vs {:.0})",
                r.unfilled_gpu_hours, base.unfilled_gpu_hours
            ));
        }
        if (r.gpu_hours_delivered - base.gpu_hours_delivered).abs() > 0.5
            || (r.spend_per_gpu_hour - base.spend_per_gpu_hour).abs() >= 0.005
        {
            causes.push(format!(
                "it bought {:.0} GPU-hours at ${:.2} each on average (vs {:.0} at ${:.2})",
                r.gpu_hours_delivered,
                r.spend_per_gpu_hour,
                base.gpu_hours_delivered,
                base.spend_per_gpu_hour
            ));
        }
        let spend = r.spend_total - base.spend_total;
        let p95 = r.time_to_capacity_hours.p95 - base.time_to_capacity_hours.p95;
        let p50 = r.time_to_capacity_hours.p50 - base.time_to_capacity_hours.p50;
        let because =
            if causes.is_empty() { "the same decisions were made".to_owned() } else { causes.join("; ") };
        lines.push(format!(
            "{} vs {}: spend {}{} ({:+.1}%), time to capacity p50 {:+.1} h, p95 {:+.1} h: {because}.",
            r.name,
            base.name,
            if spend >= 0.0 { "+" } else { "" },
            money(spend),
            100.0 * spend / base.spend_total.max(1.0),
            p50,
            p95,
        ));
    }
    lines
}

fn write_outputs(dir: &Path, reports: &[VariantReport]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("--out {}", dir.display()))?;
    let summary: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                format!("{:.2}", r.spend_total),
                format!("{:.0}", r.hhi),
                format!("{:.2}", r.time_to_capacity_hours.p50),
                format!("{:.2}", r.time_to_capacity_hours.p95),
                format!("{:.2}", r.time_to_capacity_hours.max),
                format!("{:.0}", r.unfilled_gpu_hours),
                r.first_refusal.solicited.to_string(),
                r.first_refusal.accepted.to_string(),
                r.first_refusal.declined.to_string(),
                r.first_refusal.lapsed.to_string(),
                r.spillovers.to_string(),
                r.failovers.to_string(),
                format!("{:.2}", r.revenue_share_owed),
                r.triggers_fired.len().to_string(),
                r.ledger_head.clone(),
            ]
        })
        .collect();
    dibs_charts::write_csv(
        &dir.join("summary.csv"),
        &[
            "variant",
            "spend_usd",
            "hhi",
            "ttc_p50_h",
            "ttc_p95_h",
            "ttc_max_h",
            "unfilled_gpu_hours",
            "fr_solicited",
            "fr_accepted",
            "fr_declined",
            "fr_lapsed",
            "spillovers",
            "failovers",
            "revenue_share_owed_usd",
            "triggers_fired",
            "ledger_head",
        ],
        &summary,
    )?;
    let mut by_provider = Vec::new();
    let mut over_time = Vec::new();
    let mut statements = Vec::new();
    for r in reports {
        for (provider, spend) in &r.spend_by_provider {
            by_provider.push(vec![
                r.name.clone(),
                provider.clone(),
                format!("{spend:.2}"),
                format!("{:.2}", r.gpu_hours_by_provider.get(provider).copied().unwrap_or(0.0)),
                format!("{:.4}", r.share_by_provider.get(provider).copied().unwrap_or(0.0)),
            ]);
        }
        for (series, kind) in [(&r.spend_over_time, "spend_usd"), (&r.share_over_time, "fleet_share")] {
            for s in series {
                for (hours, value) in &s.points {
                    over_time.push(vec![
                        r.name.clone(),
                        kind.to_owned(),
                        s.name.clone(),
                        format!("{hours:.1}"),
                        format!("{value:.4}"),
                    ]);
                }
            }
        }
        for st in &r.revenue_share_statements {
            statements.push(vec![
                r.name.clone(),
                st.contract.clone(),
                st.partner.clone(),
                st.month.clone(),
                format!("{:.2}", st.revenue),
                format!("{}", st.rate),
                format!("{:.2}", st.owed),
            ]);
        }
    }
    dibs_charts::write_csv(
        &dir.join("spend_by_provider.csv"),
        &["variant", "provider", "spend_usd", "gpu_hours", "share"],
        &by_provider,
    )?;
    dibs_charts::write_csv(
        &dir.join("over_time.csv"),
        &["variant", "series", "provider", "hours", "value"],
        &over_time,
    )?;
    dibs_charts::write_csv(
        &dir.join("revenue_share.csv"),
        &["variant", "contract", "partner", "month", "revenue_usd", "rate", "owed_usd"],
        &statements,
    )?;

    let chart_series = |series: &[simulate::Series]| -> Vec<dibs_charts::Series> {
        series
            .iter()
            .map(|s| dibs_charts::Series { name: s.name.clone(), points: s.points.clone() })
            .collect()
    };
    for (index, r) in reports.iter().enumerate() {
        let stem = format!("v{}-{}", index + 1, slug(&r.name));
        dibs_charts::write_chart(
            &dibs_charts::Chart {
                title: format!("Spend over time per provider ({})", r.name),
                x_label: "hours since start".into(),
                y_label: "cumulative spend, USD".into(),
                kind: dibs_charts::ChartKind::Line,
                series: chart_series(&r.spend_over_time),
            },
            dir,
            &format!("{stem}-spend"),
        )?;
        dibs_charts::write_chart(
            &dibs_charts::Chart {
                title: format!("Fleet share over time ({})", r.name),
                x_label: "hours since start".into(),
                y_label: "share of active GPUs".into(),
                kind: dibs_charts::ChartKind::StackedArea,
                series: chart_series(&r.share_over_time),
            },
            dir,
            &format!("{stem}-share"),
        )?;
    }
    dibs_charts::write_chart(
        &dibs_charts::Chart {
            title: "Time to capacity".into(),
            x_label: "hours from request to all capacity ready".into(),
            y_label: "requests".into(),
            kind: dibs_charts::ChartKind::Histogram { bins: 30 },
            series: reports
                .iter()
                .map(|r| dibs_charts::Series {
                    name: r.name.clone(),
                    points: r.time_to_capacity_samples.iter().map(|h| (*h, 1.0)).collect(),
                })
                .collect(),
        },
        dir,
        "time-to-capacity",
    )?;
    Ok(())
}

fn slug(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect()
}
