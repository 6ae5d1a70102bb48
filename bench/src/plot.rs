//! Line charts written as SVG by hand and rasterised to PNG with `resvg`, with the
//! Noto Sans font embedded in the binary: no system library, no font lookup.
//!
//! The latency chart puts percentiles on a log axis of 1/(1-p), as HdrHistogram's
//! plotter does, so the tail (99%, 99.9%, ...) gets as much room as the body.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

/// The font family name of the embedded font, used in every `<text>`.
const FONT_FAMILY: &str = "Noto Sans";
/// Series colours, in order (colour-blind-safe palette).
const COLORS: [&str; 6] = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"];
/// Lane colours (each lane its own, distinct from the first two series colours).
const LANE_COLORS: [&str; 6] = ["#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#F0E442", "#000000"];
/// Height of one lane's row in the strip.
const LANE_HEIGHT: f64 = 14.0;
/// The percentile axis ends at 99.9999% (1/(1-p) = 10^6).
const PERCENTILE_NINES_MAX: f64 = 6.0;

/// How the x axis maps values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    /// Plain linear.
    Linear,
    /// x is a fraction p in [0, 1], drawn at log10(1/(1-p)), labelled in percent.
    Percentile,
    /// x is an index into these names, each drawn at its own place with its name.
    Categories(&'static [&'static str]),
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y) points, drawn in order.
    pub points: Vec<(f64, f64)>,
}

/// One chart panel.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Title above the plot area.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// X axis mapping.
    pub x_axis: XAxis,
    /// Draw markers on points (for few points, like Figure 9's curves).
    pub markers: bool,
    /// The lines.
    pub series: Vec<Series>,
    /// Rows of x intervals drawn as bars in a strip at the top of the plot area, one
    /// row per lane, each interval also shaded faintly over the whole height (for
    /// timelines: when each replica was writing a checkpoint). Empty: no strip.
    pub lanes: Vec<Lane>,
}

/// One row of intervals in a chart's lane strip.
#[derive(Debug, Clone)]
pub struct Lane {
    /// Label at the row's left end.
    pub name: String,
    /// (start, end) x intervals.
    pub spans: Vec<(f64, f64)>,
}

const PANEL_WIDTH: f64 = 640.0;
const PANEL_HEIGHT: f64 = 440.0;
const MARGIN_LEFT: f64 = 78.0;
const MARGIN_RIGHT: f64 = 24.0;
const MARGIN_TOP: f64 = 44.0;
const MARGIN_BOTTOM: f64 = 64.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn percentile_x(p: f64) -> f64 {
    let tail = (1.0 - p).max(10f64.powf(-PERCENTILE_NINES_MAX));
    (1.0 / tail).log10()
}

/// Round tick positions covering [low, high], about `count` of them.
fn nice_ticks(low: f64, high: f64, count: usize) -> Vec<f64> {
    let span = (high - low).max(f64::MIN_POSITIVE);
    let raw = span / count.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (low / step).ceil() * step;
    (0..=count * 3)
        .map(|i| first + i as f64 * step)
        .take_while(|tick| *tick <= high + step * 1e-9)
        .collect()
}

fn format_tick(value: f64) -> String {
    if value == 0.0 {
        "0".to_string()
    } else if value.abs() >= 1000.0 || value.fract().abs() < 1e-9 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').to_string()
    }
}

