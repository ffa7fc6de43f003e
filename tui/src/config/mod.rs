//! Keymaps, themes and the console's config files: built-in TOML from `keymaps/` and `themes/`
//! (embedded at build time), user deltas in the config dir, `emoe config path|print|validate`.

pub mod keymap;
pub mod theme;

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
