//! Keys and the mouse drive the console through the active keymap: clicks on tabs and rows,
//! the wheel, the vim keymap's navigation, and refusals that change nothing.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use emoe_tui::app::{App, View};
use emoe_tui::config::{Keymap, Settings};
use emoe_tui::fixture::{self, Shape};

fn app() -> App {
    App::new(fixture::cluster(&Shape::SMALL), Settings::default(), false)
}

/// Draw once so the app knows where tabs and rows are.
fn draw(app: &mut App, w: u16, h: u16) {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    let mut hits = None;
    t.draw(|f| hits = Some(emoe_tui::ui::draw(f, app))).unwrap();
    app.hits = hits.unwrap();
}

fn mouse(kind: MouseEventKind, column: u16, row: u16) -> MouseEvent {
    MouseEvent {
        kind,
        column,
        row,
        modifiers: KeyModifiers::NONE,
    }
}

#[test]
fn clicking_a_tab_opens_its_view_and_a_row_selects_it() {
    let mut a = app();
    draw(&mut a, 160, 48);
    let (r, v) = a.hits.tabs[2];
    assert_eq!(v, View::Placement);
    a.on_mouse(mouse(MouseEventKind::Down(MouseButton::Left), r.x + 1, r.y));
    assert_eq!(a.view, View::Placement);

    // Back to the overview; click the second node's row.
    a.on_key(KeyEvent::new(KeyCode::Char('1'), KeyModifiers::NONE));
    draw(&mut a, 160, 48);
    let (list, first) = a.hits.list.expect("the node list is clickable");
    assert_eq!(first, 0);
    a.on_mouse(mouse(
        MouseEventKind::Down(MouseButton::Left),
        list.x + 2,
        list.y + 1,
    ));
    assert_eq!(a.node, 1);
    // The wheel moves the selection.
    a.on_mouse(mouse(MouseEventKind::ScrollUp, list.x + 2, list.y));
    assert_eq!(a.node, 0);
}

#[test]
fn the_vim_keymap_navigates() {
    let mut a = App::new(
        fixture::cluster(&Shape::SMALL),
        Settings {
            keymap: Keymap::builtin("vim").unwrap(),
            ..Settings::default()
        },
        false,
    );
    a.on_key(KeyEvent::new(KeyCode::Char('2'), KeyModifiers::NONE));
    assert_eq!(a.view, View::Memory);
    a.on_key(KeyEvent::new(KeyCode::Char('j'), KeyModifiers::NONE));
    a.on_key(KeyEvent::new(KeyCode::Char('j'), KeyModifiers::NONE));
    assert_eq!(a.row(), 2);
    a.on_key(KeyEvent::new(KeyCode::Char('k'), KeyModifiers::NONE));
    assert_eq!(a.row(), 1);
    a.on_key(KeyEvent::new(KeyCode::Char('G'), KeyModifiers::SHIFT));
    assert_eq!(a.row(), 7, "G goes to the last device");
}

#[test]
fn unbound_keys_and_keys_in_text_inputs_change_nothing_else() {
    let mut a = app();
    a.on_key(KeyEvent::new(KeyCode::F(12), KeyModifiers::NONE));
    assert_eq!(a.view, View::Overview);
    assert!(a.popup.is_none());
    // In the filter, digits are text, not views.
    a.on_key(KeyEvent::new(KeyCode::Char('/'), KeyModifiers::NONE));
    a.on_key(KeyEvent::new(KeyCode::Char('2'), KeyModifiers::NONE));
    assert_eq!(a.view, View::Overview);
    assert_eq!(a.filter, "2");
    a.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    assert!(a.filter.is_empty());
    // Quit from anywhere with the keymap's key.
    a.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(a.quit);
}

#[test]
fn cancel_targets_the_running_operation_and_rebalance_asks_first() {
    use emoe_tui::app::Popup;
    use emoe_tui::conn::NodeCmd;
    let shape = Shape {
        scaling: true,
        ..Shape::SMALL
    };
    let mut a = App::new(fixture::cluster(&shape), Settings::default(), false);
    // Node 0 has operation 2 preparing: `c` cancels it, no dialog (a cancel rolls back).
    a.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::NONE));
    assert_eq!(a.outbox, vec![(0, NodeCmd::Cancel(2))]);
    a.outbox.clear();
    // Rebalance goes through the confirm dialog; `n` sends nothing.
    a.on_key(KeyEvent::new(KeyCode::Char('r'), KeyModifiers::NONE));
    assert!(matches!(a.popup, Some(Popup::Confirm { .. })));
    a.on_key(KeyEvent::new(KeyCode::Char('n'), KeyModifiers::NONE));
    assert!(a.popup.is_none());
    assert!(a.outbox.is_empty());
    a.on_key(KeyEvent::new(KeyCode::Char('r'), KeyModifiers::NONE));
    a.on_key(KeyEvent::new(KeyCode::Char('y'), KeyModifiers::NONE));
    assert_eq!(a.outbox, vec![(0, NodeCmd::Rebalance(0))]);
    // Without a running operation, `c` says so and sends nothing.
    let mut idle = app();
    idle.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::NONE));
    assert!(idle.outbox.is_empty());
    assert!(idle.toast.as_ref().is_some_and(|t| t.error));
}
