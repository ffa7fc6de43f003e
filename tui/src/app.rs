//! The console's state and what every action does to it. Keys, mouse and agent messages come in;
//! commands for agents go out through `outbox`; rendering reads this and nothing else.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use ratatui::layout::{Position, Rect};

use emoe_agent::daemon::proto;
use emoe_core::ParallelConfig;

use crate::action::Action;
use crate::config::{Mode, Settings};
use crate::conn::{Msg, NodeCmd, NodeMsg, Reply};
use crate::model::{Cluster, Link, NodeView};

/// The views, in tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum View {
    Overview,
    Memory,
    Placement,
    Operations,
    Serving,
    Events,
}

impl View {
    pub const ALL: [View; 6] = [
        View::Overview,
        View::Memory,
        View::Placement,
        View::Operations,
        View::Serving,
        View::Events,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Memory => "Memory",
            View::Placement => "Placement",
            View::Operations => "Operations",
            View::Serving => "Serving",
            View::Events => "Events",
        }
    }

    fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    fn action(self) -> Action {
        match self {
            View::Overview => Action::Overview,
            View::Memory => Action::Memory,
            View::Placement => Action::Placement,
            View::Operations => Action::Operations,
            View::Serving => Action::Serving,
            View::Events => Action::Events,
        }
    }
}

/// A mutating step waiting for the operator's yes.
#[derive(Clone, Debug, PartialEq)]
pub enum Pending {
    Scale(String),
    Rebalance,
}

/// The overlay on top of the view, if any.
#[derive(Clone, Debug, PartialEq)]
pub enum Popup {
    Help {
        scroll: usize,
    },
    Palette {
        input: String,
        selected: usize,
    },
    /// Typing a target config; `error` is why the last entry was refused.
    Target {
        node: usize,
        input: String,
        error: Option<String>,
    },
    /// The plan for `to`, once the agent answered.
    Plan {
        node: usize,
        to: String,
        reply: Option<Result<proto::PlanReply, String>>,
    },
    Confirm {
        node: usize,
        what: Pending,
        lines: Vec<String>,
    },
}

/// Screen areas from the last frame, for the mouse.
#[derive(Clone, Debug, Default)]
pub struct Hits {
    pub tabs: Vec<(Rect, View)>,
    /// The view's selectable list: its area and the index of its first visible row.
    pub list: Option<(Rect, usize)>,
}

/// A short message in the status bar.
#[derive(Clone, Debug, PartialEq)]
pub struct Toast {
    pub text: String,
    pub error: bool,
    /// Ticks left before it goes.
    pub ttl: u32,
}

pub struct App {
    pub cluster: Cluster,
    pub settings: Settings,
    pub readonly: bool,
    pub view: View,
    /// The selected node.
    pub node: usize,
    /// The selected row of each view (device, operation, layer…), and a horizontal offset.
    pub rows: [usize; 6],
    pub cols: [usize; 6],
    /// The filter of the current view and whether it is being typed.
    pub filter: String,
    pub filtering: bool,
    pub popup: Option<Popup>,
    pub toast: Option<Toast>,
    /// Commands for agents, taken by the event loop.
    pub outbox: Vec<(usize, NodeCmd)>,
    pub quit: bool,
    pub hits: Hits,
}

/// Edit `text` with `k` (a character or backspace); whether it changed.
fn edit(text: &mut String, k: &KeyEvent) -> bool {
    if k.code == KeyCode::Backspace {
        return text.pop().is_some();
    }
    match text_key(k) {
        Some(c) => {
            text.push(c);
            true
        }
        None => false,
    }
}

fn text_key(k: &KeyEvent) -> Option<char> {
    match k.code {
        KeyCode::Char(c)
            if !k
                .modifiers
                .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) =>
        {
            Some(c)
        }
        _ => None,
    }
}

