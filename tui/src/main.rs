//! `emoe`: the operator console. With no arguments it starts an embedded agent (host backend,
//! 8 devices, tiny-moe, dp2tp2ep4 on devices 0–3, light synthetic traffic) and the console on it;
//! `--agent` (repeatable) or `--inventory` watch running agents instead.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use emoe_agent::cli::NodeArgs;
use emoe_agent::daemon::client::AgentAddr;
use emoe_agent::daemon::host::Embedded;
use emoe_tui::app::{App, View};
use emoe_tui::config;
use emoe_tui::conn::{self, ConnOptions};
use emoe_tui::event_loop::{self, LoopOptions};
use emoe_tui::model::{Cluster, NodeView};

#[derive(Debug, Parser)]
#[command(
    name = "emoe",
    version,
    about = "ElasticMoE console. With no arguments: an embedded agent on the host backend \
             (8 devices, tiny-moe, dp2tp2ep4 on devices 0-3, light traffic) and the console on it."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// An agent to watch: unix:PATH, http://HOST:PORT or ssh://[USER@]HOST[:PORT]. Repeatable.
    #[arg(long, value_name = "ADDR")]
    agent: Vec<AgentAddr>,
    /// A TOML file listing the agents to watch ([[nodes]] addr = "…").
    #[arg(long, value_name = "FILE", conflicts_with = "agent")]
    inventory: Option<PathBuf>,
    /// Hide and refuse every action that changes an agent (scale, cancel, rebalance).
    #[arg(long)]
    readonly: bool,
    /// Draw with plain ASCII: no box drawing, blocks or braille.
    #[arg(long)]
    ascii: bool,
    /// Theme: dark, light, mono, high-contrast (default from config.toml, else dark).
    #[arg(long, value_parser = theme_name)]
    theme: Option<String>,
    /// Keymap: default or vim (default from config.toml, else default).
    #[arg(long, value_parser = keymap_name)]
    keymap: Option<String>,
    /// Colours: auto, truecolor, 256, 16 or none (auto reads NO_COLOR, COLORTERM and TERM).
    #[arg(long)]
    colors: Option<config::ColorMode>,
    /// Where keymap.toml, theme.toml and config.toml are (default: $EMOE_CONFIG_DIR, else the
    /// platform config dir, e.g. ~/.config/elasticmoe).
    #[arg(long, value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// The ssh program for ssh:// agents (extra words are passed to it).
    #[arg(long, default_value = "ssh")]
    ssh_command: String,
    /// The bearer token for mutating calls (the file's first line).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Embedded agent: synthetic traffic in requests/s (0 for none).
    #[arg(long, default_value_t = 2.0)]
    traffic: f64,
    /// Print one frame of the view as text once every node has reported (or --wait passed:
    /// exit 1), then exit.
    #[arg(long)]
    once: bool,
    /// How long --once waits for every node to report.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// The view to open: overview, memory, placement, operations, serving, events.
    #[arg(long, default_value = "overview")]
    view: String,
    /// The frame size for --once, WIDTHxHEIGHT.
    #[arg(long, default_value = "120x40")]
    size: String,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The config files: where they are, what is in effect, whether they are valid.
    Config {
        #[command(subcommand)]
        cmd: config::ConfigCmd,
    },
    /// Measure the console: frame render time for a modeled cluster, and idle CPU.
    Bench(emoe_tui::bench::BenchArgs),
}

