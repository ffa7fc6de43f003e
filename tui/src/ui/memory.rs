//! Device memory map: each device of the selected node as a strip of cells by address, coloured
//! by what the bytes hold (non-expert weights, experts, KV cache); regions mapped by two or more
//! views (zero-copy shared) stand out; chunks a running copy is filling are marked in flight.
//! Below, the selected device's regions.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table};

use emoe_agent::daemon::proto;

use super::{Ctx, fmt, window};
use crate::app::Hits;
use crate::model::migration_target;

/// Is region `r` on device `dev` being filled by a copy of a running operation?
fn in_flight(s: &proto::Snapshot, dev: &str, r: &proto::Region) -> bool {
    s.migrations.iter().any(|m| {
        if m.done || m.dst != dev {
            return false;
        }
        match migration_target(&m.what) {
            (Some(l), Some(e)) => r.kind == "expert" && r.layer == Some(l) && r.expert == Some(e),
            (Some(l), None) => r.kind == "non_expert" && r.layer == Some(l),
            (None, _) => r.kind == "non_expert" && r.layer.is_none(),
        }
    })
}

fn kind_index(k: &str) -> usize {
    match k {
        "non_expert" => 0,
        "expert" => 1,
        _ => 2,
    }
}

/// The cells of device `d` from byte `start`, `n` cells of `per_cell` bytes each: each shows the
/// region covering most of it. One sweep over the regions sorted by address.
fn cells<'a>(
    c: &Ctx,
    s: &proto::Snapshot,
    d: &'a proto::Device,
    sorted: &[&'a proto::Region],
    start: u64,
    per_cell: u64,
    n: usize,
) -> Vec<Span<'a>> {
    let t = c.theme();
    let mut out = Vec::with_capacity(n);
    let mut i = sorted.partition_point(|r| r.offset + r.size <= start);
    for k in 0..n {
        let lo = start + k as u64 * per_cell;
        if lo >= d.capacity {
            out.push(Span::raw(" "));
            continue;
        }
        let hi = (lo + per_cell).min(d.capacity);
        while i < sorted.len() && sorted[i].offset + sorted[i].size <= lo {
            i += 1;
        }
        let mut best: Option<(&proto::Region, u64)> = None;
        for r in sorted[i..].iter().take_while(|r| r.offset < hi) {
            let a = r.offset.max(lo);
            let b = (r.offset + r.size).min(hi);
            if b > a && best.is_none_or(|(_, o)| b - a > o) {
                best = Some((r, b - a));
            }
        }
        let Some((r, _)) = best else {
            out.push(Span::styled(c.g.empty, t.free));
            continue;
        };
        if in_flight(s, &d.id, r) {
            out.push(Span::styled(c.g.moving, t.inflight));
            continue;
        }
        let k = kind_index(&r.kind);
        let base = [t.non_expert, t.expert, t.kv][k];
        let style = if r.views.len() >= 2 {
            base.patch(t.shared)
        } else {
            base
        };
        out.push(Span::styled(c.g.kinds[k], style));
    }
    out
}

