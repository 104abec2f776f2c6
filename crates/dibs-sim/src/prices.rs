//! Price paths: how catalog prices move over a simulation.
//!
//! A [`PricePath`] is a multiplier on each provider's catalog prices, a step
//! function of time. [`PricePath::Static`] is 1.0 everywhere.
//! [`replay_price_history`] builds a replayed path from a dated price history
//! (`fsdl_gpu_price_history.csv`: `snapshot_date,provider,gpu_type,...,per_gpu_usd_h,...`):
//!
//! * rows are kept when `gpu_type` contains the accelerator family,
//!   case-insensitively (`H100` keeps "H100 (80 GB)", "H100 PCIe (80GB)" and
//!   "H100 HGX (80GB)"); rows with an empty `per_gpu_usd_h` (no list price,
//!   or a stray header row inside the file) are skipped;
//! * providers are named as dibs names them (see [`provider_name`]);
//! * for each provider and snapshot date, the **median** per-GPU price of
//!   the kept rows; the multiplier of a snapshot is that median divided by
//!   the provider's first median. The median mixes variants (A100 40 GB and
//!   80 GB), so a provider that adds or drops a variant shows a step that is
//!   a change of menu, not of price; that is the cost of one number per
//!   provider;
//! * time: the first snapshot date (of the family, any provider) at or after
//!   `history_from` lands at `start`; later dates keep their distance from it
//!   multiplied by `time_scale`. Snapshots before `history_from` are dropped.
//!
//! Before a provider's first step, and for providers without a history,
//! the multiplier is 1.0: catalog prices stand.

use std::collections::BTreeMap;

use dibs_core::types::{ProviderName, Timestamp};

use crate::csv_input::{CsvError, Table};

/// A history longer than this is refused rather than read.
pub const MAX_HISTORY_ROWS: usize = 1_000_000;

/// A multiplier on catalog prices over time, per provider.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum PricePath {
    /// Catalog prices hold for the whole run.
    #[default]
    Static,
    /// Replayed from a price history.
    Replayed {
        /// Per provider: steps `(from, multiplier)`, sorted by time, each
        /// holding until the next.
        steps: BTreeMap<ProviderName, Vec<(Timestamp, f64)>>,
    },
}

impl PricePath {
    /// The multiplier on `provider`'s catalog prices at `at`.
    pub fn multiplier(&self, provider: &ProviderName, at: Timestamp) -> f64 {
        let Self::Replayed { steps } = self else { return 1.0 };
        let Some(steps) = steps.get(provider) else { return 1.0 };
        match steps.partition_point(|(from, _)| *from <= at) {
            0 => 1.0,
            after => steps[after - 1].1,
        }
    }

    /// The providers with a replayed history, in name order.
    pub fn providers(&self) -> Vec<&ProviderName> {
        match self {
            Self::Static => Vec::new(),
            Self::Replayed { steps } => steps.keys().collect(),
        }
    }
}

/// A price history could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PriceError {
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error("{file}: no priced {family:?} rows on or after {from}")]
    NoRows { file: String, family: String, from: Timestamp },
    #[error("time scale {0} must be a positive finite number")]
    TimeScale(f64),
}

/// The dibs name of a provider as a price history spells it: the well-known
/// clouds by alias (`AWS` -> `aws`, `Lambda Labs` -> `lambda`, `Oracle Cloud`
/// -> `oci`), any other by lowercasing, dropping spaces and turning any other
/// character a name may not hold into `-` (`Cudo Compute` -> `cudocompute`,
/// `Latitude.sh` -> `latitude-sh`). Spellings are not merged beyond that:
/// the FSDL history's `RunPod.io` rows (`runpod-io`) list per-GPU prices about
/// nine times lower than its `RunPod` rows (`runpod`), so they are kept apart
/// rather than joined into one series with a bogus step.
pub fn provider_name(spelling: &str) -> Option<ProviderName> {
    let lower = spelling.trim().to_ascii_lowercase();
    let alias = match lower.as_str() {
        "aws" | "amazon" | "amazon web services" => Some("aws"),
        "gcp" | "google" | "google cloud" => Some("gcp"),
        "azure" | "microsoft azure" => Some("azure"),
        "lambda" | "lambda labs" | "lambda cloud" => Some("lambda"),
        "oci" | "oracle" | "oracle cloud" => Some("oci"),
        _ => None,
    };
    if let Some(alias) = alias {
        return ProviderName::new(alias).ok();
    }
    let name: String = lower
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' { c } else { '-' })
        .collect();
    ProviderName::new(name.trim_matches('-')).ok()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 { values[middle] } else { (values[middle - 1] + values[middle]) / 2.0 }
}

