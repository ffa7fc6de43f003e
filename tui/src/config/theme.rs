//! Themes: named styles for every part of the console (STUB: replaced by the TOML implementation).

use ratatui::style::{Color, Modifier, Style};

/// How many colours the terminal shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorMode {
    TrueColor,
    Ansi256,
    Ansi16,
    /// `NO_COLOR` or the mono theme: modifiers only.
    None,
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

impl Theme {
    pub fn builtin(name: &str) -> Option<Theme> {
        let s = Style::default;
        (name == "dark").then(|| Theme {
            name: name.into(),
            text: s(),
            dim: s().fg(Color::DarkGray),
            title: s().fg(Color::Cyan).add_modifier(Modifier::BOLD),
            border: s().fg(Color::DarkGray),
            border_focus: s().fg(Color::Cyan),
            selected: s().add_modifier(Modifier::REVERSED),
            header: s().add_modifier(Modifier::BOLD),
            status: s().fg(Color::Black).bg(Color::Cyan),
            key: s().fg(Color::Yellow).add_modifier(Modifier::BOLD),
            ok: s().fg(Color::Green),
            warn: s().fg(Color::Yellow),
            error: s().fg(Color::Red).add_modifier(Modifier::BOLD),
            stale: s().fg(Color::DarkGray).add_modifier(Modifier::CROSSED_OUT),
            non_expert: s().fg(Color::Blue),
            expert: s().fg(Color::Magenta),
            kv: s().fg(Color::Green),
            free: s().fg(Color::DarkGray),
            shared: s().fg(Color::Cyan).add_modifier(Modifier::BOLD),
            inflight: s().fg(Color::Yellow).add_modifier(Modifier::SLOW_BLINK),
            gauge: s().fg(Color::Cyan),
            spark: s().fg(Color::Green),
            heat: vec![Color::Blue, Color::Yellow, Color::Red],
            devices: vec![
                Color::Red,
                Color::Green,
                Color::Yellow,
                Color::Blue,
                Color::Magenta,
                Color::Cyan,
                Color::LightRed,
                Color::LightGreen,
            ],
        })
    }

    /// The colour of device number `i` (placement view).
    pub fn device_color(&self, i: usize) -> Color {
        self.devices[i % self.devices.len().max(1)]
    }

    /// The heat colour of a load fraction in [0, 1].
    pub fn heat(&self, x: f64) -> Color {
        let n = self.heat.len();
        if n == 0 {
            return Color::Reset;
        }
        let i = ((x.clamp(0.0, 1.0)) * (n - 1) as f64).round() as usize;
        self.heat[i]
    }
}