impl App {
    pub fn new(cluster: Cluster, settings: Settings, readonly: bool) -> Self {
        let toast = (!settings.warnings.is_empty()).then(|| Toast {
            text: format!(
                "{} (using the defaults for it)",
                settings.warnings.join("; ")
            ),
            error: true,
            ttl: 15,
        });
        Self {
            cluster,
            settings,
            readonly,
            view: View::Overview,
            node: 0,
            rows: [0; 6],
            cols: [0; 6],
            filter: String::new(),
            filtering: false,
            popup: None,
            toast,
            outbox: Vec::new(),
            quit: false,
            hits: Hits::default(),
        }
    }

    pub fn selected_node(&self) -> Option<&NodeView> {
        self.cluster.nodes.get(self.node)
    }

    pub fn row(&self) -> usize {
        self.rows[self.view.index()]
    }

    pub fn col(&self) -> usize {
        self.cols[self.view.index()]
    }

    fn set_row(&mut self, r: usize) {
        let i = self.view.index();
        self.rows[i] = r.min(self.row_count().saturating_sub(1));
        if self.view == View::Overview || self.view == View::Serving {
            self.node = self.rows[i];
        }
    }

    /// Rows in the current view's selectable list.
    pub fn row_count(&self) -> usize {
        let n = self.selected_node().and_then(|n| n.snap.as_ref());
        match self.view {
            View::Overview | View::Serving => self.cluster.nodes.len(),
            View::Memory => n.map_or(0, |s| s.devices.len()),
            View::Placement => n.map_or(0, |s| s.placement.len()),
            View::Operations => n.map_or(0, |s| s.operations.len()),
            View::Events => self
                .cluster
                .nodes
                .iter()
                .filter_map(|n| n.snap.as_ref())
                .map(|s| s.events.len())
                .sum(),
        }
    }

    /// The keymap mode for the current overlay.
    pub fn mode(&self) -> Mode {
        match self.popup {
            Some(Popup::Plan { .. } | Popup::Confirm { .. } | Popup::Help { .. }) => Mode::Dialog,
            _ => Mode::Normal,
        }
    }

    pub fn say(&mut self, text: impl Into<String>, error: bool) {
        self.toast = Some(Toast {
            text: text.into(),
            error,
            ttl: if error { 10 } else { 5 },
        });
    }

    /// A tick of the clock: toasts age.
    pub fn tick(&mut self) -> bool {
        match &mut self.toast {
            Some(t) if t.ttl <= 1 => {
                self.toast = None;
                true
            }
            Some(t) => {
                t.ttl -= 1;
                false
            }
            None => false,
        }
    }

    /// A message from a connection task.
    pub fn on_msg(&mut self, m: Msg) {
        let Some(node) = self.cluster.nodes.get_mut(m.node) else {
            return;
        };
        match m.body {
            NodeMsg::Update(u) => node.apply(&u),
            NodeMsg::Lost { error, retry_s } => node.link = Link::Stale { error, retry_s },
            NodeMsg::Reply(r) => self.on_reply(m.node, r),
        }
    }

    fn on_reply(&mut self, node: usize, r: Reply) {
        let name = self.cluster.nodes[node].name().to_string();
        match r {
            Reply::Plan { to, result } => {
                if let Some(Popup::Plan {
                    node: n,
                    to: t,
                    reply,
                }) = &mut self.popup
                    && *n == node
                    && *t == to
                {
                    *reply = Some(result);
                }
            }
            Reply::Scale { to, result } => match result {
                Ok(op) => self.say(format!("{name}: operation {op} started → {to}"), false),
                Err(e) => self.say(format!("{name}: scaling to {to} refused: {e}"), true),
            },
            Reply::Cancel { op, result } => match result {
                Ok(phase) => self.say(format!("{name}: operation {op} {phase}"), false),
                Err(e) => self.say(
                    format!("{name}: cancel of operation {op} refused: {e}"),
                    true,
                ),
            },
            Reply::Rebalance(result) => match result {
                Ok(op) => self.say(format!("{name}: rebalance started (operation {op})"), false),
                Err(e) => self.say(format!("{name}: rebalance refused: {e}"), true),
            },
        }
    }

