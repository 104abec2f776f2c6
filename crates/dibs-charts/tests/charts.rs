//! Behaviour a reader of `dibs simulate --out DIR` would notice: the files exist, open as
//! images of the right size, and name what they show.

use std::path::PathBuf;

use dibs_charts::{Chart, ChartError, ChartKind, Series, render_png, render_svg, write_chart, write_csv};

fn series(name: &str, points: &[(f64, f64)]) -> Series {
    Series { name: name.to_string(), points: points.to_vec() }
}

fn chart(kind: ChartKind, series: Vec<Series>) -> Chart {
    Chart {
        title: "Spend & share over time".to_string(),
        x_label: "hours since start".to_string(),
        y_label: "spend (USD)".to_string(),
        kind,
        series,
    }
}

/// A fresh directory under the system temp dir, unique per test and process.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dibs-charts-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Renders the chart both ways and checks what every chart must show: the title, each
/// series name and `expected_notes` (such as "no data") in the SVG, and a PNG that decodes
/// to the asked size.
fn check(chart: &Chart, expected_notes: &[&str]) {
    let svg = render_svg(chart).expect("SVG renders");
    // Plotters escapes text for XML, so "&" appears as "&amp;".
    let title = chart.title.replace('&', "&amp;");
    assert!(svg.contains(&title), "title missing from SVG");
    for series in &chart.series {
        assert!(svg.contains(&series.name), "series {:?} missing from SVG", series.name);
    }
    for note in expected_notes {
        assert!(svg.contains(note), "{note:?} missing from SVG");
    }
    let png = render_png(chart, 640, 360).expect("PNG renders");
    assert_eq!(png_size(&png), (640, 360));
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "no PNG signature");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().expect("PNG decodes");
    let info = reader.info();
    (info.width, info.height)
}

#[test]
fn line_chart_names_title_and_series() {
    check(
        &chart(
            ChartKind::Line,
            vec![
                series("lambda", &[(0.0, 0.0), (1.5, 120.0), (3.0, 260.0)]),
                series("coreweave", &[(0.0, 0.0), (3.0, 90.0)]),
            ],
        ),
        &[],
    );
}

#[test]
fn stacked_area_names_title_and_series() {
    check(
        &chart(
            ChartKind::StackedArea,
            vec![
                series("lambda", &[(0.0, 0.25), (10.0, 0.5)]),
                series("nebius", &[(0.0, 0.75), (10.0, 0.5)]),
            ],
        ),
        &[],
    );
}

#[test]
fn histogram_with_many_samples_and_series() {
    let waits: Vec<(f64, f64)> = (0..50).map(|i| (f64::from(i) * 0.7, 0.0)).collect();
    check(
        &chart(
            ChartKind::Histogram { bins: 10 },
            vec![series("window 24h", &waits), series("no first refusal", &waits[..5])],
        ),
        &[],
    );
}

#[test]
fn histogram_with_no_samples_says_no_data() {
    check(&chart(ChartKind::Histogram { bins: 10 }, vec![series("window 24h", &[])]), &["no data"]);
}

#[test]
fn histogram_with_one_sample_renders() {
    check(&chart(ChartKind::Histogram { bins: 10 }, vec![series("window 24h", &[(4.0, 0.0)])]), &[]);
}

#[test]
fn histogram_with_zero_bins_renders_one_bin() {
    check(
        &chart(ChartKind::Histogram { bins: 0 }, vec![series("window 24h", &[(1.0, 0.0), (2.0, 0.0)])]),
        &[],
    );
}

#[test]
fn chart_without_series_says_no_data() {
    check(&chart(ChartKind::Line, vec![]), &["no data"]);
    check(&chart(ChartKind::StackedArea, vec![]), &["no data"]);
}

#[test]
fn nan_points_are_skipped() {
    let points = [(f64::NAN, 1.0), (1.0, f64::NAN), (2.0, 3.0), (f64::INFINITY, 1.0)];
    let only_finite = chart(ChartKind::Line, vec![series("lambda", &points)]);
    check(&only_finite, &[]);
    let svg = render_svg(&only_finite).unwrap();
    assert!(!svg.contains("no data"), "one finite point is data");
    let all_nan = chart(ChartKind::StackedArea, vec![series("lambda", &[(f64::NAN, f64::NAN)])]);
    check(&all_nan, &["no data"]);
}

#[test]
fn png_size_must_be_positive_and_bounded() {
    let c = chart(ChartKind::Line, vec![]);
    assert!(matches!(render_png(&c, 0, 10), Err(ChartError::InvalidSize { .. })));
    assert!(matches!(render_png(&c, 10, 100_000), Err(ChartError::InvalidSize { .. })));
}

#[test]
fn write_chart_writes_svg_and_png() {
    let dir = temp_dir("write-chart").join("nested");
    let c = chart(ChartKind::Line, vec![series("lambda", &[(0.0, 1.0), (1.0, 2.0)])]);
    write_chart(&c, &dir, "spend").unwrap();
    let svg = std::fs::read_to_string(dir.join("spend.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
    let png = std::fs::read(dir.join("spend.png")).unwrap();
    assert_eq!(png_size(&png), (1000, 600));
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn write_chart_error_names_the_path() {
    let dir = temp_dir("not-a-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("file");
    std::fs::write(&file, b"").unwrap();
    let c = chart(ChartKind::Line, vec![]);
    let error = write_chart(&c, &file, "spend").unwrap_err();
    assert!(matches!(error, ChartError::Io { .. }));
    assert!(error.to_string().contains(&*file.to_string_lossy()), "{error}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn csv_quotes_fields_with_commas_and_quotes() {
    let dir = temp_dir("csv");
    let path = dir.join("spend.csv");
    let rows = vec![
        vec!["1.5".to_string(), "lambda, us-east".to_string(), "say \"hi\"".to_string()],
        vec!["2".to_string(), "nebius".to_string(), String::new()],
    ];
    write_csv(&path, &["hour", "provider", "note"], &rows).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, "hour,provider,note\n1.5,\"lambda, us-east\",\"say \"\"hi\"\"\"\n2,nebius,\n");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn csv_row_of_wrong_length_is_an_error_naming_the_path() {
    let dir = temp_dir("csv-short");
    let path = dir.join("short.csv");
    let error = write_csv(&path, &["a", "b"], &[vec!["only one".to_string()]]).unwrap_err();
    assert!(matches!(error, ChartError::Csv { .. }));
    assert!(error.to_string().contains("short.csv"), "{error}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn extreme_values_do_not_panic() {
    let points = [(-1e308, -1e308), (1e308, 1e308), (0.0, f64::MAX), (0.0, 1e15)];
    for kind in [ChartKind::Line, ChartKind::StackedArea, ChartKind::Histogram { bins: 5 }] {
        let c = chart(kind, vec![series("a", &points), series("b", &points)]);
        // Points beyond 1e15 are skipped like NaN: (0, 1e15) is the only one left.
        let svg = render_svg(&c).unwrap();
        assert!(!svg.contains("no data"));
        assert_eq!(png_size(&render_png(&c, 200, 100).unwrap()), (200, 100));
    }
}
