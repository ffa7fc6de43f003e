//! Keymaps: per-mode lists of `{ on, run, desc }` (STUB: replaced by the TOML implementation).

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::action::Action;

/// Which set of bindings is active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Browsing views.
    Normal,
    /// A confirm dialog or plan preview is open.
    Dialog,
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

impl Keymap {
    /// A built-in keymap: `default` or `vim`.
    pub fn builtin(name: &str) -> Option<Keymap> {
        let b = |c: char, a: Action| {
            (
                KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE),
                Binding {
                    on: c.to_string(),
                    action: a,
                    desc: a.desc().to_string(),
                },
            )
        };
        let k = |code: KeyCode, on: &str, a: Action| {
            (
                KeyEvent::new(code, KeyModifiers::NONE),
                Binding {
                    on: on.to_string(),
                    action: a,
                    desc: a.desc().to_string(),
                },
            )
        };
        (name == "default").then(|| Keymap {
            name: name.into(),
            normal: vec![
                b('q', Action::Quit),
                b('?', Action::Help),
                b(':', Action::Palette),
                b('/', Action::Filter),
                b('1', Action::Overview),
                b('2', Action::Memory),
                b('3', Action::Placement),
                b('4', Action::Operations),
                b('5', Action::Serving),
                b('6', Action::Events),
                k(KeyCode::Tab, "tab", Action::NextView),
                k(KeyCode::BackTab, "S-tab", Action::PrevView),
                k(KeyCode::Up, "up", Action::Up),
                k(KeyCode::Down, "down", Action::Down),
                k(KeyCode::Left, "left", Action::Left),
                k(KeyCode::Right, "right", Action::Right),
                k(KeyCode::PageUp, "pgup", Action::PageUp),
                k(KeyCode::PageDown, "pgdn", Action::PageDown),
                k(KeyCode::Home, "home", Action::Top),
                k(KeyCode::End, "end", Action::Bottom),
                k(KeyCode::Enter, "enter", Action::Select),
                k(KeyCode::Esc, "esc", Action::Back),
                b(']', Action::NextNode),
                b('[', Action::PrevNode),
                b('+', Action::ScaleUp),
                b('-', Action::ScaleDown),
                b('s', Action::ScaleTo),
                b('r', Action::Rebalance),
                b('c', Action::CancelOp),
            ],
            dialog: vec![
                b('y', Action::Confirm),
                k(KeyCode::Enter, "enter", Action::Confirm),
                b('n', Action::Dismiss),
                k(KeyCode::Esc, "esc", Action::Dismiss),
                b('q', Action::Dismiss),
            ],
        })
    }

    /// The action bound to `key` in `mode`.
    pub fn lookup(&self, mode: Mode, key: &KeyEvent) -> Option<Action> {
        self.list(mode)
            .iter()
            .find(|(k, _)| k.code == key.code && k.modifiers == key.modifiers)
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
}
