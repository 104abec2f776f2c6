//! Charts and CSV tables for `dibs simulate --out DIR`: spend over time per provider (a
//! line chart), fleet share over time (a stacked area chart) and the time-to-capacity
//! distribution (a histogram), each as SVG and PNG.
//!
//! This crate takes plain data and knows nothing of the other dibs crates, so it builds
//! and tests alone (`cargo test -p dibs-charts`).
//!
//! Decisions and their cost:
//! * Drawing is done by `plotters` with default features off: the SVG and bitmap backends,
//!   line series and `ab_glyph` text. Bars and stacked layers are plain rectangles and
//!   polygons. The bitmap is encoded with `png` directly rather than through plotters'
//!   `bitmap_encoder`, which would add the `image` and `jpeg-decoder` crates. A clean debug
//!   build of this crate and its dependencies took about 8 s on two cores.
//! * Text in PNGs is rasterised from DejaVu Sans, embedded from the `dejavu` crate, which
//!   ships the unmodified DejaVu 2.37 fonts with their licence. No system font library or
//!   font file is needed at build or run time. SVGs name the `sans-serif` family and
//!   leave the font to the viewer.
//! * The legend sits in its own column right of the plot, so it never hides data (a
//!   stacked share chart fills its whole plot).

mod data;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::data::{Prepared, prepare, tick_label};

/// Width and height of the PNG that [`write_chart`] writes, in pixels.
pub const PNG_WIDTH: u32 = 1000;
pub const PNG_HEIGHT: u32 = 600;
/// The size SVGs are laid out at; they scale in any viewer.
const SVG_SIZE: (u32, u32) = (1000, 600);
/// The largest PNG side accepted, which bounds the buffer at 300 MB.
pub const MAX_PNG_SIDE: u32 = 10_000;
/// Legend names longer than this many characters are cut with an ellipsis.
const MAX_LEGEND_NAME_CHARS: usize = 40;
/// The font family every text style names; DejaVu Sans is registered under it.
const FONT_FAMILY: &str = "sans-serif";

/// One named series. In line and stacked area charts the points are (x, y); a
/// histogram uses the x of each point as a sample and ignores y. Points with a NaN or
/// infinite coordinate that is used are skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChartKind {
    /// One line per series.
    Line,
    /// Series stacked bottom to top in their order; each series is interpolated linearly
    /// between its points and counts as zero outside its first and last x.
    StackedArea,
    /// Counts of the x of every point of each series, in `bins` equal bins over the range
    /// of all samples (at least 1, at most 1,000); series are drawn side by side per bin.
    Histogram { bins: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub kind: ChartKind,
    pub series: Vec<Series>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("cannot write {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write CSV {}: {source}", path.display())]
    Csv { path: PathBuf, source: csv::Error },
    #[error("PNG size {width}x{height} is invalid: each side must be 1 to {MAX_PNG_SIDE}")]
    InvalidSize { width: u32, height: u32 },
    #[error("cannot draw chart {title:?}: {message}")]
    Render { title: String, message: String },
    #[error("cannot encode PNG of chart {title:?}: {source}")]
    PngEncode { title: String, source: png::EncodingError },
    #[error("the embedded DejaVu Sans font could not be loaded")]
    Font,
}

/// Renders the chart as an SVG document.
pub fn render_svg(chart: &Chart) -> Result<String, ChartError> {
    register_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SVG_SIZE).into_drawing_area();
        draw(&root, chart).map_err(|message| render_error(chart, message))?;
        root.present().map_err(|e| render_error(chart, e.to_string()))?;
    }
    Ok(svg)
}

/// Renders the chart as a PNG image of `width` x `height` pixels and returns its bytes.
pub fn render_png(chart: &Chart, width: u32, height: u32) -> Result<Vec<u8>, ChartError> {
    if !(1..=MAX_PNG_SIDE).contains(&width) || !(1..=MAX_PNG_SIDE).contains(&height) {
        return Err(ChartError::InvalidSize { width, height });
    }
    register_font()?;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        draw(&root, chart).map_err(|message| render_error(chart, message))?;
        root.present().map_err(|e| render_error(chart, e.to_string()))?;
    }
    encode_png(&rgb, width, height)
        .map_err(|source| ChartError::PngEncode { title: chart.title.clone(), source })
}

/// Writes `<stem>.svg` and `<stem>.png` (1000 x 600) into `dir`, creating `dir` if needed.
pub fn write_chart(chart: &Chart, dir: &Path, stem: &str) -> Result<(), ChartError> {
    let svg = render_svg(chart)?;
    let png = render_png(chart, PNG_WIDTH, PNG_HEIGHT)?;
    create_dir(dir)?;
    write_file(&dir.join(format!("{stem}.svg")), svg.as_bytes())?;
    write_file(&dir.join(format!("{stem}.png")), &png)
}

