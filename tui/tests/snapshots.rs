//! Every view and overlay rendered from fixed states (a modeled cluster, `fixture`) at 80×24 and
//! 160×48, compared with the stored snapshots (`tui/tests/snapshots/`). Review changes with
//! `INSTA_UPDATE=always cargo test -p emoe-tui --test snapshots` and `git diff`.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use emoe_agent::daemon::proto;
use emoe_tui::app::{App, Popup, View};
use emoe_tui::config::Settings;
use emoe_tui::conn::{Msg, NodeCmd, NodeMsg, Reply};
use emoe_tui::fixture::{self, Shape};
use emoe_tui::ui::render_text;

const SIZES: [(u16, u16); 2] = [(80, 24), (160, 48)];

fn app(scaling: bool) -> App {
    let shape = Shape {
        scaling,
        ..Shape::SMALL
    };
    App::new(fixture::cluster(&shape), Settings::default(), false)
}

fn key(app: &mut App, c: char) {
    app.on_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
}

#[test]
fn every_view_at_both_sizes() {
    for scaling in [false, true] {
        let mut a = app(scaling);
        for v in View::ALL {
            a.view = v;
            for (w, h) in SIZES {
                let name = format!(
                    "{}_{}_{w}x{h}",
                    v.title().to_lowercase(),
                    if scaling { "scaling" } else { "idle" }
                );
                insta::assert_snapshot!(name, render_text(&a, w, h));
            }
        }
    }
}

#[test]
fn ascii_mode_draws_no_box_or_block_characters() {
    let mut a = app(true);
    a.settings.ascii = true;
    for v in View::ALL {
        a.view = v;
        let text = render_text(&a, 80, 24);
        assert!(text.is_ascii(), "{v:?}: non-ASCII glyph in\n{text}");
        if matches!(v, View::Overview | View::Memory) {
            insta::assert_snapshot!(format!("ascii_{}", v.title().to_lowercase()), text);
        }
    }
}

/// A plan reply like the agent's for the fixture's node 0.
fn plan_reply() -> proto::PlanReply {
    proto::PlanReply {
        from: "dp2tp2ep4".into(),
        to: "dp3tp2ep6".into(),
        devices_added: vec!["0/4".into(), "0/5".into()],
        devices_removed: vec![],
        zero_copy_bytes: 3 << 30,
        p2p_bytes: 640 << 20,
        experts_moved: 20,
        predicted_seconds: 0.08,
        predicted_peak_bytes: (0..6).map(|i| (format!("0/{i}"), 700u64 << 20)).collect(),
        steps: 42,
    }
}

#[test]
fn scaling_flow_overlays() {
    let mut a = app(false);
    // `+` plans one TP group more: the agent is asked for the plan.
    key(&mut a, '+');
    assert_eq!(a.outbox, vec![(0, NodeCmd::Plan("dp3tp2ep6".into()))]);
    a.outbox.clear();
    for (w, h) in SIZES {
        insta::assert_snapshot!(format!("plan_waiting_{w}x{h}"), render_text(&a, w, h));
    }
    a.on_msg(Msg {
        node: 0,
        body: NodeMsg::Reply(Reply::Plan {
            to: "dp3tp2ep6".into(),
            result: Ok(plan_reply()),
        }),
    });
    for (w, h) in SIZES {
        insta::assert_snapshot!(format!("plan_preview_{w}x{h}"), render_text(&a, w, h));
    }
    // Confirm the plan: the confirm dialog; confirm again: the scale command goes out.
    a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert!(matches!(a.popup, Some(Popup::Confirm { .. })));
    assert!(a.outbox.is_empty(), "nothing is sent before the confirm");
    for (w, h) in SIZES {
        insta::assert_snapshot!(format!("confirm_{w}x{h}"), render_text(&a, w, h));
    }
    key(&mut a, 'y');
    assert_eq!(a.outbox, vec![(0, NodeCmd::Scale("dp3tp2ep6".into()))]);
    assert!(a.popup.is_none());
}

#[test]
fn a_refused_plan_shows_the_rule() {
    let mut a = app(false);
    key(&mut a, 's');
    // The input starts at the active config; type a bad one.
    for _ in 0..12 {
        a.on_key(KeyEvent::new(KeyCode::Backspace, KeyModifiers::NONE));
    }
    for c in "dp3tp3ep9".chars() {
        key(&mut a, c);
    }
    a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert_eq!(a.outbox, vec![(0, NodeCmd::Plan("dp3tp3ep9".into()))]);
    a.on_msg(Msg {
        node: 0,
        body: NodeMsg::Reply(Reply::Plan {
            to: "dp3tp3ep9".into(),
            result: Err(
                "TP changed: the target has TP 3, the deployment TP 2 (TP is fixed)".into(),
            ),
        }),
    });
    insta::assert_snapshot!("plan_refused_80x24", render_text(&a, 80, 24));
    // Confirming a refused plan only closes it.
    a.outbox.clear();
    a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert!(a.popup.is_none());
    assert!(a.outbox.is_empty());

    // A syntax error is caught before asking the agent.
    key(&mut a, 's');
    for c in "x".chars() {
        key(&mut a, c);
    }
    a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert!(a.outbox.is_empty());
    insta::assert_snapshot!("target_syntax_error_80x24", render_text(&a, 80, 24));
}

