//! The config dir and its files: `config.toml` (settings), `keymap.toml` and `theme.toml`
//! (deltas over the chosen built-ins). [`load`] merges built-ins, files and flags and never fails:
//! a file with a problem becomes a warning (`PATH:LINE:COL: message`) and is ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ColorMode, ConfigError, DEFAULT_TICK, Keymap, Settings, Theme};

/// The settings file in the config dir.
pub const CONFIG_FILE: &str = "config.toml";
/// The keymap delta in the config dir.
pub const KEYMAP_FILE: &str = "keymap.toml";
/// The theme delta in the config dir.
pub const THEME_FILE: &str = "theme.toml";
/// The environment variable naming the config dir.
pub const CONFIG_DIR_ENV: &str = "EMOE_CONFIG_DIR";

/// The shortest and longest redraw tick.
pub const TICK_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// What the command line says; each `Some` wins over `config.toml`, which wins over defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// The config dir (else `$EMOE_CONFIG_DIR`, else the platform's).
    pub config_dir: Option<PathBuf>,
    pub keymap: Option<String>,
    pub theme: Option<String>,
    pub ascii: Option<bool>,
    pub colors: Option<ColorMode>,
}

/// The values a `config.toml` sets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigValues {
    pub keymap: Option<String>,
    pub theme: Option<String>,
    pub ascii: Option<bool>,
    /// `Some(None)` is `colors = "auto"`.
    pub colors: Option<Option<ColorMode>>,
    pub tick: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    keymap: Option<Spanned<String>>,
    theme: Option<Spanned<String>>,
    ascii: Option<bool>,
    colors: Option<Spanned<String>>,
    tick: Option<Spanned<String>>,
}

/// Parses and checks a `config.toml` (unknown keys, presets, colour modes and ticks are errors).
pub fn parse_config(text: &str, origin: &str) -> Result<ConfigValues, ConfigError> {
    let raw: RawConfig =
        toml::from_str(text).map_err(|e| ConfigError::from_toml(origin, text, &e))?;
    let err = |v: &Spanned<String>, m: String| ConfigError::spanned(origin, text, v.span(), m);
    let preset = |v: &Option<Spanned<String>>, what: &str, names: &[&str]| {
        v.as_ref()
            .map(|v| {
                let name = v.get_ref().trim();
                if names.contains(&name) {
                    Ok(name.to_string())
                } else {
                    Err(err(
                        v,
                        format!("`{name}` is not a built-in {what} ({})", names.join(", ")),
                    ))
                }
            })
            .transpose()
    };
    let keymap = preset(&raw.keymap, "keymap", Keymap::NAMES)?;
    let theme = preset(&raw.theme, "theme", Theme::NAMES)?;
    let colors = raw
        .colors
        .as_ref()
        .map(|v| ColorMode::parse_setting(v.get_ref()).map_err(|m| err(v, m)))
        .transpose()?;
    let tick = raw
        .tick
        .as_ref()
        .map(|v| {
            let d = humantime::parse_duration(v.get_ref().trim())
                .map_err(|e| err(v, format!("`tick`: {e} (say \"1s\" or \"500ms\")")))?;
            if d < TICK_RANGE.0 || d > TICK_RANGE.1 {
                return Err(err(
                    v,
                    format!("`tick` is {}; it must be 100ms to 10s", v.get_ref().trim()),
                ));
            }
            Ok(d)
        })
        .transpose()?;
    Ok(ConfigValues {
        keymap,
        theme,
        ascii: raw.ascii,
        colors,
        tick,
    })
}

/// The config dir: `opts.config_dir`, else `$EMOE_CONFIG_DIR`, else the platform's
/// (`~/.config/elasticmoe` on Linux); `None` without a home directory.
pub fn config_dir(opts: &LoadOptions) -> Option<PathBuf> {
    config_dir_with(opts, &process_env)
}

