//! `emoe bench`: frame render time for a modeled cluster (every view, p50 and p99 in one run)
//! and the console's idle CPU (the real event loop with nothing changing), as JSON.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::json;

use crate::app::{App, View};
use crate::config::Settings;
use crate::event_loop::{self, LoopOptions};
use crate::fixture::{self, Shape};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Nodes of the modeled cluster.
    #[arg(long, default_value_t = 64)]
    pub nodes: usize,
    /// Devices per node.
    #[arg(long, default_value_t = 16)]
    pub devices: usize,
    /// Frames per view.
    #[arg(long, default_value_t = 200)]
    pub frames: usize,
    /// Terminal size, WIDTHxHEIGHT.
    #[arg(long, default_value = "160x48")]
    pub size: String,
    /// How long to measure the idle console.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// JSON on stdout (the default output; kept for symmetry with emoe-agent bench).
    #[arg(long)]
    pub json: bool,
}

/// CPU seconds this process has used (all threads, user + system), at nanosecond resolution.
fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

pub fn run(a: &BenchArgs) -> ExitCode {
    let Some((w, h)) = a
        .size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u16>().ok()?, h.parse::<u16>().ok()?)))
        .filter(|(w, h)| *w >= 40 && *h >= 10)
    else {
        eprintln!(
            "emoe bench: --size {}: use WIDTHxHEIGHT, at least 40x10",
            a.size
        );
        return ExitCode::from(2);
    };
    if a.nodes == 0 || a.devices < 2 || a.frames == 0 {
        eprintln!("emoe bench: --nodes ≥ 1, --devices ≥ 2 and --frames ≥ 1");
        return ExitCode::from(2);
    }
    let shape = Shape {
        nodes: a.nodes,
        devices: a.devices,
        ..Shape::LARGE
    };
    let t0 = Instant::now();
    let cluster = fixture::cluster(&shape);
    let build_s = t0.elapsed().as_secs_f64();
    let mut app = App::new(cluster, Settings::default(), false);
    let mut term = match Terminal::new(TestBackend::new(w, h)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("emoe bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut all = Vec::new();
    let mut views = serde_json::Map::new();
    for v in View::ALL {
        app.view = v;
        let mut times = Vec::with_capacity(a.frames);
        for k in 0..a.frames {
            // Move the selection so consecutive frames differ, as they do while operating.
            app.node = k % a.nodes;
            let t = Instant::now();
            let _ = term.draw(|f| {
                crate::ui::draw(f, &app);
            });
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        views.insert(
            v.title().to_lowercase(),
            json!({"p50_ms": pct(&times, 0.5), "p99_ms": pct(&times, 0.99), "max_ms": times.last()}),
        );
        all.extend(times);
    }
    all.sort_by(f64::total_cmp);
    let p99 = pct(&all, 0.99);

    // Idle: the real loop, no input, no agent messages, the default 1 s tick.
    app.view = View::Overview;
    app.node = 0;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("emoe bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let idle = a.idle;
    let (cpu, wall, stats) = rt.block_on(async {
        let (_tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // No input until `q` after the idle period.
        let (ktx, krx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            tokio::time::sleep(idle).await;
            let q = crossterm::event::KeyEvent::new(
                crossterm::event::KeyCode::Char('q'),
                crossterm::event::KeyModifiers::NONE,
            );
            let _ = ktx.send(Ok(crossterm::event::Event::Key(q))).await;
            std::future::pending::<()>().await;
        });
        let mut input = tokio_stream::wrappers::ReceiverStream::new(krx);
        let c0 = cpu_seconds();
        let w0 = Instant::now();
        let stats = event_loop::run(
            &mut term,
            &mut app,
            &mut rx,
            &[],
            &mut input,
            LoopOptions {
                tick: Duration::from_secs(1),
                synchronized: false,
            },
        )
        .await
        .ok();
        (cpu_seconds() - c0, w0.elapsed().as_secs_f64(), stats)
    });
    let out = json!({
        "bench": "render",
        "cluster": format!(
            "modeled: {} nodes x {} devices, {} layers x {} experts (synthetic state, no agents)",
            shape.nodes, shape.devices, shape.layers, shape.experts
        ),
        "size": format!("{w}x{h}"),
        "frames_per_view": a.frames,
        "fixture_build_s": build_s,
        "views": views,
        "p50_ms": pct(&all, 0.5),
        "p99_ms": p99,
        "target_p99_ms": 5.0,
        "meets_target": p99 <= 5.0,
        "idle": {
            "seconds": wall,
            "cpu_seconds": cpu,
            "cpu_percent": 100.0 * cpu / wall,
            "tick_s": 1.0,
            "frames": stats.map(|s| s.frames),
            "messages": stats.map(|s| s.messages),
        },
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    ExitCode::SUCCESS
}
