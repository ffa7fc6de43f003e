//! Events of every node, oldest first, the newest at the bottom; `/` filters by text.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::Ctx;
use crate::app::Hits;

pub fn draw(f: &mut Frame, area: Rect, c: &Ctx, hits: &mut Hits) {
    let t = c.theme();
    let many = c.app.cluster.nodes.len() > 1;
    let mut all: Vec<(f64, String, &str, &str)> = Vec::new();
    for n in &c.app.cluster.nodes {
        let Some(s) = n.snap.as_ref() else { continue };
        for e in &s.events {
            all.push((
                e.ts,
                n.name().to_string(),
                e.kind.as_str(),
                e.message.as_str(),
            ));
        }
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let all: Vec<_> = all
        .into_iter()
        .filter(|(_, node, kind, msg)| c.keep(&format!("{node} {kind} {msg}")))
        .collect();
    let block = c.block(format!(" Events ({}) ", all.len()));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let h = inner.height as usize;
    // The row counts back from the newest: 0 shows the tail.
    let back = c.app.row().min(all.len().saturating_sub(h));
    let end = all.len() - back;
    let start = end.saturating_sub(h);
    let lines: Vec<Line> = all[start..end]
        .iter()
        .map(|(ts, node, kind, msg)| {
            let st = match *kind {
                "error" | "failed" => t.error,
                "warn" | "cancelled" => t.warn,
                "scale" | "phase" | "done" => t.ok,
                _ => t.text,
            };
            let mut spans = vec![Span::styled(format!("{ts:>9.2}s "), t.dim)];
            if many {
                spans.push(Span::styled(format!("{node} "), t.header));
            }
            spans.push(Span::styled(format!("{kind:<9} "), st));
            spans.push(Span::raw(msg.to_string()));
            Line::from(spans)
        })
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
    let _ = hits;
}
