//! The hostile suite: bad flags, files, targets and faults against the real binaries. Each case
//! asserts the documented exit code, that the message names the rule and the value, and that
//! nothing changed: the files, their modes and the directories around the command, and (for cases
//! against a running agent) the agent's instances and operations. It ends with one line,
//! `hostile: N passed, N failed`, and fails if any case did.
//!
//! Add a case where a new input is refused: the table is the record of what the binaries refuse.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One bad input: what to run, and what must come back.
struct Case {
    name: &'static str,
    bin: &'static str,
    /// Arguments; `{dir}` is the case's scratch directory, `{agent}` the running agent's address.
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    /// Files to lay in `{dir}` before the run (`path`, `contents`).
    files: Vec<(&'static str, String)>,
    /// Extra setup in `{dir}` (FIFOs, symlinks, sockets, modes).
    setup: Option<fn(&Path)>,
    code: i32,
    /// Every fragment must appear in stderr: the rule and the value.
    says: Vec<String>,
    /// Most bytes stderr may hold (echoed values are bounded).
    max_stderr: usize,
    /// A case against the shared running agent: its state must not change.
    agent: bool,
}

impl Case {
    fn new(name: &'static str, bin: &'static str, args: &[&str], code: i32, says: &[&str]) -> Self {
        Self {
            name,
            bin,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            files: Vec::new(),
            setup: None,
            code,
            says: says.iter().map(|s| s.to_string()).collect(),
            max_stderr: 4096,
            agent: false,
        }
    }

    fn env(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.env.push((k, v.into()));
        self
    }

    fn file(mut self, path: &'static str, contents: impl Into<String>) -> Self {
        self.files.push((path, contents.into()));
        self
    }

    fn setup(mut self, f: fn(&Path)) -> Self {
        self.setup = Some(f);
        self
    }

