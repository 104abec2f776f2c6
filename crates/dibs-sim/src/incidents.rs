//! Incidents for a simulation: replayed from a status-page history or
//! generated from a seed.
//!
//! # Replay
//!
//! [`replay_incidents`] reads a history in the `gcp_incidents.csv` format
//! (`id,begin_utc,end_utc,duration_s,severity,status_impact,products,locations,...`)
//! and maps it onto one simulated provider. An incident is kept when:
//!
//! * one of its products (the `products` column, `|`-separated) is one that
//!   GPU capacity depends on, compared case-insensitively: the products in
//!   [`GPU_RELEVANT_PRODUCTS`] (Compute Engine, which hosts every GPU VM;
//!   Kubernetes Engine, whose nodes are Compute Engine VMs; the Vertex AI
//!   training and prediction services and Cloud TPU, which run on
//!   accelerators). Networking, storage and console incidents are left out:
//!   they degrade a cloud but rarely take its GPUs away, and keeping them would
//!   triple the outage count;
//! * its severity is at least `min_severity` (`low` < `medium` < `high`);
//! * it ends after it begins (rows that do not are dropped silently).
//!
//! The history is shifted in time so that `history_from` lands exactly at
//! `start` (so the severity filter never moves which stretch of the calendar
//! is replayed); incidents before `history_from` are dropped, and so are
//! those that would begin at or after `start + horizon_hours`. Durations are kept as recorded.
//!
//! Regions: an incident is regional only when the history is replayed onto
//! `gcp` (region names are GCP's own) and its `locations` column names exactly
//! one region (a name like `us-central1`: letters, a dash, letters and
//! digits). Multi-regions (`us`, `eur3`), `global`, an empty column and lists
//! of several regions make a whole-provider incident, the conservative choice:
//! a status page that names many regions usually means most of the provider.
//! Replayed onto any other provider, every incident is whole-provider.
//!
//! # Generation
//!
//! [`generate_incidents`] draws, for each provider, a Poisson process of
//! incidents (exponential gaps with mean `30 days / rate`) and exponential
//! durations with mean `mean_hours`, bounded to 1..=168 hours. Each provider's
//! random stream is seeded from the seed and the provider's name, so adding a
//! provider does not change the incidents of the others. Incidents of one
//! provider may overlap, as independent faults do.

use std::collections::BTreeMap;

use dibs_core::types::{ProviderName, Region, Timestamp};

use crate::csv_input::{CsvError, Table};

/// No incident list is longer than this.
pub const MAX_INCIDENTS: usize = 100_000;

/// A history longer than this is refused rather than read.
pub const MAX_HISTORY_ROWS: usize = 1_000_000;

/// Products whose incidents take GPU capacity away (compared case-insensitively).
pub const GPU_RELEVANT_PRODUCTS: &[&str] = &[
    "Google Compute Engine",
    "Google Kubernetes Engine",
    "Cloud TPU",
    "Vertex AI Training",
    "Vertex AI Online Prediction",
    "Vertex AI Batch Prediction",
    "Cloud Machine Learning",
];

/// Generated incidents last at least this long.
pub const MIN_GENERATED_HOURS: f64 = 1.0;
/// Generated incidents last at most this long (a week).
pub const MAX_GENERATED_HOURS: f64 = 168.0;

/// A provider, or one of its regions, down or degraded over `[begin, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    pub id: String,
    pub provider: ProviderName,
    /// `None`: the whole provider.
    pub region: Option<Region>,
    pub begin: Timestamp,
    pub end: Timestamp,
}

/// An incident history could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IncidentError {
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error("minimum severity {0:?} is not one of low, medium, high")]
    Severity(String),
    #[error("horizon of {0} hours must be a finite number, not negative")]
    Horizon(f64),
}

fn severity_rank(text: &str) -> Option<u8> {
    match text.trim().to_ascii_lowercase().as_str() {
        "low" => Some(0),
        "medium" => Some(1),
        "high" => Some(2),
        _ => None,
    }
}

fn is_gpu_relevant(products: &str) -> bool {
    products
        .split('|')
        .any(|product| GPU_RELEVANT_PRODUCTS.iter().any(|known| product.trim().eq_ignore_ascii_case(known)))
}

