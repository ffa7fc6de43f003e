//! Every `emoe-agent` command the README shows parses with today's flags, so the README cannot
//! drift from the binary unnoticed. (Running them is the job of the tests of each command; the
//! README's first command runs headless in `.ci/run`.)

use clap::Parser;

use emoe_agent::cli::Cli;

/// The README's `emoe-agent` command lines: `cargo run --release --bin emoe-agent -- ARGS` or
/// `emoe-agent ARGS` in its shell blocks, `\` continuations joined, comments and `&` dropped.
fn readme_commands() -> Vec<(usize, Vec<String>)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let mut cmd = line.to_string();
        while cmd.trim_end().ends_with('\\') {
            cmd = cmd.trim_end().trim_end_matches('\\').to_string();
            match lines.next() {
                Some((_, next)) => cmd.push_str(next),
                None => break,
            }
        }
        let cmd = cmd.split(" #").next().unwrap_or("").trim();
        let cmd = cmd.trim_end_matches('&').trim();
        let args = if let Some(rest) = cmd.strip_prefix("cargo run --release --bin emoe-agent") {
            rest.trim().trim_start_matches("--").trim()
        } else if let Some(rest) = cmd.strip_prefix("emoe-agent") {
            rest.trim()
        } else {
            continue;
        };
        let mut argv = vec!["emoe-agent".to_string()];
        argv.extend(args.split_whitespace().map(String::from));
        out.push((n + 1, argv));
    }
    out
}

#[test]
fn every_readme_command_of_the_agent_parses() {
    let cmds = readme_commands();
    // The README shows inspect, plan, bench (4 forms), run (3), serve and its clients.
    assert!(cmds.len() >= 20, "found only {} commands", cmds.len());
    let mut bad = Vec::new();
    for (line, argv) in &cmds {
        if let Err(e) = Cli::try_parse_from(argv) {
            bad.push(format!("README.md:{line}: `{}`: {e}", argv.join(" ")));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
