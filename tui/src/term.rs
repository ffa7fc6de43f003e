//! The real terminal: raw mode, the alternate screen and mouse capture on the way in; all of it
//! undone on the way out, on panic, and on SIGTERM, SIGINT or SIGHUP (the loop ends and the guard
//! drops).

use std::io;

use crossterm::event::{DisableMouseCapture, EnableMouseCapture};
use ratatui::DefaultTerminal;

/// Restores the terminal when dropped.
pub struct Guard {
    pub terminal: DefaultTerminal,
}

impl Guard {
    pub fn enter() -> io::Result<Self> {
        // ratatui::init installs a panic hook that restores the screen; chain one before it
        // that also releases the mouse.
        let terminal = ratatui::try_init()?;
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = crossterm::execute!(io::stdout(), DisableMouseCapture);
            prev(info);
        }));
        crossterm::execute!(io::stdout(), EnableMouseCapture)?;
        Ok(Self { terminal })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = crossterm::execute!(io::stdout(), DisableMouseCapture);
        ratatui::restore();
    }
}

/// Resolves when the process is asked to stop: SIGTERM, SIGINT (`kill -INT`; in raw mode Ctrl-C
/// arrives as a key instead) or SIGHUP (the terminal went away). Handling them, rather than
/// dying, lets the terminal be restored and the embedded agent's socket removed.
pub async fn stop_signal() {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    async fn recv(s: &mut Option<Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    tokio::select! {
        _ = recv(&mut term) => {}
        _ = recv(&mut int) => {}
        _ = recv(&mut hup) => {}
    }
}