    fn against_agent(mut self) -> Self {
        self.agent = true;
        self
    }
}

/// An environment value that means: remove the variable.
const UNSET: &str = "\u{0}unset";

/// `args` on micro-moe, as the borrowed strings [`Case::new`] takes.
fn micro_str(args: &[&'static str]) -> Vec<&'static str> {
    let mut v = args.to_vec();
    v.extend(["--model", "micro-moe"]);
    v
}

fn micro(args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend(["--model", "micro-moe"].map(String::from));
    v
}

/// micro-moe's `config.json` as the generator writes it; cases swap one value in.
const MICRO_CONFIG: &str = r#"{
  "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 128,
  "intermediate_size": 256, "kv_lora_rank": 64, "model_type": "deepseek_v2",
  "moe_intermediate_size": 64, "moe_layer_freq": 1, "n_routed_experts": 16,
  "n_shared_experts": 1, "num_attention_heads": 4, "num_experts_per_tok": 4,
  "num_hidden_layers": 4, "num_key_value_heads": 4, "q_lora_rank": null,
  "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "rms_norm_eps": 1e-6,
  "rope_theta": 10000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "v_head_dim": 32, "vocab_size": 1024
}"#;

fn micro_config(key: &str, value: &str) -> String {
    let at = MICRO_CONFIG
        .find(&format!("\"{key}\": "))
        .expect("key in MICRO_CONFIG");
    let start = at + key.len() + 4;
    let end = start + MICRO_CONFIG[start..].find([',', '\n']).expect("a value");
    format!("{}{value}{}", &MICRO_CONFIG[..start], &MICRO_CONFIG[end..])
}

/// A small valid scenario on micro-moe with `traffic` and `steps` swapped in.
fn scenario(top: &str, traffic: &str, steps: &str) -> String {
    format!(
        "name = \"hostile\"\n{top}\n[cluster]\nbackend = \"host\"\ndevices = 8\nhbm = \"256MiB\"\n\
         [model]\nname = \"micro-moe\"\nkv_tokens = 1024\n[serve]\nconfig = \"dp2tp2ep4\"\n\
         [traffic]\nprofile = \"poisson\"\noutput = {{ fixed = 4 }}\nseed = 4\n{traffic}\n{steps}\n"
    )
}

const TRAFFIC: &str = "rate = 20.0\nprompt = { fixed = 4 }\nduration_s = 1.0";
const STEP: &str = "[[scale]]\nat = \"500ms\"\nto = \"dp3tp2ep6\"";

/// The table. One case per class of input at least; see issue 13's list.
fn cases() -> Vec<Case> {
    let long_target = "dp2tp2ep4".repeat(12_000);
    vec![
        // ---- files that are not regular, or too big ----
        Case::new(
            "config.json is /dev/zero",
            "emoe-agent",
            &["inspect", "--model", "{dir}/m"],
            2,
            &[
                "{dir}/m/config.json",
                "character device, not a regular file",
            ],
        )
        .setup(|d| {
            std::fs::create_dir(d.join("m")).unwrap();
            std::os::unix::fs::symlink("/dev/zero", d.join("m/config.json")).unwrap();
        }),
        Case::new(
            "config.json is a FIFO",
            "emoe-agent",
            &["inspect", "--model", "{dir}/m"],
            2,
            &["{dir}/m/config.json", "FIFO"],
        )
        .setup(|d| {
            std::fs::create_dir(d.join("m")).unwrap();
            mkfifo(&d.join("m/config.json"));
        }),
        Case::new(
            "config.json is a symlink loop",
            "emoe-agent",
            &["inspect", "--model", "{dir}/m"],
            2,
            &["{dir}/m/config.json", "symlink loop"],
        )
        .setup(|d| {
            std::fs::create_dir(d.join("m")).unwrap();
            std::os::unix::fs::symlink("config.json", d.join("m/config.json")).unwrap();
        }),
        Case::new(
            "a scenario file that is /dev/zero",
            "emoe-agent",
            &["run", "/dev/zero"],
            2,
            &["/dev/zero", "not a regular file"],
        ),
        Case::new(
            "an inventory that is a FIFO",
            "emoe",
            &["--inventory", "{dir}/inv.toml", "--once"],
            2,
            &["{dir}/inv.toml", "FIFO"],
        )
        .setup(|d| mkfifo(&d.join("inv.toml"))),
        Case::new(
            "a console keymap that is /dev/zero",
            "emoe",
            &["config", "validate"],
            2,
            &["{dir}/config/keymap.toml", "not a regular file"],
        )
        .setup(|d| {
            std::fs::create_dir(d.join("config")).unwrap();
            std::os::unix::fs::symlink("/dev/zero", d.join("config/keymap.toml")).unwrap();
        }),
        // ---- counts and sizes in config.json ----
        Case::new(
            "four billion layers",
            "emoe-agent",
            &["inspect", "--model", "{dir}/m"],
            2,
            &["num_hidden_layers", "4000000000"],
        )
        .file(
            "m/config.json",
            micro_config("num_hidden_layers", "4000000000"),
        ),
        Case::new(
            "shared experts times their width overflows",
            "emoe-agent",
            &["inspect", "--model", "{dir}/m"],
            2,
            &["n_shared_experts"],
        )
        .file(
            "m/config.json",
            micro_config("n_shared_experts", "70000").replace(
                "\"moe_intermediate_size\": 64",
                "\"moe_intermediate_size\": 70000",
            ),
        ),
        // ---- scenario counts, sizes and times ----
        Case::new(
            "a four-billion-token prompt",
            "emoe-agent",
            &["run", "{dir}/s.toml"],
            2,
            &["prompt", "4000000000"],
        )
        .file(
            "s.toml",
            scenario(
                "",
                "rate = 20.0\nprompt = { fixed = 4000000000 }\nduration_s = 1.0",
                STEP,
            ),
        ),
        Case::new(
            "a zero window",
            "emoe-agent",
            &["run", "{dir}/s.toml"],
            2,
            &["window", "0ns"],
        )
        .file("s.toml", scenario("window = \"0s\"", TRAFFIC, STEP)),
        Case::new(
            "a step after the traffic ends",
            "emoe-agent",
            &["run", "{dir}/s.toml"],
            2,
            &["at", "3600s"],
        )
        .file(
            "s.toml",
            scenario("", TRAFFIC, "[[scale]]\nat = \"1h\"\nto = \"dp3tp2ep6\""),
        ),
        Case::new(
            "a duration past any clock",
            "emoe-agent",
            &["run", "{dir}/s.toml"],
            2,
            &["3000000000000000000000s"],
        )
        .file(
            "s.toml",
            scenario(
                "[slo]\nttft = \"3000000000000000000000s\"\ntpot = \"1s\"",
                TRAFFIC,
                STEP,
            ),
        ),
        Case::new(
            "a step that can never fit",
            "emoe-agent",
            &["run", "{dir}/s.toml"],
            3,
            &["dp8tp2ep16", "not enough devices"],
        )
        .file(
            "s.toml",
            scenario(
                "",
                TRAFFIC,
                "[[scale]]\nat = \"500ms\"\nto = \"dp8tp2ep16\"",
            ),
        ),
        // ---- sockets and exposure ----
        Case::new(
            "a world-writable default socket directory",
            "emoe-agent",
            &micro_str(&["serve"]),
            2,
            &["{dir}/emoe-hostile", "group- or world-writable (mode 0777)"],
        )
        .env("XDG_RUNTIME_DIR", UNSET)
        .env("TMPDIR", "{dir}")
        .env("USER", "hostile")
        .setup(world_writable_socket_dir),
        Case::new(
            "a client on a world-writable default socket directory",
            "emoe-agent",
            &["status"],
            2,
            &["{dir}/emoe-hostile", "world-writable"],
        )
        .env("XDG_RUNTIME_DIR", UNSET)
        .env("TMPDIR", "{dir}")
        .env("USER", "hostile")
        .setup(world_writable_socket_dir),
        Case::new(
            "--socket on a regular file",
            "emoe-agent",
            &micro_str(&["serve", "--socket", "{dir}/file"]),
            2,
            &["{dir}/file", "not a socket; not replacing it"],
        )
        .file("file", "precious"),
        Case::new(
            "--socket on a symlink",
            "emoe-agent",
            &micro_str(&["serve", "--socket", "{dir}/link"]),
            2,
            &["{dir}/link", "symbolic link"],
        )
        .file("target", "precious")
        .setup(|d| std::os::unix::fs::symlink(d.join("target"), d.join("link")).unwrap()),
        Case::new(
            "--socket on a directory",
            "emoe-agent",
            &micro_str(&["serve", "--socket", "{dir}/d"]),
            2,
            &["{dir}/d", "is a directory"],
        )
        .setup(|d| std::fs::create_dir(d.join("d")).unwrap()),
        Case::new(
            "a failed start chmods no parent and leaves no socket",
            "emoe-agent",
            &[
                "serve",
                "--socket",
                "{dir}/open/agent.sock",
                "--model",
                "micro-moe",
                "--hbm",
                "1MiB",
            ],
            3,
            &["not enough memory"],
        )
        .setup(|d| std::fs::create_dir(d.join("open")).unwrap()),
        Case::new(
            "--listen on a busy port fails before the model loads",
            "emoe-agent",
            &micro_str(&["serve", "--listen", "tcp://127.0.0.1:{busy_port}"]),
            2,
            &["127.0.0.1:{busy_port}", "cannot listen"],
        ),
        Case::new(
            "--http on a public address without a token",
            "emoe-agent",
            &micro_str(&["serve", "--http", "tcp://0.0.0.0:1"]),
            2,
            &["--http tcp://0.0.0.0:1", "--allow-remote and --token-file"],
        ),
        Case::new(
            "--http without tcp://",
            "emoe-agent",
            &micro_str(&["serve", "--http", "127.0.0.1:8000"]),
            2,
            &["--http 127.0.0.1:8000", "use tcp://HOST:PORT"],
        ),
        Case::new(
            "--http on a busy port fails before the model loads",
            "emoe-agent",
            &micro_str(&["serve", "--http", "tcp://127.0.0.1:{busy_port}"]),
            2,
            &["127.0.0.1:{busy_port}", "cannot listen"],
        ),
        Case::new(
            "--max-queue 0",
            "emoe-agent",
            &micro_str(&["serve", "--max-queue", "0"]),
            2,
            &["--max-queue", "0"],
        ),
        Case::new(
            "--metrics on a public address without a token",
            "emoe-agent",
            &micro_str(&["serve", "--metrics", "0.0.0.0:1"]),
            2,
            &["--metrics 0.0.0.0:1", "--allow-remote and --token-file"],
        ),
        Case::new(
            "--allow-remote without a token",
            "emoe-agent",
            &micro_str(&["serve", "--allow-remote"]),
            2,
            &["--allow-remote needs --token-file"],
        ),
        Case::new(
            "a token file that is /dev/zero",
            "emoe",
            &["--token-file", "/dev/zero", "--once"],
            2,
            &["/dev/zero", "not a regular file"],
        ),
        Case::new(
            "serve with an hour's tick",
            "emoe-agent",
            &micro_str(&["serve", "--tick", "1h"]),
            2,
            &["--tick", "1h", "10ms..=1m"],
        ),
        // ---- the autoscaler's flags ----
        Case::new(
            "--min-dp above --max-dp",
            "emoe-agent",
            &micro_str(&[
                "serve",
                "--socket",
                "{dir}/a.sock",
                "--autoscale",
                "slo",
                "--min-dp",
                "3",
                "--max-dp",
                "2",
            ]),
            2,
            &["--min-dp 3", "--max-dp 2", "the range is empty"],
        ),
        Case::new(
            "--min-dp above the starting DP",
            "emoe-agent",
            &micro_str(&[
                "serve",
                "--socket",
                "{dir}/a.sock",
                "--autoscale",
                "slo",
                "--min-dp",
                "3",
            ]),
            2,
            &["--min-dp 3", "the starting DP 2"],
        ),
        Case::new(
            "--max-dp beyond the node's devices",
            "emoe-agent",
            &micro_str(&[
                "serve",
                "--socket",
                "{dir}/a.sock",
                "--devices",
                "8",
                "--autoscale",
                "slo",
                "--max-dp",
                "5",
            ]),
            2,
            &["--max-dp 5", "needs 10 devices at TP 2", "the node has 8"],
        ),
        Case::new(
            "a TTFT SLO of zero",
            "emoe-agent",
            &micro_str(&["serve", "--autoscale", "slo", "--slo-ttft", "0s"]),
            2,
            &["--slo-ttft", "`0s`", "1ms..=1h"],
        ),
        Case::new(
            "an SLO window that is not a duration",
            "emoe-agent",
            &micro_str(&["serve", "--autoscale", "slo", "--slo-window", "soon"]),
            2,
            &["--slo-window", "`soon`", "not a duration"],
        ),
        Case::new(
            "an attainment threshold above 1",
            "emoe-agent",
            &micro_str(&["serve", "--autoscale", "slo", "--slo-threshold", "1.5"]),
            2,
            &["--slo-threshold", "`1.5`", "0 < x <= 1"],
        ),
        Case::new(
            "an unknown autoscaler mode",
            "emoe-agent",
            &micro_str(&["serve", "--autoscale", "queue"]),
            2,
            &["--autoscale", "queue"],
        ),
        Case::new(
            "resume without an incarnation",
            "emoe-agent",
            &["watch", "--agent", "{agent}", "--resume-from", "5"],
            2,
            &["--resume-from", "`5`", "INCARNATION:SEQ"],
        )
        .against_agent(),
        Case::new(
            "a mutating call with a token file that is a FIFO",
            "emoe-agent",
            &[
                "scale",
                "--agent",
                "{agent}",
                "--to",
                "dp3tp2ep6",
                "--yes",
                "--token-file",
                "{dir}/token",
            ],
            2,
            &["{dir}/token", "FIFO"],
        )
        .setup(|d| mkfifo(&d.join("token")))
        .against_agent(),
        // ---- the embedded agent cannot start: the console says why, at once ----
        Case::new(
            "an embedded node too small for its model",
            "emoe",
            &["--once", "--model", "micro-moe", "--hbm", "1MiB"],
            3,
            &["not enough memory", "0/0"],
        ),
        // ---- environment ----
        Case::new(
            "an empty EMOE_CACHE_DIR",
            "emoe-agent",
            &["inspect", "--model", "micro-moe"],
            2,
            &["EMOE_CACHE_DIR", "empty"],
        )
        .env("EMOE_CACHE_DIR", ""),
        // ---- flags ----
        Case::new(
            "console theme not built in",
            "emoe",
            &["--theme", "neon", "--once"],
            2,
            &["--theme", "neon", "dark, light, mono, high-contrast"],
        ),
        Case::new(
            "console keymap not built in",
            "emoe",
            &["--keymap", "emacs", "--once"],
            2,
            &["--keymap", "emacs", "default, vim"],
        ),
        Case::new(
            "zero KV tokens",
            "emoe-agent",
            &["inspect", "--kv-tokens", "0"],
            2,
            &["--kv-tokens", "0"],
        ),
        Case::new(
            "huge KV tokens",
            "emoe-agent",
            &["inspect", "--kv-tokens", "99999999999"],
            2,
            &["--kv-tokens", "99999999999"],
        ),
        Case::new(
            "EiB granularity",
            "emoe-agent",
            &["inspect", "--granularity", "1EiB"],
            2,
            &["--granularity", "1EiB", "4KiB..=1GiB"],
        ),
        Case::new(
            "EiB of memory per device",
            "emoe-agent",
            &["inspect", "--hbm", "1EiB"],
            2,
            &["--hbm", "1EiB", "16TiB"],
        ),
        Case::new(
            "bench watch with a zero tick",
            "emoe-agent",
            &["bench", "watch", "--tick", "0s"],
            2,
            &["--tick", "0s", "10ms..=1m"],
        ),
        Case::new(
            "bench watch with NaN traffic",
            "emoe-agent",
            &["bench", "watch", "--traffic", "NaN"],
            2,
            &["--traffic", "NaN"],
        ),
        Case {
            max_stderr: 2048,
            ..Case::new(
                "a 100 KB target is echoed bounded",
                "emoe-agent",
                &[
                    "plan",
                    "--embedded",
                    "--model",
                    "micro-moe",
                    "--to",
                    &long_target,
                ],
                2,
                &["--to", "characters)"],
            )
        },
        // ---- the console waiting on an absent agent reports its own wait ----
        Case::new(
            "once waits as long as it was told",
            "emoe",
            &[
                "--once",
                "--wait",
                "1s",
                "--agent",
                "unix:{dir}/absent.sock",
            ],
            1,
            &["--wait 1s"],
        ),
        // ---- a running agent's state is untouched by refused calls ----
        Case::new(
            "scale to a config with another TP",
            "emoe-agent",
            &["scale", "--agent", "{agent}", "--to", "dp2tp4ep8", "--yes"],
            2,
            &["TP", "dp2tp4ep8"],
        )
        .against_agent(),
        Case::new(
            "scale to more devices than the node has",
            "emoe-agent",
            &[
                "scale",
                "--agent",
                "{agent}",
                "--to",
                "dp64tp2ep128",
                "--yes",
            ],
            3,
            &["dp64tp2ep128"],
        )
        .against_agent(),
        Case::new(
            "cancel an operation that does not exist",
            "emoe-agent",
            &["cancel", "--agent", "{agent}", "999"],
            2,
            &["999"],
        )
        .against_agent(),
    ]
}

/// `{dir}/emoe-hostile`, the default socket directory of user `hostile` under `TMPDIR={dir}`,
/// made 0777 as another user could make it.
fn world_writable_socket_dir(d: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let s = d.join("emoe-hostile");
    std::fs::create_dir(&s).unwrap();
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o777)).unwrap();
}

