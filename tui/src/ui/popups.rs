//! Overlays: help (generated from the active keymap), the command palette, the target input,
//! the plan preview and the confirm dialog.

use ratatui::Frame;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph, Wrap};

use super::{Ctx, fmt};
use crate::app::Popup;
use crate::config::Mode;

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let [v] = Layout::vertical([Constraint::Length(h.min(area.height))])
        .flex(Flex::Center)
        .areas(area);
    let [r] = Layout::horizontal([Constraint::Length(w.min(area.width))])
        .flex(Flex::Center)
        .areas(v);
    r
}

pub fn draw(f: &mut Frame, area: Rect, c: &Ctx) {
    let t = c.theme();
    let Some(p) = &c.app.popup else { return };
    let km = &c.app.settings.keymap;
    let key = |mode: Mode, a: crate::action::Action| {
        km.keys_for(mode, a)
            .first()
            .map_or(a.name().to_string(), |k| k.to_string())
    };
    match p {
        Popup::Help { scroll } => {
            let mut lines = Vec::new();
            for (mode, title) in [(Mode::Normal, "Views"), (Mode::Dialog, "Dialogs")] {
                lines.push(Line::styled(
                    format!("{title} (keymap {})", km.name),
                    t.title,
                ));
                for b in km.bindings(mode) {
                    if c.app.readonly && b.action.mutating() {
                        continue;
                    }
                    lines.push(Line::from(vec![
                        Span::styled(format!("  {:<10}", b.on), t.key),
                        Span::styled(format!("{:<17}", b.action.name()), t.dim),
                        Span::raw(b.desc.clone()),
                    ]));
                }
                lines.push(Line::raw(""));
            }
            lines.push(Line::styled(
                "Mouse: click a tab or a row; the wheel scrolls. `:` runs any action by name.",
                t.dim,
            ));
            let r = centered(area, 100, area.height.saturating_sub(2));
            let inner_h = r.height.saturating_sub(2) as usize;
            let skip = (*scroll).min(lines.len().saturating_sub(inner_h));
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>()).block(c.block(
                    format!(
                        " Help: {} to close ",
                        key(Mode::Dialog, crate::action::Action::Dismiss)
                    ),
                )),
                r,
            );
        }
        Popup::Palette { input, selected } => {
            let items = c.app.palette_items(input);
            let h = (items.len() as u16 + 3).clamp(4, 16);
            let r = centered(area, 72, h);
            let mut lines = vec![Line::from(vec![
                Span::styled(":", t.key),
                Span::raw(input.clone()),
                Span::styled("_", t.key),
            ])];
            let sel = (*selected).min(items.len().saturating_sub(1));
            let first = super::window(sel, items.len(), (h - 3) as usize);
            for (i, a) in items.iter().enumerate().skip(first).take((h - 3) as usize) {
                let st = if i == sel { t.selected } else { t.text };
                lines.push(Line::from(vec![
                    Span::styled(format!("{:<17}", a.name()), st.patch(t.key)),
                    Span::styled(a.desc().to_string(), st),
                ]));
            }
            if items.is_empty() {
                lines.push(Line::styled(
                    "no matching action (`scale dp3tp2ep6` plans a step)",
                    t.dim,
                ));
            }
            f.render_widget(Clear, r);
            f.render_widget(Paragraph::new(lines).block(c.block(" Command ")), r);
        }
        Popup::Target { input, error, .. } => {
            let r = centered(area, 64, 7);
            let mut lines = vec![
                Line::styled("Target config (dpNtpNepN, TP unchanged):", t.text),
                Line::from(vec![
                    Span::styled("> ", t.key),
                    Span::raw(input.clone()),
                    Span::styled("_", t.key),
                ]),
            ];
            if let Some(e) = error {
                lines.push(Line::styled(e.clone(), t.error));
            }
            lines.push(Line::styled("enter plans it · esc closes", t.dim));
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(lines)
                    .wrap(Wrap { trim: false })
                    .block(c.block(" Scale to ")),
                r,
            );
        }
        Popup::Plan { to, reply, node } => {
            let name = c
                .app
                .cluster
                .nodes
                .get(*node)
                .map_or("?".to_string(), |n| n.name().to_string());
            let mut lines = Vec::new();
            match reply {
                None => lines.push(Line::styled(format!("planning {to} on {name}…"), t.dim)),
                Some(Err(e)) => {
                    lines.push(Line::styled(format!("{name} refused {to}:"), t.error));
                    lines.push(Line::styled(e.clone(), t.error));
                }
                Some(Ok(p)) => {
                    let row = |k: &str, v: String| {
                        Line::from(vec![
                            Span::styled(format!("{k:<22}"), t.header),
                            Span::raw(v),
                        ])
                    };
                    lines.push(row("step", format!("{} {} {}", p.from, c.g.arrow, p.to)));
                    lines.push(row(
                        "devices added",
                        if p.devices_added.is_empty() {
                            "none".into()
                        } else {
                            p.devices_added.join(" ")
                        },
                    ));
                    lines.push(row(
                        "devices removed",
                        if p.devices_removed.is_empty() {
                            "none".into()
                        } else {
                            p.devices_removed.join(" ")
                        },
                    ));
                    lines.push(row("zero-copy (no bytes)", fmt::bytes(p.zero_copy_bytes)));
                    lines.push(row("P2P copies", fmt::bytes(p.p2p_bytes)));
                    lines.push(row("experts moved", p.experts_moved.to_string()));
                    lines.push(row("steps", p.steps.to_string()));
                    lines.push(row(
                        "predicted time",
                        if p.predicted_seconds < 1.0 {
                            fmt::ms(p.predicted_seconds)
                        } else {
                            fmt::secs(p.predicted_seconds)
                        },
                    ));
                    lines.push(Line::styled("predicted peak per device:", t.header));
                    let mut peaks: Vec<(&String, &u64)> = p.predicted_peak_bytes.iter().collect();
                    peaks.sort();
                    let mut line = String::from(" ");
                    for (d, b) in peaks {
                        let cell = format!(" {d} {}", fmt::bytes(*b));
                        if line.len() + cell.len() > 66 {
                            lines.push(Line::raw(std::mem::take(&mut line)));
                            line.push(' ');
                        }
                        line.push_str(&cell);
                    }
                    if !line.trim().is_empty() {
                        lines.push(Line::raw(line));
                    }
                }
            }
            let ok = matches!(reply, Some(Ok(_)));
            lines.push(Line::raw(""));
            lines.push(Line::styled(
                if ok {
                    format!(
                        "{} continue to confirm · {} close",
                        key(Mode::Dialog, crate::action::Action::Confirm),
                        key(Mode::Dialog, crate::action::Action::Dismiss)
                    )
                } else {
                    format!(
                        "{} close",
                        key(Mode::Dialog, crate::action::Action::Dismiss)
                    )
                },
                t.dim,
            ));
            let r = centered(area, 72, lines.len() as u16 + 2);
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(lines)
                    .wrap(Wrap { trim: false })
                    .block(c.block(format!(" Plan: {name} {} {to} ", c.g.arrow))),
                r,
            );
        }
        Popup::Confirm { lines, .. } => {
            let mut ls: Vec<Line> = lines.iter().map(|l| Line::raw(l.clone())).collect();
            ls.push(Line::raw(""));
            ls.push(Line::from(vec![
                Span::styled(key(Mode::Dialog, crate::action::Action::Confirm), t.key),
                Span::raw(" yes, go   "),
                Span::styled(key(Mode::Dialog, crate::action::Action::Dismiss), t.key),
                Span::raw(" no"),
            ]));
            let r = centered(area, 70, ls.len() as u16 + 4);
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(ls)
                    .wrap(Wrap { trim: false })
                    .block(c.block(" Confirm ").border_style(t.warn)),
                r,
            );
        }
    }
}
