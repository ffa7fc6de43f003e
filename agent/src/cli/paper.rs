//! `emoe-agent bench` (or `bench paper`): the paper's experiments side by side in one run on the
//! host backend — scale-up and scale-down latency per strategy, throughput while serving per
//! strategy, the cumulative ablation — with the targets computed from the same run.

use std::path::PathBuf;

use clap::{Args, FromArgMatches};

use serde::Serialize;

use emoe_core::ParallelConfig;

use super::ablation::{self, AblationArgs};
use super::bench::{ScaleArgs, ScaleReport, print_scale_table, scale_report};
use crate::exit::CliError;

#[derive(Debug, Clone, Args)]
pub struct PaperArgs {
    /// The model (a generated preset; the host backend holds its bytes).
    #[arg(long, default_value = "tiny-moe")]
    pub model: String,
    /// The smaller config (the paper's DP3-TP2 on 6 devices).
    #[arg(long, default_value = "dp3tp2ep6")]
    pub small: ParallelConfig,
    /// The larger config (DP4-TP2 on 8 devices).
    #[arg(long, default_value = "dp4tp2ep8")]
    pub large: ParallelConfig,
    /// Runs per strategy for latencies (the serving comparison runs once per strategy).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Traffic while serving: Poisson requests/s, or a TOML file with a `[traffic]` table.
    #[arg(long, default_value = "3")]
    pub traffic: String,
    /// With Poisson traffic: how long requests arrive.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// When the step starts while serving.
    #[arg(long, default_value = "3s")]
    pub at: String,
    /// Half-width of the throughput windows.
    #[arg(long, default_value = "2s")]
    pub window: String,
    /// Draw the serving comparison (throughput and SLO over time per strategy) as SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Where generated checkpoints are cached.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// The targets, measured in this run.
#[derive(Debug, Serialize)]
struct Targets {
    /// Cold-restart ÷ elastic scale-up latency (target ≥ 9).
    cold_restart_over_elastic_up: Option<f64>,
    /// Cold-restart ÷ elastic scale-down latency.
    cold_restart_over_elastic_down: Option<f64>,
    /// Elastic throughput during ÷ before while serving: generated tokens, and processed
    /// (prefill + decode) tokens (target ≥ 0.9).
    elastic_during_over_before: Option<f64>,
    elastic_processed_during_over_before: Option<f64>,
    /// Elastic downtime (longest gap between decode steps during the step; target 0).
    elastic_downtime_s: Option<f64>,
    /// Elastic scale-up latency ÷ its memcpy floor (target ≤ 1.5).
    elastic_latency_over_floor: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Paper {
    scale_up: ScaleReport,
    scale_down: ScaleReport,
    while_serving: ScaleReport,
    ablation: ablation::Report,
    targets: Targets,
}

fn parse<T: Args + FromArgMatches>(name: &'static str, argv: &[String]) -> Result<T, CliError> {
    let cmd = T::augment_args(clap::Command::new(name));
    let all = std::iter::once(name.to_string()).chain(argv.iter().cloned());
    let m = cmd.try_get_matches_from(all).map_err(CliError::usage)?;
    T::from_arg_matches(&m).map_err(CliError::usage)
}

pub fn run(a: &PaperArgs) -> Result<(), CliError> {
    let mut common: Vec<String> = vec![
        "--backend".into(),
        "host".into(),
        "--model".into(),
        a.model.clone(),
        "--runs".into(),
        a.runs.to_string(),
    ];
    if let Some(c) = &a.cache_dir {
        common.extend(["--cache-dir".into(), c.display().to_string()]);
    }
    let scale = |from: ParallelConfig, to: ParallelConfig, extra: &[&str]| {
        let mut v = common.clone();
        v.extend([
            "--from".into(),
            from.to_string(),
            "--to".into(),
            to.to_string(),
        ]);
        v.extend(["--strategies".into(), "all".into()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        parse::<ScaleArgs>("scale", &v)
    };
    eprintln!("emoe-agent: bench: scale-up latency by strategy");
    let up = scale_report(&scale(a.small, a.large, &[])?)?;
    eprintln!("emoe-agent: bench: scale-down latency by strategy");
    let down = scale_report(&scale(a.large, a.small, &[])?)?;
    eprintln!("emoe-agent: bench: scaling while serving, by strategy");
    let timing = [
        "--duration",
        a.duration.as_str(),
        "--at",
        a.at.as_str(),
        "--window",
        a.window.as_str(),
    ];
    let mut serving = vec!["--traffic", a.traffic.as_str()];
    serving.extend(timing);
    let mut serving_args = scale(a.small, a.large, &serving)?;
    serving_args.runs = 1;
    serving_args.plot = a.plot.clone();
    let serving = scale_report(&serving_args)?;
    eprintln!("emoe-agent: bench: the ablation");
    let mut v = common.clone();
    v.extend([
        "--from".into(),
        a.small.to_string(),
        "--to".into(),
        a.large.to_string(),
        "--traffic".into(),
        a.traffic.clone(),
    ]);
    v.extend(timing.iter().map(|s| s.to_string()));
    let abl = ablation::report(&parse::<AblationArgs>("ablation", &v)?)?;

    let ratio = |r: &ScaleReport| {
        let e = r.strategies.get("elastic")?.latency_s;
        Some(r.strategies.get("cold-restart")?.latency_s / e)
    };
    let el = serving.strategies.get("elastic");
    let targets = Targets {
        cold_restart_over_elastic_up: ratio(&up),
        cold_restart_over_elastic_down: ratio(&down),
        elastic_during_over_before: el
            .and_then(|e| Some(e.throughput_during? / e.throughput_before?)),
        elastic_processed_during_over_before: el
            .and_then(|e| Some(e.processed_during? / e.processed_before?)),
        elastic_downtime_s: el.and_then(|e| e.downtime_s),
        elastic_latency_over_floor: up
            .strategies
            .get("elastic")
            .and_then(|e| Some(e.latency_s / e.floor_s?)),
    };
    let paper = Paper {
        scale_up: up,
        scale_down: down,
        while_serving: serving,
        ablation: abl,
        targets,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&paper).map_err(CliError::failed)?
        );
    } else {
        println!("== scale-up");
        print_scale_table(&paper.scale_up);
        println!("\n== scale-down");
        print_scale_table(&paper.scale_down);
        println!("\n== while serving");
        print_scale_table(&paper.while_serving);
        println!("\n== ablation");
        ablation::print(&paper.ablation);
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let t = &paper.targets;
        println!("\n== targets");
        println!(
            "cold-restart ÷ elastic, scale-up {} (≥ 9), scale-down {}",
            f(t.cold_restart_over_elastic_up),
            f(t.cold_restart_over_elastic_down)
        );
        println!(
            "elastic throughput during ÷ before: generated {}, processed {} (≥ 0.9)",
            f(t.elastic_during_over_before),
            f(t.elastic_processed_during_over_before)
        );
        println!(
            "elastic downtime {} s (0); latency ÷ floor {} (≤ 1.5)",
            t.elastic_downtime_s
                .map_or("-".into(), |v| format!("{v:.3}")),
            f(t.elastic_latency_over_floor)
        );
    }
    Ok(())
}
