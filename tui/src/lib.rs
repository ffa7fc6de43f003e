//! The `emoe` console: state from agents (`model`), connections (`conn`), named actions
//! (`action`), keymaps and themes (`config`), rendering (`ui`), and the event loop (`app`).

pub mod action;
pub mod config;
pub mod conn;
pub mod model;
pub mod app;
pub mod ui;
pub mod event_loop;
pub mod inventory;
pub mod fixture;
pub mod bench;
pub mod term;