fn mkfifo(p: &Path) {
    rustix::fs::mkfifoat(rustix::fs::CWD, p, rustix::fs::Mode::from_raw_mode(0o600))
        .expect("mkfifo");
}

/// A loopback port something already listens on, for the whole run.
fn busy_port() -> u16 {
    static BUSY: std::sync::OnceLock<std::net::TcpListener> = std::sync::OnceLock::new();
    BUSY.get_or_init(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port"))
        .local_addr()
        .expect("its address")
        .port()
}

/// Everything under `root` that a command could change: type, mode, size, mtime, link target.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let ft = m.file_type();
        let kind = if ft.is_symlink() {
            format!(
                "link → {}",
                std::fs::read_link(&p).map_or("?".into(), |t| t.display().to_string())
            )
        } else if ft.is_dir() {
            "dir".into()
        } else if ft.is_fifo() {
            "fifo".into()
        } else if ft.is_socket() {
            "socket".into()
        } else {
            format!(
                "file {} bytes, mtime {}",
                m.len(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000
            )
        };
        out.insert(p.clone(), format!("{kind}, mode {:o}", m.mode() & 0o7777));
        if ft.is_dir()
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    out
}

/// The shared agent: micro-moe on 8 host devices, on a socket in its own directory.
struct Agent {
    child: std::process::Child,
    sock: PathBuf,
}

impl Agent {
    fn start(dir: &Path, cache: &Path) -> Self {
        let sock = dir.join("agent.sock");
        let child = Command::new(common::bin("emoe-agent"))
            .args(micro(&[
                "serve",
                "--devices",
                "8",
                "--hbm",
                "256MiB",
                "--kv-tokens",
                "256",
            ]))
            .arg("--socket")
            .arg(&sock)
            .env("EMOE_CACHE_DIR", cache)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start emoe-agent serve");
        let a = Self { child, sock };
        let end = Instant::now() + Duration::from_secs(120);
        while a.state().is_none() {
            assert!(Instant::now() < end, "the agent did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        a
    }

    fn addr(&self) -> String {
        format!("unix:{}", self.sock.display())
    }

    /// What a refused call must not change: instances and operations.
    fn state(&self) -> Option<String> {
        let out = Command::new(common::bin("emoe-agent"))
            .args(["status", "--json", "--agent", &self.addr()])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(format!("{} {}", v["instances"], v["operations"]))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Run `cmd` to its end, or kill it after `limit` (a hang is a failure, not a stuck suite).
fn output_within(mut cmd: Command, limit: Duration) -> Result<std::process::Output, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {limit:?}: killed"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(std::process::Output {
        status,
        stdout: o.join().unwrap_or_default(),
        stderr: e.join().unwrap_or_default(),
    })
}

/// Run one case; `Err` says what was wrong.
fn run(c: &Case, scratch: &Path, cache: &Path, agent: Option<&Agent>) -> Result<(), String> {
    let dir = scratch.join(c.name.replace(' ', "-"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for (p, text) in &c.files {
        let p = dir.join(p);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&p, text.replace("{dir}", &dir.display().to_string()))
            .map_err(|e| e.to_string())?;
    }
    if let Some(f) = c.setup {
        f(&dir);
    }
    let agent_addr = agent.map(Agent::addr).unwrap_or_default();
    let subst = |s: &str| {
        s.replace("{dir}", &dir.display().to_string())
            .replace("{agent}", &agent_addr)
            .replace("{busy_port}", &busy_port().to_string())
    };
    let before = (tree(&dir), tree(cache));
    let state_before = agent.and_then(Agent::state);
    let mut cmd = Command::new(common::bin(c.bin));
    cmd.args(c.args.iter().map(|a| subst(a)))
        .current_dir(&dir)
        .env("EMOE_CACHE_DIR", cache)
        .env("EMOE_CONFIG_DIR", dir.join("config"))
        .stdin(Stdio::null());
    for (k, v) in &c.env {
        if v == UNSET {
            cmd.env_remove(k);
        } else {
            cmd.env(k, subst(v));
        }
    }
    let out =
        output_within(cmd, Duration::from_secs(120)).map_err(|e| format!("{}: {e}", c.bin))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut wrong = Vec::new();
    if out.status.code() != Some(c.code) {
        wrong.push(format!("exit {:?}, want {}", out.status.code(), c.code));
    }
    for s in &c.says {
        if !stderr.contains(&subst(s)) {
            wrong.push(format!("stderr lacks `{s}`"));
        }
    }
    if stderr.len() > c.max_stderr {
        wrong.push(format!(
            "stderr is {} bytes, over {}",
            stderr.len(),
            c.max_stderr
        ));
    }
    if (tree(&dir), tree(cache)) != before {
        wrong.push("files changed".into());
    }
    if agent.is_some() && agent.and_then(Agent::state) != state_before {
        wrong.push("the agent's state changed".into());
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        let shown: String = stderr.chars().take(600).collect();
        Err(format!("{}; stderr: {shown}", wrong.join("; ")))
    }
}

#[test]
fn every_hostile_input_is_refused_by_rule_and_changes_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cases = cases();
    // One agent for the cases that need one, its checkpoint generated before any case runs so
    // the cache holds still.
    let agent = cases
        .iter()
        .any(|c| c.agent)
        .then(|| Agent::start(scratch.path(), cache.path()));
    let (mut passed, mut failed) = (0, Vec::new());
    for c in &cases {
        let a = if c.agent { agent.as_ref() } else { None };
        match run(c, scratch.path(), cache.path(), a) {
            Ok(()) => passed += 1,
            Err(e) => failed.push(format!("{}: {e}", c.name)),
        }
    }
    use std::io::Write;
    let mut err = std::io::stderr();
    for f in &failed {
        let _ = writeln!(err, "hostile case failed: {f}");
    }
    let _ = writeln!(err, "hostile: {passed} passed, {} failed", failed.len());
    assert!(
        failed.is_empty(),
        "{} hostile cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
