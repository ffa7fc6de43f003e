//! The event loop: input, agent messages, a tick and stop signals in; a frame out only when something
//! changed (or on the tick), so an idle console costs next to nothing.

use std::io;
use std::time::Duration;

use crossterm::event::{Event, KeyEventKind};
use ratatui::Terminal;
use ratatui::backend::Backend;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_stream::{Stream, StreamExt};

use crate::app::App;
use crate::conn::{Msg, NodeCmd};

/// How the loop draws: with synchronized-output markers around each frame (real terminals).
#[derive(Clone, Copy, Debug)]
pub struct LoopOptions {
    pub tick: Duration,
    pub synchronized: bool,
}

/// Frames drawn and agent messages handled (the benchmark reports them).
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopStats {
    pub frames: u64,
    pub messages: u64,
}

fn draw<B: Backend>(t: &mut Terminal<B>, app: &mut App, sync: bool) -> io::Result<()>
where
    B::Error: std::error::Error + Send + Sync + 'static,
{
    use crossterm::terminal::{BeginSynchronizedUpdate, EndSynchronizedUpdate};
    if sync {
        crossterm::execute!(io::stdout(), BeginSynchronizedUpdate)?;
    }
    let mut hits = None;
    t.draw(|f| hits = Some(crate::ui::draw(f, app)))
        .map_err(io::Error::other)?;
    if let Some(h) = hits {
        app.hits = h;
    }
    if sync {
        crossterm::execute!(io::stdout(), EndSynchronizedUpdate)?;
    }
    Ok(())
}

/// Run until the operator quits, the input ends, or a stop signal (SIGTERM, SIGINT, SIGHUP).
pub async fn run<B, S>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    msgs: &mut UnboundedReceiver<Msg>,
    cmds: &[UnboundedSender<NodeCmd>],
    input: &mut S,
    o: LoopOptions,
) -> io::Result<LoopStats>
where
    B: Backend,
    B::Error: std::error::Error + Send + Sync + 'static,
    S: Stream<Item = io::Result<Event>> + Unpin,
{
    let mut stats = LoopStats::default();
    let mut ticker = tokio::time::interval(o.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = crate::term::stop_signal();
    tokio::pin!(stop);
    let mut dirty = true;
    loop {
        for (node, cmd) in app.outbox.drain(..) {
            if let Some(tx) = cmds.get(node) {
                let _ = tx.send(cmd);
            }
        }
        if app.quit {
            break;
        }
        if dirty {
            draw(terminal, app, o.synchronized)?;
            stats.frames += 1;
            dirty = false;
        }
        tokio::select! {
            biased;
            ev = input.next() => match ev {
                None => break,
                Some(Err(e)) => return Err(e),
                Some(Ok(Event::Key(k))) if k.kind != KeyEventKind::Release => {
                    app.on_key(k);
                    dirty = true;
                }
                Some(Ok(Event::Mouse(m))) => {
                    app.on_mouse(m);
                    dirty = true;
                }
                Some(Ok(Event::Resize(..))) => dirty = true,
                Some(Ok(_)) => {}
            },
            m = msgs.recv() => {
                let Some(m) = m else { break };
                app.on_msg(m);
                stats.messages += 1;
                // Coalesce a burst of updates into one frame.
                while let Ok(m) = msgs.try_recv() {
                    app.on_msg(m);
                    stats.messages += 1;
                }
                dirty = true;
            }
            _ = ticker.tick() => {
                app.tick();
                dirty = true;
            }
            _ = &mut stop => break,
        }
    }
    Ok(stats)
}
