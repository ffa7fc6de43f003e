//! Checkpoints: deterministic generation of Hugging Face style checkpoint directories for the
//! small presets, a cache of them, and a selective loader (positional reads, no mmap: see
//! `source.rs` for why).
//!
//! A checkpoint directory holds `config.json` (what [`crate::model::from_hf_config_file`]
//! reads) and the weights as `model.safetensors` or as several files listed by
//! `model.safetensors.index.json`. [`Checkpoint::read_pack`] copies one [`crate::model::Pack`]
//! (one device allocation: a layer's non-expert TP shard or one expert) straight out of the
//! files, so loading a deployment reads each device's bytes and nothing else. Generated
//! directories of small-vocabulary models also hold a tokenizer ([`crate::tokenizer`]).

mod cache;
mod error;
mod generate;
mod loader;
mod source;

pub use cache::{CREATED_MARKER, cache_key, ensure_generated};
pub use error::CheckpointError;
pub use generate::{
    GENERATOR_VERSION, GeneratedInfo, MAX_TOKENIZER_VOCAB, generate, generates_tokenizer,
    tensor_bytes,
};
pub use loader::{Checkpoint, StoredDtypes};

/// The model's Hugging Face config.
pub const CONFIG_FILE: &str = "config.json";
/// Single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Multi-file weights: `{"weight_map": {tensor: file}}`.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The generator's record; its presence marks a complete generated directory.
pub const INFO_FILE: &str = "emoe-checkpoint.json";
