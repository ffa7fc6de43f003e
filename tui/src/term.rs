//! The real terminal: raw mode, the alternate screen and mouse capture on the way in; all of it
//! undone on the way out, on panic, and on SIGTERM (the loop ends and the guard drops).

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