/// Merges built-ins, the config dir's files and `opts`. Never fails: see [`Settings::warnings`].
pub fn load(opts: &LoadOptions) -> Settings {
    load_with(opts, &process_env).settings
}

pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(crate) fn process_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

pub(crate) fn config_dir_with(opts: &LoadOptions, env: Env) -> Option<PathBuf> {
    if let Some(d) = &opts.config_dir {
        return Some(d.clone());
    }
    if let Some(d) = env(CONFIG_DIR_ENV).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    directories::ProjectDirs::from("", "", "elasticmoe").map(|p| p.config_dir().to_path_buf())
}

/// What became of one file of the config dir.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FileStatus {
    Absent,
    Ok,
    Invalid(ConfigError),
}

/// Everything [`load`] worked out, for `emoe config`.
pub(crate) struct Loaded {
    pub settings: Settings,
    /// The theme before it was downgraded to the colour mode.
    pub theme: Theme,
    /// The colour mode was detected (`auto`), not given.
    pub colors_auto: bool,
    pub dir: Option<PathBuf>,
    /// `config.toml`, `keymap.toml`, `theme.toml`, when there is a config dir.
    pub files: Vec<(PathBuf, FileStatus)>,
    /// Problems with the flags (unknown keymap or theme names).
    pub flag_warnings: Vec<String>,
}

/// Reads a file of the config dir: `Ok(None)` if it does not exist.
/// Only regular files, at most [`MAX_FILE`] bytes, are read.
fn read(path: &Path) -> Result<Option<String>, ConfigError> {
    match emoe_core::fsio::read_to_string_capped(path, MAX_FILE) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(ConfigError::file(
            &path.display().to_string(),
            format!("cannot read: {}", e.problem),
        )),
    }
}

/// The largest config file read: the built-in keymaps and themes are a few KiB.
pub const MAX_FILE: u64 = 256 << 10;

