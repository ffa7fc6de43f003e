//! Rendering: a pure function of [`App`] into a frame. Each view has its own file; this one lays
//! out the tab bar, the view, the status bar and the overlays.

mod events;
pub mod fmt;
pub mod glyphs;
mod memory;
mod operations;
mod overview;
mod placement;
mod popups;
mod serving;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};

use crate::action::Action;
use crate::app::{App, Hits, View};
use crate::config::Mode;
use crate::model::{Link, NodeView};
use glyphs::Glyphs;

/// Everything a view needs to draw.
pub struct Ctx<'a> {
    pub app: &'a App,
    pub g: &'static Glyphs,
}

impl<'a> Ctx<'a> {
    pub fn theme(&self) -> &crate::config::Theme {
        &self.app.settings.theme
    }

    /// A bordered block titled `title`.
    pub fn block<'b>(&self, title: impl Into<Line<'b>>) -> Block<'b> {
        Block::default()
            .borders(Borders::ALL)
            .border_set(self.g.border)
            .border_style(self.theme().border)
            .title(title.into().style(self.theme().title))
    }

    /// The selected node and its state; without a state yet, draws `title` with a waiting
    /// message over `area` and returns `None`.
    pub fn node_state(
        &self,
        f: &mut Frame,
        area: Rect,
        title: &str,
    ) -> Option<(&'a NodeView, &'a emoe_agent::daemon::proto::Snapshot)> {
        let n = self.app.selected_node()?;
        match n.snap.as_ref() {
            Some(s) => Some((n, s)),
            None => {
                f.render_widget(
                    Paragraph::new("waiting for the node's state…")
                        .style(self.theme().dim)
                        .block(self.block(format!(" {title} of {} ", n.name()))),
                    area,
                );
                None
            }
        }
    }

    /// Does `text` pass the view's filter (case-insensitive substring)?
    pub fn keep(&self, text: &str) -> bool {
        let f = self.app.filter.trim();
        f.is_empty() || text.to_lowercase().contains(&f.to_lowercase())
    }

    /// The link state as a short styled word.
    pub fn link(&self, n: &NodeView) -> Span<'static> {
        let t = self.theme();
        match &n.link {
            Link::Live => Span::styled(format!("{} live", self.g.dot), t.ok),
            Link::Connecting => Span::styled("connecting", t.warn),
            Link::Stale { retry_s, .. } => {
                Span::styled(format!("stale, retry {}", fmt::secs(*retry_s)), t.stale)
            }
        }
    }

    /// The link state in at most ten columns.
    pub fn link_short(&self, n: &NodeView) -> Span<'static> {
        let t = self.theme();
        match &n.link {
            Link::Live => Span::styled(format!("{} live", self.g.dot), t.ok),
            Link::Connecting => Span::styled("connect…", t.warn),
            Link::Stale { retry_s, .. } => {
                Span::styled(format!("stale {}", fmt::secs(*retry_s)), t.stale)
            }
        }
    }

    /// A text bar of `width` cells filled to `x` in [0, 1].
    pub fn bar(&self, x: f64, width: usize) -> String {
        let n = ((x.clamp(0.0, 1.0)) * width as f64).round() as usize;
        format!(
            "{}{}",
            self.g.full.repeat(n),
            self.g.empty.repeat(width.saturating_sub(n))
        )
    }
}

/// The node's OpenAI-compatible endpoint as `http 127.0.0.1:8000`; `None` while it serves none
/// (or before its first state). Quoted like any value from outside: bounded, controls escaped.
pub fn http_label(n: &NodeView) -> Option<String> {
    let a = n.snap.as_ref()?.node.as_ref()?.http_addr.trim();
    if a.is_empty() {
        return None;
    }
    let (scheme, rest) = a.split_once("://").unwrap_or(("http", a));
    Some(format!(
        "{} {}",
        emoe_core::echo::echo(scheme),
        emoe_core::echo::echo(rest)
    ))
}

/// `base` with the node's HTTP endpoint appended when it serves one (block titles).
pub fn with_http(base: String, n: &NodeView) -> String {
    match http_label(n) {
        Some(h) => format!("{base} ({h})"),
        None => base,
    }
}

