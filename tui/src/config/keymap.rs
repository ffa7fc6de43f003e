//! Keymaps: per-mode lists of `{ on, run, desc }`, read from TOML.
//!
//! ```toml
//! [normal]
//! keymap = [
//!   { on = "q", run = "app.quit", desc = "Quit" },
//!   { on = "C-c", run = "app.quit" },
//! ]
//! [dialog]
//! keymap = [ { on = "y", run = "dialog.confirm" } ]
//! ```
//!
//! `desc` is optional (the action's own description is used). Keys: a single character (`q`,
//! `?`, `+`, `S` is shift+s), a named key (`enter esc tab backtab space backspace up down left
//! right pgup pgdn home end delete insert f1`..`f24`), with modifier prefixes `C-`/`ctrl-`,
//! `A-`/`alt-`, `S-`/`shift-` (`S-tab` is `backtab`, `S-x` is `X`).
//!
//! The built-ins are `keymaps/default.toml` and `keymaps/vim.toml`. A user's `keymap.toml` has
//! the same shape and is a delta ([`Keymap::merge_delta`]): an entry whose `on` is bound in that
//! mode replaces the binding, `run = "none"` unbinds it, any other entry is appended.

use std::fmt::Write as _;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use crate::action::Action;

/// Which set of bindings is active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Browsing views.
    Normal,
    /// A confirm dialog or plan preview is open.
    Dialog,
}

impl Mode {
    pub const ALL: &'static [Mode] = &[Mode::Normal, Mode::Dialog];

    /// The table name in keymap files.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Dialog => "dialog",
        }
    }
}

/// One binding: the key as written (`"q"`, `"C-c"`, `"enter"`), its action and description.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub on: String,
    pub action: Action,
    pub desc: String,
}

#[derive(Clone, Debug)]
pub struct Keymap {
    pub name: String,
    normal: Vec<(KeyEvent, Binding)>,
    dialog: Vec<(KeyEvent, Binding)>,
}

/// The built-in keymaps, by name, as embedded TOML.
const BUILTIN: &[(&str, &str)] = &[
    ("default", include_str!("../../../keymaps/default.toml")),
    ("vim", include_str!("../../../keymaps/vim.toml")),
];

/// What `run` says to unbind a key in a delta.
pub const UNBIND: &str = "none";

