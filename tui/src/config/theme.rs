//! Themes: named styles for every part of the console, read from TOML.
//!
//! ```toml
//! inherits = "dark"                   # optional: start from a built-in theme
//! heat = ["blue", "yellow", "red"]    # load colours, cold to hot (at least one)
//! devices = ["red", "green", "blue"]  # one colour per device, cycled (at least one)
//!
//! [palette]                           # optional names for colours, usable in this file
//! accent = "#5fafff"
//!
//! [styles]
//! title = { fg = "accent", bold = true }
//! status = { fg = "black", bg = "cyan" }
//! ```
//!
//! Top-level keys (`inherits`, `heat`, `devices`) come before the tables. A style is an inline
//! table of `fg`, `bg` (a colour) and the modifiers `bold dim italic underline blink rapid_blink
//! reversed hidden crossed_out` (true or false). Colours: the 16 ANSI names (`black red green
//! yellow blue magenta cyan gray darkgray lightred lightgreen lightyellow lightblue lightmagenta
//! lightcyan white`), `#rrggbb`, an xterm-256 index (`"208"`), `reset` (the terminal's default),
//! `none` (no colour: inherit the surrounding one), or a `[palette]` name.
//!
//! Fields given replace the base's, one by one: `title = { fg = "red" }` keeps the base's bold.
//! The built-ins are `themes/{dark,light,mono,high-contrast}.toml`; a user's `theme.toml` is a
//! delta over the chosen theme ([`Theme::merge_delta`]).

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::ops::Range;
use std::str::FromStr;

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;

/// How many colours the terminal shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorMode {
    TrueColor,
    Ansi256,
    Ansi16,
    /// `NO_COLOR` or the mono theme: modifiers only.
    None,
}

impl ColorMode {
    /// From the environment: `NO_COLOR` set and non-empty: none; `COLORTERM` truecolor or
    /// 24bit: truecolor; `TERM` containing `256color`: 256; else 16.
    pub fn detect() -> ColorMode {
        Self::detect_from(&|k| std::env::var(k).ok())
    }

    /// [`ColorMode::detect`] with the environment given as a function (for tests).
    pub fn detect_from(env: &dyn Fn(&str) -> Option<String>) -> ColorMode {
        let var = |k: &str| env(k).filter(|v| !v.is_empty());
        if var("NO_COLOR").is_some() {
            return ColorMode::None;
        }
        if var("COLORTERM").is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v == "truecolor" || v == "24bit"
        }) {
            return ColorMode::TrueColor;
        }
        if var("TERM").is_some_and(|v| v.contains("256color")) {
            return ColorMode::Ansi256;
        }
        ColorMode::Ansi16
    }

    /// A `--colors` / `colors =` value: `Ok(None)` for `auto` (detect).
    pub fn parse_setting(s: &str) -> Result<Option<ColorMode>, String> {
        Ok(Some(match s.trim().to_ascii_lowercase().as_str() {
            "auto" => return Ok(None),
            "truecolor" | "24bit" | "true" => ColorMode::TrueColor,
            "256" | "ansi256" => ColorMode::Ansi256,
            "16" | "ansi16" | "ansi" => ColorMode::Ansi16,
            "none" | "no" | "never" | "mono" => ColorMode::None,
            _ => {
                return Err(format!(
                    "`{s}` is not a colour mode (truecolor, 256, 16, none or auto)"
                ));
            }
        }))
    }

    /// The name as `--colors` takes it.
    pub fn name(self) -> &'static str {
        match self {
            ColorMode::TrueColor => "truecolor",
            ColorMode::Ansi256 => "256",
            ColorMode::Ansi16 => "16",
            ColorMode::None => "none",
        }
    }
}

/// `truecolor|256|16|none|auto` (`auto` detects from the environment now).
impl FromStr for ColorMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse_setting(s)?.unwrap_or_else(ColorMode::detect))
    }
}

impl fmt::Display for ColorMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug)]
pub struct Theme {
    pub name: String,
    pub text: Style,
    pub dim: Style,
    pub title: Style,
    pub border: Style,
    pub border_focus: Style,
    pub selected: Style,
    pub header: Style,
    pub status: Style,
    pub key: Style,
    pub ok: Style,
    pub warn: Style,
    pub error: Style,
    pub stale: Style,
    pub non_expert: Style,
    pub expert: Style,
    pub kv: Style,
    pub free: Style,
    pub shared: Style,
    pub inflight: Style,
    pub gauge: Style,
    pub spark: Style,
    pub heat: Vec<Color>,
    pub devices: Vec<Color>,
}

