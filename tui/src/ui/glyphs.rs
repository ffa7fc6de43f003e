//! The characters the console draws with: Unicode by default, plain ASCII with `--ascii` (for
//! terminals and fonts without box drawing or block elements).

use ratatui::symbols::{bar, border};

#[derive(Clone, Debug)]
pub struct Glyphs {
    pub border: border::Set<'static>,
    /// Eight levels from empty to full (sparklines, per-device usage cells).
    pub levels: [&'static str; 9],
    /// Four shades (placement heat).
    pub shades: [&'static str; 4],
    /// A full and an empty bar cell.
    pub full: &'static str,
    pub empty: &'static str,
    pub arrow: &'static str,
    pub moving: &'static str,
    pub dot: &'static str,
    pub ok: &'static str,
    pub bad: &'static str,
    /// Memory map cells: non-expert, expert, KV.
    pub kinds: [&'static str; 3],
    /// Bars of multi-row sparklines.
    pub bars: bar::Set<'static>,
}

const ASCII_BORDER: border::Set<'static> = border::Set {
    top_left: "+",
    top_right: "+",
    bottom_left: "+",
    bottom_right: "+",
    vertical_left: "|",
    vertical_right: "|",
    horizontal_top: "-",
    horizontal_bottom: "-",
};

pub const UNICODE: Glyphs = Glyphs {
    border: border::ROUNDED,
    levels: [" ", "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"],
    shades: ["░", "▒", "▓", "█"],
    full: "█",
    empty: "·",
    arrow: "→",
    moving: "»",
    dot: "●",
    ok: "✓",
    bad: "✗",
    kinds: ["▓", "█", "▒"],
    bars: bar::NINE_LEVELS,
};

pub const ASCII: Glyphs = Glyphs {
    border: ASCII_BORDER,
    levels: [" ", ".", ".", ":", ":", "=", "=", "#", "#"],
    shades: [".", ":", "*", "#"],
    full: "#",
    empty: ".",
    arrow: "->",
    moving: ">",
    dot: "*",
    ok: "ok",
    bad: "x",
    kinds: ["N", "E", "k"],
    bars: bar::Set {
        full: "#",
        seven_eighths: "#",
        three_quarters: "=",
        five_eighths: "=",
        half: "-",
        three_eighths: "-",
        one_quarter: ".",
        one_eighth: ".",
        empty: " ",
    },
};

impl Glyphs {
    pub fn of(ascii: bool) -> &'static Glyphs {
        if ascii { &ASCII } else { &UNICODE }
    }

    /// The level glyph for a fraction in [0, 1].
    pub fn level(&self, x: f64) -> &'static str {
        let i = (x.clamp(0.0, 1.0) * 8.0).round() as usize;
        self.levels[i]
    }

    /// A sparkline of `values` scaled to their maximum, `width` cells (the newest at the right).
    pub fn spark(&self, values: &[f64], width: usize) -> String {
        let start = values.len().saturating_sub(width);
        let v = &values[start..];
        let max = v
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .fold(0.0f64, f64::max);
        let mut s: String = " ".repeat(width.saturating_sub(v.len()));
        for x in v {
            let f = if max > 0.0 && x.is_finite() {
                x / max
            } else {
                0.0
            };
            s.push_str(if f > 0.0 && f < 0.0625 {
                self.levels[1]
            } else {
                self.level(f)
            });
        }
        s
    }
}
