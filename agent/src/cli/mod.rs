//! The `emoe-agent` command line. Machine output goes to stdout, human messages to stderr;
//! exit codes are in [`crate::exit`].

mod ablation;
mod agent_cmds;
mod bench;
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
    #[arg(long, value_parser = parse_size)]
    pub hbm: Option<u64>,
    /// Allocation granularity, a power of two (default: 64 KiB on host, 2 MiB modeled).
    #[arg(long, value_parser = parse_size)]
    pub granularity: Option<u64>,
    /// A preset (tiny-moe, micro-moe, deepseek-v2-lite, qwen3-30b-a3b, deepseek-v3) or a
    /// Hugging Face checkpoint directory.
    #[arg(long, default_value = "tiny-moe")]
    pub model: ModelSource,
    /// Parallel config, `dpNtpNepN` with EP = DP × TP (e.g. `dp2tp2ep4`, `DP2-TP2-EP4`).
    #[arg(long, visible_alias = "from", default_value = "dp2tp2ep4")]
    pub config: ParallelConfig,
    /// First device the config occupies; it uses EP devices from there.
    #[arg(long, default_value_t = 0)]
    pub first_device: u32,
    /// This node's id (devices are named `node/index`).
    #[arg(long, default_value_t = 0)]
    pub node: u32,
    /// Seed of generated checkpoints.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// KV-cache tokens per device.
    #[arg(long, default_value_t = 16_384)]
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
    let v: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a size like 1GiB, 512MiB or 4096 ({e})"))?;
    if v.as_u64() == 0 {
        return Err(format!("`{s}` is zero bytes; give a positive size"));
    }
    Ok(v.as_u64())
}

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
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
