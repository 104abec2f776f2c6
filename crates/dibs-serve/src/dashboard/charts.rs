//! Charts inline in a page: `dibs-charts` draws the SVG on the server; this module makes
//! it scale with the page and names it for screen readers. Each chart on a page sits
//! beside a table with the same figures, so nothing is only in a picture.

use maud::{Markup, html};

use super::trusted;

/// Renders a chart as an inline, scalable SVG with an accessible name, or says why not.
pub fn inline(chart: &dibs_charts::Chart, id: &str) -> Markup {
    match dibs_charts::render_svg(chart) {
        Ok(svg) => {
            // Replace the fixed-size opening tag by one that scales with its container.
            let body = svg.find("<svg").and_then(|start| svg[start..].find('>').map(|end| start + end + 1));
            let inner = body.map_or(svg.as_str(), |at| &svg[at..]);
            let open = format!(
                r#"<svg class="chart" viewBox="0 0 1000 600" preserveAspectRatio="xMidYMid meet" role="img" aria-labelledby="{id}-title" xmlns="http://www.w3.org/2000/svg"><title id="{id}-title">{}</title>"#,
                html! { (chart.title) }.into_string()
            );
            html! { figure.chart { (trusted(format!("{open}{inner}"))) } }
        }
        Err(e) => html! { p.error { "The chart could not be drawn: " (e.to_string()) } },
    }
}
