//! The `emoe` console: state from agents (`model`), connections (`conn`), named actions
//! (`action`), keymaps and themes (`config`), rendering (`ui`), and the event loop (`app`).

pub mod action;
pub mod app;
pub mod bench;
pub mod config;
pub mod conn;
pub mod event_loop;
pub mod fixture;
pub mod inventory;
pub mod model;
pub mod term;
pub mod ui;