/// Builds a replayed price path for one accelerator family from a price
/// history; see the module documentation for the rules.
pub fn replay_price_history(
    source: &str,
    text: &str,
    accelerator_family: &str,
    history_from: Timestamp,
    start: Timestamp,
    time_scale: f64,
) -> Result<PricePath, PriceError> {
    if !(time_scale.is_finite() && time_scale > 0.0) {
        return Err(PriceError::TimeScale(time_scale));
    }
    let family = accelerator_family.trim().to_ascii_lowercase();
    const COLUMNS: [&str; 4] = ["snapshot_date", "provider", "gpu_type", "per_gpu_usd_h"];
    let mut table = Table::open(source, text, COLUMNS, MAX_HISTORY_ROWS)?;

    // Per provider, per snapshot date: the per-GPU prices listed.
    let mut prices: BTreeMap<ProviderName, BTreeMap<Timestamp, Vec<f64>>> = BTreeMap::new();
    table.for_each(|line, [date, provider, gpu_type, price]| {
        if price.is_empty() || !gpu_type.to_ascii_lowercase().contains(&family) {
            return Ok::<_, PriceError>(());
        }
        let bad = |column, value, expected| CsvError::bad_value(source, line, column, value, expected);
        let snapshot =
            Timestamp::parse(date).map_err(|_| bad("snapshot_date", date, "a date (YYYY-MM-DD)"))?;
        let usd = match price.parse::<f64>() {
            Ok(usd) if usd.is_finite() && usd > 0.0 => usd,
            _ => return Err(bad("per_gpu_usd_h", price, "a positive price").into()),
        };
        let name = provider_name(provider).ok_or_else(|| bad("provider", provider, "a provider name"))?;
        if snapshot >= history_from {
            prices.entry(name).or_default().entry(snapshot).or_default().push(usd);
        }
        Ok(())
    })?;

    let Some(first_snapshot) = prices.values().filter_map(|dates| dates.keys().next()).min().copied() else {
        return Err(PriceError::NoRows {
            file: source.to_owned(),
            family: accelerator_family.to_owned(),
            from: history_from,
        });
    };
    let steps = prices
        .into_iter()
        .map(|(provider, dates)| {
            let mut base = None;
            let steps = dates
                .into_iter()
                .map(|(date, mut usd)| {
                    let price = median(&mut usd);
                    let base = *base.get_or_insert(price);
                    let at = start.plus_hours(date.hours_since(first_snapshot) * time_scale);
                    (at, price / base)
                })
                .collect();
            (provider, steps)
        })
        .collect();
    Ok(PricePath::Replayed { steps })
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

    /// One provider a line: `provider: +hours=multiplier ...`, hours from `start`.
    fn render(path: &PricePath, start: Timestamp) -> String {
        let PricePath::Replayed { steps } = path else { return "static".to_owned() };
        steps
            .iter()
            .map(|(provider, steps)| {
                let steps: Vec<_> =
                    steps.iter().map(|(t, m)| format!("+{}h={m}", t.hours_since(start))).collect();
                format!("{provider}: {}", steps.join(" "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    const HISTORY: &str = "snapshot_date,provider,gpu_type,gpu_arch,gpus,per_gpu_usd_h,instance
2022-12-01,AWS,H100 (80 GB),Hopper,8,9.00,before history_from
2023-01-01,AWS,H100 (80 GB),Hopper,8,4.00,p5
2023-01-01,AWS,H100 PCIe (80GB),Hopper,1,2.00,x
2023-01-01,AWS,A100 (80 GB),Ampere,8,1.00,not H100
2023-01-01,Lambda Labs,H100 (80 GB),Hopper,8,2.00,y
2023-01-02,Lambda Labs,H100 (80 GB),Hopper,8,3.00,y
2023-01-02,Lambda Labs,H100 (80 GB),Hopper,8,,no price
2023-01-03,AWS,H100 (80 GB),Hopper,8,1.50,p5
2023-01-03,RunPod.io,h100 hgx (80GB),Hopper,8,5.00,z
";

    #[test]
    fn replays_median_ratios_per_provider() {
        let start = at("2030-01-01");
        let path = replay_price_history("p.csv", HISTORY, "H100", at("2023-01-01"), start, 2.0).unwrap();
        // AWS: median of 4 and 2 is 3, then 1.5 = 0.5 of it; two days later x2 = 96 h.
        assert_eq!(render(&path, start), "aws: +0h=1 +96h=0.5\nlambda: +0h=1 +48h=1.5\nrunpod-io: +96h=1",);
        assert_eq!(path.multiplier(&name("aws"), start.plus_hours(-1.0)), 1.0);
        assert_eq!(path.multiplier(&name("aws"), start.plus_hours(95.0)), 1.0);
        assert_eq!(path.multiplier(&name("aws"), start.plus_hours(96.0)), 0.5);
        assert_eq!(path.multiplier(&name("lambda"), start.plus_hours(1000.0)), 1.5);
        assert_eq!(path.multiplier(&name("azure"), start), 1.0);
        assert_eq!(PricePath::Static.multiplier(&name("aws"), start), 1.0);
    }

    #[test]
    fn provider_spellings_become_dibs_names() {
        let pairs = [
            ("AWS", "aws"),
            ("GCP", "gcp"),
            ("Azure", "azure"),
            ("Lambda Labs", "lambda"),
            ("Lambda", "lambda"),
            ("OCI", "oci"),
            ("Oracle Cloud", "oci"),
            ("RunPod", "runpod"),
            ("RunPod.io", "runpod-io"),
            ("Latitude.sh", "latitude-sh"),
            ("Cudo Compute", "cudocompute"),
        ];
        for (spelling, expected) in pairs {
            assert_eq!(provider_name(spelling).map(|n| n.as_str().to_owned()).as_deref(), Some(expected));
        }
        assert_eq!(provider_name(" . "), None);
    }

    #[test]
    fn errors_name_the_line_and_column() {
        let start = at("2030-01-01");
        let text = "snapshot_date,provider,gpu_type,per_gpu_usd_h\n2023-01-01,AWS,H100,2\n2023-01-02,AWS,H100,cheap\n";
        let error = replay_price_history("p.csv", text, "H100", start, start, 1.0).unwrap_err();
        assert_eq!(error.to_string(), r#"p.csv:3: per_gpu_usd_h "cheap" is not a positive price"#);
        let error = replay_price_history("p.csv", HISTORY, "B200", at("2023-01-01"), start, 1.0).unwrap_err();
        assert!(matches!(error, PriceError::NoRows { .. }), "{error}");
        let error =
            replay_price_history("p.csv", "snapshot_date,gpu_type\n", "H100", start, start, 1.0).unwrap_err();
        assert!(error.to_string().starts_with(r#"p.csv: missing column "provider""#), "{error}");
    }

    #[test]
    fn fsdl_history_for_h100_and_a100() {
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/prices/fsdl_gpu_price_history.csv");
        let Ok(text) = std::fs::read_to_string(path) else {
            eprintln!("skipped: {path} is absent (shared data not installed)");
            return;
        };
        let start = at("2030-01-01");
        // The history lists no H100 at AWS, GCP or Azure: their H100 prices stay static.
        for (family, expected) in [("H100", ["lambda", "oci"]), ("A100", ["aws", "gcp"])] {
            let path = replay_price_history(
                "fsdl_gpu_price_history.csv",
                &text,
                family,
                at("2022-01-01"),
                start,
                1.0,
            )
            .unwrap();
            let PricePath::Replayed { steps } = &path else { panic!("a replayed path") };
            let summary: Vec<_> = steps
                .iter()
                .map(|(provider, steps)| {
                    let last = steps.last().map_or(1.0, |s| s.1);
                    format!("{provider} ({} steps, last x{last:.2})", steps.len())
                })
                .collect();
            eprintln!("{family}: {} providers: {}", steps.len(), summary.join(", "));
            for provider in expected {
                assert!(path.providers().iter().any(|p| p.as_str() == provider), "{family} at {provider}");
            }
        }
    }
}
