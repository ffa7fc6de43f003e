//! `emoe-agent run SCENARIO.toml`: an embedded agent serving a scenario's traffic through its
//! scaling steps, headless.

use std::path::PathBuf;

use clap::Args;

use crate::exit::{self, CliError};
use crate::plot::{Marker, Series, write_svg};
use crate::scenario::{self, Scenario};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The scenario file (TOML): cluster, model, initial config, traffic, scaling steps, SLO.
    pub scenario: PathBuf,
    /// Print NDJSON events (each with `ts` and `type`), ending with one `{"type":"report",…}`.
    #[arg(long)]
    pub json: bool,
    /// Also draw throughput and SLO attainment over time, scaling steps marked, as an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

pub fn run(a: &RunArgs) -> Result<(), CliError> {
    let s = Scenario::load(&a.scenario).map_err(CliError::usage)?;
    let mut stdout = std::io::stdout().lock();
    let r = scenario::run(&s, a.json, &mut stdout)?;
    if let Some(path) = &a.plot {
        let labels: Vec<String> = r
            .steps
            .iter()
            .map(|st| format!("{} → {}", st.from, st.to))
            .collect();
        let markers: Vec<Marker> = r
            .steps
            .iter()
            .zip(&labels)
            .map(|(st, l)| Marker {
                t_s: st.at_s,
                label: l,
            })
            .collect();
        let name = if r.scenario.is_empty() {
            "elastic"
        } else {
            &r.scenario
        };
        let series = [Series {
            label: name,
            points: &r.series,
        }];
        write_svg(
            path,
            &format!("{name}: serving while scaling"),
            &series,
            &markers,
        )
        .map_err(CliError::failed)?;
        eprintln!("emoe-agent: wrote {}", path.display());
    }
    if !a.json {
        println!(
            "{}: {} of {} requests in {:.1} s, {:.1} tokens/s, SLO attainment {}",
            if r.scenario.is_empty() {
                "scenario"
            } else {
                &r.scenario
            },
            r.finished,
            r.requests,
            r.duration_s,
            r.summary.tokens_per_s,
            r.slo_attainment
                .map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
        );
        for st in &r.steps {
            println!(
                "  {} → {} at {:.1}s: latency {:.3} s, downtime {:.3} s, peak {:.1} MiB, tokens/s before {:.1} during {:.1} after {:.1}, {} requests moved, {} drained",
                st.from,
                st.to,
                st.at_s,
                st.latency_s,
                st.downtime_s,
                st.peak_bytes as f64 / (1u64 << 20) as f64,
                st.throughput.before,
                st.throughput.during,
                st.throughput.after,
                st.moved_requests,
                st.drained_requests
            );
        }
        for f in &r.failed_steps {
            println!("  failed: {f}");
        }
    }
    if !r.failed_steps.is_empty() || r.finished < r.requests {
        return Err(CliError::new(
            exit::FAILED,
            anyhow::anyhow!(
                "{} of {} requests finished; {} failures",
                r.finished,
                r.requests,
                r.failed_steps.len()
            ),
        ));
    }
    Ok(())
}
