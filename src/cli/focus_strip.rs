//! The focus map as a picture: an SVG heat strip over the document's length, one row per
//! generated token (and a first row for the whole answer), each chunk drawn over the token range
//! it covers and coloured by the share of the main decoder's attention its candidate received.
//! Drawn with `plotters`' SVG backend (no fonts needed: SVG text is left to the viewer).

use std::ops::Range;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};

/// The examples' error type (this file is also included alone by the tests).
type AppError = Box<dyn std::error::Error + Send + Sync>;

/// One row of the strip: a label (e.g. the generated token) and one share per chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct FocusRow {
    /// What the row shows (printed at its left).
    pub label: String,
    /// Per chunk (index = chunk id), the attention share; the row is coloured relative to its
    /// largest share, which is printed at its right.
    pub shares: Vec<f32>,
}

const WIDTH: u32 = 1000;
const LABEL: i32 = 150;
const RIGHT: i32 = 70;
const ROW: i32 = 16;
const TOP: i32 = 28;
const BOTTOM: i32 = 26;

/// Writes the strip to `path` (SVG). `chunks` holds each chunk's token range in the input, as the
/// engine's plan gives it; every row must have one share per chunk.
pub fn write_svg(
    path: &Path,
    title: &str,
    chunks: &[Range<usize>],
    rows: &[FocusRow],
) -> Result<(), AppError> {
    if let Some(row) = rows.iter().find(|r| r.shares.len() != chunks.len()) {
        return Err(format!(
            "focus strip: row {:?} has {} shares for {} chunks",
            row.label,
            row.shares.len(),
            chunks.len()
        )
        .into());
    }
    let tokens = chunks.iter().map(|c| c.end).max().unwrap_or(0).max(1);
    let height = (TOP + ROW * rows.len() as i32 + BOTTOM) as u32;
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let font = ("sans-serif", 12).into_font();
    let strip = (WIDTH as i32 - LABEL - RIGHT) as f64;
    let x = |token: usize| LABEL + (token as f64 / tokens as f64 * strip).round() as i32;
    root.draw(&Text::new(title.to_string(), (4, 6), font.clone()))
        .map_err(|e| fail(&e))?;
    for (r, row) in rows.iter().enumerate() {
        let y = TOP + ROW * r as i32;
        let top = row.shares.iter().copied().fold(0.0f32, f32::max);
        for (range, &share) in chunks.iter().zip(&row.shares) {
            let level = if top > 0.0 { (share / top) as f64 } else { 0.0 };
            let colour = ViridisRGB.get_color(level.clamp(0.0, 1.0));
            let rect = [
                (x(range.start), y),
                (x(range.end).max(x(range.start) + 1), y + ROW - 1),
            ];
            root.draw(&Rectangle::new(rect, colour.filled()))
                .map_err(|e| fail(&e))?;
        }
        let label: String = row.label.chars().take(22).collect();
        root.draw(&Text::new(label, (4, y + 2), font.clone()))
            .map_err(|e| fail(&e))?;
        root.draw(&Text::new(
            format!("{top:.2}"),
            (WIDTH as i32 - RIGHT + 6, y + 2),
            font.clone(),
        ))
        .map_err(|e| fail(&e))?;
    }
    let axis = TOP + ROW * rows.len() as i32 + 6;
    for tick in 0..=4 {
        let token = tokens * tick / 4;
        root.draw(&Text::new(
            format!("{token}"),
            (x(token) - 8, axis),
            font.clone(),
        ))
        .map_err(|e| fail(&e))?;
    }
    root.draw(&Text::new("tokens".to_string(), (4, axis), font.clone()))
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
