//! Turns the caller's series into what is drawn: finite points only, stacked layers,
//! histogram bins and the axis ranges. Pure functions, so the shapes of the charts can
//! be tested without drawing anything.

use std::ops::Range;

use crate::{ChartKind, Series};

/// The most bins a histogram is drawn with; more would be narrower than a pixel.
pub(crate) const MAX_HISTOGRAM_BINS: usize = 1_000;
/// Coordinates beyond this magnitude are skipped like NaN: no hour count, dollar amount or
/// GPU count comes near it, and plotters hangs computing ticks over ranges near `f64::MAX`.
pub(crate) const MAX_ABS_VALUE: f64 = 1e15;

/// A coordinate that can be plotted: finite and within `MAX_ABS_VALUE`.
fn plottable(value: f64) -> bool {
    value.is_finite() && value.abs() <= MAX_ABS_VALUE
}

/// What the drawing code needs for one chart.
pub(crate) enum Prepared {
    /// No finite point in any series: axes and a "no data" note only.
    Empty,
    Lines {
        series: Vec<Vec<(f64, f64)>>,
        x: Range<f64>,
        y: Range<f64>,
    },
    /// `layers[i]` is the upper edge of series `i`, sampled at the shared `xs`; the lower
    /// edge is `layers[i - 1]` (zero for the first).
    Stacked {
        xs: Vec<f64>,
        layers: Vec<Vec<f64>>,
        x: Range<f64>,
        y: Range<f64>,
    },
    /// `counts[series][bin]`; bin `b` spans `x.start + b * bin_width ..` one width on.
    Histogram {
        counts: Vec<Vec<u64>>,
        bin_width: f64,
        x: Range<f64>,
        y: Range<f64>,
    },
}

pub(crate) fn prepare(kind: &ChartKind, series: &[Series]) -> Prepared {
    match kind {
        ChartKind::Line => prepare_lines(series),
        ChartKind::StackedArea => prepare_stacked(series),
        ChartKind::Histogram { bins } => prepare_histogram(series, *bins),
    }
}

/// Plottable points of one series, sorted by x. NaN, infinite or huge points are skipped,
/// since one of them would make every axis range undefined.
fn finite_points(series: &Series) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> =
        series.points.iter().copied().filter(|&(x, y)| plottable(x) && plottable(y)).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

fn prepare_lines(series: &[Series]) -> Prepared {
    let series: Vec<Vec<(f64, f64)>> = series.iter().map(finite_points).collect();
    let all = || series.iter().flatten();
    let Some((x_min, x_max)) = min_max(all().map(|p| p.0)) else {
        return Prepared::Empty;
    };
    let (y_min, y_max) = min_max(all().map(|p| p.1)).unwrap_or((0.0, 1.0));
    Prepared::Lines { x: padded_x(x_min, x_max), y: value_axis(y_min, y_max), series }
}

fn prepare_stacked(series: &[Series]) -> Prepared {
    let series: Vec<Vec<(f64, f64)>> = series.iter().map(finite_points).collect();
    let mut xs: Vec<f64> = series.iter().flatten().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let (Some(&x_min), Some(&x_max)) = (xs.first(), xs.last()) else {
        return Prepared::Empty;
    };
    let mut layers: Vec<Vec<f64>> = Vec::with_capacity(series.len());
    let mut below = vec![0.0; xs.len()];
    for points in &series {
        let layer: Vec<f64> = xs.iter().zip(&below).map(|(&x, &base)| base + value_at(points, x)).collect();
        below.clone_from(&layer);
        layers.push(layer);
    }
    let (y_min, y_max) = min_max(layers.iter().flatten().copied()).unwrap_or((0.0, 1.0));
    Prepared::Stacked { x: padded_x(x_min, x_max), y: value_axis(y_min, y_max), xs, layers }
}

/// The value of a series at `x`: linear between its points, zero outside its first and
/// last x (a provider that has not started, or has stopped, holds no share).
fn value_at(points: &[(f64, f64)], x: f64) -> f64 {
    let after = points.partition_point(|p| p.0 < x);
    match (after.checked_sub(1).map(|i| points[i]), points.get(after)) {
        (_, Some(&(x1, y1))) if x1 == x => y1,
        (Some((x0, y0)), Some(&(x1, y1))) => y0 + (y1 - y0) * (x - x0) / (x1 - x0),
        _ => 0.0,
    }
}

