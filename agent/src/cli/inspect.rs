//! `emoe-agent inspect`: load a model onto a node and print its memory map.

use clap::Args;

use super::NodeArgs;
use crate::cluster::Node;
use crate::exit::CliError;
use crate::report::InspectReport;

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &InspectArgs) -> Result<(), CliError> {
    let node = Node::start(&a.node.options())?;
    let report = InspectReport::of(&node);
    if a.json {
        let text = serde_json::to_string(&report).map_err(CliError::failed)?;
        println!("{text}");
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
