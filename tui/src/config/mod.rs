//! Keymaps, themes and the console's config files: built-in TOML from `keymaps/` and `themes/`
//! (embedded at build time), user deltas in the config dir, `emoe config path|print|validate`.

pub mod keymap;
pub mod theme;

use std::ops::Range;

pub use keymap::{Binding, Keymap, Mode};
pub use theme::{ColorMode, Theme};

/// What the console runs with, after built-ins, user files and flags are merged.
#[derive(Clone, Debug)]
pub struct Settings {
    pub keymap: Keymap,
    pub theme: Theme,
    /// No box drawing or braille.
    pub ascii: bool,
    /// Problems with user files (`file:line:col: message`); the defaults were used instead.
    pub warnings: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            keymap: Keymap::builtin("default").expect("the default keymap is built in"),
            theme: Theme::builtin("dark").expect("the dark theme is built in"),
            ascii: false,
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
        assert!(s.warnings.is_empty());
    }
}
