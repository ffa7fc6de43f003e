//! Expert placement: layers × experts, each cell coloured by the device that holds the expert,
//! its shade the expert's share of the layer's routed load; experts a running copy is moving are
//! marked, replicated experts underlined. `/DEVICE` keeps one device's experts in colour.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::{Ctx, window};
use crate::app::Hits;
use crate::model::migration_target;

pub fn draw(f: &mut Frame, area: Rect, c: &Ctx, hits: &mut Hits) {
    let t = c.theme();
    let Some((n, s)) = c.node_state(f, area, "Experts") else {
        return;
    };
    let dev_index = |id: &str| s.devices.iter().position(|d| d.id == id).unwrap_or(0);
    let moving: Vec<(u32, u32, &str)> = s
        .migrations
        .iter()
        .filter(|m| !m.done)
        .filter_map(|m| match migration_target(&m.what) {
            (Some(l), Some(e)) => Some((l, e, m.dst.as_str())),
            _ => None,
        })
        .collect();
    let experts = s.placement.first().map_or(0, |l| l.experts.len());
    // A theme without colours (mono, NO_COLOR) cannot tell devices apart by colour.
    let mono = c.theme().device_color(0) == ratatui::style::Color::Reset;
    let [grid, legend] = Layout::vertical([Constraint::Min(3), Constraint::Length(4)]).areas(area);
    let block = c.block(format!(
        " Experts on {}: {} layers × {} ({}; {} moving) ",
        n.name(),
        s.placement.len(),
        experts,
        if mono {
            "glyph = device"
        } else {
            "colour = device, shade = load"
        },
        c.g.moving
    ));
    let inner = block.inner(grid);
    f.render_widget(block, grid);
    let label_w = 5usize;
    let cols = (inner.width as usize).saturating_sub(label_w).max(1);
    let first_e = c.app.col().min(experts.saturating_sub(1));
    let rows_h = inner.height.saturating_sub(1) as usize;
    let sel = c.app.row().min(s.placement.len().saturating_sub(1));
    let first_l = window(sel, s.placement.len(), rows_h);
    let mut lines = Vec::new();
    // Expert numbers every 8 columns.
    let mut head = " ".repeat(label_w);
    let mut e = first_e;
    while e < experts && head.len() < label_w + cols {
        let tag = format!("{e:<8}");
        head.push_str(&tag[..tag.len().min(label_w + cols - head.len())]);
        e += 8;
    }
    lines.push(Line::styled(head, t.header));
    for (li, layer) in s.placement.iter().enumerate().skip(first_l).take(rows_h) {
        let max = layer
            .experts
            .iter()
            .map(|x| x.load)
            .max()
            .unwrap_or(0)
            .max(1);
        let style = if li == sel { t.selected } else { t.dim };
        let mut spans = vec![Span::styled(format!("L{:<3} ", layer.layer), style)];
        for x in layer.experts.iter().skip(first_e).take(cols) {
            let holder = x.devices.first().map(String::as_str).unwrap_or("");
            let mut st = Style::default().fg(c.theme().device_color(dev_index(holder)));
            if x.devices.len() > 1 {
                st = st.add_modifier(Modifier::UNDERLINED);
            }
            if !c.keep(&x.devices.join(" ")) {
                st = t.dim;
            }
            let mv = moving
                .iter()
                .any(|(l, e, _)| *l == layer.layer && *e == x.expert);
            if mv {
                spans.push(Span::styled(c.g.moving, t.inflight));
                continue;
            }
            if mono {
                // Without colours the device's index is the glyph (0–9, a–z, then `+`).
                let i = dev_index(holder);
                let ch = char::from_digit(i as u32, 36).unwrap_or('+');
                spans.push(Span::styled(ch.to_string(), st));
                continue;
            }
            let share = x.load as f64 / max as f64;
            let shade = ((share * 3.0).round() as usize).min(3);
            spans.push(Span::styled(c.g.shades[shade], st));
        }
        lines.push(Line::from(spans));
    }
    f.render_widget(Paragraph::new(lines), inner);
    hits.list = Some((
        Rect::new(inner.x, inner.y + 1, inner.width, rows_h as u16),
        first_l,
    ));

    // Legend: device colours with the selected layer's expert count and load share per device.
    let block = c.block(" Devices (selected layer: experts, load share) ");
    let inner = block.inner(legend);
    f.render_widget(block, legend);
    let layer = s.placement.get(sel);
    let total: u64 = layer.map_or(0, |l| l.experts.iter().map(|x| x.load).sum());
    let mut spans = Vec::new();
    for (i, d) in s.devices.iter().enumerate() {
        let (count, load) = layer.map_or((0, 0), |l| {
            l.experts
                .iter()
                .filter(|x| x.devices.first() == Some(&d.id))
                .fold((0, 0), |(c, ld), x| (c + 1, ld + x.load))
        });
        if count == 0 {
            continue;
        }
        spans.push(Span::styled(
            if mono {
                char::from_digit(i as u32, 36).unwrap_or('+').to_string()
            } else {
                c.g.full.to_string()
            },
            Style::default().fg(c.theme().device_color(i)),
        ));
        spans.push(Span::raw(format!(
            " {} {count} {:.0}%  ",
            d.id,
            if total > 0 {
                100.0 * load as f64 / total as f64
            } else {
                0.0
            }
        )));
    }
    f.render_widget(
        Paragraph::new(Line::from(spans)).wrap(ratatui::widgets::Wrap { trim: true }),
        inner,
    );
}