    /// A key press.
    pub fn on_key(&mut self, k: KeyEvent) {
        if self.filtering {
            match k.code {
                KeyCode::Enter => self.filtering = false,
                KeyCode::Esc => {
                    self.filtering = false;
                    self.filter.clear();
                }
                _ => {
                    edit(&mut self.filter, &k);
                }
            }
            return;
        }
        match &mut self.popup {
            Some(Popup::Palette { input, selected }) => {
                match k.code {
                    KeyCode::Esc => self.popup = None,
                    KeyCode::Enter => {
                        let input = input.clone();
                        let sel = *selected;
                        self.popup = None;
                        self.run_palette(&input, sel);
                    }
                    KeyCode::Up => *selected = selected.saturating_sub(1),
                    KeyCode::Down => *selected += 1,
                    _ => {
                        if edit(input, &k) {
                            *selected = 0;
                        }
                    }
                }
                return;
            }
            Some(Popup::Target { node, input, error }) => {
                match k.code {
                    KeyCode::Esc => self.popup = None,
                    KeyCode::Enter => match input.parse::<ParallelConfig>() {
                        Ok(c) => {
                            let node = *node;
                            self.plan(node, c.to_string());
                        }
                        Err(e) => *error = Some(e.to_string()),
                    },
                    _ => {
                        edit(input, &k);
                    }
                }
                return;
            }
            _ => {}
        }
        let mode = self.mode();
        let action = self.settings.keymap.lookup(mode, &k).or_else(|| {
            // Help scrolls with the normal navigation keys.
            matches!(self.popup, Some(Popup::Help { .. }))
                .then(|| self.settings.keymap.lookup(Mode::Normal, &k))
                .flatten()
                .filter(|a| {
                    matches!(
                        a,
                        Action::Up
                            | Action::Down
                            | Action::PageUp
                            | Action::PageDown
                            | Action::Help
                    )
                })
        });
        if let Some(a) = action {
            self.dispatch(a);
        }
    }

    /// A mouse event: click a tab or a row, wheel to scroll.
    pub fn on_mouse(&mut self, m: MouseEvent) {
        let p = Position::new(m.column, m.row);
        match m.kind {
            MouseEventKind::Down(MouseButton::Left) => {
                if self.popup.is_some() {
                    return;
                }
                if let Some((_, v)) = self.hits.tabs.iter().find(|(r, _)| r.contains(p)) {
                    let v = *v;
                    self.dispatch(v.action());
                    return;
                }
                if let Some((r, first)) = self.hits.list
                    && r.contains(p)
                {
                    self.set_row(first + (p.y - r.y) as usize);
                }
            }
            MouseEventKind::ScrollDown => self.dispatch(Action::Down),
            MouseEventKind::ScrollUp => self.dispatch(Action::Up),
            _ => {}
        }
    }

    /// The palette's entries for `input`: actions whose name or description has every word.
    pub fn palette_items(&self, input: &str) -> Vec<Action> {
        let words: Vec<String> = input.split_whitespace().map(|w| w.to_lowercase()).collect();
        let mut items: Vec<Action> = Action::ALL
            .iter()
            .copied()
            .filter(|a| !(self.readonly && a.mutating()))
            .filter(|a| {
                let hay = format!("{} {}", a.name(), a.desc()).to_lowercase();
                words.iter().all(|w| hay.contains(w.as_str()))
            })
            .collect();
        // Names that hold every word first, then matches in the description.
        items.sort_by_key(|a| !words.iter().all(|w| a.name().contains(w.as_str())));
        items
    }

    fn run_palette(&mut self, input: &str, selected: usize) {
        let t = input.trim();
        // `scale CONFIG` plans straight to a config; `q`/`quit` as in k9s.
        if let Some(cfg) = t.strip_prefix("scale ") {
            if self.refuse_readonly(Action::ScaleTo) {
                return;
            }
            match cfg.parse::<ParallelConfig>() {
                Ok(c) => self.plan(self.node, c.to_string()),
                Err(e) => self.say(format!(":scale {cfg}: {e}"), true),
            }
            return;
        }
        if matches!(t, "q" | "quit" | "q!") {
            self.quit = true;
            return;
        }
        if let Ok(a) = t.parse::<Action>() {
            self.dispatch(a);
            return;
        }
        let items = self.palette_items(t);
        match items.get(selected.min(items.len().saturating_sub(1))) {
            Some(a) if !items.is_empty() => self.dispatch(*a),
            _ => self.say(format!(":{t}: no such action (try `?` for the keys)"), true),
        }
    }

