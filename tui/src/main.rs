//! `emoe`: the operator console. The interactive ratatui console is being built (see the
//! Console issue); until then `emoe` starts the embedded default node and prints its state.

use std::process::ExitCode;

use clap::Parser;

use emoe_agent::cli::NodeArgs;
use emoe_agent::cluster::Node;
use emoe_agent::report::InspectReport;

#[derive(Debug, Parser)]
#[command(
    name = "emoe",
    version,
    about = "ElasticMoE console. With no arguments: an embedded agent on the host backend \
             (8 devices, tiny-moe, dp2tp2ep4 on devices 0-3)."
)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    eprintln!(
        "emoe: starting an embedded agent ({} backend, {} devices, {}, {})…",
        cli.node.backend,
        cli.node
            .devices
            .map_or_else(|| "default".to_string(), |n| n.to_string()),
        match &cli.node.model {
            emoe_agent::cluster::ModelSource::Preset(p) => p.clone(),
            emoe_agent::cluster::ModelSource::Dir(d) => d.display().to_string(),
        },
        cli.node.config
    );
    match Node::start(&cli.node.options()) {
        Ok(node) => {
            print!("{}", InspectReport::of(&node).to_table());
            eprintln!(
                "emoe: the interactive console (memory maps, placement, scaling) is coming; \
                 this is the embedded cluster's state. Scripts: `emoe-agent inspect --json`."
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("emoe: {e}");
            e.exit_code()
        }
    }
}