fn prepare_histogram(series: &[Series], bins: usize) -> Prepared {
    let bins = bins.clamp(1, MAX_HISTOGRAM_BINS);
    // Only x is a sample; y is ignored, so a NaN y does not drop the sample.
    let samples: Vec<Vec<f64>> =
        series.iter().map(|s| s.points.iter().map(|p| p.0).filter(|&x| plottable(x)).collect()).collect();
    let Some((lo, hi)) = min_max(samples.iter().flatten().copied()) else {
        return Prepared::Empty;
    };
    // Waiting times start near zero: start the bins at zero when the data is closer to
    // zero than it is wide, so the axis reads from 0 rather than from an odd first sample.
    let lo = if lo > 0.0 && lo < hi - lo { 0.0 } else { lo };
    let x = padded_x(lo, hi);
    let bin_width = (x.end - x.start) / bins as f64;
    let counts: Vec<Vec<u64>> = samples
        .iter()
        .map(|samples| {
            let mut counts = vec![0u64; bins];
            for &sample in samples {
                // The maximum sample falls on the upper edge: count it in the last bin.
                let bin = ((sample - x.start) / bin_width) as usize;
                counts[bin.min(bins - 1)] += 1;
            }
            counts
        })
        .collect();
    let max_count = counts.iter().flatten().copied().max().unwrap_or(0);
    Prepared::Histogram { y: 0.0..(max_count.max(1) as f64 * 1.1), counts, bin_width, x }
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// The x axis spans the data exactly (hours since the start of a run); a single x value
/// gets one unit either side so that it is not a zero-width axis.
fn padded_x(lo: f64, hi: f64) -> Range<f64> {
    if hi > lo { lo..hi } else { lo - 1.0..hi + 1.0 }
}

/// Value axes (dollars, shares, GPUs) include zero, so that heights compare honestly, and
/// leave 5% of headroom above the largest value.
fn value_axis(lo: f64, hi: f64) -> Range<f64> {
    let lo = lo.min(0.0);
    let hi = hi.max(0.0);
    if hi > lo { lo..hi + (hi - lo) * 0.05 } else { 0.0..1.0 }
}

/// A tick label without float noise and with k/M suffixes for large values, so that
/// "1250000" reads "1.25M" and "0.30000000000000004" reads "0.3".
pub(crate) fn tick_label(value: f64) -> String {
    let magnitude = value.abs();
    let (scaled, suffix) = if magnitude >= 1e9 {
        (value / 1e9, "G")
    } else if magnitude >= 1e6 {
        (value / 1e6, "M")
    } else if magnitude >= 1e4 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let text = format!("{scaled:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    let text = if text == "-0" { "0" } else { text };
    format!("{text}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series { name: name.to_string(), points: points.to_vec() }
    }

    #[test]
    fn stacked_layers_interpolate_on_the_union_of_x() {
        let a = series("a", &[(0.0, 1.0), (2.0, 3.0)]);
        let b = series("b", &[(1.0, 1.0), (2.0, 1.0)]);
        let Prepared::Stacked { xs, layers, .. } = prepare(&ChartKind::StackedArea, &[a, b]) else {
            panic!("expected a stacked chart");
        };
        assert_eq!(xs, vec![0.0, 1.0, 2.0]);
        assert_eq!(layers, vec![vec![1.0, 2.0, 3.0], vec![1.0, 3.0, 4.0]]);
    }

    #[test]
    fn histogram_counts_the_maximum_in_the_last_bin() {
        let a = series("a", &[(0.0, f64::NAN), (5.0, 0.0), (10.0, 0.0), (f64::NAN, 0.0)]);
        let Prepared::Histogram { counts, bin_width, .. } = prepare(&ChartKind::Histogram { bins: 2 }, &[a])
        else {
            panic!("expected a histogram");
        };
        assert_eq!(bin_width, 5.0);
        assert_eq!(counts, vec![vec![1, 2]]);
    }

    #[test]
    fn only_non_finite_points_is_empty() {
        let a = series("a", &[(f64::NAN, 1.0), (1.0, f64::INFINITY)]);
        assert!(matches!(prepare(&ChartKind::Line, &[a]), Prepared::Empty));
    }

    #[test]
    fn tick_labels_are_short() {
        let labels: Vec<String> =
            [0.1 + 0.2, 1_250_000.0, 15_000.0, 2500.0, -0.0, 3.0].into_iter().map(tick_label).collect();
        assert_eq!(labels, ["0.3", "1.25M", "15k", "2500", "0", "3"]);
    }
}