pub(crate) fn load_with(opts: &LoadOptions, env: Env) -> Loaded {
    let dir = config_dir_with(opts, env);
    let mut files = Vec::new();
    let mut flag_warnings = Vec::new();

    // Each file: absent, or read and checked by `f` (its error makes the file ignored).
    let mut check = |name: &str, f: &mut dyn FnMut(&str, &str) -> Result<(), ConfigError>| {
        let Some(dir) = &dir else { return };
        let path = dir.join(name);
        let origin = path.display().to_string();
        let status = match read(&path) {
            Ok(None) => FileStatus::Absent,
            Ok(Some(text)) => match f(&text, &origin) {
                Ok(()) => FileStatus::Ok,
                Err(e) => FileStatus::Invalid(e),
            },
            Err(e) => FileStatus::Invalid(e),
        };
        files.push((path, status));
    };

    let mut cfg = ConfigValues::default();
    check(CONFIG_FILE, &mut |text, origin| {
        cfg = parse_config(text, origin)?;
        Ok(())
    });

    let km_name = opts.keymap.clone().or(cfg.keymap.clone());
    let mut keymap = match km_name.as_deref().map(|n| (n, Keymap::builtin(n))) {
        None => Keymap::builtin("default").expect("the default keymap is built in"),
        Some((_, Some(k))) => k,
        Some((n, None)) => {
            flag_warnings.push(format!(
                "--keymap: `{n}` is not a built-in keymap ({}); using default",
                Keymap::NAMES.join(", ")
            ));
            Keymap::builtin("default").expect("the default keymap is built in")
        }
    };
    check(KEYMAP_FILE, &mut |text, origin| {
        keymap.merge_delta(text, origin)
    });

    // The theme delta's `inherits` picks the base when neither a flag nor config.toml does.
    let inherits = dir
        .as_ref()
        .and_then(|d| read(&d.join(THEME_FILE)).ok().flatten())
        .and_then(|t| Theme::inherits_of(&t, "").ok().flatten());
    let theme_name = opts.theme.clone().or(cfg.theme.clone()).or(inherits);
    let mut theme = match theme_name.as_deref().map(|n| (n, Theme::builtin(n))) {
        None => Theme::builtin("dark").expect("the dark theme is built in"),
        Some((_, Some(t))) => t,
        Some((n, None)) => {
            flag_warnings.push(format!(
                "--theme: `{n}` is not a built-in theme ({}); using dark",
                Theme::NAMES.join(", ")
            ));
            Theme::builtin("dark").expect("the dark theme is built in")
        }
    };
    check(THEME_FILE, &mut |text, origin| {
        theme.merge_delta(text, origin)
    });

    let (colors, colors_auto) = match (opts.colors, cfg.colors) {
        (Some(c), _) => (c, false),
        (None, Some(Some(c))) => (c, false),
        (None, _) => (ColorMode::detect_from(env), true),
    };

    let mut warnings: Vec<String> = files
        .iter()
        .filter_map(|(_, s)| match s {
            FileStatus::Invalid(e) => Some(e.to_string()),
            _ => None,
        })
        .collect();
    warnings.extend(flag_warnings.iter().cloned());

    Loaded {
        settings: Settings {
            keymap,
            theme: theme.clone().downgrade(colors),
            ascii: opts.ascii.or(cfg.ascii).unwrap_or(false),
            tick: cfg.tick.unwrap_or(DEFAULT_TICK),
            colors,
            warnings,
        },
        theme,
        colors_auto,
        dir,
        files,
        flag_warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;
    use crate::config::Mode;
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::style::Color;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    fn opts(d: &tempfile::TempDir) -> LoadOptions {
        LoadOptions {
            config_dir: Some(d.path().to_path_buf()),
            ..LoadOptions::default()
        }
    }

    #[test]
    fn config_dir_precedence() {
        let env = |k: &str| (k == CONFIG_DIR_ENV).then(|| "/from/env".to_string());
        let o = LoadOptions {
            config_dir: Some("/from/flag".into()),
            ..LoadOptions::default()
        };
        assert_eq!(config_dir_with(&o, &env), Some(PathBuf::from("/from/flag")));
        assert_eq!(
            config_dir_with(&LoadOptions::default(), &env),
            Some(PathBuf::from("/from/env"))
        );
        let empty = |k: &str| (k == CONFIG_DIR_ENV).then(String::new);
        let platform = config_dir_with(&LoadOptions::default(), &empty);
        assert!(platform.is_none_or(|p| p.ends_with("elasticmoe")));
    }

    #[test]
    fn empty_dir_gives_defaults() {
        let d = dir_with(&[]);
        let l = load_with(&opts(&d), &no_env);
        assert!(l.settings.warnings.is_empty());
        assert_eq!(l.settings.keymap.name, "default");
        assert_eq!(l.settings.theme.name, "dark");
        assert!(!l.settings.ascii);
        assert_eq!(l.settings.tick, Duration::from_secs(1));
        assert_eq!(l.settings.colors, ColorMode::Ansi16);
        assert!(l.colors_auto);
        assert_eq!(l.files.len(), 3);
        assert!(l.files.iter().all(|(_, s)| *s == FileStatus::Absent));
    }

    #[test]
    fn config_values() {
        let d = dir_with(&[(
            CONFIG_FILE,
            "keymap = \"vim\"\ntheme = \"light\"\nascii = true\ncolors = \"256\"\ntick = \"250ms\"\n",
        )]);
        let s = load_with(&opts(&d), &no_env).settings;
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(s.keymap.name, "vim");
        assert_eq!(s.theme.name, "light");
        assert!(s.ascii);
        assert_eq!(s.colors, ColorMode::Ansi256);
        assert_eq!(s.tick, Duration::from_millis(250));
        // Downgraded: light's hex colours became xterm indexes.
        assert!(matches!(s.theme.ok.fg, Some(Color::Indexed(_))));
    }

    #[test]
    fn flags_win_over_config_toml() {
        let d = dir_with(&[(
            CONFIG_FILE,
            "keymap = \"vim\"\ntheme = \"light\"\nascii = true\ncolors = \"256\"\n",
        )]);
        let o = LoadOptions {
            keymap: Some("default".into()),
            theme: Some("mono".into()),
            ascii: Some(false),
            colors: Some(ColorMode::TrueColor),
            ..opts(&d)
        };
        let s = load_with(&o, &no_env).settings;
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(s.keymap.name, "default");
        assert_eq!(s.theme.name, "mono");
        assert!(!s.ascii);
        assert_eq!(s.colors, ColorMode::TrueColor);
    }

    #[test]
    fn no_color_strips_colours_unless_a_mode_is_given() {
        let d = dir_with(&[]);
        let env = |k: &str| (k == "NO_COLOR").then(|| "1".to_string());
        let s = load_with(&opts(&d), &env).settings;
        assert_eq!(s.colors, ColorMode::None);
        assert_eq!(s.theme.name, "dark");
        assert_eq!(s.theme.title.fg, None);
        assert_eq!(s.theme.heat(1.0), Color::Reset);
        let d2 = dir_with(&[(CONFIG_FILE, "colors = \"16\"\n")]);
        assert_eq!(
            load_with(&opts(&d2), &env).settings.colors,
            ColorMode::Ansi16
        );
        let d3 = dir_with(&[(CONFIG_FILE, "colors = \"auto\"\n")]);
        assert_eq!(load_with(&opts(&d3), &env).settings.colors, ColorMode::None);
    }

    #[test]
    fn invalid_config_toml_is_ignored_with_a_located_warning() {
        let cases: &[(&str, (usize, usize), &str)] = &[
            ("keymap = \"vim\"\nthme = \"light\"\n", (2, 1), "thme"),
            (
                "keymap = \"vim\"\ntheme = \"solarized\"\n",
                (2, 9),
                "solarized",
            ),
            ("keymap = \"emacs\"\n", (1, 10), "emacs"),
            ("keymap = \"vim\"\ncolors = \"lots\"\n", (2, 10), "lots"),
            ("keymap = \"vim\"\ntick = \"20s\"\n", (2, 8), "100ms to 10s"),
            (
                "keymap = \"vim\"\ntick = \"10ms\"\n",
                (2, 8),
                "100ms to 10s",
            ),
            ("keymap = \"vim\"\ntick = \"soon\"\n", (2, 8), "tick"),
            ("keymap = \"vim\"\nascii = \"yes\"\n", (2, 9), ""),
            ("keymap = \"vim\"\nascii = \n", (2, 9), ""),
        ];
        for (text, (line, col), needle) in cases {
            let d = dir_with(&[(CONFIG_FILE, text)]);
            let s = load_with(&opts(&d), &no_env).settings;
            let path = d.path().join(CONFIG_FILE).display().to_string();
            assert_eq!(s.warnings.len(), 1, "{text:?}: {:?}", s.warnings);
            let w = &s.warnings[0];
            assert!(
                w.starts_with(&format!("{path}:{line}:{col}: ")),
                "{text:?}: {w}"
            );
            assert!(w.contains(needle), "{text:?}: {w}");
            assert_eq!(s.keymap.name, "default", "the whole file is ignored");
        }
    }

    #[test]
    fn keymap_delta_and_its_errors() {
        let d = dir_with(&[
            (CONFIG_FILE, "keymap = \"vim\"\n"),
            (
                KEYMAP_FILE,
                "[normal]\nkeymap = [\n  { on = \"x\", run = \"app.quit\" },\n  { on = \"q\", run = \"none\" },\n]\n",
            ),
        ]);
        let s = load_with(&opts(&d), &no_env).settings;
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let k = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE);
        assert_eq!(s.keymap.name, "vim");
        assert_eq!(s.keymap.lookup(Mode::Normal, &k('x')), Some(Action::Quit));
        assert_eq!(s.keymap.lookup(Mode::Normal, &k('q')), None);
        assert_eq!(s.keymap.lookup(Mode::Normal, &k('j')), Some(Action::Down));

        let bad = dir_with(&[(
            KEYMAP_FILE,
            "[normal]\nkeymap = [\n  { on = \"q\", run = \"none\" },\n  { on = \"hyper-x\", run = \"app.quit\" },\n]\n",
        )]);
        let s = load_with(&opts(&bad), &no_env).settings;
        let path = bad.path().join(KEYMAP_FILE).display().to_string();
        assert_eq!(s.warnings.len(), 1);
        assert!(
            s.warnings[0].starts_with(&format!("{path}:4:10: ")),
            "{}",
            s.warnings[0]
        );
        assert_eq!(
            s.keymap.lookup(Mode::Normal, &k('q')),
            Some(Action::Quit),
            "ignored"
        );
    }

    #[test]
    fn theme_delta_inherits_and_errors() {
        let d = dir_with(&[(
            THEME_FILE,
            "inherits = \"light\"\n[styles]\ntitle = { fg = \"#ff0000\" }\n",
        )]);
        let o = LoadOptions {
            colors: Some(ColorMode::TrueColor),
            ..opts(&d)
        };
        let s = load_with(&o, &no_env).settings;
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(s.theme.name, "light", "inherits picks the base");
        assert_eq!(s.theme.title.fg, Some(Color::Rgb(255, 0, 0)));
        // A flag picks the base over `inherits`; the delta still applies.
        let o2 = LoadOptions {
            theme: Some("mono".into()),
            ..o.clone()
        };
        let s = load_with(&o2, &no_env).settings;
        assert_eq!(s.theme.name, "mono");
        assert_eq!(s.theme.title.fg, Some(Color::Rgb(255, 0, 0)));

        let bad = dir_with(&[(
            THEME_FILE,
            "[styles]\nok = { fg = \"green\" }\nkv = { bg = \"greenish\" }\n",
        )]);
        let s = load_with(
            &LoadOptions {
                colors: Some(ColorMode::TrueColor),
                ..opts(&bad)
            },
            &no_env,
        )
        .settings;
        let path = bad.path().join(THEME_FILE).display().to_string();
        assert_eq!(
            s.warnings,
            vec![format!(
                "{path}:3:13: `greenish` is not a colour (an ANSI name such as red or lightblue, #rrggbb, an xterm index 0-255, reset, none, or a [palette] name)"
            )]
        );
        assert_eq!(s.theme.ok, Theme::builtin("dark").unwrap().ok);

        let syntax = dir_with(&[(THEME_FILE, "[styles]\nok = { fg = \"green\" \n")]);
        let s = load_with(&opts(&syntax), &no_env).settings;
        assert_eq!(s.warnings.len(), 1);
        assert!(
            s.warnings[0].contains(&format!("{}:2:", syntax.path().join(THEME_FILE).display())),
            "{}",
            s.warnings[0]
        );
    }

    #[test]
    fn unknown_flag_presets_warn_and_fall_back() {
        let d = dir_with(&[]);
        let o = LoadOptions {
            keymap: Some("emacs".into()),
            theme: Some("solarized".into()),
            ..opts(&d)
        };
        let l = load_with(&o, &no_env);
        assert_eq!(l.settings.keymap.name, "default");
        assert_eq!(l.settings.theme.name, "dark");
        assert_eq!(l.settings.warnings.len(), 2);
        assert!(l.settings.warnings[0].contains("emacs"));
        assert!(l.settings.warnings[1].contains("solarized"));
    }

    #[test]
    fn unreadable_file_is_a_warning() {
        let d = dir_with(&[]);
        std::fs::create_dir(d.path().join(CONFIG_FILE)).unwrap();
        let s = load_with(&opts(&d), &no_env).settings;
        assert_eq!(s.warnings.len(), 1);
        assert!(
            s.warnings[0].contains("config.toml:1:1: cannot read"),
            "{}",
            s.warnings[0]
        );
    }
}
