//! The `emoe` console: state from agents (`model`), connections (`conn`), named actions
//! (`action`), keymaps and themes (`config`), rendering (`ui`), and the event loop (`app`).

pub mod action;
pub mod config;
