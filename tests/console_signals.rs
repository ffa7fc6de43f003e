//! `emoe` on the embedded default, stopped by a signal in a real terminal (tmux): SIGINT and
//! SIGHUP end it as a quit does — the terminal restored and the embedded agent's private socket
//! directory removed.

mod common;

use std::path::Path;
use std::process::Command;

use common::tmux::{Tmux, tmux_or_skip};

fn quoted(p: &Path) -> String {
    format!("'{}'", p.display())
}

/// The embedded agents' socket directories under `tmp`.
fn embedded_dirs(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("emoe-embedded-"))
                .collect()
        })
        .unwrap_or_default()
}

fn stops_on(signal: &str) {
    let test = format!("embedded_console_stops_on_{signal}");
    if !tmux_or_skip(&test) {
        return;
    }
    let emoe = common::bin("emoe");
    let cache = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("emoe.pid");
    let tmux = Tmux::new(&format!("sig{}", signal.to_lowercase()));
    let cmd = format!(
        "EMOE_CACHE_DIR={cache} EMOE_CONFIG_DIR={cache}/config TMPDIR={tmp} TERM=xterm-256color \
         sh -c 'echo $$ > {pidfile}; exec {emoe} --model micro-moe --hbm 256MiB --kv-tokens 256'; \
         echo EMOE-EXITED $?; sleep 60",
        cache = quoted(cache.path()),
        tmp = quoted(tmp.path()),
        pidfile = quoted(&pidfile),
        emoe = quoted(&emoe),
    );
    tmux.start(&cmd, 120, 40);
    tmux.wait_until("the embedded node live", 120, |s| s.contains("● live"));
    let pid = std::fs::read_to_string(&pidfile).expect("emoe's pid");
    let pid = pid.trim();
    assert_eq!(
        embedded_dirs(tmp.path()).len(),
        1,
        "the embedded agent's socket dir"
    );

    let st = Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{signal} {pid}");
    let s = tmux.wait_for("EMOE-EXITED", 30);
    assert!(s.contains("EMOE-EXITED 0"), "{s}");
    let alt = tmux.run(&["display-message", "-p", "-t", "emoe", "#{alternate_on}"]);
    assert_eq!(
        alt.trim(),
        "0",
        "alternate screen still on after SIG{signal}"
    );
    // emoe removed the directory before it exited.
    assert_eq!(
        embedded_dirs(tmp.path()),
        Vec::<String>::new(),
        "the embedded socket dir is left"
    );
}

#[test]
fn embedded_console_stops_on_sigint_restoring_the_terminal_and_removing_its_socket() {
    stops_on("INT");
}

#[test]
fn embedded_console_stops_on_sighup_restoring_the_terminal_and_removing_its_socket() {
    stops_on("HUP");
}