/// Generates everything that lists the style fields, so a new style is one line here.
macro_rules! styles {
    ($($f:ident),* $(,)?) => {
        /// The styles of a theme, as named in `[styles]`.
        pub const STYLE_NAMES: &[&str] = &[$(stringify!($f)),*];

        #[derive(Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawStyles {
            $($f: Option<RawStyle>,)*
        }

        impl RawStyles {
            fn into_entries(self) -> Vec<(&'static str, Option<RawStyle>)> {
                vec![$((stringify!($f), self.$f)),*]
            }
        }

        impl Theme {
            /// The style named `name` (as in `[styles]`).
            pub fn style(&self, name: &str) -> Option<Style> {
                match name {
                    $(stringify!($f) => Some(self.$f),)*
                    _ => None,
                }
            }

            fn style_mut(&mut self, name: &str) -> Option<&mut Style> {
                match name {
                    $(stringify!($f) => Some(&mut self.$f),)*
                    _ => None,
                }
            }

            fn for_each_style(&mut self, mut f: impl FnMut(&'static str, &mut Style)) {
                $(f(stringify!($f), &mut self.$f);)*
            }

            /// No colours, no modifiers, no heat or device colours.
            fn plain(name: &str) -> Theme {
                Theme {
                    name: name.to_string(),
                    $($f: Style::default(),)*
                    heat: Vec::new(),
                    devices: Vec::new(),
                }
            }
        }
    };
}

styles!(
    text,
    dim,
    title,
    border,
    border_focus,
    selected,
    header,
    status,
    key,
    ok,
    warn,
    error,
    stale,
    non_expert,
    expert,
    kv,
    free,
    shared,
    inflight,
    gauge,
    spark,
);

/// The built-in themes, by name, as embedded TOML.
const BUILTIN: &[(&str, &str)] = &[
    ("dark", include_str!("../../../themes/dark.toml")),
    ("light", include_str!("../../../themes/light.toml")),
    ("mono", include_str!("../../../themes/mono.toml")),
    (
        "high-contrast",
        include_str!("../../../themes/high-contrast.toml"),
    ),
];

/// The modifiers a style may set, by their TOML names.
const MODIFIERS: &[(&str, Modifier)] = &[
    ("bold", Modifier::BOLD),
    ("dim", Modifier::DIM),
    ("italic", Modifier::ITALIC),
    ("underline", Modifier::UNDERLINED),
    ("blink", Modifier::SLOW_BLINK),
    ("rapid_blink", Modifier::RAPID_BLINK),
    ("reversed", Modifier::REVERSED),
    ("hidden", Modifier::HIDDEN),
    ("crossed_out", Modifier::CROSSED_OUT),
];

/// The 16 ANSI colours: TOML name, colour, xterm's default RGB (for mapping colours down).
const ANSI16: &[(&str, Color, (u8, u8, u8))] = &[
    ("black", Color::Black, (0, 0, 0)),
    ("red", Color::Red, (205, 0, 0)),
    ("green", Color::Green, (0, 205, 0)),
    ("yellow", Color::Yellow, (205, 205, 0)),
    ("blue", Color::Blue, (0, 0, 238)),
    ("magenta", Color::Magenta, (205, 0, 205)),
    ("cyan", Color::Cyan, (0, 205, 205)),
    ("gray", Color::Gray, (229, 229, 229)),
    ("darkgray", Color::DarkGray, (127, 127, 127)),
    ("lightred", Color::LightRed, (255, 0, 0)),
    ("lightgreen", Color::LightGreen, (0, 255, 0)),
    ("lightyellow", Color::LightYellow, (255, 255, 0)),
    ("lightblue", Color::LightBlue, (92, 92, 255)),
    ("lightmagenta", Color::LightMagenta, (255, 0, 255)),
    ("lightcyan", Color::LightCyan, (0, 255, 255)),
    ("white", Color::White, (255, 255, 255)),
];

/// How deep `inherits` may chain among the built-ins.
const MAX_INHERITS: usize = 4;

