//! The `emoe-agent` command line. Machine output goes to stdout, human messages to stderr;
//! exit codes are in [`crate::exit`].

mod ablation;
mod agent_cmds;
mod autoscale_args;
mod bench;
mod bench_http;
mod bench_soak;
mod bench_watch;
mod bridge;
mod inspect;
mod paper;
mod plan;
mod run;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use emoe_core::ParallelConfig;

use emoe_core::backend::select::BackendChoice;

use crate::cluster::{ModelSource, NodeOptions};
use crate::exit::CliError;

#[derive(Debug, Parser)]
#[command(
    name = "emoe-agent",
    version,
    about = "ElasticMoE node agent: the HBM manager, serving and scaling on one node",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load a model onto the devices a config needs and print the node's memory map.
    Inspect(inspect::InspectArgs),
    /// Plan a scaling step (no side effects): what moves, how many bytes, predicted time and peak.
    Plan(plan::PlanArgs),
    /// Measure: the paper's experiments side by side (bare `bench`), scaling by each strategy
    /// (`bench scale`), the ablation (`bench ablation`), the planner (`bench plan`).
    Bench(Box<bench::BenchArgs>),
    /// Run a scenario headless: serve its traffic on an embedded node through timed scaling
    /// steps and report latency, downtime, peak memory, throughput and SLO attainment.
    Run(run::RunArgs),
    /// Run the node daemon: serve the model and the gRPC API on a Unix socket.
    Serve(Box<agent_cmds::ServeArgs>),
    /// Print a running agent's state (`--json` for the whole snapshot).
    Status(agent_cmds::StatusArgs),
    /// Ask a running agent to scale (`--wait` streams progress until it ends).
    Scale(agent_cmds::ScaleArgs),
    /// Cancel a running agent's operation before its switchover.
    Cancel(agent_cmds::CancelArgs),
    /// Stream a running agent's state: a snapshot, then one JSON line per update.
    Watch(agent_cmds::WatchArgs),
    /// Connect stdin/stdout to the local agent's socket (used by `emoe --agent ssh://HOST`).
    Bridge(bridge::BridgeArgs),
    /// Internal: run an instance in this process, attached to an owner's memory over SOCKET.
    #[command(hide = true)]
    AttachInstance { socket: PathBuf },
}

/// Flags that describe a node and the model loaded on it.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Device backend: host (virtual devices on host memory), modeled (accounting only, no
    /// bytes), ascend (libascendcl.so), cuda (libcuda.so.1), or auto (ascend, then cuda, then
    /// host).
    #[arg(long, default_value = "host")]
    pub backend: BackendChoice,
    /// Devices on the node: virtual devices for host and modeled (default 8); for ascend and
    /// cuda, the first N the driver reports (default all).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub devices: Option<u32>,
    /// Logical devices carved from each GPU (cuda backend; each gets an equal share).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub logical_per_gpu: u32,
    /// Memory per device, e.g. `1GiB`, `64 GiB` (default: 1 GiB on host, 64 GiB modeled; on
    /// ascend and cuda, a cap below the device's own memory).
    #[arg(long, value_parser = parse_hbm)]
    pub hbm: Option<u64>,
    /// Allocation granularity, a power of two from 4 KiB to 1 GiB (default: 64 KiB on host,
    /// 2 MiB modeled).
    #[arg(long, value_parser = parse_granularity)]
    pub granularity: Option<u64>,
    /// A preset (tiny-moe, micro-moe, deepseek-v2-lite, qwen3-30b-a3b, deepseek-v3) or a
    /// Hugging Face checkpoint directory.
    #[arg(long, default_value = "tiny-moe")]
    pub model: ModelSource,
    /// Parallel config, `dpNtpNepN` with EP = DP × TP (e.g. `dp2tp2ep4`, `DP2-TP2-EP4`).
    #[arg(long, visible_alias = "from", default_value = "dp2tp2ep4")]
    pub config: ParallelConfig,
    /// First device the config occupies; it uses EP devices from there.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..4096))]
    pub first_device: u32,
    /// This node's id (devices are named `node/index`).
    #[arg(long, default_value_t = 0)]
    pub node: u32,
    /// Seed of generated checkpoints.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// KV-cache tokens per device (1 to 16Mi).
    #[arg(long, default_value_t = 16_384, value_parser = clap::value_parser!(u64).range(1..=emoe_core::deploy::MAX_KV_TOKENS))]
    pub kv_tokens: u64,
    /// Where generated checkpoints are cached (default: $EMOE_CACHE_DIR, else the platform
    /// cache dir, e.g. ~/.cache/elasticmoe).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

impl NodeArgs {
    pub fn options(&self) -> NodeOptions {
        NodeOptions {
            backend: self.backend,
            node: self.node,
            devices: self.devices,
            logical_per_gpu: self.logical_per_gpu,
            hbm: self.hbm,
            granularity: self.granularity,
            model: self.model.clone(),
            config: self.config,
            first_device: self.first_device,
            seed: self.seed,
            kv_tokens: self.kv_tokens,
            cache_dir: self.cache_dir.clone(),
        }
    }
}

/// A byte size such as `1GiB`, `512 MiB`, `2MB` or `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let v: bytesize::ByteSize = s.trim().parse().map_err(|e| {
        format!(
            "`{}` is not a size like 1GiB, 512MiB or 4096 ({e})",
            emoe_core::echo::echo(s)
        )
    })?;
    if v.as_u64() == 0 {
        return Err(format!(
            "`{}` is zero bytes; give a positive size",
            emoe_core::echo::echo(s)
        ));
    }
    Ok(v.as_u64())
}

