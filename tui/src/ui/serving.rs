//! Serving: per node, throughput, TTFT, TPOT and SLO attainment now and as sparklines over the
//! recent updates, the queue, where traffic comes from (HTTP clients or synthetic), what the SLO
//! autoscaler watches and last decided, and the instances with their load.

use emoe_agent::daemon::proto;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Sparkline, Table};

use super::{Ctx, fmt, http_label, with_http};
use crate::app::Hits;
use crate::model::Sample;

pub fn draw(f: &mut Frame, area: Rect, c: &Ctx, hits: &mut Hits) {
    let t = c.theme();
    let Some(n) = c.app.selected_node() else {
        return;
    };
    let inst_h = n.snap.as_ref().map_or(0, |s| s.instances.len()) as u16 + 3;
    let [charts, inst] =
        Layout::vertical([Constraint::Min(8), Constraint::Length(inst_h.max(4))]).areas(area);
    let block = c.block(format!(
        "{} ",
        with_http(format!(" Serving on {}", n.name()), n)
    ));
    let inner = block.inner(charts);
    f.render_widget(block, charts);
    let h: Vec<Sample> = n.history.iter().copied().collect();
    let last = h.last().copied().unwrap_or_default();
    let label_w = 24usize;
    let spark_w = (inner.width as usize).saturating_sub(label_w + 1).max(4);
    let series: [(&str, String, Vec<f64>); 6] = [
        (
            "tokens/s",
            format!("{:.1}", last.tokens_per_s),
            h.iter().map(|s| s.tokens_per_s).collect(),
        ),
        (
            "requests/s",
            format!("{:.2}", last.requests_per_s),
            h.iter().map(|s| s.requests_per_s).collect(),
        ),
        (
            "TTFT p50",
            fmt::ms(last.ttft_p50_s),
            h.iter().map(|s| s.ttft_p50_s).collect(),
        ),
        (
            "TPOT p50",
            fmt::ms(last.tpot_p50_s),
            h.iter().map(|s| s.tpot_p50_s).collect(),
        ),
        (
            "SLO attained",
            fmt::pct(last.slo),
            h.iter().map(|s| s.slo).collect(),
        ),
        (
            "queued+running",
            format!("{}+{}", last.queued, last.running),
            h.iter().map(|s| (s.queued + s.running) as f64).collect(),
        ),
    ];
    let mut footer = vec![Line::styled(
        format!(
            "TTFT p99 {}   TPOT p99 {}   {} samples",
            fmt::ms(last.ttft_p99_s),
            fmt::ms(last.tpot_p99_s),
            h.len()
        ),
        t.dim,
    )];
    if let Some(s) = n.snap.as_ref() {
        footer.push(traffic(c, s, http_label(n).is_some()));
        footer.extend(autoscaler(c, s));
    }
    let info_h = footer.len() as u16;
    let each = inner.height.saturating_sub(info_h) / series.len() as u16;
    if each >= 3 {
        // Room for charts: a label line and a multi-row sparkline per series.
        let mut rows: Vec<Constraint> = series.iter().map(|_| Constraint::Length(each)).collect();
        rows.push(Constraint::Length(info_h));
        let areas = Layout::vertical(rows).split(inner);
        for (i, (name, now, vals)) in series.iter().enumerate() {
            let [label, chart] =
                Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(areas[i]);
            f.render_widget(
                Paragraph::new(Line::from(vec![
                    Span::styled(format!("{name:<14} "), t.header),
                    Span::styled(now.clone(), t.text),
                ])),
                label,
            );
            // Scaled to the window's maximum; NaN (no SLO) draws nothing.
            let max = vals
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max);
            let start = vals.len().saturating_sub(chart.width as usize);
            let data: Vec<u64> = vals[start..]
                .iter()
                .map(|v| {
                    if v.is_finite() && max > 0.0 {
                        (v / max * 1000.0).round() as u64
                    } else {
                        0
                    }
                })
                .collect();
            f.render_widget(
                Sparkline::default()
                    .data(&data)
                    .max(1000)
                    .style(t.spark)
                    .bar_set(c.g.bars.clone()),
                chart,
            );
        }
        f.render_widget(Paragraph::new(footer), areas[series.len()]);
    } else {
        let mut lines = Vec::new();
        for (name, now, vals) in &series {
            lines.push(Line::from(vec![
                Span::styled(format!("{name:<14}"), t.header),
                Span::styled(format!("{now:>9} "), t.text),
                Span::styled(c.g.spark(vals, spark_w), t.spark),
            ]));
        }
        lines.extend(footer);
        f.render_widget(Paragraph::new(lines), inner);
    }

    let block = c.block(" Instances ");
    let inner = block.inner(inst);
    f.render_widget(block, inst);
    let Some(s) = n.snap.as_ref() else { return };
    let rows = s.instances.iter().map(|i| {
        let st = match i.state.as_str() {
            "active" => t.ok,
            "draining" => t.warn,
            _ => t.dim,
        };
        Row::new(vec![
            Cell::from(i.id.to_string()),
            Cell::from(i.config.clone()),
            Cell::from(Span::styled(i.state.clone(), st)),
            Cell::from(i.running.to_string()),
            Cell::from(format!("{:.1}", i.tokens_per_s)),
            Cell::from(i.devices.join(" ")),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Length(11),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Fill(1),
        ],
    )
    .header(Row::new(vec!["Id", "Config", "State", "Running", "tok/s", "Devices"]).style(t.header))
    .column_spacing(1);
    f.render_widget(table, inner);
    let _ = hits;
}

/// Where requests come from: HTTP clients (finished per second over the last 10 s, in flight,
/// refused since start) and synthetic traffic.
fn traffic(c: &Ctx, s: &proto::Snapshot, http: bool) -> Line<'static> {
    let t = c.theme();
    let v = s.serving.unwrap_or_default();
    let mut spans = vec![Span::styled(format!("{:<14}", "traffic"), t.header)];
    if http || v.http_finished > 0 || v.http_running > 0 || v.http_refused > 0 {
        spans.push(Span::styled(
            format!(
                "HTTP {:.2} req/s, {} in flight, ",
                v.http_requests_per_s, v.http_running
            ),
            t.text,
        ));
        spans.push(Span::styled(
            format!("{} refused", v.http_refused),
            if v.http_refused > 0 { t.warn } else { t.text },
        ));
    } else {
        spans.push(Span::styled("no HTTP endpoint", t.dim));
    }
    spans.push(Span::styled(
        format!("   synthetic {:.2} req/s", v.synthetic_requests_per_s),
        t.text,
    ));
    Line::from(spans)
}

