//! `emoe-core`: the domain and memory of ElasticMoE, pure and synchronous.
//!
//! - [`autoscale`]: the SLO autoscaler's policy (scale up or down one TP group).
//! - [`device`]: device and node identities (`node/index`).
//! - [`parallel`]: `DP×TP×EP` parallel configurations.
//! - [`backend`]: the device-backend trait and its implementations (host, modeled, …).
//! - [`hmm`]: the HBM Management Module — physical allocations, reservations, views, accounting.
//! - [`model`]: model specs (presets and Hugging Face `config.json`), tensor inventories, sizes.
//! - [`checkpoint`]: deterministic safetensors generation and a selective loader.
//! - [`fsio`]: reading named files: regular files only, capped.
//! - [`deploy`]: a model placed on devices under a parallel config, loaded into the HMM.
//! - [`engine`]: the MoE compute — real decode steps over an instance's HMM views.
//! - [`plan`]: the scaling planner.
//! - [`scale`]: running a plan on the HMM (and the paper's baselines).
//! - [`traffic`]: seeded request generators (Poisson, step, ramp, offline) and trace replay.
//! - [`tokenizer`]: text in, text out — Hugging Face `tokenizer.json`, chat templates, streaming
//!   detokenization, and the deterministic byte-level tokenizer of the generated presets.
//! - [`echo`]: how user-given values are quoted back in messages (bounded, escaped).
//! - [`metrics`]: serving metrics from timestamps — TTFT, TPOT, SLO attainment, throughput,
//!   downtime — and per-expert load.

pub mod autoscale;
pub mod backend;
pub mod checkpoint;
pub mod deploy;
pub mod device;
pub mod echo;
pub mod engine;
pub mod fsio;
pub mod hmm;
pub mod metrics;
pub mod model;
pub mod parallel;
pub mod plan;
pub mod scale;
pub mod tokenizer;
pub mod traffic;

pub use device::DeviceId;
pub use parallel::{ParallelConfig, ParallelConfigError};