#[test]
fn help_palette_and_filter() {
    let mut a = app(true);
    key(&mut a, '?');
    for (w, h) in SIZES {
        insta::assert_snapshot!(format!("help_{w}x{h}"), render_text(&a, w, h));
    }
    a.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    assert!(a.popup.is_none());
    key(&mut a, ':');
    for c in "view".chars() {
        key(&mut a, c);
    }
    insta::assert_snapshot!("palette_view_80x24", render_text(&a, 80, 24));
    for c in " mem".chars() {
        key(&mut a, c);
    }
    a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert_eq!(a.view, View::Memory);
    // `/` filters the regions of the selected device.
    key(&mut a, '/');
    for c in "kv".chars() {
        key(&mut a, c);
    }
    a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    insta::assert_snapshot!("memory_filtered_kv_80x24", render_text(&a, 80, 24));
}

#[test]
fn readonly_hides_and_refuses_mutating_actions() {
    let shape = Shape::SMALL;
    let mut a = App::new(fixture::cluster(&shape), Settings::default(), true);
    let text = render_text(&a, 160, 48);
    assert!(text.contains("READ-ONLY"), "{text}");
    assert!(!text.contains("TP group"), "{text}");
    key(&mut a, '?');
    let help = render_text(&a, 160, 48);
    assert!(!help.contains("scale."), "{help}");
    a.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    key(&mut a, '+');
    assert!(a.outbox.is_empty());
    assert!(a.popup.is_none());
    let text = render_text(&a, 160, 48);
    assert!(text.contains("read-only console"), "{text}");
    // The palette neither lists nor runs them.
    assert!(a.palette_items("scale").is_empty());
    key(&mut a, ':');
    for c in "scale dp3tp2ep6".chars() {
        key(&mut a, c);
    }
    a.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert!(a.outbox.is_empty());
}

#[test]
fn a_stale_node_is_marked_and_cannot_be_scaled() {
    let mut a = app(false);
    key(&mut a, ']');
    assert_eq!(a.node, 1);
    key(&mut a, '+');
    assert!(a.outbox.is_empty());
    let text = render_text(&a, 80, 24);
    assert!(text.contains("stale"), "{text}");
    assert!(text.contains("not connected"), "{text}");
}

#[test]
fn without_colours_placement_names_devices_by_glyph() {
    let mut a = app(true);
    a.settings.theme = emoe_tui::config::Theme::builtin("mono").unwrap();
    a.view = View::Placement;
    insta::assert_snapshot!("placement_mono_80x24", render_text(&a, 80, 24));
}

#[test]
fn serving_shows_traffic_sources_and_the_autoscaler() {
    let mut a = app(false);
    a.view = View::Serving;
    let text = render_text(&a, 80, 24);
    for want in [
        "Serving on node-00 (http 127.0.0.1:8000)",
        "HTTP 1.50 req/s, 5 in flight, 2 refused",
        "synthetic 1.00 req/s",
        "slo, cooldown 19s left, 97% attained (threshold 90%), DP 1-4",
        "TTFT ≤ 500.0 ms, TPOT ≤ 100.0 ms over 30s",
        "12s ago: scale up dp2tp2ep4 -> dp3tp2ep6",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // A node without an HTTP endpoint or autoscaler says so in one line each.
    key(&mut a, ']');
    let text = render_text(&a, 80, 24);
    insta::assert_snapshot!("serving_plain_node_80x24", text);
    assert!(
        text.contains("no HTTP endpoint   synthetic 2.50 req/s"),
        "{text}"
    );
    assert!(text.contains("autoscaler off"), "{text}");
    assert!(!text.contains("decided"), "{text}");
    assert!(!text.contains("(http "), "{text}");
}

#[test]
fn the_node_table_shows_each_http_endpoint() {
    let a = app(false);
    let text = render_text(&a, 160, 48);
    let row = |name: &str| {
        text.lines()
            .find(|l| l.contains(name) && l.contains("dp2tp2ep4"))
            .unwrap_or_else(|| panic!("no row for {name} in\n{text}"))
            .to_string()
    };
    assert!(row("node-00").contains("http 127.0.0.1:8000"), "{text}");
    assert!(!row("node-01").contains("http "), "{text}");
    // Narrower (`--once`'s default 120 columns, the 80-column console), the operation keeps its
    // column and the selected node's block title carries the endpoint; at 120 the row's link
    // cell has the port.
    for (w, h) in [(120, 40), (80, 24)] {
        let text = render_text(&a, w, h);
        assert!(
            text.contains("Devices of node-00 (http 127.0.0.1:8000)"),
            "{text}"
        );
        if w == 120 {
            assert!(text.contains("Operation"), "{text}");
            // The node row says where the endpoint listens, in its link cell.
            let row = text
                .lines()
                .find(|l| l.contains("node-00") && l.contains("dp2tp2ep4"))
                .unwrap_or_else(|| panic!("no row for node-00 in\n{text}"));
            assert!(row.contains("live http:8000"), "{row}");
        }
    }
}

#[test]
fn an_autoscaler_before_its_first_decision() {
    let mut a = app(false);
    a.view = View::Serving;
    let snap = a.cluster.nodes[0].snap.as_mut().unwrap();
    snap.autoscaler = Some(proto::Autoscaler {
        mode: "slo".into(),
        attainment: None,
        threshold: 0.95,
        ttft_slo_s: 0.2,
        tpot_slo_s: 0.05,
        window_s: 60.0,
        min_dp: 2,
        max_dp: 8,
        state: "watching".into(),
        ..Default::default()
    });
    let text = render_text(&a, 80, 24);
    assert!(
        text.contains("slo, watching, none finished in window (threshold 95%), DP 2-8"),
        "{text}"
    );
    assert!(text.contains("decided     none yet"), "{text}");
}
