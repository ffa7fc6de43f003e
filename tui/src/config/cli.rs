//! `emoe config path|print|validate`.

use std::io::{self, Write};
use std::process::ExitCode;

use crate::action::Action;

use super::files::{
    CONFIG_DIR_ENV, CONFIG_FILE, Env, FileStatus, KEYMAP_FILE, LoadOptions, Loaded, THEME_FILE,
    load_with, process_env,
};

/// `emoe config ...`: where the config files are, what they amount to, whether they are valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Subcommand)]
pub enum ConfigCmd {
    /// Print the config dir and its files (config.toml, keymap.toml, theme.toml), each with
    /// whether it exists.
    Path,
    /// Print the effective settings, keymap and theme as TOML, to copy into the config dir.
    Print,
    /// Check the config files: `ok PATH` for each valid one, `PATH:LINE:COL: message` on stderr
    /// for each invalid one; exit 2 if any is invalid (absent files are fine).
    Validate,
}

/// Runs `emoe config CMD` on stdout and stderr.
pub fn run_config_cmd(cmd: &ConfigCmd, opts: &LoadOptions) -> ExitCode {
    let code = run_config_cmd_to(
        cmd,
        opts,
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    );
    ExitCode::from(code)
}

/// [`run_config_cmd`] writing to `out` and `err`; returns the exit status (0, 1 for no config
/// dir with `path`, 2 for invalid files with `validate`).
pub fn run_config_cmd_to(
    cmd: &ConfigCmd,
    opts: &LoadOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    run_with_env(cmd, opts, &process_env, out, err)
}

pub(crate) fn run_with_env(
    cmd: &ConfigCmd,
    opts: &LoadOptions,
    env: Env,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let loaded = load_with(opts, env);
    // Output errors (a closed pipe) are not worth failing over.
    match cmd {
        ConfigCmd::Path => path(&loaded, opts, env, out, err),
        ConfigCmd::Print => {
            for w in &loaded.settings.warnings {
                let _ = writeln!(err, "{w}");
            }
            let _ = out.write_all(print(&loaded).as_bytes());
            0
        }
        ConfigCmd::Validate => validate(&loaded, out, err),
    }
}

fn path(l: &Loaded, opts: &LoadOptions, env: Env, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let Some(dir) = &l.dir else {
        let _ = writeln!(
            err,
            "emoe: no config dir (no home directory); set {CONFIG_DIR_ENV} to choose one"
        );
        return 1;
    };
    let from = if opts.config_dir.is_some() {
        "from the command line".to_string()
    } else if env(CONFIG_DIR_ENV).is_some_and(|d| !d.is_empty()) {
        format!("from ${CONFIG_DIR_ENV}")
    } else {
        "the platform's".to_string()
    };
    let _ = writeln!(out, "{} ({from})", dir.display());
    for name in [CONFIG_FILE, KEYMAP_FILE, THEME_FILE] {
        let p = dir.join(name);
        let state = if p.exists() { "exists" } else { "absent" };
        let _ = writeln!(out, "{} ({state})", p.display());
    }
    0
}

/// The effective settings, keymap and theme, each as the TOML of its file.
fn print(l: &Loaded) -> String {
    let s = &l.settings;
    let colors = if l.colors_auto {
        format!("\"auto\" # detected: {}", s.colors)
    } else {
        format!("{:?}", s.colors.name())
    };
    let mut text = format!(
        "# ---- {CONFIG_FILE} ----\n\
         keymap = {:?}\n\
         theme = {:?}\n\
         ascii = {}\n\
         colors = {colors}\n\
         tick = {:?}\n\n\
         # ---- {KEYMAP_FILE} (the whole keymap; a delta of a few entries is enough) ----\n",
        s.keymap.name,
        l.theme.name,
        s.ascii,
        humantime::format_duration(s.tick).to_string(),
    );
    text.push_str("# Actions (`run = ...`; \"none\" unbinds a key in keymap.toml):\n");
    let width = Action::ALL
        .iter()
        .map(|a| a.name().len())
        .max()
        .unwrap_or(0);
    for a in Action::ALL {
        text.push_str(&format!("#   {:width$}  {}\n", a.name(), a.desc()));
    }
    text.push_str(&s.keymap.to_toml());
    text.push_str(&format!(
        "\n# ---- {THEME_FILE} (the whole theme, before colours are fitted to the terminal) ----\n"
    ));
    text.push_str(&l.theme.to_toml());
    text
}