/// Draw the whole console; returns the areas the mouse can hit.
pub fn draw(f: &mut Frame, app: &App) -> Hits {
    let ctx = Ctx {
        app,
        g: Glyphs::of(app.settings.ascii),
    };
    let mut hits = Hits::default();
    let area = f.area();
    let [top, body, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    tabs(f, top, &ctx, &mut hits);
    match app.view {
        View::Overview => overview::draw(f, body, &ctx, &mut hits),
        View::Memory => memory::draw(f, body, &ctx, &mut hits),
        View::Placement => placement::draw(f, body, &ctx, &mut hits),
        View::Operations => operations::draw(f, body, &ctx, &mut hits),
        View::Serving => serving::draw(f, body, &ctx, &mut hits),
        View::Events => events::draw(f, body, &ctx, &mut hits),
    }
    status(f, bottom, &ctx);
    popups::draw(f, area, &ctx);
    if app.settings.ascii {
        asciify(f.buffer_mut());
    }
    hits
}

/// `--ascii` is a promise: whatever a view or a message wrote, every cell leaves as ASCII.
fn asciify(buf: &mut ratatui::buffer::Buffer) {
    for cell in buf.content.iter_mut() {
        let sym = cell.symbol();
        if sym.is_ascii() {
            continue;
        }
        let r = match sym.chars().next().unwrap_or(' ') {
            '–' | '—' | '−' | '─' | '━' => "-",
            '×' => "x",
            '→' | '»' | '›' => ">",
            '←' | '«' | '‹' => "<",
            '…' | '·' | '•' => ".",
            '●' => "*",
            '│' | '┃' => "|",
            '✓' => "v",
            '✗' => "x",
            '≥' => ">",
            '≤' => "<",
            _ => "?",
        };
        cell.set_symbol(r);
    }
}

fn tabs(f: &mut Frame, area: Rect, c: &Ctx, hits: &mut Hits) {
    let t = c.theme();
    let short = area.width < 110;
    let mut spans = vec![];
    let mut x = area.x;
    if !short {
        spans.push(Span::styled(" emoe ", t.title));
        x += 6;
    }
    for (i, v) in View::ALL.iter().enumerate() {
        let name = if short {
            match v {
                View::Overview => "Nodes",
                View::Memory => "Memory",
                View::Placement => "Experts",
                View::Operations => "Ops",
                View::Serving => "Serving",
                View::Events => "Events",
            }
        } else {
            v.title()
        };
        let label = format!(" {} {name} ", i + 1);
        let w = label.chars().count() as u16;
        let style = if *v == c.app.view { t.selected } else { t.dim };
        hits.tabs.push((Rect::new(x, area.y, w, 1), *v));
        x += w;
        spans.push(Span::styled(label, style));
    }
    // The selected node on the right.
    if let Some(n) = c.app.selected_node() {
        let total = c.app.cluster.nodes.len();
        let mut right = vec![Span::styled(
            format!(
                " {}{} ",
                n.name(),
                if total > 1 {
                    format!(" ({}/{total})", c.app.node + 1)
                } else {
                    String::new()
                }
            ),
            t.header,
        )];
        right.push(c.link(n));
        right.push(Span::raw(" "));
        let used: usize = spans.iter().map(|s| s.width()).sum();
        let rw: usize = right.iter().map(|s| s.width()).sum();
        if used + rw <= area.width as usize {
            spans.push(Span::raw(" ".repeat(area.width as usize - used - rw)));
            spans.extend(right);
        }
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The keys of the actions the status bar advertises, from the active keymap.
fn hints(c: &Ctx) -> Vec<(String, &'static str)> {
    let km = &c.app.settings.keymap;
    let list: &[(Action, &str)] = if c.app.mode() == Mode::Dialog {
        &[(Action::Confirm, "confirm"), (Action::Dismiss, "close")]
    } else {
        &[
            (Action::Help, "help"),
            (Action::Palette, "command"),
            (Action::Filter, "filter"),
            (Action::NextNode, "node"),
            (Action::ScaleUp, "+TP group"),
            (Action::ScaleDown, "−TP group"),
            (Action::ScaleTo, "scale to"),
            (Action::CancelOp, "cancel op"),
            (Action::Quit, "quit"),
        ]
    };
    list.iter()
        .filter(|(a, _)| !(c.app.readonly && a.mutating()))
        .filter_map(|(a, label)| {
            km.keys_for(c.app.mode(), *a)
                .first()
                .map(|k| (k.to_string(), *label))
        })
        .collect()
}

fn status(f: &mut Frame, area: Rect, c: &Ctx) {
    let t = c.theme();
    let mut spans: Vec<Span> = Vec::new();
    if c.app.readonly {
        spans.push(Span::styled(" READ-ONLY ", t.warn.patch(t.header)));
    }
    if c.app.filtering || !c.app.filter.is_empty() {
        spans.push(Span::styled(
            format!(
                " /{}{} ",
                c.app.filter,
                if c.app.filtering { "_" } else { "" }
            ),
            t.key,
        ));
    }
    if let Some(toast) = &c.app.toast {
        spans.push(Span::styled(
            format!(" {} ", toast.text),
            if toast.error { t.error } else { t.ok },
        ));
    } else {
        // As many hints as fit whole.
        let mut used: usize = spans.iter().map(|s| s.width()).sum();
        for (k, label) in hints(c) {
            let w = k.chars().count() + label.chars().count() + 3;
            if used + w > area.width as usize {
                break;
            }
            used += w;
            spans.push(Span::styled(format!(" {k}"), t.key));
            spans.push(Span::styled(format!(" {label} "), t.dim));
        }
    }
    f.render_widget(
        Paragraph::new(Line::from(spans)).style(Style::default()),
        area,
    );
}

/// The first row to show so that `selected` is visible in `height` rows.
pub fn window(selected: usize, count: usize, height: usize) -> usize {
    if height == 0 || count <= height {
        return 0;
    }
    let sel = selected.min(count - 1);
    (sel + 1).saturating_sub(height).min(count - height)
}

/// Bytes a device holds per region kind: non-expert, expert, KV.
pub fn by_kind(d: &emoe_agent::daemon::proto::Device) -> [u64; 3] {
    let mut k = [0u64; 3];
    for r in &d.regions {
        match r.kind.as_str() {
            "non_expert" => k[0] += r.size,
            "expert" => k[1] += r.size,
            _ => k[2] += r.size,
        }
    }
    k
}

/// The style for a usage fraction: fine, high, nearly full.
pub fn usage_style(c: &Ctx, x: f64) -> Style {
    let t = c.theme();
    if x >= 0.9 {
        t.error
    } else if x >= 0.7 {
        t.warn
    } else {
        t.gauge
    }
}

/// One frame of `app` at `w`×`h` as plain text (`emoe --once`, tests): trailing spaces trimmed.
pub fn render_text(app: &App, w: u16, h: u16) -> String {
    let mut t = ratatui::Terminal::new(ratatui::backend::TestBackend::new(w, h))
        .expect("the test backend cannot fail");
    let _ = t.draw(|f| {
        draw(f, app);
    });
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..h {
        let mut line = String::new();
        for x in 0..w {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
