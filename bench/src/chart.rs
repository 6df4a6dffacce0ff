//! A report as a picture: `<out>/<name>.png`, one small panel per row
//! (rows have different units, so each gets its own scale) with the
//! candidate's and the baseline's bar side by side, their values, and the
//! ratio read in the metric's good direction.
//!
//! Text is drawn by plotters' `ab_glyph` backend (pure Rust, no system font
//! lookup) from DejaVu Sans, Debian's `fonts-dejavu-core` (installed by
//! `scripts/setup.sh`; `SWARM_BENCH_FONT` points elsewhere). Without that
//! file the chart still has its bars, but no text.
//!
//! Owns only the drawing; never measures or decides anything.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::report::{Report, Row, fmt_num};

/// Where Debian's `fonts-dejavu-core` puts its sans-serif face.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FAMILY: &str = "sans-serif";

const CANDIDATE: RGBColor = RGBColor(31, 119, 180);
const BASELINE: RGBColor = RGBColor(255, 127, 14);
const GREY: RGBColor = RGBColor(120, 120, 120);

const PANEL_W: u32 = 380;
const PANEL_H: u32 = 250;
const HEADER_H: u32 = 64;

/// Registers the font once per process; whether text can be drawn.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let path = std::env::var_os("SWARM_BENCH_FONT")
            .map_or_else(|| PathBuf::from(FONT_PATH), PathBuf::from);
        match std::fs::read(&path) {
            // plotters keeps fonts for the life of the process: leaking the
            // one file (a few hundred KiB, once) is what it asks for.
            Ok(bytes) => register_font(
                FAMILY,
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .is_ok(),
            Err(e) => {
                eprintln!(
                    "swarm-bench: no font at {} ({e}): charts without text; install Debian's \
                     fonts-dejavu-core (scripts/setup.sh) or set SWARM_BENCH_FONT",
                    path.display()
                );
                false
            }
        }
    })
}

/// Writes `<dir>/<name>.png` and returns its path.
pub fn write_png(report: &Report, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.png", report.name));
    draw(report, &path).with_context(|| format!("drawing {}", path.display()))?;
    Ok(path)
}

/// Columns and rows of the panel grid for `n` panels.
fn grid(n: usize) -> (usize, usize) {
    let cols = n.clamp(1, 3);
    (cols, n.div_ceil(cols).max(1))
}