/// A single GCP region (`us-central1`, `northamerica-northeast2`), not a
/// multi-region (`us`, `eur3`) nor `global`.
fn single_region(locations: &str) -> Option<Region> {
    let mut names = locations.split('|').map(str::trim).filter(|name| !name.is_empty());
    let (Some(name), None) = (names.next(), names.next()) else { return None };
    let (area, place) = name.split_once('-')?;
    let looks_like_region = !area.is_empty()
        && area.chars().all(|c| c.is_ascii_lowercase())
        && place.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && place.chars().last().is_some_and(|c| c.is_ascii_digit())
        && place.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if looks_like_region { Region::new(name).ok() } else { None }
}

fn sort_and_bound(incidents: &mut Vec<Incident>) {
    incidents.sort_by(|a, b| (a.begin, &a.id).cmp(&(b.begin, &b.id)));
    incidents.truncate(MAX_INCIDENTS);
}

/// Replays a status-page history (the `gcp_incidents.csv` format) onto
/// `provider`; see the module documentation for the filter and the shift.
/// The result is sorted by (begin, id); ids are `<provider>-<history id>`.
pub fn replay_incidents(
    source: &str,
    text: &str,
    provider: &ProviderName,
    history_from: Timestamp,
    start: Timestamp,
    horizon_hours: f64,
    min_severity: &str,
) -> Result<Vec<Incident>, IncidentError> {
    let minimum =
        severity_rank(min_severity).ok_or_else(|| IncidentError::Severity(min_severity.to_owned()))?;
    if !(horizon_hours.is_finite() && horizon_hours >= 0.0) {
        return Err(IncidentError::Horizon(horizon_hours));
    }
    const COLUMNS: [&str; 6] = ["id", "begin_utc", "end_utc", "severity", "products", "locations"];
    let mut table = Table::open(source, text, COLUMNS, MAX_HISTORY_ROWS)?;

    // Kept incidents as in the history, keyed by (begin, id), whatever the file's order.
    let mut kept: BTreeMap<(Timestamp, String), (Timestamp, Option<Region>)> = BTreeMap::new();
    table.for_each(|line, [id, begin, end, severity, products, locations]| {
        let bad = |column, value, expected| CsvError::bad_value(source, line, column, value, expected);
        let rank = severity_rank(severity).ok_or_else(|| bad("severity", severity, "low, medium or high"))?;
        if rank < minimum || !is_gpu_relevant(products) {
            return Ok::<_, IncidentError>(());
        }
        let begin_at = Timestamp::parse(begin).map_err(|_| bad("begin_utc", begin, "an RFC 3339 time"))?;
        let end_at = Timestamp::parse(end).map_err(|_| bad("end_utc", end, "an RFC 3339 time"))?;
        if end_at <= begin_at || begin_at < history_from {
            return Ok(());
        }
        let region = if provider.as_str() == "gcp" { single_region(locations) } else { None };
        kept.insert((begin_at, id.to_owned()), (end_at, region));
        Ok(())
    })?;

    // `history_from` itself lands at `start`, so the severity filter never moves the calendar.
    let shift = start.unix() - history_from.unix();
    let horizon_end = start.plus_hours(horizon_hours);
    let mut incidents = Vec::new();
    for ((begin, id), (end, region)) in kept {
        let begin = begin.plus_seconds(shift);
        if begin >= horizon_end || incidents.len() >= MAX_INCIDENTS {
            break;
        }
        incidents.push(Incident {
            id: format!("{provider}-{id}"),
            provider: provider.clone(),
            region,
            begin,
            end: end.plus_seconds(shift),
        });
    }
    sort_and_bound(&mut incidents);
    Ok(incidents)
}

/// FNV-1a: a stable hash of a provider name, to derive its random stream.
fn stable_hash(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3))
}

/// An exponential draw with the given mean.
fn exponential(rng: &mut fastrand::Rng, mean: f64) -> f64 {
    // 1 - u lies in (0, 1], so the logarithm is finite.
    -(1.0 - rng.f64()).ln() * mean
}