impl Keymap {
    /// The names of the built-in keymaps.
    pub const NAMES: &'static [&'static str] = &["default", "vim"];

    /// A built-in keymap: `default` or `vim`.
    pub fn builtin(name: &str) -> Option<Keymap> {
        let text = Self::builtin_text(name)?;
        Some(
            Keymap::parse(name, text, &format!("keymaps/{name}.toml"))
                .expect("built-in keymaps parse (tested)"),
        )
    }

    /// The TOML of a built-in keymap.
    pub fn builtin_text(name: &str) -> Option<&'static str> {
        BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    /// A whole keymap from TOML; `origin` names the file in errors. A key bound twice in one
    /// mode, an unknown key name or action, or `run = "none"` is an error.
    pub fn parse(name: &str, text: &str, origin: &str) -> Result<Keymap, ConfigError> {
        let file = KeymapFile::parse(text, origin)?;
        let mut km = Keymap {
            name: name.to_string(),
            normal: Vec::new(),
            dialog: Vec::new(),
        };
        for (mode, entries) in file.modes() {
            for e in entries {
                let Some(action) = e.action else {
                    return Err(ConfigError::spanned(
                        origin,
                        text,
                        e.run_span,
                        format!("`run = \"{UNBIND}\"` only makes sense in a user keymap.toml"),
                    ));
                };
                km.list_mut(mode).push((
                    e.key,
                    Binding {
                        on: e.on,
                        action,
                        desc: e.desc,
                    },
                ));
            }
        }
        Ok(km)
    }

    /// Applies a user delta: an entry whose key is bound in its mode replaces that binding (in
    /// place), `run = "none"` unbinds it, others are appended. On error nothing changes.
    pub fn merge_delta(&mut self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let file = KeymapFile::parse(text, origin)?;
        let mut next = self.clone();
        for (mode, entries) in file.modes() {
            let list = next.list_mut(mode);
            for e in entries {
                let at = list.iter().position(|(k, _)| same_key(k, &e.key));
                match (e.action, at) {
                    (None, Some(i)) => {
                        list.remove(i);
                    }
                    (None, None) => {}
                    (Some(action), Some(i)) => {
                        list[i].1 = Binding {
                            on: e.on,
                            action,
                            desc: e.desc,
                        };
                    }
                    (Some(action), None) => {
                        list.push((
                            e.key,
                            Binding {
                                on: e.on,
                                action,
                                desc: e.desc,
                            },
                        ));
                    }
                }
            }
        }
        *self = next;
        Ok(())
    }

    /// The keymap as a TOML file of the same shape (what `emoe config print` shows).
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# emoe keymap `{}`", self.name);
        for mode in Mode::ALL {
            let _ = writeln!(out, "\n[{}]\nkeymap = [", mode.name());
            for (_, b) in self.list(*mode) {
                let _ = writeln!(
                    out,
                    "  {{ on = {}, run = {}, desc = {} }},",
                    quote(&b.on),
                    quote(b.action.name()),
                    quote(&b.desc)
                );
            }
            out.push_str("]\n");
        }
        out
    }

    /// The action bound to `key` in `mode`. Key releases match nothing; the shift modifier of a
    /// character is ignored (the character already says it: `S` matches shift+s).
    pub fn lookup(&self, mode: Mode, key: &KeyEvent) -> Option<Action> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        let key = normalize(key.code, key.modifiers);
        self.list(mode)
            .iter()
            .find(|(k, _)| same_key(k, &key))
            .map(|(_, b)| b.action)
    }

    /// The bindings of `mode` in keymap order (help is generated from this).
    pub fn bindings(&self, mode: Mode) -> Vec<&Binding> {
        self.list(mode).iter().map(|(_, b)| b).collect()
    }

    /// The keys bound to `action` in `mode`, as written (`"q"`, `"C-c"`).
    pub fn keys_for(&self, mode: Mode, action: Action) -> Vec<&str> {
        self.list(mode)
            .iter()
            .filter(|(_, b)| b.action == action)
            .map(|(_, b)| b.on.as_str())
            .collect()
    }

    fn list(&self, mode: Mode) -> &[(KeyEvent, Binding)] {
        match mode {
            Mode::Normal => &self.normal,
            Mode::Dialog => &self.dialog,
        }
    }

    fn list_mut(&mut self, mode: Mode) -> &mut Vec<(KeyEvent, Binding)> {
        match mode {
            Mode::Normal => &mut self.normal,
            Mode::Dialog => &mut self.dialog,
        }
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Parses a key as written in keymaps (`q`, `S`, `C-c`, `alt-x`, `S-tab`, `pgdn`, `f5`) into
/// the normalized event [`Keymap::lookup`] compares with.
pub fn parse_key(s: &str) -> Result<KeyEvent, String> {
    let mut rest = s;
    let mut mods = KeyModifiers::NONE;
    while rest.chars().count() > 1 {
        let Some((prefix, tail)) = rest.split_once('-') else {
            break;
        };
        if tail.is_empty() {
            break;
        }
        let m = match prefix.to_ascii_lowercase().as_str() {
            "c" | "ctrl" | "control" => KeyModifiers::CONTROL,
            "a" | "alt" | "m" | "meta" => KeyModifiers::ALT,
            "s" | "shift" => KeyModifiers::SHIFT,
            _ => break,
        };
        mods |= m;
        rest = tail;
    }
    let mut chars = rest.chars();
    let code = match (chars.next(), chars.next()) {
        (None, _) => return Err(format!("`{s}` is not a key (empty)")),
        (Some(c), None) => KeyCode::Char(c),
        _ => named_key(&rest.to_ascii_lowercase()).ok_or_else(|| {
            format!(
                "`{s}` is not a key (a character, or enter esc tab backtab space backspace up \
                 down left right pgup pgdn home end delete insert f1-f24, with C- A- S- prefixes)"
            )
        })?,
    };
    Ok(normalize(code, mods))
}

fn named_key(s: &str) -> Option<KeyCode> {
    Some(match s {
        "enter" | "return" | "cr" => KeyCode::Enter,
        "esc" | "escape" => KeyCode::Esc,
        "tab" => KeyCode::Tab,
        "backtab" => KeyCode::BackTab,
        "space" => KeyCode::Char(' '),
        "backspace" | "bs" => KeyCode::Backspace,
        "up" => KeyCode::Up,
        "down" => KeyCode::Down,
        "left" => KeyCode::Left,
        "right" => KeyCode::Right,
        "pgup" | "pageup" => KeyCode::PageUp,
        "pgdn" | "pagedown" => KeyCode::PageDown,
        "home" => KeyCode::Home,
        "end" => KeyCode::End,
        "delete" | "del" => KeyCode::Delete,
        "insert" | "ins" => KeyCode::Insert,
        f => {
            let n: u8 = f.strip_prefix('f')?.parse().ok()?;
            if !(1..=24).contains(&n) {
                return None;
            }
            KeyCode::F(n)
        }
    })
}

/// The form keys are compared in: shift folded into characters (`S-s` and `S` are both
/// `Char('S')`, and crossterm's `Char('S')`+SHIFT matches them) and `S-tab` is `BackTab`.
fn normalize(code: KeyCode, mut mods: KeyModifiers) -> KeyEvent {
    let code = match code {
        KeyCode::Char(c) => {
            let shifted = mods.contains(KeyModifiers::SHIFT);
            mods.remove(KeyModifiers::SHIFT);
            let mut up = c.to_uppercase();
            match (shifted, up.next(), up.next()) {
                (true, Some(u), None) => KeyCode::Char(u),
                _ => KeyCode::Char(c),
            }
        }
        KeyCode::Tab if mods.contains(KeyModifiers::SHIFT) => {
            mods.remove(KeyModifiers::SHIFT);
            KeyCode::BackTab
        }
        KeyCode::BackTab => {
            mods.remove(KeyModifiers::SHIFT);
            KeyCode::BackTab
        }
        other => other,
    };
    KeyEvent::new(code, mods)
}

/// Two normalized keys are the same key (code and modifiers; crossterm's own `==` also compares
/// the event kind and lock-key state).
fn same_key(a: &KeyEvent, b: &KeyEvent) -> bool {
    a.code == b.code && a.modifiers == b.modifiers
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    normal: Option<RawMode>,
    dialog: Option<RawMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMode {
    #[serde(default)]
    keymap: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    on: Spanned<String>,
    run: Spanned<String>,
    desc: Option<String>,
}

/// A checked entry: `action` is `None` for `run = "none"`.
struct Entry {
    key: KeyEvent,
    on: String,
    action: Option<Action>,
    desc: String,
    run_span: std::ops::Range<usize>,
}

/// A keymap file with keys and actions checked and no key bound twice in a mode.
struct KeymapFile {
    normal: Vec<Entry>,
    dialog: Vec<Entry>,
}

impl KeymapFile {
    fn parse(text: &str, origin: &str) -> Result<KeymapFile, ConfigError> {
        let raw: RawFile =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(origin, text, &e))?;
        let check = |mode: Mode, m: Option<RawMode>| -> Result<Vec<Entry>, ConfigError> {
            let mut out: Vec<Entry> = Vec::new();
            for e in m.map(|m| m.keymap).unwrap_or_default() {
                let on_span = e.on.span();
                let run_span = e.run.span();
                let on = e.on.into_inner();
                let run = e.run.into_inner();
                let key = parse_key(&on)
                    .map_err(|m| ConfigError::spanned(origin, text, on_span.clone(), m))?;
                if let Some(prev) = out.iter().find(|p| same_key(&p.key, &key)) {
                    return Err(ConfigError::spanned(
                        origin,
                        text,
                        on_span,
                        format!(
                            "`{on}` is already bound in [{}] (as `{}`)",
                            mode.name(),
                            prev.on
                        ),
                    ));
                }
                let action = if run.trim() == UNBIND {
                    None
                } else {
                    Some(
                        run.parse::<Action>()
                            .map_err(|m| ConfigError::spanned(origin, text, run_span.clone(), m))?,
                    )
                };
                let desc = e
                    .desc
                    .unwrap_or_else(|| action.map_or("", |a| a.desc()).to_string());
                out.push(Entry {
                    key,
                    on,
                    action,
                    desc,
                    run_span,
                });
            }
            Ok(out)
        };
        Ok(KeymapFile {
            normal: check(Mode::Normal, raw.normal)?,
            dialog: check(Mode::Dialog, raw.dialog)?,
        })
    }

    fn modes(self) -> [(Mode, Vec<Entry>); 2] {
        [(Mode::Normal, self.normal), (Mode::Dialog, self.dialog)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: KeyCode, m: KeyModifiers) -> KeyEvent {
        KeyEvent::new(c, m)
    }
    fn ch(c: char) -> KeyEvent {
        key(KeyCode::Char(c), KeyModifiers::NONE)
    }

    #[test]
    fn builtins_parse_without_duplicates() {
        for name in Keymap::NAMES {
            let text = Keymap::builtin_text(name).unwrap();
            // parse() refuses a key bound twice in a mode.
            let km = Keymap::parse(name, text, name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(km.name, *name);
            assert!(Keymap::builtin(name).is_some());
            for mode in Mode::ALL {
                let mut keys: Vec<_> = km.list(*mode).iter().map(|(k, _)| *k).collect();
                let n = keys.len();
                keys.sort_by_key(|k| format!("{k:?}"));
                keys.dedup();
                assert_eq!(keys.len(), n, "{name} [{}] binds a key twice", mode.name());
            }
        }
        assert!(Keymap::builtin("emacs").is_none());
    }

    #[test]
    fn every_action_is_bound_in_every_builtin() {
        for name in Keymap::NAMES {
            let km = Keymap::builtin(name).unwrap();
            for a in Action::ALL {
                let bound = Mode::ALL.iter().any(|m| !km.keys_for(*m, *a).is_empty());
                assert!(bound, "{name}: {a} has no key");
            }
        }
    }

    #[test]
    fn default_keeps_the_original_bindings() {
        let km = Keymap::builtin("default").unwrap();
        let n = Mode::Normal;
        assert_eq!(km.lookup(n, &ch('q')), Some(Action::Quit));
        assert_eq!(
            km.lookup(n, &key(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(km.lookup(n, &ch('?')), Some(Action::Help));
        assert_eq!(km.lookup(n, &ch(':')), Some(Action::Palette));
        assert_eq!(km.lookup(n, &ch('/')), Some(Action::Filter));
        assert_eq!(km.lookup(n, &ch('3')), Some(Action::Placement));
        assert_eq!(km.lookup(n, &ch('6')), Some(Action::Events));
        assert_eq!(
            km.lookup(n, &key(KeyCode::Tab, KeyModifiers::NONE)),
            Some(Action::NextView)
        );
        // crossterm reports shift+tab as BackTab, with or without SHIFT.
        assert_eq!(
            km.lookup(n, &key(KeyCode::BackTab, KeyModifiers::SHIFT)),
            Some(Action::PrevView)
        );
        assert_eq!(
            km.lookup(n, &key(KeyCode::BackTab, KeyModifiers::NONE)),
            Some(Action::PrevView)
        );
        assert_eq!(
            km.lookup(n, &key(KeyCode::PageDown, KeyModifiers::NONE)),
            Some(Action::PageDown)
        );
        assert_eq!(
            km.lookup(n, &key(KeyCode::Enter, KeyModifiers::NONE)),
            Some(Action::Select)
        );
        assert_eq!(
            km.lookup(n, &key(KeyCode::Esc, KeyModifiers::NONE)),
            Some(Action::Back)
        );
        assert_eq!(km.lookup(n, &ch('[')), Some(Action::PrevNode));
        assert_eq!(km.lookup(n, &ch('+')), Some(Action::ScaleUp));
        assert_eq!(km.lookup(n, &ch('-')), Some(Action::ScaleDown));
        assert_eq!(km.lookup(n, &ch('s')), Some(Action::ScaleTo));
        assert_eq!(km.lookup(n, &ch('r')), Some(Action::Rebalance));
        assert_eq!(km.lookup(n, &ch('c')), Some(Action::CancelOp));
        assert_eq!(km.lookup(n, &ch('y')), None);
        let d = Mode::Dialog;
        assert_eq!(km.lookup(d, &ch('y')), Some(Action::Confirm));
        assert_eq!(
            km.lookup(d, &key(KeyCode::Enter, KeyModifiers::NONE)),
            Some(Action::Confirm)
        );
        assert_eq!(km.lookup(d, &ch('n')), Some(Action::Dismiss));
        assert_eq!(
            km.lookup(d, &key(KeyCode::Esc, KeyModifiers::NONE)),
            Some(Action::Dismiss)
        );
        assert_eq!(km.lookup(d, &ch('q')), Some(Action::Dismiss));
        assert_eq!(km.keys_for(n, Action::Quit), vec!["q", "C-c"]);
        assert_eq!(km.bindings(n)[0].desc, Action::Quit.desc());
    }

    #[test]
    fn vim_navigation() {
        let km = Keymap::builtin("vim").unwrap();
        let n = Mode::Normal;
        assert_eq!(km.lookup(n, &ch('j')), Some(Action::Down));
        assert_eq!(km.lookup(n, &ch('k')), Some(Action::Up));
        assert_eq!(km.lookup(n, &ch('h')), Some(Action::Left));
        assert_eq!(km.lookup(n, &ch('l')), Some(Action::Right));
        assert_eq!(km.lookup(n, &ch('g')), Some(Action::Top));
        assert_eq!(km.lookup(n, &ch('G')), Some(Action::Bottom));
        assert_eq!(
            km.lookup(n, &key(KeyCode::Char('G'), KeyModifiers::SHIFT)),
            Some(Action::Bottom)
        );
        assert_eq!(
            km.lookup(n, &key(KeyCode::Char('d'), KeyModifiers::CONTROL)),
            Some(Action::PageDown)
        );
        assert_eq!(
            km.lookup(n, &key(KeyCode::Char('u'), KeyModifiers::CONTROL)),
            Some(Action::PageUp)
        );
        assert_eq!(km.lookup(n, &ch(':')), Some(Action::Palette));
        assert_eq!(km.lookup(n, &ch('/')), Some(Action::Filter));
        assert_eq!(km.lookup(n, &ch('2')), Some(Action::Memory));
    }

    #[test]
    fn key_strings() {
        let k = |s: &str| parse_key(s).unwrap();
        assert_eq!(k("q"), ch('q'));
        assert_eq!(k("S"), ch('S'));
        assert_eq!(k("S-s"), ch('S'));
        assert_eq!(k("shift-s"), ch('S'));
        assert_eq!(k("-"), ch('-'));
        assert_eq!(k("C--"), key(KeyCode::Char('-'), KeyModifiers::CONTROL));
        assert_eq!(k("C-c"), key(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert_eq!(k("ctrl-c"), k("C-c"));
        assert_eq!(k("A-x"), key(KeyCode::Char('x'), KeyModifiers::ALT));
        assert_eq!(k("alt-x"), k("A-x"));
        assert_eq!(
            k("C-A-x"),
            key(
                KeyCode::Char('x'),
                KeyModifiers::CONTROL | KeyModifiers::ALT
            )
        );
        assert_eq!(k("S-tab"), key(KeyCode::BackTab, KeyModifiers::NONE));
        assert_eq!(k("backtab"), k("S-tab"));
        assert_eq!(k("space"), ch(' '));
        assert_eq!(k("Enter"), key(KeyCode::Enter, KeyModifiers::NONE));
        assert_eq!(k("S-up"), key(KeyCode::Up, KeyModifiers::SHIFT));
        assert_eq!(k("f12"), key(KeyCode::F(12), KeyModifiers::NONE));
        for s in [
            "pgup",
            "pgdn",
            "home",
            "end",
            "delete",
            "insert",
            "backspace",
            "esc",
            "f1",
        ] {
            assert!(parse_key(s).is_ok(), "{s}");
        }
        for bad in ["", "qq", "f0", "f25", "hyper-x", "C-", "ctrl-nope"] {
            assert!(parse_key(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn shift_is_folded_into_characters() {
        let km = Keymap::parse(
            "t",
            r#"[normal]
keymap = [ { on = "S", run = "scale.to" }, { on = "?", run = "app.help" } ]"#,
            "t",
        )
        .unwrap();
        let n = Mode::Normal;
        assert_eq!(km.lookup(n, &ch('S')), Some(Action::ScaleTo));
        assert_eq!(
            km.lookup(n, &key(KeyCode::Char('S'), KeyModifiers::SHIFT)),
            Some(Action::ScaleTo)
        );
        assert_eq!(
            km.lookup(n, &key(KeyCode::Char('s'), KeyModifiers::SHIFT)),
            Some(Action::ScaleTo)
        );
        assert_eq!(km.lookup(n, &ch('s')), None);
        assert_eq!(
            km.lookup(n, &key(KeyCode::Char('?'), KeyModifiers::SHIFT)),
            Some(Action::Help)
        );
        let mut release = ch('S');
        release.kind = KeyEventKind::Release;
        assert_eq!(km.lookup(n, &release), None);
        let mut repeat = ch('S');
        repeat.kind = KeyEventKind::Repeat;
        repeat.state = crossterm::event::KeyEventState::NUM_LOCK;
        assert_eq!(
            km.lookup(n, &repeat),
            Some(Action::ScaleTo),
            "repeats and lock keys match"
        );
    }

    #[test]
    fn delta_replaces_unbinds_and_appends() {
        let mut km = Keymap::builtin("default").unwrap();
        let before = km.bindings(Mode::Normal).len();
        km.merge_delta(
            r#"
[normal]
keymap = [
  { on = "ctrl-c", run = "app.help", desc = "Help, not quit" },
  { on = "q", run = "none" },
  { on = "x", run = "scale.cancel" },
  { on = "F9", run = "none" },
]
[dialog]
keymap = [ { on = "Y", run = "dialog.confirm" } ]
"#,
            "keymap.toml",
        )
        .unwrap();
        let n = Mode::Normal;
        assert_eq!(km.lookup(n, &ch('q')), None);
        assert_eq!(
            km.lookup(n, &key(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Help)
        );
        assert_eq!(km.lookup(n, &ch('x')), Some(Action::CancelOp));
        assert_eq!(km.lookup(n, &ch('c')), Some(Action::CancelOp));
        assert_eq!(km.bindings(n).len(), before); // -q, +x, C-c replaced in place
        let b = km.bindings(n);
        let i = b.iter().position(|b| b.on == "ctrl-c").unwrap();
        assert_eq!(b[i].desc, "Help, not quit");
        assert_eq!(i, 0, "replaced in place (q, the first, was removed)");
        assert_eq!(b.last().unwrap().on, "x");
        assert_eq!(km.lookup(Mode::Dialog, &ch('Y')), Some(Action::Confirm));
        assert_eq!(km.lookup(Mode::Dialog, &ch('y')), Some(Action::Confirm));
    }

    #[test]
    fn bad_delta_changes_nothing() {
        let mut km = Keymap::builtin("default").unwrap();
        let text = "[normal]\nkeymap = [\n  { on = \"q\", run = \"none\" },\n  { on = \"x\", run = \"scale.nope\" },\n]\n";
        let e = km.merge_delta(text, "k.toml").unwrap_err();
        assert_eq!((e.origin.as_str(), e.line, e.col), ("k.toml", 4, 21));
        assert!(e.message.contains("scale.nope"), "{e}");
        assert_eq!(km.lookup(Mode::Normal, &ch('q')), Some(Action::Quit));
    }

    #[test]
    fn errors_point_at_the_entry() {
        let p = |t: &str| Keymap::parse("t", t, "t.toml").unwrap_err();
        let e = p("[normal]\nkeymap = [ { on = \"nope\", run = \"app.quit\" } ]\n");
        assert_eq!((e.line, e.col), (2, 19), "{e}");
        assert!(e.message.contains("`nope` is not a key"), "{e}");
        let e = p(
            "[normal]\nkeymap = [\n { on = \"q\", run = \"app.quit\" },\n { on = \"q\", run = \"app.help\" },\n]",
        );
        assert_eq!((e.line, e.col), (4, 9), "{e}");
        assert!(e.message.contains("already bound"), "{e}");
        // Same key, written differently.
        let e = p(
            "[dialog]\nkeymap = [ { on = \"C-c\", run = \"app.quit\" }, { on = \"ctrl-c\", run = \"app.quit\" } ]",
        );
        assert_eq!(e.line, 2);
        let e = p("[normal]\nkeymap = [ { on = \"q\", run = \"none\" } ]");
        assert!(e.message.contains("user keymap.toml"), "{e}");
        let e = p("[normal]\nkeymap = [ { on = \"q\", run = \"app.quit\", dsc = \"x\" } ]");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("dsc"), "{e}");
        let e = p("[insert]\nkeymap = []");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("insert"), "{e}");
        let e = p("[normal]\nkeymap = [ { on = \"q\" run = \"app.quit\" } ]");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn to_toml_round_trips() {
        for name in Keymap::NAMES {
            let km = Keymap::builtin(name).unwrap();
            let again = Keymap::parse(name, &km.to_toml(), "printed").unwrap();
            for m in Mode::ALL {
                assert_eq!(km.bindings(*m), again.bindings(*m));
                assert_eq!(km.list(*m), again.list(*m));
            }
        }
    }
}