impl Theme {
    /// The names of the built-in themes.
    pub const NAMES: &'static [&'static str] = &["dark", "light", "mono", "high-contrast"];

    /// A built-in theme: `dark`, `light`, `mono` or `high-contrast`.
    pub fn builtin(name: &str) -> Option<Theme> {
        let text = Self::builtin_text(name)?;
        Some(
            Theme::parse(name, text, &format!("themes/{name}.toml"))
                .expect("built-in themes parse (tested)"),
        )
    }

    /// The TOML of a built-in theme.
    pub fn builtin_text(name: &str) -> Option<&'static str> {
        BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    /// A whole theme from TOML (`inherits` names a built-in to start from); `origin` names the
    /// file in errors. Without `inherits`, unset styles are plain and `heat` and `devices` must
    /// be given.
    pub fn parse(name: &str, text: &str, origin: &str) -> Result<Theme, ConfigError> {
        Self::parse_depth(name, text, origin, 0)
    }

    fn parse_depth(
        name: &str,
        text: &str,
        origin: &str,
        depth: usize,
    ) -> Result<Theme, ConfigError> {
        let raw = RawTheme::parse(text, origin)?;
        let base = match &raw.inherits {
            Some(inh) => {
                let (base_text, span) = builtin_for(inh, text, origin)?;
                if depth >= MAX_INHERITS {
                    return Err(ConfigError::spanned(
                        origin,
                        text,
                        span,
                        "`inherits` chains too deep (a cycle?)",
                    ));
                }
                let base_name = inh.get_ref().trim();
                Self::parse_depth(
                    base_name,
                    base_text,
                    &format!("themes/{base_name}.toml"),
                    depth + 1,
                )?
            }
            None => Theme::plain(name),
        };
        let mut theme = raw.apply(base, text, origin)?;
        theme.name = name.to_string();
        for (key, list) in [("heat", &theme.heat), ("devices", &theme.devices)] {
            if list.is_empty() {
                return Err(ConfigError::file(
                    origin,
                    format!("`{key}` is missing (a list of at least one colour)"),
                ));
            }
        }
        Ok(theme)
    }

    /// Applies a user delta: each field given (a style's `fg`, `bg`, a modifier, `heat`,
    /// `devices`) replaces this theme's. `inherits`, if present, must name a built-in but is
    /// not applied here (the caller picks the base). On error nothing changes.
    pub fn merge_delta(&mut self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let raw = RawTheme::parse(text, origin)?;
        if let Some(inh) = &raw.inherits {
            builtin_for(inh, text, origin)?;
        }
        *self = raw.apply(self.clone(), text, origin)?;
        Ok(())
    }

    /// The `inherits` of a theme file, checked to name a built-in.
    pub fn inherits_of(text: &str, origin: &str) -> Result<Option<String>, ConfigError> {
        let raw = RawTheme::parse(text, origin)?;
        match &raw.inherits {
            Some(inh) => {
                builtin_for(inh, text, origin)?;
                Ok(Some(inh.get_ref().trim().to_string()))
            }
            None => Ok(None),
        }
    }

    /// The theme as a complete TOML theme file (what `emoe config print` shows).
    pub fn to_toml(&self) -> String {
        let list = |cs: &[Color]| {
            let items: Vec<String> = cs.iter().map(|c| quote(&color_name(*c))).collect();
            format!("[{}]", items.join(", "))
        };
        let mut out = String::new();
        let _ = writeln!(out, "# emoe theme `{}`", self.name);
        let _ = writeln!(out, "heat = {}", list(&self.heat));
        let _ = writeln!(out, "devices = {}", list(&self.devices));
        out.push_str("\n[styles]\n");
        let mut this = self.clone();
        this.for_each_style(|name, s| {
            let mut fields = Vec::new();
            if let Some(c) = s.fg {
                fields.push(format!("fg = {}", quote(&color_name(c))));
            }
            if let Some(c) = s.bg {
                fields.push(format!("bg = {}", quote(&color_name(c))));
            }
            for (m_name, m) in MODIFIERS {
                if s.add_modifier.contains(*m) {
                    fields.push(format!("{m_name} = true"));
                }
            }
            if fields.is_empty() {
                let _ = writeln!(out, "{name} = {{}}");
            } else {
                let _ = writeln!(out, "{name} = {{ {} }}", fields.join(", "));
            }
        });
        out
    }

    /// The theme with its colours mapped to what `mode` can show: 256 maps `#rrggbb` to the
    /// nearest xterm-256 colour, 16 maps `#rrggbb` and indexes to the nearest ANSI colour, none
    /// drops every colour (modifiers stay; `selected` and `status`, if they had colours, become
    /// reversed so they still stand out) and makes heat and device colours `Reset`.
    pub fn downgrade(mut self, mode: ColorMode) -> Theme {
        let map: fn(Color) -> Color = match mode {
            ColorMode::TrueColor => return self,
            ColorMode::Ansi256 => to_ansi256,
            ColorMode::Ansi16 => to_ansi16,
            ColorMode::None => {
                self.for_each_style(|name, s| {
                    let had_colour = s.fg.is_some() || s.bg.is_some();
                    s.fg = None;
                    s.bg = None;
                    if had_colour
                        && matches!(name, "selected" | "status")
                        && !s.add_modifier.contains(Modifier::REVERSED)
                    {
                        s.add_modifier.insert(Modifier::REVERSED);
                        s.sub_modifier.remove(Modifier::REVERSED);
                    }
                });
                self.heat.iter_mut().for_each(|c| *c = Color::Reset);
                self.devices.iter_mut().for_each(|c| *c = Color::Reset);
                return self;
            }
        };
        self.for_each_style(|_, s| {
            s.fg = s.fg.map(map);
            s.bg = s.bg.map(map);
        });
        self.heat.iter_mut().for_each(|c| *c = map(*c));
        self.devices.iter_mut().for_each(|c| *c = map(*c));
        self
    }

    /// The colour of device number `i` (placement view).
    pub fn device_color(&self, i: usize) -> Color {
        if self.devices.is_empty() {
            return Color::Reset;
        }
        self.devices[i % self.devices.len()]
    }

    /// The heat colour of a load fraction in [0, 1].
    pub fn heat(&self, x: f64) -> Color {
        let n = self.heat.len();
        if n == 0 {
            return Color::Reset;
        }
        let x = if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
        let i = (x * (n - 1) as f64).round() as usize;
        self.heat[i.min(n - 1)]
    }
}

