//! `emoe-agent plan`: the plan for a scaling step, with no side effects.

use clap::Args;
use serde::Serialize;

use emoe_core::ParallelConfig;
use emoe_core::plan::{self, Plan, PlanInput, Policy};
use emoe_core::scale::pool_state;

use super::{NodeArgs, parse_size};
use crate::bandwidth::topology_for;
use crate::cluster::Node;
use crate::exit::{self, CliError};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Plan against an embedded node built from the flags below (the current config is
    /// `--from`).
    #[arg(long, conflicts_with = "agent")]
    pub embedded: bool,
    /// Plan against a running agent (unix:PATH, http://HOST:PORT or ssh://[USER@]HOST[:PORT]).
    #[arg(long)]
    pub agent: Option<crate::daemon::client::AgentAddr>,
    /// The agent's bearer token (the file's first line), for an agent serving with
    /// --allow-remote.
    #[arg(long, requires = "agent")]
    pub token_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Target parallel config (TP must stay the same).
    #[arg(long)]
    pub to: ParallelConfig,
    /// Device-to-device bandwidth within a node, bytes/s as a size (e.g. `100GB`); default:
    /// measured memcpy on host, an assumed figure elsewhere.
    #[arg(long, value_parser = parse_size)]
    pub intra_bw: Option<u64>,
    /// Bandwidth between nodes, bytes/s as a size.
    #[arg(long, value_parser = parse_size)]
    pub inter_bw: Option<u64>,
    /// Print the plan as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct PlanReport<'a> {
    #[serde(flatten)]
    plan: &'a Plan,
    model: &'a str,
    backend: String,
    bandwidth_source: String,
}

pub fn run(a: &PlanArgs) -> Result<(), CliError> {
    if let Some(addr) = &a.agent {
        return remote(addr, a);
    }
    if !a.embedded {
        return Err(CliError::usage(anyhow::anyhow!(
            "plan needs --embedded (a node built from the flags) or --agent ADDR (a running agent)"
        )));
    }
    let node = Node::start(&a.node.options())?;
    let hmm = &node.hmm;
    let d = &node.deployment;
    let pool = pool_state(hmm);
    let from_devices: Vec<_> = d.devices.iter().map(|r| r.device).collect();
    let (topology, source) = topology_for(
        node.backend_kind(),
        a.intra_bw.map(|b| b as f64),
        a.inter_bw.map(|b| b as f64),
    );
    let input = PlanInput {
        model: &d.model,
        from: d.config,
        from_devices: &from_devices,
        placement: &d.placement,
        pool: &pool,
        to: a.to,
        to_devices: None,
        policy: Policy::Balanced,
        operation_running: false,
        kv_tokens: a.node.kv_tokens,
        topology: &topology,
    };
    let p = plan::plan(&input).map_err(|e| CliError::new(exit::REFUSED, e))?;
    if a.json {
        let report = PlanReport {
            plan: &p,
            model: &d.model.name,
            backend: node.backend_kind().to_string(),
            bandwidth_source: source,
        };
        println!(
            "{}",
            serde_json::to_string(&report).map_err(CliError::failed)?
        );
    } else {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        println!("{} → {} ({}; {})", p.from, p.to, d.model.name, source);
        println!(
            "devices added {:?}, removed {:?}",
            p.devices_added
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            p.devices_removed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        );
        println!(
            "zero-copy {:.2} GiB, P2P {:.2} GiB, {} experts moved, {} steps, predicted {:.3} s",
            gib(p.zero_copy_bytes),
            gib(p.p2p_bytes),
            p.experts_moved,
            p.steps.len(),
            p.predicted_seconds
        );
        for (dev, peak) in &p.predicted_peak_bytes {
            println!("  {dev}: predicted peak {:.2} GiB", gib(*peak));
        }
    }
    Ok(())
}

/// The plan from a running agent.
fn remote(addr: &crate::daemon::client::AgentAddr, a: &PlanArgs) -> Result<(), CliError> {
    use crate::daemon::proto;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::failed)?;
    let p = rt.block_on(async {
        let mut c = crate::daemon::client::connect(addr).await.map_err(|e| {
            CliError::failed(anyhow::anyhow!("cannot reach the agent at {addr}: {e:#}"))
        })?;
        c.plan(super::agent_cmds::with_token(
            proto::PlanRequest {
                to: a.to.to_string(),
            },
            a.token_file.as_deref(),
        )?)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| super::agent_cmds::status_error(addr, s))
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&p).map_err(CliError::failed)?);
    } else {
        println!(
            "{} → {}: added {:?}, removed {:?}, zero-copy {} B, P2P {} B, {} experts moved, {} steps, predicted {:.3} s",
            p.from,
            p.to,
            p.devices_added,
            p.devices_removed,
            p.zero_copy_bytes,
            p.p2p_bytes,
            p.experts_moved,
            p.steps,
            p.predicted_seconds
        );
    }
    Ok(())
}