/// Generated incidents: for each provider, a Poisson process with
/// `rate_per_provider_month` incidents per 30 days over `[start, start +
/// horizon_hours)`, exponential durations with mean `mean_hours` (each bounded
/// to 1..=168 h), from `seed`. The same arguments give the same list, sorted
/// by (begin, id); ids are `<provider>-gen-<n>`. A rate or horizon that is not
/// a positive finite number gives no incidents; at most [`MAX_INCIDENTS`] are
/// drawn in all.
pub fn generate_incidents(
    providers: &[ProviderName],
    start: Timestamp,
    horizon_hours: f64,
    rate_per_provider_month: f64,
    mean_hours: f64,
    seed: u64,
) -> Vec<Incident> {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(horizon_hours) || !positive(rate_per_provider_month) {
        return Vec::new();
    }
    let mean_hours =
        if positive(mean_hours) { mean_hours.clamp(MIN_GENERATED_HOURS, MAX_GENERATED_HOURS) } else { 1.0 };
    let mean_gap_hours = 30.0 * 24.0 / rate_per_provider_month;
    let mut incidents = Vec::new();
    for provider in providers {
        let mut rng = fastrand::Rng::with_seed(seed ^ stable_hash(provider.as_str()));
        let mut hours = 0.0;
        for n in 0.. {
            hours += exponential(&mut rng, mean_gap_hours);
            if hours >= horizon_hours || incidents.len() >= MAX_INCIDENTS {
                break;
            }
            let duration = exponential(&mut rng, mean_hours).clamp(MIN_GENERATED_HOURS, MAX_GENERATED_HOURS);
            let begin = start.plus_hours(hours);
            incidents.push(Incident {
                id: format!("{provider}-gen-{n}"),
                provider: provider.clone(),
                region: None,
                begin,
                end: begin.plus_hours(duration),
            });
        }
    }
    sort_and_bound(&mut incidents);
    incidents
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> ProviderName {
        ProviderName::new(text).unwrap()
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    /// One incident a line: `id region begin..end`, times in hours from `start`.
    fn render(incidents: &[Incident], start: Timestamp) -> String {
        incidents
            .iter()
            .map(|i| {
                let region = i.region.as_ref().map_or("*", Region::as_str);
                format!("{} {region} {}..{}", i.id, i.begin.hours_since(start), i.end.hours_since(start))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    const HISTORY: &str = "id,begin_utc,end_utc,duration_s,severity,status_impact,products,locations,n_updates,summary
old,2020-12-01T00:00:00Z,2020-12-01T05:00:00Z,0,high,SERVICE_OUTAGE,Google Compute Engine,,1,before history_from
a,2021-01-02T00:00:00Z,2021-01-02T02:00:00Z,7200,medium,SERVICE_DISRUPTION,Google Compute Engine|Persistent Disk,us-central1,3,x
net,2021-01-02T06:00:00Z,2021-01-02T07:00:00Z,3600,high,SERVICE_OUTAGE,Google Cloud Networking,,1,not GPU-relevant
b,2021-01-03T00:00:00Z,2021-01-03T01:30:00Z,5400,low,SERVICE_INFORMATION,Google Kubernetes Engine,us-east1|us-west1,1,low
c,2021-01-04T00:00:00Z,2021-01-04T10:00:00Z,36000,high,SERVICE_OUTAGE,Vertex AI Training,eur3,1,\"quoted, with comma\"
late,2021-03-30T00:00:00Z,2021-03-30T01:00:00Z,3600,high,SERVICE_OUTAGE,Google Compute Engine,global,1,beyond the horizon
";

    #[test]
    fn replay_filters_shifts_and_bounds_to_the_horizon() {
        let start = at("2030-01-01T00:00:00Z");
        let check = |provider: &str, min_severity: &str, expected: &str| {
            let incidents = replay_incidents(
                "h.csv",
                HISTORY,
                &name(provider),
                at("2021-01-01"),
                start,
                24.0 * 30.0,
                min_severity,
            )
            .unwrap();
            assert_eq!(render(&incidents, start), expected.trim());
        };
        // history_from (2021-01-01) lands at start, whatever the severity filter keeps.
        check("gcp", "low", "gcp-a us-central1 24..26\ngcp-b * 48..49.5\ngcp-c * 72..82");
        check("gcp", "medium", "gcp-a us-central1 24..26\ngcp-c * 72..82");
        check("azure", "high", "azure-c * 72..82");
    }

    #[test]
    fn replay_errors_name_the_line() {
        let start = at("2030-01-01");
        let gcp = name("gcp");
        let text = "id,begin_utc,end_utc,severity,products,locations\nx,2021-01-01T00:00:00Z,later,high,Google Compute Engine,\n";
        let error = replay_incidents("h.csv", text, &gcp, at("2021-01-01"), start, 10.0, "low").unwrap_err();
        assert_eq!(error.to_string(), r#"h.csv:2: end_utc "later" is not an RFC 3339 time"#);
        let error = replay_incidents("h.csv", "id,begin_utc\n", &gcp, start, start, 10.0, "low").unwrap_err();
        assert!(error.to_string().starts_with(r#"h.csv: missing column "end_utc""#), "{error}");
        let error = replay_incidents("h.csv", HISTORY, &gcp, start, start, 10.0, "severe").unwrap_err();
        assert!(matches!(error, IncidentError::Severity(_)));
    }

    #[test]
    fn single_regions_are_told_from_multi_regions() {
        let regions: Vec<_> =
            ["us-central1", "northamerica-northeast2", "us", "eur3", "global", "us-east1|us-west1", ""]
                .into_iter()
                .map(|l| single_region(l).map(|r| r.as_str().to_owned()))
                .collect();
        let expected = [Some("us-central1"), Some("northamerica-northeast2"), None, None, None, None, None];
        assert_eq!(regions, expected.map(|r| r.map(str::to_owned)));
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        let providers = [name("azure"), name("oci"), name("aws")];
        let start = at("2030-01-01");
        let run = |seed| generate_incidents(&providers, start, 24.0 * 365.0, 2.0, 6.0, seed);
        let first = run(7);
        assert_eq!(first, run(7));
        assert_ne!(first, run(8));
        // About 2 per provider-month: 3 providers over a year expect 73.
        assert!((40..=110).contains(&first.len()), "{} incidents", first.len());
        let end = start.plus_hours(24.0 * 365.0);
        for incident in &first {
            let hours = incident.end.hours_since(incident.begin);
            assert!((1.0..=168.0).contains(&hours), "{incident:?}");
            assert!(incident.begin >= start && incident.begin < end);
        }
        assert!(first.windows(2).all(|w| (w[0].begin, &w[0].id) <= (w[1].begin, &w[1].id)));
        // A provider's incidents do not depend on which other providers are listed.
        let azure_alone = generate_incidents(&providers[..1], start, 24.0 * 365.0, 2.0, 6.0, 7);
        let azure_in_three: Vec<_> =
            first.iter().filter(|i| i.provider.as_str() == "azure").cloned().collect();
        assert_eq!(azure_alone, azure_in_three);
        assert!(generate_incidents(&providers, start, 24.0, f64::NAN, 6.0, 7).is_empty());
    }

    #[test]
    fn gcp_history_over_65_days_from_2021() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/incidents/gcp_incidents.csv");
        let Ok(text) = std::fs::read_to_string(path) else {
            eprintln!("skipped: {path} is absent (shared data not installed)");
            return;
        };
        let start = at("2030-01-01");
        for min_severity in ["low", "medium", "high"] {
            let incidents = replay_incidents(
                "gcp_incidents.csv",
                &text,
                &name("gcp"),
                at("2021-01-01"),
                start,
                65.0 * 24.0,
                min_severity,
            )
            .unwrap();
            let regional = incidents.iter().filter(|i| i.region.is_some()).count();
            let hours: f64 = incidents.iter().map(|i| i.end.hours_since(i.begin)).sum();
            eprintln!(
                "gcp_incidents.csv from 2021-01-01, 65 days, severity >= {min_severity}: {} incidents \
                 ({regional} regional), {hours:.1} incident-hours",
                incidents.len()
            );
            if let Some(first) = incidents.first() {
                assert!(first.begin >= start);
            }
        }
    }
}