/// The built-in an `inherits` names, with the span to blame.
fn builtin_for(
    inh: &Spanned<String>,
    text: &str,
    origin: &str,
) -> Result<(&'static str, Range<usize>), ConfigError> {
    let name = inh.get_ref().trim();
    Theme::builtin_text(name)
        .map(|t| (t, inh.span()))
        .ok_or_else(|| {
            ConfigError::spanned(
                origin,
                text,
                inh.span(),
                format!(
                    "`inherits`: `{name}` is not a built-in theme ({})",
                    Theme::NAMES.join(", ")
                ),
            )
        })
}

/// Parses a colour: an ANSI name, `#rrggbb` (or `#rgb`), an xterm-256 index, `reset`, or
/// `none` (`Ok(None)`: no colour).
pub fn parse_color(s: &str) -> Result<Option<Color>, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    if lower == "none" {
        return Ok(None);
    }
    if lower == "reset" || lower == "default" {
        return Ok(Some(Color::Reset));
    }
    if let Some(hex) = t.strip_prefix('#') {
        let digits: Option<Vec<u8>> = hex
            .chars()
            .map(|c| c.to_digit(16).map(|d| d as u8))
            .collect();
        return match digits.as_deref() {
            Some([r1, r2, g1, g2, b1, b2]) => {
                Ok(Some(Color::Rgb(r1 * 16 + r2, g1 * 16 + g2, b1 * 16 + b2)))
            }
            Some([r, g, b]) => Ok(Some(Color::Rgb(r * 17, g * 17, b * 17))),
            _ => Err(format!("`{s}` is not a colour (#rrggbb or #rgb)")),
        };
    }
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return t
            .parse::<u8>()
            .map(|i| Some(Color::Indexed(i)))
            .map_err(|_| format!("`{s}` is not a colour (an xterm index is 0 to 255)"));
    }
    let name: String = lower
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .collect::<String>()
        .replace("grey", "gray");
    ANSI16
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, c, _)| Some(*c))
        .ok_or_else(|| {
            format!(
                "`{s}` is not a colour (an ANSI name such as red or lightblue, #rrggbb, an \
                 xterm index 0-255, reset, none, or a [palette] name)"
            )
        })
}