/// The SLO autoscaler: mode and state, attainment against its threshold, the SLO it holds the
/// node to, the DP range, and its last decision with its age. One dim line when it is off.
fn autoscaler(c: &Ctx, s: &proto::Snapshot) -> Vec<Line<'static>> {
    let t = c.theme();
    let a = match &s.autoscaler {
        Some(a) if !a.mode.is_empty() && a.mode != "off" => a,
        _ => return vec![Line::styled("autoscaler off", t.dim)],
    };
    let le = if c.app.settings.ascii { "<=" } else { "≤" };
    let state_style = match a.state.as_str() {
        "watching" => t.ok,
        "scaling" => t.key,
        _ => t.warn,
    };
    let mut state = emoe_core::echo::echo(&a.state);
    if a.state == "cooldown" && a.cooldown_until > s.ts {
        state.push_str(&format!(" {} left", fmt::secs(a.cooldown_until - s.ts)));
    }
    let (attained, att_style) = match a.attainment {
        Some(x) if x.is_finite() => (
            format!("{} attained", fmt::pct(x)),
            if x < a.threshold { t.error } else { t.ok },
        ),
        _ => ("none finished in window".to_string(), t.dim),
    };
    let head = Line::from(vec![
        Span::styled(format!("{:<14}", "autoscaler"), t.header),
        Span::styled(format!("{}, ", emoe_core::echo::echo(&a.mode)), t.text),
        Span::styled(state, state_style),
        Span::styled(", ", t.text),
        Span::styled(attained, att_style),
        Span::styled(
            format!(
                " (threshold {}), DP {}-{}",
                fmt::pct(a.threshold),
                a.min_dp,
                a.max_dp
            ),
            t.text,
        ),
    ]);
    let slo = Line::from(vec![
        Span::styled(format!("{:<14}", "  SLO"), t.header),
        Span::styled(
            format!(
                "TTFT {le} {}, TPOT {le} {} over {}",
                fmt::ms(a.ttft_slo_s),
                fmt::ms(a.tpot_slo_s),
                fmt::secs(a.window_s)
            ),
            t.text,
        ),
    ]);
    let last = if a.last_decision.is_empty() {
        Span::styled("none yet", t.dim)
    } else {
        Span::styled(
            format!(
                "{} ago: {}",
                fmt::secs((s.ts - a.last_decision_ts).max(0.0)),
                emoe_core::echo::echo(&a.last_decision)
            ),
            t.text,
        )
    };
    let decision = Line::from(vec![
        Span::styled(format!("{:<14}", "  decided"), t.header),
        last,
    ]);
    vec![head, slo, decision]
}