/// Writes a CSV file with a header row; fields are quoted where they need it (commas,
/// quotes, line breaks). Every row must have as many fields as the header. The parent
/// directory is created if needed.
pub fn write_csv(path: &Path, header: &[&str], rows: &[Vec<String>]) -> Result<(), ChartError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(parent)?;
    }
    let csv_error = |source| ChartError::Csv { path: path.to_path_buf(), source };
    let mut writer = csv::Writer::from_path(path).map_err(csv_error)?;
    writer.write_record(header).map_err(csv_error)?;
    for row in rows {
        writer.write_record(row).map_err(csv_error)?;
    }
    writer.flush().map_err(|source| ChartError::Io { path: path.to_path_buf(), source })
}

fn create_dir(dir: &Path) -> Result<(), ChartError> {
    std::fs::create_dir_all(dir).map_err(|source| ChartError::Io { path: dir.to_path_buf(), source })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ChartError> {
    std::fs::write(path, bytes).map_err(|source| ChartError::Io { path: path.to_path_buf(), source })
}

fn render_error(chart: &Chart, message: String) -> ChartError {
    ChartError::Render { title: chart.title.clone(), message }
}

/// Plotters looks fonts up by family name in a process-wide table; registering once is
/// enough, and both backends need it (the SVG backend measures text to place it).
fn register_font() -> Result<(), ChartError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if registered { Ok(()) } else { Err(ChartError::Font) }
}

fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, png::EncodingError> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(bytes)
}

/// Tableau 10: distinct hues that stay apart for common colour-vision deficiencies.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4E, 0x79, 0xA7),
    RGBColor(0xF2, 0x8E, 0x2B),
    RGBColor(0xE1, 0x57, 0x59),
    RGBColor(0x76, 0xB7, 0xB2),
    RGBColor(0x59, 0xA1, 0x4F),
    RGBColor(0xED, 0xC9, 0x48),
    RGBColor(0xB0, 0x7A, 0xA1),
    RGBColor(0xFF, 0x9D, 0xA7),
    RGBColor(0x9C, 0x75, 0x5F),
    RGBColor(0xBA, 0xB0, 0xAC),
];

/// The palette first, then hues spaced by the golden ratio so that any number of series
/// get colours that differ from their neighbours.
fn series_color(index: usize) -> RGBColor {
    if let Some(color) = PALETTE.get(index) {
        return *color;
    }
    let hue = (index as f64 * 0.618_033_988_75).fract();
    let (r, g, b) = HSLColor(hue, 0.55, 0.45).rgb();
    RGBColor(r, g, b)
}

/// Sizes scale with the picture so a large PNG is not all margin; 1.0 at 1000 x 600.
struct Scale(f64);

impl Scale {
    fn of(width: u32, height: u32) -> Self {
        let factor = (f64::from(width) / 1000.0).min(f64::from(height) / 600.0);
        Scale(factor.clamp(0.5, 4.0))
    }

    fn px(&self, size: f64) -> u32 {
        (size * self.0).round().max(1.0) as u32
    }

    fn font(&self, size: f64) -> TextStyle<'static> {
        (FONT_FAMILY, size * self.0).into_font().color(&BLACK)
    }
}