/// Most memory per device `--hbm` takes (16 TiB, a hundred times today's largest accelerator).
pub const MAX_HBM: u64 = 16 << 40;
/// `--granularity` bounds: a page, up to 1 GiB.
pub const GRANULARITY: std::ops::RangeInclusive<u64> = (4 << 10)..=(1 << 30);

/// `--hbm`: a size from 1 MiB to [`MAX_HBM`].
fn parse_hbm(s: &str) -> Result<u64, String> {
    let v = parse_size(s)?;
    if !(1 << 20..=MAX_HBM).contains(&v) {
        return Err(format!(
            "`{}` is outside 1MiB..=16TiB of memory per device",
            emoe_core::echo::echo(s)
        ));
    }
    Ok(v)
}

/// `--granularity`: a power of two within [`GRANULARITY`].
fn parse_granularity(s: &str) -> Result<u64, String> {
    let v = parse_size(s)?;
    let s = emoe_core::echo::echo(s);
    if !v.is_power_of_two() {
        return Err(format!("`{s}` ({v} bytes) is not a power of two"));
    }
    if !GRANULARITY.contains(&v) {
        return Err(format!("`{s}` is outside 4KiB..=1GiB"));
    }
    Ok(v)
}

/// The agent's snapshot period (`serve --tick`, `bench watch --tick`): 10 ms to 1 min. Shorter
/// would spin a core; longer would leave watchers and stop requests waiting.
pub const TICK: std::ops::RangeInclusive<std::time::Duration> =
    std::time::Duration::from_millis(10)..=std::time::Duration::from_secs(60);

/// A `--tick` duration within [`TICK`].
pub fn parse_tick(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| {
        format!(
            "`{}` is not a duration like 250ms ({e})",
            emoe_core::echo::echo(s)
        )
    })?;
    if !TICK.contains(&d) {
        return Err(format!(
            "`{}` is outside 10ms..=1m",
            emoe_core::echo::echo(s)
        ));
    }
    Ok(d)
}

/// A request rate (requests/s): finite, 0 to the traffic generators' [`MAX_RATE`](emoe_core::traffic::MAX_RATE).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| {
        format!(
            "`{}` is not a number of requests/s",
            emoe_core::echo::echo(s)
        )
    })?;
    let max = emoe_core::traffic::MAX_RATE;
    if !(v.is_finite() && (0.0..=max).contains(&v)) {
        return Err(format!(
            "`{}` is outside 0..={max} requests/s",
            emoe_core::echo::echo(s)
        ));
    }
    Ok(v)
}

/// Parse the command line, or exit as clap would (help and version 0, errors 2) with every
/// echoed value bounded ([`emoe_core::echo::bound_words`]): clap quotes a bad value whole.
pub fn parse_or_exit<C: Parser>() -> C {
    match C::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = emoe_core::echo::bound_words(&e.render().to_string());
            eprint!("{text}");
            std::process::exit(e.exit_code());
        }
    }
}

pub use agent_cmds::read_token;

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Inspect(a) => inspect::run(&a),
        Command::Plan(a) => plan::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Run(a) => run::run(&a),
        Command::Serve(a) => agent_cmds::serve(&a),
        Command::Status(a) => agent_cmds::status(&a),
        Command::Scale(a) => agent_cmds::scale(&a),
        Command::Cancel(a) => agent_cmds::cancel(&a),
        Command::Watch(a) => agent_cmds::watch(&a),
        Command::Bridge(a) => bridge::run(&a),
        Command::AttachInstance { socket } => {
            crate::remote::serve_attached(&socket).map_err(CliError::failed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64 KiB"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").unwrap_err().contains("`lots`"));
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn node_sizes_are_bounded() {
        assert_eq!(parse_granularity("2MiB"), Ok(2 << 20));
        let e = parse_granularity("1EiB").unwrap_err();
        assert!(e.contains("`1EiB`") && e.contains("4KiB..=1GiB"), "{e}");
        assert!(
            parse_granularity("96KiB")
                .unwrap_err()
                .contains("power of two")
        );
        assert!(parse_hbm("512KiB").is_err());
        assert!(parse_hbm("1EiB").unwrap_err().contains("16TiB"));
        assert_eq!(parse_hbm("64GiB"), Ok(64 << 30));
    }

    #[test]
    fn ticks_and_rates_are_bounded() {
        assert_eq!(
            parse_tick("250ms"),
            Ok(std::time::Duration::from_millis(250))
        );
        for bad in ["0s", "1ms", "1h", "soon"] {
            assert!(
                parse_tick(bad).unwrap_err().contains(&format!("`{bad}`")),
                "{bad}"
            );
        }
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        for bad in ["-1", "NaN", "inf", "1e9", "fast"] {
            assert!(
                parse_rate(bad).unwrap_err().contains(&format!("`{bad}`")),
                "{bad}"
            );
        }
    }

    #[test]
    fn kv_tokens_are_bounded() {
        use clap::Parser;
        for bad in ["0", "99999999999"] {
            let e = Cli::try_parse_from(["emoe-agent", "inspect", "--kv-tokens", bad]).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            let msg = e.to_string();
            assert!(msg.contains("--kv-tokens") && msg.contains(bad), "{msg}");
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
