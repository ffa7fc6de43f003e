//! Cluster overview: one row per node (link, config, a cell per device, host load, throughput),
//! and the selected node's devices with memory bars and what they hold.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table};

use super::{Ctx, by_kind, fmt, http_label, usage_style, window, with_http};
use crate::app::Hits;

pub fn draw(f: &mut Frame, area: Rect, c: &Ctx, hits: &mut Hits) {
    let nodes = &c.app.cluster.nodes;
    let top_h = (nodes.len() as u16 + 3).min(area.height / 2).max(4);
    let [top, bottom] =
        Layout::vertical([Constraint::Length(top_h), Constraint::Min(3)]).areas(area);
    node_table(f, top, c, hits);
    device_table(f, bottom, c);
}

fn node_table(f: &mut Frame, area: Rect, c: &Ctx, hits: &mut Hits) {
    let t = c.theme();
    let nodes = &c.app.cluster.nodes;
    let total_dev = c.app.cluster.devices();
    let block = c.block(format!(
        " Cluster: {} node{}, {total_dev} devices ",
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" }
    ));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let rows_h = inner.height.saturating_sub(1) as usize;
    let visible: Vec<usize> = (0..nodes.len())
        .filter(|&i| {
            let n = &nodes[i];
            c.keep(&format!("{} {}", n.name(), n.addr))
        })
        .collect();
    let sel_pos = visible.iter().position(|&i| i == c.app.node).unwrap_or(0);
    let first = window(sel_pos, visible.len(), rows_h);
    let wide = area.width >= 120;
    // The HTTP column only where the operation keeps room beside it; narrower, the selected
    // node's block titles carry the endpoint.
    let http_col = area.width >= 150;
    let rows = visible.iter().skip(first).take(rows_h).map(|&i| {
        let n = &nodes[i];
        let s = n.snap.as_ref();
        let node = s.and_then(|s| s.node.as_ref());
        let mut cells = vec![
            Cell::from(n.name().to_string()),
            Cell::from(Line::from({
                let mut link = vec![if wide { c.link(n) } else { c.link_short(n) }];
                // Without the HTTP column the row still says where its endpoint listens.
                if wide
                    && !http_col
                    && let Some(port) = http_port(n)
                {
                    link.push(Span::styled(format!(" http:{port}"), t.dim));
                }
                link
            })),
            Cell::from(n.active().map_or("–".to_string(), |a| a.config.clone())),
        ];
        // One cell per device, its glyph the usage level.
        let devs: Vec<Span> = s.map_or(Vec::new(), |s| {
            s.devices
                .iter()
                .map(|d| {
                    let x = d.used as f64 / d.capacity.max(1) as f64;
                    Span::styled(
                        if d.used == 0 {
                            c.g.empty
                        } else {
                            c.g.level(x.max(0.13))
                        },
                        usage_style(c, x),
                    )
                })
                .collect()
        });
        cells.push(Cell::from(Line::from(devs)));
        let (used, cap) = s.map_or((0, 0), |s| {
            s.devices
                .iter()
                .fold((0, 0), |(u, k), d| (u + d.used, k + d.capacity))
        });
        cells.push(Cell::from(format!(
            "{:>9} {:>4}",
            fmt::bytes(used),
            fmt::pct(used as f64 / cap.max(1) as f64)
        )));
        cells.push(Cell::from(
            node.map_or("–".into(), |n| format!("{:.0}%", n.cpu_percent)),
        ));
        if wide {
            cells.push(Cell::from(
                node.map_or("–".into(), |n| format!("{:.2}", n.load_1)),
            ));
            cells.push(Cell::from(
                node.map_or("–".into(), |n| format!("{} {}", n.backend, n.model)),
            ));
        }
        if http_col {
            cells.push(Cell::from(http_label(n).unwrap_or_else(|| "–".into())));
        }
        cells.push(Cell::from(
            s.and_then(|s| s.serving.as_ref())
                .map_or("–".into(), |v| format!("{:.0}", v.tokens_per_s)),
        ));
        cells.push(Cell::from(
            n.running_op()
                .map_or(String::new(), |o| format!("{} {}", o.phase, o.to)),
        ));
        let style = if i == c.app.node { t.selected } else { t.text };
        let style = if n.stale() {
            style.patch(t.stale)
        } else {
            style
        };
        Row::new(cells).style(style)
    });
    let mut header = vec!["Node", "Link", "Config", "Devices", "Memory", "CPU"];
    // Wide, the node column is as wide as the longest name (within reason), so the operation
    // keeps the rest of the row.
    let name_w = nodes
        .iter()
        .map(|n| n.name().chars().count())
        .max()
        .unwrap_or(0)
        .clamp(8, 24) as u16;
    let mut widths = vec![
        if wide {
            Constraint::Length(name_w)
        } else {
            Constraint::Min(8)
        },
        Constraint::Length(if wide { 16 } else { 10 }),
        Constraint::Length(10),
        Constraint::Length(16),
        Constraint::Length(14),
        Constraint::Length(4),
    ];
    if wide {
        header.extend(["Load", "Backend"]);
        widths.extend([Constraint::Length(5), Constraint::Length(24)]);
    }
    if http_col {
        header.push("HTTP");
        widths.push(Constraint::Length(20));
    }
    header.extend(["tok/s", "Operation"]);
    widths.extend([Constraint::Length(6), Constraint::Fill(1)]);
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(t.header))
        .column_spacing(1);
    f.render_widget(table, inner);
    let list = Rect::new(
        inner.x,
        inner.y + 1,
        inner.width,
        inner.height.saturating_sub(1),
    );
    // Rows map back to node indices only when nothing is filtered out.
    if visible.len() == nodes.len() {
        hits.list = Some((list, first));
    }
}

