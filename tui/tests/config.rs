//! The console's config from the outside: a config dir with user files, loaded through the
//! public API the console uses (`load`, `run_config_cmd`, `run_config_cmd_to`).

use std::path::Path;
use std::process::ExitCode;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use emoe_tui::action::Action;
use emoe_tui::config::cli::run_config_cmd_to;
use emoe_tui::config::{
    CONFIG_FILE, ColorMode, ConfigCmd, KEYMAP_FILE, Keymap, LoadOptions, Mode, THEME_FILE, Theme,
    load, run_config_cmd,
};
use ratatui::style::{Color, Modifier};

fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).expect("write");
    }
    d
}

/// Options for `d`, with the colour mode fixed so the environment does not matter.
fn opts(d: &Path, colors: ColorMode) -> LoadOptions {
    LoadOptions {
        config_dir: Some(d.to_path_buf()),
        colors: Some(colors),
        ..LoadOptions::default()
    }
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

#[test]
fn every_builtin_loads_by_name() {
    for k in Keymap::NAMES {
        for t in Theme::NAMES {
            let d = dir(&[(
                CONFIG_FILE,
                &format!("keymap = \"{k}\"\ntheme = \"{t}\"\ntick = \"500ms\"\n"),
            )]);
            let s = load(&opts(d.path(), ColorMode::TrueColor));
            assert!(s.warnings.is_empty(), "{k} {t}: {:?}", s.warnings);
            assert_eq!((s.keymap.name.as_str(), s.theme.name.as_str()), (*k, *t));
            assert_eq!(s.tick, std::time::Duration::from_millis(500));
        }
    }
}

#[test]
fn a_user_setup_end_to_end() {
    let d = dir(&[
        (
            CONFIG_FILE,
            "keymap = \"vim\"\ntheme = \"dark\"\nascii = true\n",
        ),
        (
            KEYMAP_FILE,
            r#"
[normal]
keymap = [
  { on = "G", run = "view.events", desc = "Events" },  # replaces vim's G (bottom)
  { on = "c", run = "none" },                           # no cancel on a single key
  { on = "C-x", run = "scale.cancel" },                 # but here
]
"#,
        ),
        (
            THEME_FILE,
            "[palette]\nhot = \"#ff0000\"\n[styles]\nerror = { fg = \"hot\", underline = true }\n",
        ),
    ]);
    let s = load(&opts(d.path(), ColorMode::Ansi16));
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert!(s.ascii);
    let n = Mode::Normal;
    assert_eq!(s.keymap.lookup(n, &key('G')), Some(Action::Events));
    assert_eq!(s.keymap.lookup(n, &key('c')), None);
    assert_eq!(
        s.keymap
            .lookup(n, &KeyEvent::new(KeyCode::Char('x'), KeyModifiers::CONTROL)),
        Some(Action::CancelOp)
    );
    assert_eq!(s.keymap.keys_for(n, Action::CancelOp), vec!["C-x"]);
    assert_eq!(
        s.keymap.lookup(n, &key('j')),
        Some(Action::Down),
        "the rest of vim stays"
    );
    // #ff0000 fitted to 16 colours; dark's bold kept, underline added.
    assert!(matches!(
        s.theme.error.fg,
        Some(Color::Red | Color::LightRed)
    ));
    assert!(
        s.theme
            .error
            .add_modifier
            .contains(Modifier::BOLD | Modifier::UNDERLINED)
    );
}

#[test]
fn bad_files_fall_back_with_path_line_col() {
    let d = dir(&[
        (CONFIG_FILE, "keymap = \"vim\"\n\ntheme = 3\n"),
        (
            KEYMAP_FILE,
            "[normal]\nkeymap = [\n  { on = \"q\", run = \"app.nope\" },\n]\n",
        ),
        (THEME_FILE, "[styles]\ntitle = { fg = \"chartreuse\" }\n"),
    ]);
    let s = load(&opts(d.path(), ColorMode::TrueColor));
    let p = |f: &str| d.path().join(f).display().to_string();
    let w = &s.warnings;
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w[0].starts_with(&format!("{}:3:9: ", p(CONFIG_FILE))),
        "{}",
        w[0]
    );
    assert!(
        w[1].starts_with(&format!("{}:3:21: ", p(KEYMAP_FILE))),
        "{}",
        w[1]
    );
    assert!(w[1].contains("app.nope"));
    assert!(
        w[2].starts_with(&format!("{}:2:16: ", p(THEME_FILE))),
        "{}",
        w[2]
    );
    assert!(w[2].contains("chartreuse"));
    // All three ignored: defaults.
    assert_eq!(s.keymap.name, "default");
    assert_eq!(s.keymap.lookup(Mode::Normal, &key('q')), Some(Action::Quit));
    assert_eq!(s.theme.title, Theme::builtin("dark").expect("dark").title);
}

#[test]
fn validate_through_the_public_api() {
    let good = dir(&[(CONFIG_FILE, "colors = \"none\"\n")]);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let o = opts(good.path(), ColorMode::TrueColor);
    assert_eq!(
        run_config_cmd_to(&ConfigCmd::Validate, &o, &mut out, &mut err),
        0
    );
    assert!(String::from_utf8_lossy(&out).contains("ok "));
    assert!(err.is_empty());

    let bad = dir(&[(
        KEYMAP_FILE,
        "[normal]\nkeymap = [ { on = \"q\", run = \"app.quit\" }, { on = \"q\", run = \"app.help\" } ]\n",
    )]);
    let o = opts(bad.path(), ColorMode::TrueColor);
    assert_eq!(run_config_cmd(&ConfigCmd::Validate, &o), ExitCode::from(2));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(
        run_config_cmd_to(&ConfigCmd::Validate, &o, &mut out, &mut err),
        2
    );
    let err = String::from_utf8_lossy(&err);
    assert!(
        err.contains(":2:51: `q` is already bound in [normal]"),
        "{err}"
    );
}