/// Cuts `s` to at most `max` characters, with an ellipsis if cut.
fn fit(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Text at `pos` (top left), or nothing when there is no font.
fn text(area: &Area<'_>, s: &str, pos: (i32, i32), size: u32, color: &RGBColor) -> DrawResult {
    if font_ready() {
        let style = (FAMILY, f64::from(size)).into_font().color(color);
        area.draw_text(s, &style, pos)?;
    }
    Ok(())
}

fn text_width(s: &str, size: u32) -> i32 {
    if !font_ready() {
        return 0;
    }
    (FAMILY, f64::from(size))
        .into_font()
        .box_size(s)
        .map_or(0, |(w, _)| i32::try_from(w).unwrap_or(0))
}

/// `s` centred on `x`.
fn centred(area: &Area<'_>, s: &str, x: i32, y: i32, size: u32, color: &RGBColor) -> DrawResult {
    text(area, s, (x - text_width(s, size) / 2, y), size, color)
}

fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let (cols, rows) = grid(report.rows.len());
    // At most 3 columns and small counts of rows: the casts cannot truncate.
    let (w, h) = (PANEL_W * cols as u32, HEADER_H + PANEL_H * rows as u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    draw_on(&root, report, (cols, rows)).map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().context("encoding the PNG")?;
    Ok(())
}

fn draw_on(root: &Area<'_>, report: &Report, (cols, rows): (usize, usize)) -> DrawResult {
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(HEADER_H);
    let title = format!("{}: {}", report.name, report.title);
    text(&header, &fit(&title, 95), (10, 8), 18, &BLACK)?;
    // Legend: what the two colours are.
    let mut x = 10;
    for (color, label) in [
        (CANDIDATE, format!("candidate: {}", report.candidate)),
        (BASELINE, format!("baseline: {}", report.baseline)),
    ] {
        let label = fit(&label, 80);
        header.draw(&Rectangle::new([(x, 38), (x + 14, 52)], color.filled()))?;
        text(&header, &label, (x + 20, 38), 13, &BLACK)?;
        x += 20 + text_width(&label, 13).max(100) + 24;
    }
    let panels = body.split_evenly((rows, cols));
    for (panel, row) in panels.iter().zip(&report.rows) {
        draw_panel(panel, row)?;
    }
    Ok(())
}

fn draw_panel(area: &Area<'_>, row: &Row) -> DrawResult {
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (
        i32::try_from(w).unwrap_or(i32::MAX),
        i32::try_from(h).unwrap_or(i32::MAX),
    );
    area.draw(&Rectangle::new(
        [(2, 2), (w - 3, h - 3)],
        RGBColor(220, 220, 220).stroke_width(1),
    ))?;
    text(area, &fit(&row.metric, 44), (10, 8), 14, &BLACK)?;
    let (top, bottom) = (48, h - 48);
    let plot_h = f64::from(bottom - top);
    // Bars start at zero; a negative value (none today) is drawn as zero.
    let max = [row.candidate, row.baseline]
        .into_iter()
        .flatten()
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let scale = if max > 0.0 { plot_h / max } else { 0.0 };
    area.draw(&PathElement::new(
        vec![(20, bottom), (w - 20, bottom)],
        GREY.stroke_width(1),
    ))?;
    let bar_w = (w - 80) / 2;
    for (i, (value, color, label)) in [
        (row.candidate, CANDIDATE, "candidate"),
        (row.baseline, BASELINE, "baseline"),
    ]
    .into_iter()
    .enumerate()
    {
        let left = 30 + i32::try_from(i).unwrap_or(0) * (bar_w + 20);
        let mid = left + bar_w / 2;
        match value.filter(|v| v.is_finite()) {
            Some(v) => {
                // Within [0, plot_h]: the cast is exact enough for pixels.
                let height = (v.max(0.0) * scale).round() as i32;
                area.draw(&Rectangle::new(
                    [(left, bottom - height.max(1)), (left + bar_w, bottom)],
                    color.filled(),
                ))?;
                let shown = format!("{} {}", fmt_num(v), row.unit);
                centred(area, &shown, mid, bottom - height - 18, 13, &BLACK)?;
            }
            None => centred(area, "n/a", mid, bottom - 20, 13, &GREY)?,
        }
        centred(area, label, mid, bottom + 6, 12, &GREY)?;
    }
    let verdict = match row.ratio {
        Some(r) => format!("ratio c/b {r:.3}  {}", row.verdict()),
        None => "no ratio".to_string(),
    };
    centred(area, &verdict, w / 2, h - 24, 12, &BLACK)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Better, RunInfo};

    fn sample(rows: Vec<Row>) -> Report {
        Report {
            name: "sample".into(),
            title: "a sample report".into(),
            candidate: "swarm".into(),
            baseline: "docker".into(),
            rows,
            notes: vec![],
            run: RunInfo::begin(true),
            details: serde_json::Value::Null,
        }
    }

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

    #[test]
    fn a_report_becomes_a_png() {
        let report = sample(vec![
            Row::new("latency p50", "ms", Some(12.5), Some(3.0), Better::Lower),
            Row::new(
                "throughput",
                "/s",
                Some(900.0),
                Some(1000.0),
                Better::Higher,
            ),
            Row::new("only candidate", "ms", Some(1.0), None, Better::Lower),
            Row::new("nothing", "ms", None, None, Better::Lower),
            Row::new("zero", "x", Some(0.0), Some(0.0), Better::Lower),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = write_png(&report, dir.path()).unwrap();
        assert_eq!(path, dir.path().join("sample.png"));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes[..8], PNG_SIGNATURE);
        // IHDR: width and height of a 3 x 2 grid under the header.
        let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!((be(16), be(20)), (3 * PANEL_W, HEADER_H + 2 * PANEL_H));
    }

    #[test]
    fn an_empty_report_still_draws() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_png(&sample(vec![]), dir.path()).unwrap();
        assert_eq!(std::fs::read(path).unwrap()[..8], PNG_SIGNATURE);
    }

    #[test]
    fn grid_and_fit() {
        assert_eq!(grid(0), (1, 1));
        assert_eq!(grid(2), (2, 1));
        assert_eq!(grid(7), (3, 3));
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
    }
}
