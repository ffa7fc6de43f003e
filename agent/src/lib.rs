//! `emoe-agent`: one per node. Embeds the HMM over a device backend, loads and serves models on
//! that memory, runs scaling steps, and offers a headless, scriptable CLI.
//!
//! - [`cluster`]: building a node — backend, HMM, model, checkpoint, the loaded deployment.
//! - [`report`]: the node's state as data (JSON for scripts, tables for people).
//! - [`bandwidth`]: link bandwidths for the planner (measured on host).
//! - [`scale`]: running a scaling step — phases, copy workers bounded per link, events, cancel.
//! - [`serve`]: serving the MoE model on the HMM while it scales — instances, workers, switchover.
//! - [`plot`]: SVG figures of serving runs — throughput and SLO attainment over time, scaling steps
//!   marked.
//! - [`scenario`]: scenario files and their headless runs (`emoe-agent run`).
//! - [`remote`]: an instance in its own process, attached zero-copy to the HMM's memory.
//! - [`daemon`]: the node daemon behind the gRPC API (`emoe-agent serve`) and its client.
//! - [`http`]: the OpenAI-compatible front door (`serve --http`).
//! - [`cli`]: the `emoe-agent` command line.
//! - [`exit`]: exit codes.

pub mod bandwidth;
pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod exit;
pub mod http;
pub mod plot;
pub mod remote;
pub mod report;
pub mod scale;
pub mod scenario;
pub mod serve;