/// The port of the node's HTTP endpoint, for the node row when there is no HTTP column.
fn http_port(n: &crate::model::NodeView) -> Option<String> {
    let a = n.snap.as_ref()?.node.as_ref()?.http_addr.trim();
    let port = a.rsplit_once(':')?.1;
    (!port.is_empty() && port.chars().all(|c| c.is_ascii_digit())).then(|| port.to_string())
}

fn device_table(f: &mut Frame, area: Rect, c: &Ctx) {
    let t = c.theme();
    let Some(n) = c.app.selected_node() else {
        f.render_widget(Paragraph::new("no nodes").block(c.block(" Devices ")), area);
        return;
    };
    let block = c.block(format!(
        "{} ",
        with_http(format!(" Devices of {}", n.name()), n)
    ));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let Some(s) = n.snap.as_ref() else {
        let msg = match &n.link {
            crate::model::Link::Stale { error, .. } => format!("no state yet: {error}"),
            _ => "waiting for the first snapshot…".into(),
        };
        f.render_widget(Paragraph::new(msg).style(t.dim), inner);
        return;
    };
    let wide = inner.width >= 110;
    let bar_w: usize = if inner.width >= 120 { 30 } else { 10 };
    let rows = s
        .devices
        .iter()
        .filter(|d| c.keep(&d.id))
        .take(inner.height.saturating_sub(1) as usize)
        .map(|d| {
            let x = d.used as f64 / d.capacity.max(1) as f64;
            let [ne, ex, kv] = by_kind(d);
            let inst: Vec<String> = s
                .instances
                .iter()
                .filter(|i| i.devices.contains(&d.id))
                .map(|i| format!("{} {}", i.config, i.state))
                .collect();
            let health = d
                .telemetry
                .as_ref()
                .and_then(|t| t.health.clone())
                .unwrap_or_else(|| "–".into());
            let mut cells = vec![
                Cell::from(d.id.clone()),
                Cell::from(Span::styled(c.bar(x, bar_w), usage_style(c, x))),
                Cell::from(format!("{:>9} {:>4}", fmt::bytes(d.used), fmt::pct(x))),
                Cell::from(Line::from(vec![
                    Span::styled(format!("{:>9}", fmt::bytes(ne)), t.non_expert),
                    Span::raw(" "),
                    Span::styled(format!("{:>9}", fmt::bytes(ex)), t.expert),
                    Span::raw(" "),
                    Span::styled(format!("{:>9}", fmt::bytes(kv)), t.kv),
                ])),
            ];
            if wide {
                cells.push(Cell::from(format!("{:>9}", fmt::bytes(d.peak))));
                cells.push(Cell::from(health));
            }
            cells.push(Cell::from(inst.join(", ")));
            Row::new(cells).style(if d.used == 0 { t.dim } else { Style::default() })
        });
    let mut widths = vec![
        Constraint::Length(6),
        Constraint::Length(bar_w as u16),
        Constraint::Length(14),
        Constraint::Length(29),
    ];
    let mut header = vec![
        "Device",
        "Memory",
        "     Used",
        "  non-exp   experts        KV",
    ];
    if wide {
        widths.extend([Constraint::Length(9), Constraint::Length(7)]);
        header.extend(["     Peak", "Health"]);
    }
    widths.push(Constraint::Fill(1));
    header.push("Instances");
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(t.header))
        .column_spacing(1);
    f.render_widget(table, inner);
}