pub fn draw(f: &mut Frame, area: Rect, c: &Ctx, hits: &mut Hits) {
    let t = c.theme();
    let Some((n, s)) = c.node_state(f, area, "Memory") else {
        return;
    };
    let ndev = s.devices.len().max(1);
    let strips_max = area.height.saturating_sub(8).max(3) as usize;
    let per = (strips_max.saturating_sub(1) / ndev).clamp(1, 3);
    let shown = ndev.min(strips_max.saturating_sub(1));
    let top_h = (shown * per + 3) as u16;
    let [top, bottom] =
        Layout::vertical([Constraint::Length(top_h), Constraint::Min(3)]).areas(area);

    // The strips.
    let label_w = 14usize;
    let cells_w = (top.width as usize).saturating_sub(label_w + 3).max(8);
    let cap = s
        .devices
        .iter()
        .map(|d| d.capacity)
        .max()
        .unwrap_or(1)
        .max(1);
    // When the devices are mostly empty, map only the addresses in use (up to the highest
    // region end on any device) so small regions stay visible; the rest is free.
    let top_end = s
        .devices
        .iter()
        .flat_map(|d| d.regions.iter().map(|r| r.offset + r.size))
        .max()
        .unwrap_or(0);
    let span = if top_end == 0 || top_end.saturating_mul(4) > cap {
        cap
    } else {
        top_end
    };
    let per_cell = span.div_ceil((cells_w * per) as u64).max(1);
    let block = c.block(format!(
        " Memory map of {}: {} devices, one cell = {}{} ",
        n.name(),
        s.devices.len(),
        fmt::bytes(per_cell),
        if span < cap {
            format!(
                ", the first {} of {} (the rest free)",
                fmt::bytes(span),
                fmt::bytes(cap)
            )
        } else {
            String::new()
        }
    ));
    let inner = block.inner(top);
    f.render_widget(block, top);
    let sel = c.app.row().min(s.devices.len().saturating_sub(1));
    let first = window(sel, s.devices.len(), shown);
    let mut lines: Vec<Line> = Vec::new();
    for (i, d) in s.devices.iter().enumerate().skip(first).take(shown) {
        let mut sorted: Vec<&proto::Region> = d.regions.iter().collect();
        sorted.sort_by_key(|r| r.offset);
        let x = d.used as f64 / d.capacity.max(1) as f64;
        for row in 0..per {
            let label = if row == 0 {
                format!("{:<6}{:>7} ", d.id, fmt::pct(x))
            } else {
                " ".repeat(label_w)
            };
            let style = if i == sel { t.selected } else { t.text };
            let mut spans = vec![Span::styled(label, style)];
            spans.extend(cells(
                c,
                s,
                d,
                &sorted,
                (row * cells_w) as u64 * per_cell,
                per_cell,
                cells_w,
            ));
            lines.push(Line::from(spans));
        }
    }
    let g = c.g;
    lines.push(Line::from(vec![
        Span::styled(format!("{} non-expert  ", g.kinds[0]), t.non_expert),
        Span::styled(format!("{} experts  ", g.kinds[1]), t.expert),
        Span::styled(format!("{} KV  ", g.kinds[2]), t.kv),
        Span::styled(
            format!("{} shared zero-copy  ", g.kinds[0]),
            t.non_expert.patch(t.shared),
        ),
        Span::styled(format!("{} in flight  ", g.moving), t.inflight),
        Span::styled(format!("{} free", g.empty), t.free),
    ]));
    f.render_widget(Paragraph::new(lines), inner);
    hits.list = Some((
        Rect::new(inner.x, inner.y, inner.width, (shown * per) as u16),
        first,
    ));
    // With several rows per device a click maps rows back through `per`; keep it simple and
    // only offer row clicks at one row per device.
    if per > 1 {
        hits.list = None;
    }

    // The selected device's regions.
    let Some(d) = s.devices.get(sel) else {
        return;
    };
    let block = c.block(format!(
        " Regions of {} ({} of {}, peak {}) ",
        d.id,
        fmt::bytes(d.used),
        fmt::bytes(d.capacity),
        fmt::bytes(d.peak)
    ));
    let inner = block.inner(bottom);
    f.render_widget(block, bottom);
    let mut regions: Vec<&proto::Region> = d
        .regions
        .iter()
        .filter(|r| {
            c.keep(&format!(
                "{} layer {} expert {}",
                r.kind,
                r.layer.map_or("-".into(), |l| l.to_string()),
                r.expert.map_or("-".into(), |e| e.to_string())
            ))
        })
        .collect();
    regions.sort_by_key(|r| r.offset);
    let skip = c.app.col().min(regions.len().saturating_sub(1));
    let rows = regions
        .iter()
        .skip(skip)
        .take(inner.height.saturating_sub(1) as usize)
        .map(|r| {
            let k = kind_index(&r.kind);
            let flight = in_flight(s, &d.id, r);
            let shared = r.views.len() >= 2;
            Row::new(vec![
                Cell::from(Span::styled(
                    ["non-expert", "expert", "KV"][k],
                    [t.non_expert, t.expert, t.kv][k],
                )),
                Cell::from(r.layer.map_or("–".into(), |l| l.to_string())),
                Cell::from(r.expert.map_or("–".into(), |e| e.to_string())),
                Cell::from(format!("{:#x}", r.offset)),
                Cell::from(fmt::bytes(r.size)),
                Cell::from(Span::styled(
                    format!("{}{}", r.views.len(), if shared { " shared" } else { "" }),
                    if shared { t.shared } else { Style::default() },
                )),
                Cell::from(if flight {
                    Span::styled("copying", t.inflight)
                } else {
                    Span::raw("")
                }),
            ])
        });
    let table = Table::new(
        rows,
        [
            Constraint::Length(10),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Length(9),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(vec![
            "Kind", "Layer", "Expert", "Offset", "Size", "Views", "",
        ])
        .style(t.header),
    )
    .column_spacing(1);
    f.render_widget(table, inner);
}