/// Draws `chart` into `svg` with its top-left corner at (`left`, `top`).
fn draw_panel(svg: &mut String, chart: &Chart, left: f64, top: f64) {
    let plot_left = left + MARGIN_LEFT;
    let plot_top = top + MARGIN_TOP;
    let plot_width = PANEL_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_height = PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let map_x = |x: f64| match chart.x_axis {
        XAxis::Linear | XAxis::Categories(_) => x,
        XAxis::Percentile => percentile_x(x),
    };
    let points = chart.series.iter().flat_map(|series| series.points.iter());
    let (mut x_min, mut x_max, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in points {
        x_min = x_min.min(map_x(x));
        x_max = x_max.max(map_x(x));
        y_max = y_max.max(y);
    }
    if !x_min.is_finite() {
        (x_min, x_max) = (0.0, 1.0);
    }
    if chart.x_axis == XAxis::Percentile {
        // One decade past the highest percentile below 100%, where the 100% point (the
        // maximum) is drawn, as HdrHistogram's plotter ends its curves.
        let below_max = chart
            .series
            .iter()
            .flat_map(|series| series.points.iter())
            .filter(|(p, _)| *p < 1.0)
            .map(|(p, _)| percentile_x(*p))
            .fold(0.0f64, f64::max);
        x_min = 0.0;
        x_max = (below_max.ceil() + 1.0).clamp(1.0, PERCENTILE_NINES_MAX);
    } else if let XAxis::Categories(names) = chart.x_axis {
        // Half a slot of room on each side of the first and last name.
        (x_min, x_max) = (-0.5, names.len().max(1) as f64 - 0.5);
    } else {
        x_min = x_min.min(0.0);
        if x_max <= x_min {
            x_max = x_min + 1.0;
        }
    }
    // The lane strip takes the top of the plot area; the data keeps the rest.
    let strip_height = chart.lanes.len() as f64 * LANE_HEIGHT;
    let data_share = 1.0 - strip_height / plot_height;
    let y_top = if y_max > 0.0 { y_max * 1.05 / data_share } else { 1.0 };
    let y_ticks: Vec<f64> =
        nice_ticks(0.0, y_top, 5).into_iter().filter(|tick| *tick <= y_top * data_share).collect();
    let px = |x: f64| plot_left + (map_x(x).min(x_max) - x_min) / (x_max - x_min) * plot_width;
    let py = |y: f64| plot_top + plot_height - y / y_top * plot_height;

    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="17" text-anchor="middle" font-weight="bold">{}</text>"#,
        left + PANEL_WIDTH / 2.0,
        top + 26.0,
        escape(&chart.title)
    );
    // Grid and ticks.
    for &tick in &y_ticks {
        let y = py(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{plot_left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#dddddd"/>"##,
            plot_left + plot_width
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#,
            plot_left - 6.0,
            y + 4.0,
            format_tick(tick)
        );
    }
    let x_ticks: Vec<(f64, String)> = match chart.x_axis {
        XAxis::Percentile => (0..=x_max as u32)
            .map(|nines| {
                let p = 1.0 - 10f64.powi(-(nines as i32));
                let label = match nines {
                    0 => "0%".to_string(),
                    1 => "90%".to_string(),
                    _ => format!("99.{}%", "9".repeat(nines as usize - 2)).replace("99.%", "99%"),
                };
                (p, label)
            })
            .collect(),
        XAxis::Linear => {
            nice_ticks(x_min, x_max, 6).into_iter().map(|tick| (tick, format_tick(tick))).collect()
        }
        XAxis::Categories(names) => {
            names.iter().enumerate().map(|(index, name)| (index as f64, name.to_string())).collect()
        }
    };
    for (tick, label) in &x_ticks {
        let x = px(*tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{plot_top:.1}" x2="{x:.1}" y2="{:.1}" stroke="#eeeeee"/>"##,
            plot_top + plot_height
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            plot_top + plot_height + 18.0,
            escape(label)
        );
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{plot_left:.1}" y="{plot_top:.1}" width="{plot_width:.1}" height="{plot_height:.1}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle">{}</text>"#,
        plot_left + plot_width / 2.0,
        top + PANEL_HEIGHT - 18.0,
        escape(&chart.x_label)
    );
    let (label_x, label_y) = (left + 18.0, plot_top + plot_height / 2.0);
    let _ = writeln!(
        svg,
        r#"<text x="{label_x:.1}" y="{label_y:.1}" font-size="14" text-anchor="middle" transform="rotate(-90 {label_x:.1} {label_y:.1})">{}</text>"#,
        escape(&chart.y_label)
    );
    // Lanes: faint shading over the whole height, bars in the strip.
    let span_x = |x: f64| px(x.clamp(x_min, x_max));
    for (index, lane) in chart.lanes.iter().enumerate() {
        let color = LANE_COLORS[index % LANE_COLORS.len()];
        let row_top = plot_top + index as f64 * LANE_HEIGHT;
        for &(start, end) in &lane.spans {
            let (x1, x2) = (span_x(start), span_x(end));
            let width = (x2 - x1).max(1.0);
            let _ = writeln!(
                svg,
                r#"<rect x="{x1:.2}" y="{plot_top:.1}" width="{width:.2}" height="{plot_height:.1}" fill="{color}" fill-opacity="0.10"/>"#
            );
            let _ = writeln!(
                svg,
                r#"<rect x="{x1:.2}" y="{:.1}" width="{width:.2}" height="{:.1}" fill="{color}"/>"#,
                row_top + 2.0,
                LANE_HEIGHT - 4.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#,
            plot_left - 6.0,
            row_top + LANE_HEIGHT - 4.0,
            escape(&lane.name)
        );
    }
    if !chart.lanes.is_empty() {
        let y = plot_top + strip_height;
        let _ = writeln!(
            svg,
            r##"<line x1="{plot_left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#999999"/>"##,
            plot_left + plot_width
        );
    }
    // Lines and legend.
    for (index, series) in chart.series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let path: Vec<String> =
            series.points.iter().map(|&(x, y)| format!("{:.2},{:.2}", px(x), py(y))).collect();
        if !path.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                path.join(" ")
            );
        }
        if chart.markers {
            for &(x, y) in &series.points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.2}" cy="{:.2}" r="3.5" fill="{color}"/>"#,
                    px(x),
                    py(y)
                );
            }
        }
        let legend_y = plot_top + strip_height + 16.0 + index as f64 * 18.0;
        let legend_x = plot_left + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="3"/>"#,
            legend_y - 4.0,
            legend_x + 22.0,
            legend_y - 4.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{legend_y:.1}" font-size="13">{}</text>"#,
            legend_x + 28.0,
            escape(&series.name)
        );
    }
}

