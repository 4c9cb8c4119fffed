//! Line charts as SVG and PNG (plotters), with the DejaVu Sans font compiled in, so plots
//! render the same on a headless machine with no fonts installed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{EvalError, Result};

/// DejaVu Sans (Bitstream Vera license, eval/fonts/LICENSE_DEJAVU).
const FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// One line: a name and its (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// Lines from named points, in the order names first appear.
    pub fn group(points: impl IntoIterator<Item = (String, (f64, f64))>) -> Vec<Series> {
        let mut out: Vec<Series> = Vec::new();
        for (name, xy) in points {
            match out.iter_mut().find(|s| s.name == name) {
                Some(s) => s.points.push(xy),
                None => out.push(Series { name, points: vec![xy] }),
            }
        }
        out
    }
}

/// What a chart shows.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
}

fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok { Ok(()) } else { Err(EvalError::Plot { path: "fonts/DejaVuSans.ttf".into(), reason: "bad font".into() }) }
}

/// The image at `path` as a `data:` URI, for markdown that must stand alone.
pub fn data_uri(path: &Path) -> Result<String> {
    use base64::Engine as _;
    let bytes = std::fs::read(path)
        .map_err(|e| EvalError::Plot { path: path.to_path_buf(), reason: format!("cannot read the plot back: {e}") })?;
    let mime = match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => "image/svg+xml",
        _ => "image/png",
    };
    Ok(format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

/// Makes `dir` (if needed) and checks a file can be written there, before any slow work.
pub fn check_dir(dir: &Path) -> Result<()> {
    let err = |e: std::io::Error| EvalError::Plot {
        path: dir.to_path_buf(),
        reason: format!("cannot write plots here: {e}"),
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(".sieve-write-probe");
    std::fs::write(&probe, b"").map_err(err)?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

const PALETTE: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, c: &Chart<'_>) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let all = c.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all.filter(|p| p.0.is_finite() && p.1.is_finite()) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |a: f64, b: f64| ((b - a).abs() * 0.05).max(1e-6);
    let (px, py) = (pad(x0, x1), pad(y0, y1));
    let mut chart = ChartBuilder::on(&root)
        .caption(c.title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0 - px..x1 + px, y0 - py..y1 + py)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(c.x_label)
        .y_desc(c.y_label)
        .label_style((FAMILY, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in c.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FAMILY, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Writes `dir/stem.svg` and `dir/stem.png`; returns their paths.
pub fn line_chart(dir: &Path, stem: &str, chart: &Chart<'_>) -> Result<Vec<PathBuf>> {
    register_font()?;
    let svg = dir.join(format!("{stem}.svg"));
    let png = dir.join(format!("{stem}.png"));
    let fail = |p: &Path, reason: String| EvalError::Plot { path: p.to_path_buf(), reason };
    draw(SVGBackend::new(&svg, (800, 500)).into_drawing_area(), chart).map_err(|r| fail(&svg, r))?;
    draw(BitMapBackend::new(&png, (800, 500)).into_drawing_area(), chart).map_err(|r| fail(&png, r))?;
    Ok(vec![svg, png])
}

/// A value in [0, 1] as a colour from pale yellow (0) to dark blue (1).
fn shade(v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * v).round() as u8;
    RGBColor(lerp(255.0, 8.0), lerp(247.0, 48.0), lerp(188.0, 107.0))
}

fn draw_heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    rows: &[String],
    values: &[Vec<f64>],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let cols = values.iter().map(Vec::len).max().unwrap_or(0).max(1);
    // Row names are drawn inside the plot, left of column 0, one per row.
    let left = -(cols as f64) * 0.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(40)
        .build_cartesian_2d(left..cols as f64, 0f64..rows.len().max(1) as f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_y_axis()
        .x_desc("layer")
        .x_label_formatter(&|x| if *x < 0.0 { String::new() } else { format!("{x:.0}") })
        .label_style((FAMILY, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(
            rows.iter()
                .enumerate()
                .map(|(r, name)| Text::new(name.clone(), (left * 0.97, r as f64 + 0.6), (FAMILY, 15).into_font())),
        )
        .map_err(|e| e.to_string())?;
    for (r, row) in values.iter().enumerate() {
        chart
            .draw_series(row.iter().enumerate().map(|(c, &v)| {
                Rectangle::new([(c as f64, r as f64), (c as f64 + 1.0, r as f64 + 1.0)], shade(v).filled())
            }))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Writes a heat map (one row per name, one column per layer, values in [0, 1]) as
/// `dir/stem.svg` and `dir/stem.png`.
pub fn heatmap(dir: &Path, stem: &str, title: &str, rows: &[String], values: &[Vec<f64>]) -> Result<Vec<PathBuf>> {
    register_font()?;
    let svg = dir.join(format!("{stem}.svg"));
    let png = dir.join(format!("{stem}.png"));
    let fail = |p: &Path, reason: String| EvalError::Plot { path: p.to_path_buf(), reason };
    draw_heatmap(SVGBackend::new(&svg, (900, 120 + 40 * rows.len() as u32)).into_drawing_area(), title, rows, values)
        .map_err(|r| fail(&svg, r))?;
    draw_heatmap(
        BitMapBackend::new(&png, (900, 120 + 40 * rows.len() as u32)).into_drawing_area(),
        title,
        rows,
        values,
    )
    .map_err(|r| fail(&png, r))?;
    Ok(vec![svg, png])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_and_png_with_text() {
        let dir = std::env::temp_dir().join(format!("sieve-plot-{}", std::process::id()));
        check_dir(&dir).unwrap();
        let series = [
            Series { name: "cats".into(), points: vec![(0.25, 29.6), (0.4, 33.0), (0.5, 38.1)] },
            Series { name: "teal".into(), points: vec![(0.25, 29.9), (0.4, 34.8), (0.5, 46.2)] },
        ];
        let chart =
            Chart { title: "perplexity vs sparsity", x_label: "sparsity", y_label: "perplexity", series: &series };
        let files = line_chart(&dir, "ppl", &chart).unwrap();
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(svg.contains("perplexity vs sparsity") && svg.contains("cats"));
        let png = std::fs::read(&files[1]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_directory_is_refused() {
        let err = check_dir(Path::new("/proc/sieve-plots")).unwrap_err();
        assert!(err.to_string().contains("cannot write plots"), "{err}");
    }
}