fn validate(l: &Loaded, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut code = 0;
    for (path, status) in &l.files {
        match status {
            FileStatus::Absent => {
                let _ = writeln!(out, "absent {} (defaults)", path.display());
            }
            FileStatus::Ok => {
                let _ = writeln!(out, "ok {}", path.display());
            }
            FileStatus::Invalid(e) => {
                let _ = writeln!(err, "{e}");
                code = 2;
            }
        }
    }
    for w in &l.flag_warnings {
        let _ = writeln!(err, "{w}");
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Keymap, Theme, files::parse_config};

    fn run(cmd: ConfigCmd, files: &[(&str, &str)]) -> (u8, String, String, tempfile::TempDir) {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        let opts = LoadOptions {
            config_dir: Some(d.path().to_path_buf()),
            ..LoadOptions::default()
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with_env(&cmd, &opts, &|_| None, &mut out, &mut err);
        let s = |v: Vec<u8>| String::from_utf8(v).unwrap();
        (code, s(out), s(err), d)
    }

    #[test]
    fn path_lists_the_files() {
        let (code, out, err, d) = run(ConfigCmd::Path, &[(KEYMAP_FILE, "")]);
        assert_eq!(code, 0);
        assert!(err.is_empty());
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(
            lines[0],
            format!("{} (from the command line)", d.path().display())
        );
        assert_eq!(
            lines[1],
            format!("{} (absent)", d.path().join(CONFIG_FILE).display())
        );
        assert_eq!(
            lines[2],
            format!("{} (exists)", d.path().join(KEYMAP_FILE).display())
        );
        assert_eq!(
            lines[3],
            format!("{} (absent)", d.path().join(THEME_FILE).display())
        );
    }

    #[test]
    fn validate_exit_codes() {
        let (code, out, err, _d) = run(ConfigCmd::Validate, &[]);
        assert_eq!(code, 0);
        assert!(err.is_empty());
        assert_eq!(out.lines().filter(|l| l.starts_with("absent ")).count(), 3);

        let (code, out, err, d) = run(
            ConfigCmd::Validate,
            &[
                (CONFIG_FILE, "theme = \"light\"\n"),
                (
                    KEYMAP_FILE,
                    "[normal]\nkeymap = [ { on = \"x\", run = \"app.quit\" } ]\n",
                ),
            ],
        );
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("ok {}", d.path().join(CONFIG_FILE).display())));
        assert!(out.contains(&format!("ok {}", d.path().join(KEYMAP_FILE).display())));

        let (code, out, err, d) = run(
            ConfigCmd::Validate,
            &[
                (CONFIG_FILE, "theme = \"light\"\n"),
                (
                    KEYMAP_FILE,
                    "[normal]\nkeymap = [ { on = \"x\", run = \"app.explode\" } ]\n",
                ),
                (THEME_FILE, "[styles]\nbogus = {}\n"),
            ],
        );
        assert_eq!(code, 2);
        assert!(out.contains(&format!("ok {}", d.path().join(CONFIG_FILE).display())));
        let errs: Vec<_> = err.lines().collect();
        assert_eq!(errs.len(), 2, "{err}");
        assert!(
            errs[0].starts_with(&format!("{}:2:30: ", d.path().join(KEYMAP_FILE).display())),
            "{err}"
        );
        assert!(
            errs[1].starts_with(&format!("{}:2:1: ", d.path().join(THEME_FILE).display())),
            "{err}"
        );
    }

    #[test]
    fn print_is_copyable_toml() {
        let (code, out, err, _d) = run(
            ConfigCmd::Print,
            &[
                (
                    CONFIG_FILE,
                    "keymap = \"vim\"\ntheme = \"light\"\ntick = \"2s\"\n",
                ),
                (THEME_FILE, "[styles]\ntitle = { fg = \"#123456\" }\n"),
            ],
        );
        assert_eq!(code, 0);
        assert!(err.is_empty(), "{err}");
        // Split at the section markers; each part is its file's TOML.
        let parts: Vec<&str> = out.split("# ---- ").skip(1).collect();
        assert_eq!(parts.len(), 3);
        let body = |p: &str| p.split_once('\n').map(|(_, b)| b.to_string()).unwrap();
        let cfg = parse_config(&body(parts[0]), "printed").unwrap();
        assert_eq!(cfg.keymap.as_deref(), Some("vim"));
        assert_eq!(cfg.theme.as_deref(), Some("light"));
        assert_eq!(cfg.colors, Some(None), "auto");
        assert_eq!(cfg.tick, Some(std::time::Duration::from_secs(2)));
        assert!(
            parts[1].contains("#   scale.rebalance"),
            "lists every action"
        );
        let km = Keymap::parse("vim", &body(parts[1]), "printed").unwrap();
        assert!(!km.bindings(crate::config::Mode::Normal).is_empty());
        let t = Theme::parse("light", &body(parts[2]), "printed").unwrap();
        assert_eq!(
            t.title.fg,
            Some(ratatui::style::Color::Rgb(0x12, 0x34, 0x56))
        );
    }
}