type DrawResult = Result<(), String>;

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> DrawResult {
    let (width, height) = root.dim_in_pixel();
    let scale = Scale::of(width, height);
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    // A margin above the title, which plotters would put against the top edge.
    let body = root
        .margin(scale.px(10.0), 0, 0, 0)
        .titled(&chart.title, scale.font(24.0))
        .map_err(|e| e.to_string())?;
    let legend_width = legend_width(&body, chart, &scale);
    let (plot_area, legend_area) = body.split_horizontally(width.saturating_sub(legend_width));

    match prepare(&chart.kind, &chart.series) {
        Prepared::Empty => {
            let cc = cartesian(&plot_area, chart, &scale, 0.0..1.0, 0.0..1.0)?;
            cc.plotting_area()
                .draw(&Text::new(
                    "no data",
                    (0.5, 0.5),
                    scale
                        .font(22.0)
                        .color(&RGBColor(120, 120, 120))
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                ))
                .map_err(|e| e.to_string())?;
        }
        Prepared::Lines { series, x, y } => {
            let mut cc = cartesian(&plot_area, chart, &scale, x, y)?;
            for (index, points) in series.iter().enumerate() {
                let color = series_color(index);
                let line = LineSeries::new(points.iter().copied(), color.stroke_width(scale.px(2.0)));
                cc.draw_series(line).map_err(|e| e.to_string())?;
                // A single point draws no line: mark it so the series is still visible.
                if let [point] = points.as_slice() {
                    cc.draw_series(std::iter::once(Circle::new(*point, scale.px(4.0), color.filled())))
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Prepared::Stacked { xs, layers, x, y } => {
            let mut cc = cartesian(&plot_area, chart, &scale, x, y)?;
            let zero = vec![0.0; xs.len()];
            for (index, upper) in layers.iter().enumerate() {
                let lower = if index == 0 { &zero } else { &layers[index - 1] };
                let color = series_color(index);
                let outline: Vec<(f64, f64)> = xs
                    .iter()
                    .copied()
                    .zip(upper.iter().copied())
                    .chain(xs.iter().copied().zip(lower.iter().copied()).rev())
                    .collect();
                cc.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.8).filled())))
                    .map_err(|e| e.to_string())?;
                let top = xs.iter().copied().zip(upper.iter().copied());
                cc.draw_series(LineSeries::new(top, color.stroke_width(scale.px(1.0))))
                    .map_err(|e| e.to_string())?;
            }
        }
        Prepared::Histogram { counts, bin_width, x, y } => {
            let start = x.start;
            let mut cc = cartesian(&plot_area, chart, &scale, x, y)?;
            // Series share each bin side by side, leaving a 5% gap at either edge.
            let bar_width = bin_width * 0.9 / counts.len().max(1) as f64;
            for (index, series_counts) in counts.iter().enumerate() {
                let style = series_color(index).filled();
                let bars =
                    series_counts.iter().enumerate().filter(|(_, count)| **count > 0).map(|(bin, &count)| {
                        let left =
                            start + bin as f64 * bin_width + bin_width * 0.05 + index as f64 * bar_width;
                        Rectangle::new([(left, 0.0), (left + bar_width, count as f64)], style)
                    });
                cc.draw_series(bars).map_err(|e| e.to_string())?;
            }
        }
    }
    draw_legend(&legend_area, chart, &scale)
}

fn cartesian<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    chart: &Chart,
    scale: &Scale,
    x: Range<f64>,
    y: Range<f64>,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    let mut cc = ChartBuilder::on(area)
        .margin(scale.px(12.0))
        .x_label_area_size(scale.px(55.0))
        .y_label_area_size(scale.px(80.0))
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())?;
    cc.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .label_style(scale.font(14.0))
        .axis_desc_style(scale.font(16.0))
        .bold_line_style(RGBColor(215, 215, 215))
        .light_line_style(RGBColor(242, 242, 242))
        // One light line between labelled ones; plotters' default of ten reads as noise.
        .max_light_lines(1)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(cc)
}

fn legend_name(name: &str) -> String {
    if name.chars().count() <= MAX_LEGEND_NAME_CHARS {
        return name.to_string();
    }
    let mut cut: String = name.chars().take(MAX_LEGEND_NAME_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// Swatch, gap and text; at most a third of the picture.
fn legend_width<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, chart: &Chart, scale: &Scale) -> u32 {
    if chart.series.is_empty() {
        return 0;
    }
    let style = scale.font(14.0);
    let widest = chart
        .series
        .iter()
        .filter_map(|s| area.estimate_text_size(&legend_name(&s.name), &style).ok())
        .map(|(w, _)| w)
        .max()
        .unwrap_or(0);
    let (width, _) = area.dim_in_pixel();
    (widest + scale.px(60.0)).min(width / 3)
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
    scale: &Scale,
) -> DrawResult {
    let row_height = scale.px(22.0) as i32;
    let top = scale.px(24.0) as i32;
    let swatch_left = scale.px(8.0) as i32;
    let swatch_right = scale.px(32.0) as i32;
    let half = scale.px(6.0) as i32;
    let text_style = scale.font(14.0).pos(Pos::new(HPos::Left, VPos::Center));
    for (index, series) in chart.series.iter().enumerate() {
        let color = series_color(index);
        let y = top + index as i32 * row_height;
        match chart.kind {
            ChartKind::Line => area.draw(&PathElement::new(
                vec![(swatch_left, y), (swatch_right, y)],
                color.stroke_width(scale.px(3.0)),
            )),
            ChartKind::StackedArea | ChartKind::Histogram { .. } => area
                .draw(&Rectangle::new([(swatch_left, y - half), (swatch_right, y + half)], color.filled())),
        }
        .map_err(|e| e.to_string())?;
        area.draw(&Text::new(
            legend_name(&series.name),
            (swatch_right + scale.px(8.0) as i32, y),
            text_style.clone(),
        ))
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}