/// A built-in name among `names`, or an error listing them (clap exits 2 naming the flag).
fn builtin_name(kind: &str, names: &[&str], s: &str) -> Result<String, String> {
    if names.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{}` is not a {kind}: use {}",
            emoe_core::echo::echo(s),
            names.join(", ")
        ))
    }
}

fn theme_name(s: &str) -> Result<String, String> {
    builtin_name("theme", config::Theme::NAMES, s)
}

fn keymap_name(s: &str) -> Result<String, String> {
    builtin_name("keymap", config::Keymap::NAMES, s)
}

fn parse_view(s: &str) -> Result<View, String> {
    View::ALL
        .into_iter()
        .find(|v| v.title().eq_ignore_ascii_case(s) || (s == "ops" && *v == View::Operations))
        .ok_or_else(|| {
            format!("--view {s}: use overview, memory, placement, operations, serving or events")
        })
}

fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let err = || format!("--size {s}: use WIDTHxHEIGHT, e.g. 120x40 (at least 40x10)");
    let (w, h) = s.split_once('x').ok_or_else(err)?;
    let w: u16 = w.trim().parse().map_err(|_| err())?;
    let h: u16 = h.trim().parse().map_err(|_| err())?;
    if w < 40 || h < 10 {
        return Err(err());
    }
    Ok((w, h))
}

fn fail(msg: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("emoe: {msg}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli: Cli = emoe_agent::cli::parse_or_exit();
    let load = config::LoadOptions {
        config_dir: cli.config_dir.clone(),
        keymap: cli.keymap.clone(),
        theme: cli.theme.clone(),
        ascii: cli.ascii.then_some(true),
        colors: cli.colors,
    };
    match &cli.command {
        Some(Cmd::Config { cmd }) => return config::run_config_cmd(cmd, &load),
        Some(Cmd::Bench(a)) => return emoe_tui::bench::run(a),
        None => {}
    }
    let view = match parse_view(&cli.view) {
        Ok(v) => v,
        Err(e) => return fail(e, 2),
    };
    let size = match parse_size(&cli.size) {
        Ok(s) => s,
        Err(e) => return fail(e, 2),
    };
    if !(cli.traffic.is_finite() && cli.traffic >= 0.0) {
        return fail(
            format!("--traffic {}: must be ≥ 0 requests/s", cli.traffic),
            2,
        );
    }
    let settings = config::load(&load);
    let token = match &cli.token_file {
        None => None,
        Some(p) => match emoe_agent::cli::read_token(p) {
            Ok(t) => Some(t),
            Err(e) => return fail(&e, e.code),
        },
    };
    let mut addrs: Vec<AgentAddr> = cli.agent.clone();
    let mut names: Vec<Option<String>> = vec![None; addrs.len()];
    if let Some(inv) = &cli.inventory {
        match emoe_tui::inventory::load(inv) {
            Ok(nodes) => {
                addrs = nodes.iter().map(|n| n.addr.clone()).collect();
                names = nodes.into_iter().map(|n| n.name).collect();
            }
            Err(e) => return fail(e, 2),
        }
    }
    let tty = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if !cli.once && !tty {
        return fail(
            "the console needs a terminal; for a text frame use `emoe --once`, for JSON \
             `emoe-agent status --json`",
            2,
        );
    }
    // The embedded default: an agent in this process on a private socket.
    let mut embedded = None;
    let mut labels = Vec::new();
    if addrs.is_empty() {
        eprintln!("emoe: starting the embedded agent…");
        let tick = Duration::from_millis(250);
        let traffic = (cli.traffic > 0.0).then_some(cli.traffic);
        match Embedded::start(&cli.node.options(), traffic, tick, cli.readonly) {
            Ok(e) => {
                addrs.push(e.addr());
                labels.push("embedded".to_string());
                names.push(None);
                embedded = Some(e);
            }
            Err(e) => {
                eprintln!("emoe: {e}");
                return e.exit_code();
            }
        }
    } else {
        labels = addrs.iter().map(|a| a.to_string()).collect();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e, 1),
    };
    let opts = ConnOptions {
        token,
        ssh_command: cli.ssh_command.clone(),
    };
    let code = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let cmds: Vec<_> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| conn::spawn(i, a.clone(), opts.clone(), tx.clone()))
            .collect();
        drop(tx);
        let cluster = Cluster {
            nodes: labels
                .into_iter()
                .zip(names)
                .map(|(addr, label)| NodeView {
                    label,
                    ..NodeView::new(addr)
                })
                .collect(),
        };
        let mut app = App::new(cluster, settings.clone(), cli.readonly);
        app.view = view;
        if cli.once {
            return once(&mut app, &mut rx, size, cli.wait).await;
        }
        let mut guard = match emoe_tui::term::Guard::enter() {
            Ok(g) => g,
            Err(e) => return fail(format!("cannot set up the terminal: {e}"), 1),
        };
        let mut input = crossterm::event::EventStream::new();
        let r = event_loop::run(
            &mut guard.terminal,
            &mut app,
            &mut rx,
            &cmds,
            &mut input,
            LoopOptions {
                tick: settings.tick,
                synchronized: true,
            },
        )
        .await;
        drop(guard);
        match r {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(e, 1),
        }
    });
    drop(embedded);
    code
}

/// Wait until every node has sent its state (or `wait`), then print one frame as text.
async fn once(
    app: &mut App,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<conn::Msg>,
    (w, h): (u16, u16),
    wait: Duration,
) -> ExitCode {
    let deadline = tokio::time::Instant::now() + wait;
    let stop = emoe_tui::term::stop_signal();
    tokio::pin!(stop);
    while app.cluster.nodes.iter().any(|n| n.snap.is_none()) {
        tokio::select! {
            m = tokio::time::timeout_at(deadline, rx.recv()) => match m {
                Ok(Some(m)) => app.on_msg(m),
                _ => break,
            },
            // Stop waiting, print what is known, and let main remove the embedded socket.
            _ = &mut stop => break,
        }
    }
    let text = emoe_tui::ui::render_text(app, w, h);
    print!("{text}");
    if app.cluster.nodes.iter().all(|n| n.snap.is_some()) {
        ExitCode::SUCCESS
    } else {
        fail(
            format!(
                "some nodes did not report within --wait {} (marked stale above)",
                humantime::format_duration(wait)
            ),
            1,
        )
    }
}
