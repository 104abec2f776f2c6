//! Renders one chart of each kind, with data shaped like `dibs simulate` output, into the
//! directory given as the first argument (default /tmp/dibs-charts-sample), to look at.

use std::path::PathBuf;

use dibs_charts::{Chart, ChartKind, Series, write_chart, write_csv};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/tmp/dibs-charts-sample".to_string()));
    let providers = ["lambda", "coreweave", "aws-us-east-1", "nebius"];
    let hours: Vec<f64> = (0..=720).step_by(6).map(f64::from).collect();

    let spend = Chart {
        title: "Cumulative spend per provider".to_string(),
        x_label: "hours since start".to_string(),
        y_label: "spend (USD)".to_string(),
        kind: ChartKind::Line,
        series: providers
            .iter()
            .enumerate()
            .map(|(i, name)| Series {
                name: name.to_string(),
                points: hours
                    .iter()
                    .map(|&h| (h, h * (900.0 + 400.0 * i as f64) * (1.0 + (h / 90.0 + i as f64).sin() * 0.1)))
                    .collect(),
            })
            .collect(),
    };
    write_chart(&spend, &dir, "spend")?;

    let raw: Vec<Vec<f64>> = hours
        .iter()
        .map(|&h| {
            (0..providers.len())
                .map(|i| 1.0 + (h / 120.0 + i as f64 * 1.7).sin().abs() * (i + 1) as f64)
                .collect()
        })
        .collect();
    let share = Chart {
        title: "Fleet share per provider".to_string(),
        x_label: "hours since start".to_string(),
        y_label: "share of GPUs".to_string(),
        kind: ChartKind::StackedArea,
        series: providers
            .iter()
            .enumerate()
            .map(|(i, name)| Series {
                name: name.to_string(),
                points: hours
                    .iter()
                    .zip(&raw)
                    .map(|(&h, row)| (h, row[i] / row.iter().sum::<f64>()))
                    .collect(),
            })
            .collect(),
    };
    write_chart(&share, &dir, "share")?;

    let mut rng_state = 7u64;
    let mut next = || {
        rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng_state >> 11) as f64 / (1u64 << 53) as f64
    };
    let variants = ["window 24h", "window 72h", "no first refusal"];
    let waits = Chart {
        title: "Time to capacity".to_string(),
        x_label: "hours from request to capacity".to_string(),
        y_label: "requests".to_string(),
        kind: ChartKind::Histogram { bins: 24 },
        series: variants
            .iter()
            .enumerate()
            .map(|(i, name)| Series {
                name: name.to_string(),
                points: (0..400).map(|_| (-next().ln() * (4.0 + 10.0 * i as f64), 0.0)).collect(),
            })
            .collect(),
    };
    write_chart(&waits, &dir, "time_to_capacity")?;

    let empty = Chart {
        title: "Spend per provider (empty run)".to_string(),
        x_label: "hours since start".to_string(),
        y_label: "spend (USD)".to_string(),
        kind: ChartKind::Line,
        series: vec![Series { name: "lambda".to_string(), points: vec![(f64::NAN, 1.0)] }],
    };
    write_chart(&empty, &dir, "empty")?;

    write_csv(
        &dir.join("spend.csv"),
        &["hour", "provider", "spend_usd"],
        &spend
            .series
            .iter()
            .flat_map(|s| {
                s.points.iter().map(|(h, usd)| vec![h.to_string(), s.name.clone(), format!("{usd:.2}")])
            })
            .collect::<Vec<_>>(),
    )?;
    println!("wrote {}", dir.display());
    Ok(())
}