/// How a colour is written in theme files.
pub fn color_name(c: Color) -> String {
    match c {
        Color::Reset => "reset".to_string(),
        Color::Rgb(r, g, b) => format!("#{r:02x}{g:02x}{b:02x}"),
        Color::Indexed(i) => i.to_string(),
        named => ANSI16
            .iter()
            .find(|(_, c, _)| *c == named)
            .map_or_else(|| "reset".to_string(), |(n, _, _)| (*n).to_string()),
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The RGB of an xterm-256 index (16-255; 0-15 use xterm's defaults).
fn xterm_rgb(i: u8) -> (u8, u8, u8) {
    const LEVELS: [u8; 6] = [0, 95, 135, 175, 215, 255];
    match i {
        0..=15 => ANSI16[i as usize].2,
        16..=231 => {
            let i = i - 16;
            (
                LEVELS[(i / 36) as usize],
                LEVELS[(i / 6 % 6) as usize],
                LEVELS[(i % 6) as usize],
            )
        }
        _ => {
            let v = 8 + 10 * (i - 232);
            (v, v, v)
        }
    }
}

/// A perceptual-ish distance ("redmean") between two colours.
fn distance((r1, g1, b1): (u8, u8, u8), (r2, g2, b2): (u8, u8, u8)) -> u32 {
    let rm = (r1 as i32 + r2 as i32) / 2;
    let (dr, dg, db) = (
        r1 as i32 - r2 as i32,
        g1 as i32 - g2 as i32,
        b1 as i32 - b2 as i32,
    );
    (((512 + rm) * dr * dr) / 256 + 4 * dg * dg + ((767 - rm) * db * db) / 256) as u32
}

/// `#rrggbb` to the nearest xterm-256 colour (from the cube and the grey ramp, 16-255, which
/// unlike 0-15 do not depend on the terminal's palette); other colours are kept.
fn to_ansi256(c: Color) -> Color {
    let Color::Rgb(r, g, b) = c else {
        return c;
    };
    let best = (16..=255u8)
        .min_by_key(|i| distance((r, g, b), xterm_rgb(*i)))
        .unwrap_or(16);
    Color::Indexed(best)
}

/// `#rrggbb` and xterm indexes to the nearest of the 16 ANSI colours; other colours are kept.
fn to_ansi16(c: Color) -> Color {
    let rgb = match c {
        Color::Rgb(r, g, b) => (r, g, b),
        Color::Indexed(i) if i < 16 => return ANSI16[i as usize].1,
        Color::Indexed(i) => xterm_rgb(i),
        other => return other,
    };
    ANSI16
        .iter()
        .min_by_key(|(_, _, x)| distance(rgb, *x))
        .map_or(c, |(_, c, _)| *c)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTheme {
    inherits: Option<Spanned<String>>,
    heat: Option<Spanned<Vec<Spanned<String>>>>,
    devices: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    palette: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    styles: RawStyles,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStyle {
    fg: Option<Spanned<String>>,
    bg: Option<Spanned<String>>,
    bold: Option<bool>,
    dim: Option<bool>,
    italic: Option<bool>,
    underline: Option<bool>,
    blink: Option<bool>,
    rapid_blink: Option<bool>,
    reversed: Option<bool>,
    hidden: Option<bool>,
    crossed_out: Option<bool>,
}

impl RawStyle {
    /// The modifiers given, in [`MODIFIERS`] order.
    fn modifiers(&self) -> [Option<bool>; 9] {
        [
            self.bold,
            self.dim,
            self.italic,
            self.underline,
            self.blink,
            self.rapid_blink,
            self.reversed,
            self.hidden,
            self.crossed_out,
        ]
    }
}

impl RawTheme {
    fn parse(text: &str, origin: &str) -> Result<RawTheme, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::from_toml(origin, text, &e))
    }

    /// Applies the fields given over `base`.
    fn apply(self, mut theme: Theme, text: &str, origin: &str) -> Result<Theme, ConfigError> {
        let err = |span: Range<usize>, m: String| ConfigError::spanned(origin, text, span, m);
        let mut palette = BTreeMap::new();
        for (name, v) in &self.palette {
            match parse_color(v.get_ref()) {
                Ok(Some(c)) => {
                    palette.insert(name.as_str(), c);
                }
                Ok(None) => {
                    return Err(err(
                        v.span(),
                        format!("palette `{name}`: `none` is not a colour"),
                    ));
                }
                Err(m) => return Err(err(v.span(), format!("palette `{name}`: {m}"))),
            }
        }
        let colour = |v: &Spanned<String>| -> Result<Option<Color>, ConfigError> {
            let s = v.get_ref();
            match palette.get(s.trim()) {
                Some(c) => Ok(Some(*c)),
                None => parse_color(s).map_err(|m| err(v.span(), m)),
            }
        };
        for (key, list, out) in [
            ("heat", &self.heat, &mut theme.heat),
            ("devices", &self.devices, &mut theme.devices),
        ] {
            let Some(list) = list else { continue };
            if list.get_ref().is_empty() {
                return Err(err(
                    list.span(),
                    format!("`{key}` needs at least one colour"),
                ));
            }
            let mut cs = Vec::new();
            for v in list.get_ref() {
                match colour(v)? {
                    Some(c) => cs.push(c),
                    None => {
                        return Err(err(
                            v.span(),
                            format!("`{key}`: `none` is not a colour here (use `reset`)"),
                        ));
                    }
                }
            }
            *out = cs;
        }
        for (name, raw) in self.styles.into_entries() {
            let Some(raw) = raw else { continue };
            let fg = raw.fg.as_ref().map(&colour).transpose()?;
            let bg = raw.bg.as_ref().map(&colour).transpose()?;
            let Some(style) = theme.style_mut(name) else {
                continue;
            };
            if let Some(fg) = fg {
                style.fg = fg;
            }
            if let Some(bg) = bg {
                style.bg = bg;
            }
            for ((_, m), on) in MODIFIERS.iter().zip(raw.modifiers()) {
                match on {
                    Some(true) => {
                        style.add_modifier.insert(*m);
                        style.sub_modifier.remove(*m);
                    }
                    Some(false) => style.add_modifier.remove(*m),
                    None => {}
                }
            }
        }
        Ok(theme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_are_complete() {
        for name in Theme::NAMES {
            let text = Theme::builtin_text(name).unwrap();
            let t = Theme::parse(name, text, name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(t.name, *name);
            assert!(!t.heat.is_empty() && !t.devices.is_empty(), "{name}");
            // Every style is written out in every built-in, so none is left plain by accident.
            let raw: toml::Table = toml::from_str(text).unwrap();
            let styles = raw.get("styles").and_then(|s| s.as_table()).unwrap();
            for s in STYLE_NAMES {
                assert!(styles.contains_key(*s), "{name} lacks style {s}");
            }
            assert!(Theme::builtin(name).is_some());
        }
        assert!(Theme::builtin("solarized").is_none());
    }

    #[test]
    fn dark_matches_the_original() {
        let t = Theme::builtin("dark").unwrap();
        assert_eq!(t.text, Style::default());
        assert_eq!(
            t.title,
            Style::default()
                .fg(Color::Cyan)
                .add_modifier(Modifier::BOLD)
        );
        assert_eq!(t.status, Style::default().fg(Color::Black).bg(Color::Cyan));
        assert_eq!(
            t.selected,
            Style::default().add_modifier(Modifier::REVERSED)
        );
        assert_eq!(t.heat, vec![Color::Blue, Color::Yellow, Color::Red]);
        assert_eq!(t.devices.len(), 8);
        // Default background: only status and selected may set one.
        let mut t = t;
        t.for_each_style(|name, s| {
            assert!(
                s.bg.is_none() || matches!(name, "status" | "selected"),
                "dark {name} sets bg"
            );
        });
    }

    #[test]
    fn mono_has_no_colours_and_distinct_memory_kinds() {
        let mut t = Theme::builtin("mono").unwrap();
        t.for_each_style(|name, s| {
            assert!(s.fg.is_none() && s.bg.is_none(), "mono {name} has a colour");
        });
        assert!(t.heat.iter().chain(&t.devices).all(|c| *c == Color::Reset));
        let kinds = [t.non_expert, t.expert, t.kv, t.free, t.shared, t.inflight];
        for (i, a) in kinds.iter().enumerate() {
            for b in &kinds[i + 1..] {
                assert_ne!(
                    a.add_modifier, b.add_modifier,
                    "mono memory kinds look alike"
                );
            }
        }
        assert!(t.selected.add_modifier.contains(Modifier::REVERSED));
    }

    #[test]
    fn colours() {
        let c = |s: &str| parse_color(s).unwrap();
        assert_eq!(c("red"), Some(Color::Red));
        assert_eq!(c("LightBlue"), Some(Color::LightBlue));
        assert_eq!(c("dark_grey"), Some(Color::DarkGray));
        assert_eq!(c("#ff8000"), Some(Color::Rgb(255, 128, 0)));
        assert_eq!(c("#F80"), Some(Color::Rgb(255, 136, 0)));
        assert_eq!(c("208"), Some(Color::Indexed(208)));
        assert_eq!(c("reset"), Some(Color::Reset));
        assert_eq!(c("none"), None);
        for bad in ["", "#12345", "#gggggg", "256", "purple"] {
            assert!(parse_color(bad).is_err(), "{bad:?}");
        }
        for (n, col, _) in ANSI16 {
            assert_eq!(color_name(*col), *n);
            assert_eq!(c(n), Some(*col));
        }
    }

    #[test]
    fn inherits_palette_and_field_by_field_override() {
        let t = Theme::parse(
            "mine",
            r##"
inherits = "dark"
devices = ["accent", "#000000"]
[palette]
accent = "#5fafff"
[styles]
title = { fg = "accent" }
status = { bold = true, bg = "none" }
selected = { reversed = false, underline = true }
"##,
            "mine.toml",
        )
        .unwrap();
        let dark = Theme::builtin("dark").unwrap();
        assert_eq!(t.name, "mine");
        assert_eq!(t.title.fg, Some(Color::Rgb(0x5f, 0xaf, 0xff)));
        assert!(
            t.title.add_modifier.contains(Modifier::BOLD),
            "kept from dark"
        );
        assert_eq!(t.status.fg, dark.status.fg);
        assert_eq!(t.status.bg, None);
        assert!(t.status.add_modifier.contains(Modifier::BOLD));
        assert_eq!(t.selected.add_modifier, Modifier::UNDERLINED);
        assert_eq!(
            t.devices,
            vec![Color::Rgb(0x5f, 0xaf, 0xff), Color::Rgb(0, 0, 0)]
        );
        assert_eq!(t.heat, dark.heat);
        assert_eq!(t.error, dark.error);
    }

    #[test]
    fn standalone_theme_needs_heat_and_devices() {
        let e = Theme::parse("x", "heat = [\"red\"]\n[styles]\n", "x.toml").unwrap_err();
        assert!(e.message.contains("devices"), "{e}");
        let e = Theme::parse("x", "heat = []\ndevices = [\"red\"]\n", "x.toml").unwrap_err();
        assert_eq!((e.line, e.col), (1, 8), "{e}");
    }

    #[test]
    fn errors_point_at_the_value() {
        let p = |t: &str| Theme::parse("x", t, "x.toml").unwrap_err();
        let e = p("inherits = \"dark\"\n[styles]\ntitle = { fg = \"purple\" }\n");
        assert_eq!((e.origin.as_str(), e.line, e.col), ("x.toml", 3, 16), "{e}");
        assert!(e.message.contains("purple"), "{e}");
        let e = p("inherits = \"dark\"\n[styles]\ntitle = { bolt = true }\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("bolt"), "{e}");
        let e = p("inherits = \"dark\"\n[styles]\ntitel = { bold = true }\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("titel"), "{e}");
        let e = p("inherits = \"solarized\"\n");
        assert_eq!((e.line, e.col), (1, 12), "{e}");
        let e = p("inherits = \"dark\"\ndevices = [\"red\",\n  \"blurple\"]\n");
        assert_eq!((e.line, e.col), (3, 3), "{e}");
        let e = p("inherits = \"dark\"\n[palette]\nx = \"none\"\n");
        assert_eq!(e.line, 3, "{e}");
        let e = p("inherits = \"dark\"\n[styles\n");
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn merge_delta_keeps_the_base_name_and_fails_atomically() {
        let mut t = Theme::builtin("light").unwrap();
        let before = t.clone();
        t.merge_delta("[styles]\nok = { fg = \"#00ff00\" }\n", "theme.toml")
            .unwrap();
        assert_eq!(t.name, "light");
        assert_eq!(t.ok.fg, Some(Color::Rgb(0, 255, 0)));
        assert_eq!(t.error, before.error);
        let e = t
            .merge_delta(
                "[styles]\nerror = { fg = \"red\" }\nok = { fg = \"nope\" }\n",
                "theme.toml",
            )
            .unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(t.error, before.error, "nothing changed");
        assert!(
            t.merge_delta("inherits = \"nope\"\n", "theme.toml")
                .is_err()
        );
        assert_eq!(
            Theme::inherits_of("inherits = \"mono\"", "t")
                .unwrap()
                .as_deref(),
            Some("mono")
        );
        assert_eq!(Theme::inherits_of("", "t").unwrap(), None);
    }

    #[test]
    fn to_toml_round_trips() {
        for name in Theme::NAMES {
            let t = Theme::builtin(name).unwrap();
            let again =
                Theme::parse(name, &t.to_toml(), "printed").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(format!("{t:?}"), format!("{again:?}"), "{name}");
        }
    }

    #[test]
    fn downgrade_to_256() {
        assert_eq!(to_ansi256(Color::Rgb(255, 0, 0)), Color::Indexed(196));
        assert_eq!(to_ansi256(Color::Rgb(0, 0, 0)), Color::Indexed(16));
        assert_eq!(
            to_ansi256(Color::Rgb(0xaf, 0x5f, 0x00)),
            Color::Indexed(130)
        );
        assert_eq!(to_ansi256(Color::Rgb(128, 128, 128)), Color::Indexed(244));
        assert_eq!(
            to_ansi256(Color::Rgb(0x30, 0x30, 0x30)),
            Color::Indexed(236)
        );
        assert_eq!(to_ansi256(Color::Cyan), Color::Cyan);
        assert_eq!(to_ansi256(Color::Indexed(42)), Color::Indexed(42));
        for i in 16..=255u8 {
            let (r, g, b) = xterm_rgb(i);
            assert_eq!(
                to_ansi256(Color::Rgb(r, g, b)),
                Color::Indexed(i),
                "{i} maps to itself"
            );
        }
    }

    #[test]
    fn downgrade_to_16() {
        assert!(matches!(
            to_ansi16(Color::Rgb(255, 0, 0)),
            Color::Red | Color::LightRed
        ));
        assert!(matches!(
            to_ansi16(Color::Rgb(0, 200, 0)),
            Color::Green | Color::LightGreen
        ));
        assert!(matches!(
            to_ansi16(Color::Rgb(20, 20, 240)),
            Color::Blue | Color::LightBlue
        ));
        assert_eq!(to_ansi16(Color::Rgb(0, 0, 0)), Color::Black);
        assert_eq!(to_ansi16(Color::Rgb(255, 255, 255)), Color::White);
        assert_eq!(to_ansi16(Color::Rgb(120, 120, 120)), Color::DarkGray);
        assert_eq!(to_ansi16(Color::Indexed(9)), Color::LightRed);
        assert!(matches!(
            to_ansi16(Color::Indexed(196)),
            Color::Red | Color::LightRed
        ));
        assert_eq!(to_ansi16(Color::Magenta), Color::Magenta);
        assert_eq!(to_ansi16(Color::Reset), Color::Reset);

        let light = Theme::builtin("light")
            .unwrap()
            .downgrade(ColorMode::Ansi16);
        let mut light2 = light.clone();
        light2.for_each_style(|name, s| {
            for c in [s.fg, s.bg].into_iter().flatten() {
                assert!(
                    !matches!(c, Color::Rgb(..) | Color::Indexed(_)),
                    "light {name}: {c:?}"
                );
            }
        });
        assert!(
            light
                .heat
                .iter()
                .chain(&light.devices)
                .all(|c| !matches!(c, Color::Rgb(..)))
        );
    }

    #[test]
    fn downgrade_to_none_keeps_modifiers_and_highlights() {
        let dark = Theme::builtin("dark").unwrap();
        let mut t = dark.clone().downgrade(ColorMode::None);
        t.for_each_style(|name, s| assert!(s.fg.is_none() && s.bg.is_none(), "{name}"));
        assert_eq!(t.title.add_modifier, Modifier::BOLD);
        assert!(
            t.status.add_modifier.contains(Modifier::REVERSED),
            "status had a bg"
        );
        assert!(t.selected.add_modifier.contains(Modifier::REVERSED));
        assert_eq!(t.device_color(3), Color::Reset);
        assert_eq!(t.heat(0.9), Color::Reset);
        assert_eq!(
            dark.clone().downgrade(ColorMode::TrueColor).title,
            dark.title
        );
        // High-contrast's selected has a bg but is not reversed: it becomes reversed.
        let hc = Theme::builtin("high-contrast")
            .unwrap()
            .downgrade(ColorMode::None);
        assert!(hc.selected.add_modifier.contains(Modifier::REVERSED));
    }

    #[test]
    fn heat_and_devices() {
        let t = Theme::builtin("dark").unwrap();
        assert_eq!(t.heat(0.0), Color::Blue);
        assert_eq!(t.heat(0.5), Color::Yellow);
        assert_eq!(t.heat(1.0), Color::Red);
        assert_eq!(t.heat(7.0), Color::Red);
        assert_eq!(t.heat(f64::NAN), Color::Blue);
        assert_eq!(t.device_color(8), t.device_color(0));
    }

    #[test]
    fn colour_modes() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let d = |p: &'static [(&'static str, &'static str)]| ColorMode::detect_from(&env(p));
        assert_eq!(
            d(&[("NO_COLOR", "1"), ("COLORTERM", "truecolor")]),
            ColorMode::None
        );
        assert_eq!(
            d(&[("NO_COLOR", ""), ("COLORTERM", "truecolor")]),
            ColorMode::TrueColor
        );
        assert_eq!(d(&[("COLORTERM", "24bit")]), ColorMode::TrueColor);
        assert_eq!(d(&[("TERM", "xterm-256color")]), ColorMode::Ansi256);
        assert_eq!(d(&[("TERM", "xterm")]), ColorMode::Ansi16);
        assert_eq!(d(&[]), ColorMode::Ansi16);
        assert_eq!("truecolor".parse(), Ok(ColorMode::TrueColor));
        assert_eq!("256".parse(), Ok(ColorMode::Ansi256));
        assert_eq!("16".parse(), Ok(ColorMode::Ansi16));
        assert_eq!("none".parse(), Ok(ColorMode::None));
        assert!("auto".parse::<ColorMode>().is_ok());
        assert!("lots".parse::<ColorMode>().is_err());
        for m in [
            ColorMode::TrueColor,
            ColorMode::Ansi256,
            ColorMode::Ansi16,
            ColorMode::None,
        ] {
            assert_eq!(m.to_string().parse(), Ok(m));
        }
    }
}