    fn refuse_readonly(&mut self, a: Action) -> bool {
        if self.readonly && a.mutating() {
            self.say(
                format!("read-only console: `{a}` is disabled (started with --readonly)"),
                true,
            );
            return true;
        }
        false
    }

    /// The active config of the selected node, or why there is none.
    fn active_config(&self, node: usize) -> Result<ParallelConfig, String> {
        let n = self
            .cluster
            .nodes
            .get(node)
            .ok_or_else(|| "no node selected".to_string())?;
        if n.stale() {
            return Err(format!("{} is not connected", n.name()));
        }
        let a = n
            .active()
            .ok_or_else(|| format!("{} has no active instance", n.name()))?;
        a.config
            .parse::<ParallelConfig>()
            .map_err(|e| format!("{}: {e}", n.name()))
    }

    fn plan(&mut self, node: usize, to: String) {
        self.outbox.push((node, NodeCmd::Plan(to.clone())));
        self.popup = Some(Popup::Plan {
            node,
            to,
            reply: None,
        });
    }

    fn step_target(&mut self, up: bool) {
        let node = self.node;
        let r = self.active_config(node).and_then(|c| {
            let dp = if up {
                c.dp() + 1
            } else if c.dp() > 1 {
                c.dp() - 1
            } else {
                return Err(format!(
                    "−1 TP group: {c} has one replica; a scale-down needs DP ≥ 2"
                ));
            };
            ParallelConfig::from_dp_tp(dp, c.tp()).map_err(|e| e.to_string())
        });
        match r {
            Ok(to) => self.plan(node, to.to_string()),
            Err(e) => self.say(e, true),
        }
    }