/// An SVG document with `charts` side by side.
pub fn svg(charts: &[Chart]) -> String {
    let width = PANEL_WIDTH * charts.len().max(1) as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{PANEL_HEIGHT:.0}" viewBox="0 0 {width:.0} {PANEL_HEIGHT:.0}" font-family="{FONT_FAMILY}">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (index, chart) in charts.iter().enumerate() {
        draw_panel(&mut svg, chart, index as f64 * PANEL_WIDTH, 0.0);
    }
    svg.push_str("</svg>\n");
    svg
}

/// Rasterises SVG text to PNG bytes, with the embedded font only.
pub fn png(svg_text: &str) -> anyhow::Result<Vec<u8>> {
    let mut options = resvg::usvg::Options::default();
    options.fontdb_mut().load_font_data(ttf_noto_sans::REGULAR.to_vec());
    options.font_family = FONT_FAMILY.to_string();
    let tree = resvg::usvg::Tree::from_str(svg_text, &options).context("parse the SVG")?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .context("allocate the PNG canvas")?;
    resvg::render(&tree, resvg::tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap.encode_png().context("encode the PNG")
}

/// Writes `charts` to `<stem>.svg` and `<stem>.png` in `dir`.
pub fn write_svg_and_png(dir: &Path, stem: &str, charts: &[Chart]) -> anyhow::Result<()> {
    let text = svg(charts);
    let svg_path = dir.join(format!("{stem}.svg"));
    std::fs::write(&svg_path, &text).with_context(|| format!("write {}", svg_path.display()))?;
    let png_path = dir.join(format!("{stem}.png"));
    std::fs::write(&png_path, png(&text)?)
        .with_context(|| format!("write {}", png_path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            title: "latency <by> percentile".into(),
            x_label: "percentile".into(),
            y_label: "latency (ms)".into(),
            x_axis: XAxis::Percentile,
            markers: false,
            lanes: Vec::new(),
            series: vec![Series {
                name: "a & b".into(),
                points: vec![(0.0, 1.0), (0.9, 2.0), (0.99, 5.0), (0.999, 9.0), (1.0, 12.0)],
            }],
        }
    }

    #[test]
    fn svg_escapes_text_and_labels_the_nines() {
        let text = svg(&[chart()]);
        assert!(text.contains("latency &lt;by&gt; percentile"));
        assert!(text.contains("a &amp; b"));
        for label in ["0%", "90%", "99%", "99.9%"] {
            assert!(text.contains(&format!(">{label}<")), "{label}");
        }
    }

    #[test]
    fn png_renders_text_with_the_embedded_font() {
        let with_text = png(&svg(&[chart()])).expect("renders");
        assert_eq!(&with_text[..8], b"\x89PNG\r\n\x1a\n");
        // The same chart without any text must encode differently: glyphs were drawn.
        let no_text = svg(&[chart()])
            .lines()
            .filter(|line| !line.starts_with("<text"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(png(&no_text).expect("renders"), with_text);
    }

    #[test]
    fn lanes_draw_a_labelled_bar_per_span_above_the_data() {
        let mut timeline = chart();
        timeline.x_axis = XAxis::Linear;
        timeline.series[0].points = vec![(0.0, 100.0), (5.0, 120.0), (10.0, 90.0)];
        timeline.lanes = vec![
            Lane { name: "r0".into(), spans: vec![(1.0, 2.0), (6.0, 7.5)] },
            Lane { name: "r1".into(), spans: vec![(3.0, 4.0)] },
        ];
        let text = svg(&[timeline]);
        assert!(text.contains(">r0<") && text.contains(">r1<"));
        // Each span: one shading over the plot's height and one bar in its row.
        assert_eq!(text.matches(r#"fill-opacity="0.10""#).count(), 3);
        assert_eq!(text.matches(r##"fill="#E69F00"/>"##).count(), 2);
        assert_eq!(text.matches(r##"fill="#009E73"/>"##).count(), 1);
        // The data stays below the strip: its highest point is lower than the strip.
        let strip_bottom = MARGIN_TOP + 2.0 * LANE_HEIGHT;
        let line = text.lines().find(|line| line.starts_with("<polyline")).expect("a line");
        let points = line.split('"').nth(1).expect("points");
        for point in points.split(' ') {
            let y: f64 = point.split(',').nth(1).expect("y").parse().expect("number");
            assert!(y > strip_bottom, "{y} within the strip");
        }
        assert!(png(&text).is_ok());
    }

    #[test]
    fn categories_are_labelled_by_name_at_evenly_spaced_places() {
        let mut peaks = chart();
        peaks.x_axis = XAxis::Categories(&["none", "sync", "parallel"]);
        peaks.markers = true;
        peaks.series[0].points = vec![(0.0, 100.0), (1.0, 10.0), (2.0, 80.0)];
        let text = svg(&[peaks]);
        let label_x = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|line| line.ends_with(&format!(">{name}</text>")))
                .unwrap_or_else(|| panic!("no label {name}"));
            line.split('"').nth(1).expect("x").parse().expect("number")
        };
        let (a, b, c) = (label_x("none"), label_x("sync"), label_x("parallel"));
        assert!(a < b && b < c);
        assert!(((b - a) - (c - b)).abs() < 0.2, "{a} {b} {c}");
        // Each point's marker stands above its name.
        let markers: Vec<f64> = text
            .lines()
            .filter(|line| line.starts_with("<circle"))
            .map(|line| line.split('"').nth(1).expect("cx").parse().expect("number"))
            .collect();
        assert_eq!(markers.len(), 3);
        for (marker, label) in markers.iter().zip([a, b, c]) {
            assert!((marker - label).abs() < 0.2, "{marker} {label}");
        }
        assert!(png(&text).is_ok());
    }

    #[test]
    fn nice_ticks_cover_the_range_with_round_steps() {
        let ticks = nice_ticks(0.0, 97.0, 5);
        assert_eq!(ticks, vec![0.0, 20.0, 40.0, 60.0, 80.0]);
        assert!(nice_ticks(0.0, 0.9, 5).iter().all(|tick| *tick <= 0.9));
    }
}
