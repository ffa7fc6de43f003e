//! Keymaps, themes and the console's config files: built-in TOML from `keymaps/` and `themes/`
//! (embedded at build time), user deltas in the config dir, `emoe config path|print|validate`.
//!
//! The config dir is `$EMOE_CONFIG_DIR`, else the platform's (`~/.config/elasticmoe` on Linux).
//! It may hold three files, each optional:
//!
//! * `config.toml`: `keymap = "default"|"vim"`, `theme = "dark"|"light"|"mono"|"high-contrast"`,
//!   `ascii = bool`, `colors = "auto"|"truecolor"|"256"|"16"|"none"`, `tick = "1s"` (redraw tick,
//!   100ms to 10s). Command-line flags win over it; it wins over the defaults.
//! * `keymap.toml`: a delta over the chosen keymap (see [`keymap`]).
//! * `theme.toml`: a delta over the chosen theme (see [`theme`]).
//!
//! [`load`] never fails: a file with a problem is reported in [`Settings::warnings`] as
//! `PATH:LINE:COL: message` and ignored.

pub mod cli;
pub mod files;
pub mod keymap;
pub mod theme;

use std::ops::Range;
use std::time::Duration;

pub use cli::{ConfigCmd, run_config_cmd};
pub use files::{CONFIG_FILE, KEYMAP_FILE, LoadOptions, THEME_FILE, config_dir, load};
pub use keymap::{Binding, Keymap, Mode};
pub use theme::{ColorMode, Theme};

/// What the console runs with, after built-ins, user files and flags are merged.
#[derive(Clone, Debug)]
pub struct Settings {
    pub keymap: Keymap,
    /// The theme, already downgraded to [`Settings::colors`].
    pub theme: Theme,
    /// No box drawing or braille.
    pub ascii: bool,
    /// The redraw tick (100ms to 10s).
    pub tick: Duration,
    /// How many colours the terminal shows (from `--colors`, `config.toml` or the environment).
    pub colors: ColorMode,
    /// Problems with user files (`file:line:col: message`); the defaults were used instead.
    pub warnings: Vec<String>,
}

/// The default redraw tick.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);

impl Default for Settings {
    /// The built-in defaults, with no files, flags or environment consulted.
    fn default() -> Self {
        Self {
            keymap: Keymap::builtin("default").expect("the default keymap is built in"),
            theme: Theme::builtin("dark").expect("the dark theme is built in"),
            ascii: false,
            tick: DEFAULT_TICK,
            colors: ColorMode::TrueColor,
            warnings: Vec::new(),
        }
    }
}

/// A problem in a config file (or a built-in one), with where it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{col}: {message}")]
pub struct ConfigError {
    /// The file (its path, or the built-in's name).
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    pub message: String,
}

impl ConfigError {
    /// An error at byte offset `at` of `text`.
    pub fn at(origin: &str, text: &str, at: usize, message: impl Into<String>) -> Self {
        let (line, col) = line_col(text, at);
        Self {
            origin: origin.to_string(),
            line,
            col,
            message: message.into(),
        }
    }

    /// An error at the start of `span` (a byte range of `text`).
    pub fn spanned(
        origin: &str,
        text: &str,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        Self::at(origin, text, span.start, message)
    }

    /// An error about the file as a whole (reported at 1:1).
    pub fn file(origin: &str, message: impl Into<String>) -> Self {
        Self {
            origin: origin.to_string(),
            line: 1,
            col: 1,
            message: message.into(),
        }
    }

    /// A TOML syntax or shape error, positioned by its span.
    pub fn from_toml(origin: &str, text: &str, e: &toml::de::Error) -> Self {
        let at = e.span().map_or(0, |s| s.start);
        let message = e.message().trim().replace('\n', "; ");
        Self::at(origin, text, at, message)
    }
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_in_characters() {
        let t = "a = 1\nbé = 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 4), (1, 5));
        assert_eq!(line_col(t, 6), (2, 1));
        // `=` on line 2 is after the two-byte `é`.
        assert_eq!(line_col(t, t.find("= 2").unwrap()), (2, 4));
        assert_eq!(line_col(t, 10_000), (3, 1));
    }

    #[test]
    fn error_display_is_path_line_col_message() {
        let e = ConfigError::at("x.toml", "a\nbc", 3, "bad");
        assert_eq!(e.to_string(), "x.toml:2:2: bad");
    }

    #[test]
    fn default_settings() {
        let s = Settings::default();
        assert_eq!(s.keymap.name, "default");
        assert_eq!(s.theme.name, "dark");
        assert_eq!(s.tick, Duration::from_secs(1));
        assert!(s.warnings.is_empty());
    }
}
