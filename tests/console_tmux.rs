//! The real `emoe` binary in a real terminal (tmux): launch on the embedded default, open the
//! memory map, plan and confirm a scale-up, see it complete in the operations view, quit, and
//! find the terminal restored (alternate screen off, the shell's output back). Skips when tmux
//! is not installed.

mod common;

use common::tmux::{Tmux, tmux_or_skip};

use std::path::Path;

#[test]
fn console_scales_up_from_the_keyboard_and_restores_the_terminal() {
    if !tmux_or_skip("console_scales_up_from_the_keyboard_and_restores_the_terminal") {
        return;
    }
    let emoe = common::bin("emoe");
    let cache = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    let tmux = Tmux::new("test");
    let cmd = format!(
        "EMOE_CACHE_DIR={} EMOE_CONFIG_DIR={} TERM=xterm-256color {}; echo EMOE-EXITED $?; sleep 60",
        cache.path().display(),
        config.path().display(),
        emoe.display()
    );
    assert!(Path::new(&emoe).exists());
    tmux.start(&cmd, 120, 40);

    // The embedded default comes up: the overview with its node live and dp2tp2ep4 active.
    tmux.wait_for("dp2tp2ep4", 120);
    tmux.wait_for("live", 60);
    // The memory map.
    tmux.keys(&["2"]);
    tmux.wait_for("Memory map of", 10);
    // Plan one TP group more; the preview, then the confirm dialog, then go.
    tmux.keys(&["+"]);
    tmux.wait_for("P2P copies", 30);
    tmux.keys(&["Enter"]);
    tmux.wait_for("yes, go", 10);
    tmux.keys(&["y"]);
    // The operations view shows it done, and the node now runs the new config.
    tmux.keys(&["4"]);
    tmux.wait_until("the operation's row with phase done", 120, |s| {
        s.lines()
            .any(|l| l.contains("dp2tp2ep4 → dp3tp2ep6") && l.contains(" done "))
    });
    tmux.keys(&["1"]);
    tmux.wait_for("dp3tp2ep6", 30);
    // Quit: the process exits 0 and the terminal is back to normal.
    tmux.keys(&["q"]);
    let s = tmux.wait_for("EMOE-EXITED", 90);
    assert!(s.contains("EMOE-EXITED 0"), "{s}");
    assert!(
        !s.contains("Memory map of"),
        "the console's screen is gone: {s}"
    );
    let alt = tmux.run(&["display-message", "-p", "-t", "emoe", "#{alternate_on}"]);
    assert_eq!(alt.trim(), "0", "alternate screen still on");
}
