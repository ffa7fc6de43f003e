//! Operations and migrations: every scaling operation of the selected node (phase, progress,
//! rate, ETA, latency), and the copies of the selected one.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table};

use emoe_agent::daemon::proto;

use super::{Ctx, fmt, window};
use crate::app::Hits;

fn finished(o: &proto::Operation) -> bool {
    matches!(o.phase.as_str(), "done" | "failed" | "cancelled")
}

/// Seconds left at the operation's current rate.
pub fn eta(o: &proto::Operation) -> Option<f64> {
    if finished(o) || o.rate_bytes_per_s <= 0.0 || o.bytes_total <= o.bytes_done {
        return None;
    }
    Some((o.bytes_total - o.bytes_done) as f64 / o.rate_bytes_per_s)
}

pub fn draw(f: &mut Frame, area: Rect, c: &Ctx, hits: &mut Hits) {
    let t = c.theme();
    let Some((n, s)) = c.node_state(f, area, "Operations") else {
        return;
    };
    // Newest first.
    let ops: Vec<&proto::Operation> = s.operations.iter().rev().collect();
    let top_h = (ops.len() as u16 + 4).clamp(5, area.height / 2);
    let [top, bottom] =
        Layout::vertical([Constraint::Length(top_h), Constraint::Min(3)]).areas(area);
    let block = c.block(format!(" Operations on {} ", n.name()));
    let inner = block.inner(top);
    f.render_widget(block, top);
    if ops.is_empty() {
        let keys = c
            .app
            .settings
            .keymap
            .keys_for(crate::config::Mode::Normal, crate::action::Action::ScaleUp)
            .first()
            .map(|k| format!(" (`{k}` plans a scale-up)"))
            .unwrap_or_default();
        f.render_widget(
            Paragraph::new(format!("no operations yet{keys}")).style(t.dim),
            inner,
        );
    } else {
        render_ops(f, inner, c, &ops, hits);
    }
    let sel = c.app.row().min(ops.len().saturating_sub(1));
    // Copies of the selected operation.
    let op = ops.get(sel);
    let migs: Vec<&proto::Migration> = s
        .migrations
        .iter()
        .filter(|m| op.is_some_and(|o| o.id == m.operation))
        .filter(|m| c.keep(&format!("{} {} {}", m.what, m.src, m.dst)))
        .collect();
    let done = migs.iter().filter(|m| m.done).count();
    let block = c.block(format!(
        " Migrations{}: {done}/{} done ",
        op.map_or(String::new(), |o| format!(" of operation {}", o.id)),
        migs.len()
    ));
    let inner = block.inner(bottom);
    f.render_widget(block, bottom);
    // Copies still running first, then the finished ones newest first.
    let mut order: Vec<&&proto::Migration> = migs.iter().collect();
    order.sort_by(|a, b| {
        a.done
            .cmp(&b.done)
            .then(b.finished.total_cmp(&a.finished))
            .then(a.job.cmp(&b.job))
    });
    let rows = order
        .iter()
        .take(inner.height.saturating_sub(1) as usize)
        .map(|m| {
            Row::new(vec![
                Cell::from(m.what.clone()),
                Cell::from(format!("{} {} {}", m.src, c.g.arrow, m.dst)),
                Cell::from(fmt::bytes(m.bytes)),
                Cell::from(if m.done {
                    Span::styled(c.g.ok, t.ok)
                } else {
                    Span::styled(c.g.moving, t.inflight)
                }),
                Cell::from(if m.done {
                    fmt::rate(m.rate_bytes_per_s)
                } else {
                    "copying".into()
                }),
            ])
        });
    let table = Table::new(
        rows,
        [
            Constraint::Length(14),
            Constraint::Length(14),
            Constraint::Length(10),
            Constraint::Length(3),
            Constraint::Fill(1),
        ],
    )
    .header(Row::new(vec!["What", "Copy", "Bytes", "", "Rate"]).style(t.header))
    .column_spacing(1);
    f.render_widget(table, inner);
}

fn render_ops(f: &mut Frame, inner: Rect, c: &Ctx, ops: &[&proto::Operation], hits: &mut Hits) {
    let t = c.theme();
    let sel = c.app.row().min(ops.len().saturating_sub(1));
    let rows_h = inner.height.saturating_sub(1) as usize;
    let first = window(sel, ops.len(), rows_h);
    let wide = inner.width >= 110;
    let bar_w = if inner.width >= 120 { 24 } else { 10 };
    let rows = ops
        .iter()
        .enumerate()
        .skip(first)
        .take(rows_h)
        .map(|(i, o)| {
            let frac = if o.bytes_total > 0 {
                o.bytes_done as f64 / o.bytes_total as f64
            } else if finished(o) {
                1.0
            } else {
                0.0
            };
            let phase_style = match o.phase.as_str() {
                "done" => t.ok,
                "failed" => t.error,
                "cancelled" => t.warn,
                _ => t.inflight,
            };
            let latency = if finished(o) && o.latency_s > 0.0 {
                fmt::secs(o.latency_s)
            } else {
                "–".into()
            };
            let mut cells = vec![
                Cell::from(o.id.to_string()),
                Cell::from(format!("{} {} {}", o.from, c.g.arrow, o.to)),
                Cell::from(Span::styled(o.phase.clone(), phase_style)),
                Cell::from(Line::from(vec![
                    Span::styled(c.bar(frac, bar_w), t.gauge),
                    Span::raw(format!(" {:>4}", fmt::pct(frac))),
                ])),
                Cell::from(format!("{}/{}", o.copies_done, o.copies_total)),
            ];
            if wide {
                cells.push(Cell::from(fmt::rate(o.rate_bytes_per_s)));
            }
            cells.push(Cell::from(eta(o).map_or("–".into(), fmt::secs)));
            cells.push(Cell::from(latency));
            cells.push(Cell::from(Span::styled(
                if o.error.is_empty() {
                    o.strategy.clone()
                } else {
                    o.error.clone()
                },
                if o.error.is_empty() { t.dim } else { t.error },
            )));
            Row::new(cells).style(if i == sel { t.selected } else { t.text })
        });
    let mut widths = vec![
        Constraint::Length(3),
        Constraint::Length(21),
        Constraint::Length(9),
        Constraint::Length(bar_w as u16 + 5),
        Constraint::Length(6),
    ];
    let mut header = vec!["Op", "Step", "Phase", "Progress", "Copies"];
    if wide {
        widths.push(Constraint::Length(12));
        header.push("Rate");
    }
    widths.extend([
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Fill(1),
    ]);
    header.extend(["ETA", "Latency", "Strategy"]);
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(t.header))
        .column_spacing(1);
    f.render_widget(table, inner);
    hits.list = Some((
        Rect::new(inner.x, inner.y + 1, inner.width, rows_h as u16),
        first,
    ));
}