    /// Do `a`.
    pub fn dispatch(&mut self, a: Action) {
        if self.refuse_readonly(a) {
            return;
        }
        let page = 10;
        match a {
            Action::Quit => self.quit = true,
            Action::Help => {
                self.popup = match self.popup {
                    Some(Popup::Help { .. }) => None,
                    _ => Some(Popup::Help { scroll: 0 }),
                }
            }
            Action::Palette => {
                self.popup = Some(Popup::Palette {
                    input: String::new(),
                    selected: 0,
                })
            }
            Action::Filter => {
                self.filtering = true;
            }
            Action::Back => {
                if self.popup.is_some() {
                    self.popup = None;
                } else if !self.filter.is_empty() {
                    self.filter.clear();
                } else if self.view != View::Overview {
                    self.view = View::Overview;
                }
            }
            Action::Overview
            | Action::Memory
            | Action::Placement
            | Action::Operations
            | Action::Serving
            | Action::Events => {
                let v = View::ALL
                    .into_iter()
                    .find(|v| v.action() == a)
                    .unwrap_or(View::Overview);
                if v != self.view {
                    self.filter.clear();
                }
                self.view = v;
                self.popup = None;
            }
            Action::NextView | Action::PrevView => {
                let i = self.view.index();
                let n = View::ALL.len();
                let j = if a == Action::NextView {
                    (i + 1) % n
                } else {
                    (i + n - 1) % n
                };
                self.dispatch(View::ALL[j].action());
            }
            Action::Up | Action::Down | Action::PageUp | Action::PageDown => {
                if let Some(Popup::Help { scroll }) = &mut self.popup {
                    *scroll = match a {
                        Action::Up => scroll.saturating_sub(1),
                        Action::Down => *scroll + 1,
                        Action::PageUp => scroll.saturating_sub(page),
                        _ => *scroll + page,
                    };
                    return;
                }
                // Events count back from the newest line: up goes further back.
                let a = match (self.view, a) {
                    (View::Events, Action::Up) => Action::Down,
                    (View::Events, Action::Down) => Action::Up,
                    (View::Events, Action::PageUp) => Action::PageDown,
                    (View::Events, Action::PageDown) => Action::PageUp,
                    (_, a) => a,
                };
                let r = self.row();
                let r = match a {
                    Action::Up => r.saturating_sub(1),
                    Action::Down => r + 1,
                    Action::PageUp => r.saturating_sub(page),
                    _ => r + page,
                };
                self.set_row(r);
            }
            Action::Top => self.set_row(0),
            Action::Bottom => self.set_row(usize::MAX),
            Action::Left => {
                let i = self.view.index();
                self.cols[i] = self.cols[i].saturating_sub(8);
            }
            Action::Right => {
                let i = self.view.index();
                self.cols[i] += 8;
            }
            Action::Select => {
                // From the cluster overview, open the selected node's memory map.
                if self.view == View::Overview {
                    self.view = View::Memory;
                }
            }
            Action::NextNode | Action::PrevNode => {
                let n = self.cluster.nodes.len().max(1);
                self.node = if a == Action::NextNode {
                    (self.node + 1) % n
                } else {
                    (self.node + n - 1) % n
                };
                if matches!(self.view, View::Overview | View::Serving) {
                    self.rows[self.view.index()] = self.node;
                }
            }
            Action::ScaleUp => self.step_target(true),
            Action::ScaleDown => self.step_target(false),
            Action::ScaleTo => {
                let input = self
                    .active_config(self.node)
                    .map(|c| c.to_string())
                    .unwrap_or_default();
                self.popup = Some(Popup::Target {
                    node: self.node,
                    input,
                    error: None,
                });
            }
            Action::Rebalance => match self.active_config(self.node) {
                Ok(c) => {
                    self.popup = Some(Popup::Confirm {
                        node: self.node,
                        what: Pending::Rebalance,
                        lines: vec![
                            format!(
                                "Rebalance the experts of {} at {c} from the measured load?",
                                self.cluster.nodes[self.node].name()
                            ),
                            "Experts move by P2P copy and remap while serving continues.".into(),
                        ],
                    })
                }
                Err(e) => self.say(e, true),
            },
            Action::CancelOp => {
                let node = self.node;
                match self.cluster.nodes.get(node).and_then(|n| n.running_op()) {
                    Some(op) => {
                        let id = op.id;
                        self.outbox.push((node, NodeCmd::Cancel(id)));
                        self.say(format!("cancelling operation {id}…"), false);
                    }
                    None => self.say("no operation is running on this node", true),
                }
            }
            Action::Confirm => match self.popup.take() {
                Some(Popup::Plan {
                    node,
                    to,
                    reply: Some(Ok(p)),
                }) => {
                    let name = self.cluster.nodes[node].name().to_string();
                    let mut lines = vec![format!("Scale {name} from {} to {}?", p.from, p.to)];
                    if !p.devices_added.is_empty() {
                        lines.push(format!("Adds {}.", p.devices_added.join(", ")));
                    }
                    if !p.devices_removed.is_empty() {
                        lines.push(format!("Releases {}.", p.devices_removed.join(", ")));
                    }
                    lines.push(format!(
                        "Copies {} peer to peer, moves {} experts; the old instance serves until \
                         the switchover.",
                        crate::ui::fmt::bytes(p.p2p_bytes),
                        p.experts_moved
                    ));
                    self.popup = Some(Popup::Confirm {
                        node,
                        what: Pending::Scale(to),
                        lines,
                    });
                }
                // Still planning: the dialog stays.
                Some(p @ Popup::Plan { reply: None, .. }) => self.popup = Some(p),
                Some(Popup::Confirm { node, what, .. }) => {
                    let cmd = match what {
                        Pending::Scale(to) => NodeCmd::Scale(to),
                        Pending::Rebalance => NodeCmd::Rebalance(0),
                    };
                    self.outbox.push((node, cmd));
                }
                // A refused plan, or help: confirming closes it.
                _ => {}
            },
            Action::Dismiss => self.popup = None,
        }
    }
}
