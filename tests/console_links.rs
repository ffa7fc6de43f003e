//! The console's links to its agents, end to end with the real `emoe` and `emoe-agent`: a node
//! watched over `ssh://` (a stand-in ssh that runs `emoe-agent bridge`), `--once` on an agent
//! that is not there, flags refused by rule, and in a real terminal (tmux) a node that goes
//! stale → live → stale with the agent, then SIGTERM ending the console with the terminal
//! restored. Every process a test starts is killed on drop, so a failing test leaves none
//! behind. The tmux test skips when tmux is not installed.

mod common;

use common::tmux::{Tmux, tmux_or_skip};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A temp dir with the config and cache dirs every `emoe`/`emoe-agent` here is given, so nothing
/// touches the user's own.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> PathBuf {
        self.path("config")
    }

    fn cache(&self) -> PathBuf {
        self.path("cache")
    }

    /// `bin` with the private config and cache dirs and no stdin.
    fn cmd(&self, bin: &str) -> Command {
        let mut c = Command::new(common::bin(bin));
        c.env("EMOE_CONFIG_DIR", self.config())
            .env("EMOE_CACHE_DIR", self.cache())
            .stdin(Stdio::null());
        c
    }

    /// Run `emoe ARGS` to its end (killed after `secs`); stdout and stderr go through files, so
    /// no pipe can fill up.
    fn emoe(&self, args: &[&str], secs: u64) -> Run {
        let out = self.path("emoe.out");
        let err = self.path("emoe.err");
        // The binaries are built (once) before the clock starts: a build is not emoe's time.
        let mut cmd = self.cmd("emoe");
        let start = Instant::now();
        let child = cmd
            .args(args)
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"))
            .spawn()
            .expect("start emoe");
        let mut child = Killed(child);
        let end = start + Duration::from_secs(secs);
        let status = loop {
            if let Some(st) = child.0.try_wait().expect("wait for emoe") {
                break st;
            }
            if Instant::now() > end {
                panic!(
                    "emoe {args:?} still running after {secs} s; stdout so far:\n{}\nstderr:\n{}",
                    read(&out),
                    read(&err)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Run {
            status,
            took: start.elapsed(),
            stdout: read(&out),
            stderr: read(&err),
        }
    }
}

/// What a finished `emoe` did.
struct Run {
    status: ExitStatus,
    took: Duration,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} after {:.1} s\n--- stdout\n{}--- stderr\n{}",
            self.status,
            self.took.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A child that is killed (and reaped) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `emoe-agent serve` on `sock` (micro-moe, dp1tp1ep1 on 4 devices); killed on drop.
struct Agent {
    child: Killed,
    sock: PathBuf,
}

/// The config the test agents run: distinct from the embedded default (dp2tp2ep4).
const CONFIG: &str = "dp1tp1ep1";

impl Agent {
    fn start(env: &Env, sock: &Path) -> Self {
        let child = env
            .cmd("emoe-agent")
            .arg("serve")
            .arg("--socket")
            .arg(sock)
            .args(["--model", "micro-moe", "--devices", "4", "--hbm", "256MiB"])
            .args(["--config", CONFIG, "--tick", "50ms", "--traffic", "5"])
            .stdout(Stdio::null())
            .stderr(File::create(env.path("agent.err")).expect("agent stderr file"))
            .spawn()
            .expect("start emoe-agent serve");
        let agent = Self {
            child: Killed(child),
            sock: sock.to_path_buf(),
        };
        let end = Instant::now() + Duration::from_secs(120);
        while !agent.sock.exists() {
            assert!(
                Instant::now() < end,
                "the agent did not start: {}",
                read(&env.path("agent.err"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    fn addr(&self) -> String {
        format!("unix:{}", self.sock.display())
    }

    /// Kill the agent at once (SIGKILL): its connections drop without a goodbye.
    fn kill(mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }
}

/// `p` for single quotes in sh (temp paths have neither quotes nor spaces).
fn quoted(p: &Path) -> &str {
    let s = p.to_str().expect("a UTF-8 path");
    assert!(!s.contains('\'') && !s.contains(' '), "{s}");
    s
}

/// Is process `pid` gone (or a zombie, gone but for its exit status)?
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// The overview's row of the node: the line that shows the agent's config.
fn node_row(frame: &str) -> Option<&str> {
    frame.lines().find(|l| l.contains(CONFIG))
}

#[test]
fn console_over_ssh_shows_the_node() {
    let env = Env::new();
    let agent = Agent::start(&env, &env.path("agent.sock"));
    // The stand-in for ssh: it saves its pid and arguments, insists on `-T` first and the host
    // among them, then becomes the bridge to the agent, as sshd would run it on the node.
    let ssh = env.path("ssh");
    std::fs::write(
        &ssh,
        format!(
            "#!/bin/sh\necho $$ > '{dir}/ssh.pid'\nprintf '%s\\n' \"$@\" > '{dir}/ssh.args'\n\
             [ \"$1\" = -T ] || {{ echo \"stand-in: -T is not first: $*\" >&2; exit 2; }}\n\
             case \" $* \" in *\" fakehost emoe-agent bridge \"*) ;; \
             *) echo \"stand-in: no 'fakehost emoe-agent bridge' in: $*\" >&2; exit 2;; esac\n\
             exec '{bin}' bridge --socket '{sock}'\n",
            dir = quoted(env.dir.path()),
            bin = quoted(&common::bin("emoe-agent")),
            sock = quoted(&agent.sock),
        ),
    )
    .expect("write the stand-in");
    // Run through sh: no executable file is written, so no ETXTBSY from a concurrent fork.
    let ssh_command = format!("sh {}", quoted(&ssh));
    let run = env.emoe(
        &[
            "--once",
            "--agent",
            "ssh://tester@fakehost:2222",
            "--ssh-command",
            &ssh_command,
            "--size",
            "120x30",
        ],
        60,
    );
    assert_eq!(run.status.code(), Some(0), "{run}");
    let args = read(&env.path("ssh.args"));
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(args.first(), Some(&"-T"), "the ssh arguments: {args:?}");
    for want in ["2222", "tester", "fakehost"] {
        assert!(
            args.contains(&want),
            "no {want} in the ssh arguments {args:?}"
        );
    }
    assert!(
        args.ends_with(&["fakehost", "emoe-agent", "bridge"]),
        "the remote command: {args:?}"
    );
    // The frame: the node live, running the agent's config on the agent's model and devices.
    let row = node_row(&run.stdout).unwrap_or_else(|| panic!("no row with {CONFIG}: {run}"));
    assert!(row.contains("● live"), "the node is not live: {row}\n{run}");
    assert!(row.contains("micro-moe"), "the agent's model: {row}\n{run}");
    assert!(
        run.stdout.contains("Cluster: 1 node, 4 devices"),
        "the agent's 4 devices: {run}"
    );
    assert!(!run.stdout.contains("stale"), "{run}");
    // The ssh process (the bridge, after its exec) ends with the console.
    let pid: u32 = read(&env.path("ssh.pid")).trim().parse().expect("ssh pid");
    let end = Instant::now() + Duration::from_secs(5);
    while !gone(pid) {
        assert!(
            Instant::now() < end,
            "the ssh process {pid} outlived `emoe --once` by 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(agent);
}

#[test]
fn once_reports_an_unreachable_agent() {
    let env = Env::new();
    let run = env.emoe(
        &[
            "--once",
            "--agent",
            "unix:/nonexistent/x.sock",
            "--size",
            "120x20",
            "--wait",
            "2s",
        ],
        10,
    );
    assert_eq!(run.status.code(), Some(1), "{run}");
    // The frame is still printed, with the node marked stale under its address.
    assert!(run.stdout.contains("Cluster: 1 node"), "{run}");
    assert!(run.stdout.contains("unix:/nonexistent/x.sock"), "{run}");
    let row = run
        .stdout
        .lines()
        .find(|l| l.contains("unix:/no"))
        .filter(|l| l.contains("stale"));
    assert!(row.is_some(), "no stale row for the node: {run}");
    assert!(!run.stdout.contains("● live"), "{run}");
    assert!(
        run.stderr.contains("some nodes did not report"),
        "stderr: {run}"
    );
}

#[test]
fn bad_flags_are_refused_with_the_rule() {
    let env = Env::new();
    // An address of no known scheme.
    let run = env.emoe(&["--agent", "ftp://x"], 30);
    assert_eq!(run.status.code(), Some(2), "{run}");
    assert!(run.stderr.contains("ftp://x"), "{run}");
    assert!(run.stderr.contains("unix:PATH"), "the rule: {run}");
    assert!(run.stdout.is_empty(), "{run}");
    // A frame too small to draw.
    let run = env.emoe(&["--once", "--size", "10x2"], 30);
    assert_eq!(run.status.code(), Some(2), "{run}");
    assert!(run.stderr.contains("10x2"), "{run}");
    assert!(run.stderr.contains("WIDTHxHEIGHT"), "the rule: {run}");
    assert!(run.stdout.is_empty(), "{run}");
    // An inventory with a bad address: refused with the file and a line number.
    let inv = env.path("inventory.toml");
    std::fs::write(&inv, "[[nodes]]\naddr = \"bogus\"\n").expect("write the inventory");
    let run = env.emoe(&["--inventory", inv.to_str().expect("UTF-8 path")], 30);
    assert_eq!(run.status.code(), Some(2), "{run}");
    let at = format!("{}:", inv.display());
    let pos = run.stderr.find(&at).unwrap_or_else(|| panic!("{run}"));
    let line = &run.stderr[pos + at.len()..];
    assert!(
        line.starts_with(|c: char| c.is_ascii_digit()),
        "no line number after the file: {run}"
    );
    assert!(run.stderr.contains("bogus"), "{run}");
    assert!(run.stderr.contains("unix:PATH"), "the rule: {run}");
}

/// The bad address is on line 2, so the error should say `FILE:2:`. The console says `FILE:1:1`:
/// it points at the `[[nodes]]` header (the span of the whole entry), not at the `addr` value.
#[test]
fn inventory_error_names_the_line_of_the_bad_addr() {
    let env = Env::new();
    let inv = env.path("inventory.toml");
    std::fs::write(&inv, "[[nodes]]\naddr = \"bogus\"\n").expect("write the inventory");
    let run = env.emoe(&["--inventory", inv.to_str().expect("UTF-8 path")], 30);
    assert_eq!(run.status.code(), Some(2), "{run}");
    assert!(
        run.stderr.contains(&format!("{}:2:", inv.display())),
        "{run}"
    );
}

/// Kills (SIGKILL) the process whose pid is in `file`, if it is still `exe`, when dropped.
struct PidFileGuard {
    file: PathBuf,
    exe: PathBuf,
}

impl PidFileGuard {
    fn pid(&self) -> Option<u32> {
        read(&self.file).trim().parse().ok()
    }

    /// The pid, once it is in the file and runs `exe`; panics after `secs`.
    fn wait(&self, secs: u64) -> u32 {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(pid) = self.pid().filter(|&p| self.runs_exe(p)) {
                return pid;
            }
            assert!(
                Instant::now() < end,
                "no emoe pid in {}",
                self.file.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn runs_exe(&self, pid: u32) -> bool {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == self.exe)
    }
}

impl Drop for PidFileGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid().filter(|&p| self.runs_exe(p)) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .output();
        }
    }
}

#[test]
fn stale_then_live_then_stale_and_sigterm_restores() {
    if !tmux_or_skip("stale_then_live_then_stale_and_sigterm_restores") {
        return;
    }
    let env = Env::new();
    let emoe = common::bin("emoe");
    let sock = env.path("agent.sock");
    let guard = PidFileGuard {
        file: env.path("emoe.pid"),
        exe: std::fs::canonicalize(&emoe).expect("emoe path"),
    };
    let tmux = Tmux::new("links");
    // `exec` keeps emoe on the terminal (a job put in the background would get /dev/null for
    // stdin) and its pid the one written.
    let cmd = format!(
        "EMOE_CACHE_DIR={cache} EMOE_CONFIG_DIR={config} TERM=xterm-256color \
         sh -c 'echo $$ > {pidfile}; exec {emoe} --agent unix:{sock}'; \
         echo EMOE-EXITED $?; sleep 60",
        cache = quoted(&env.cache()),
        config = quoted(&env.config()),
        pidfile = quoted(&guard.file),
        emoe = quoted(&emoe),
        sock = quoted(&sock),
    );
    tmux.start(&cmd, 120, 40);
    let pid = guard.wait(30);

    // No agent yet: the node is stale, under its address.
    tmux.wait_until("the node stale", 30, |s| {
        s.lines()
            .any(|l| l.contains("unix:/") && l.contains("stale"))
    });
    // The agent comes up: the console reconnects by itself (backoff at most 10 s).
    let agent = Agent::start(&env, &sock);
    assert_eq!(agent.addr(), format!("unix:{}", sock.display()));
    tmux.wait_until("the node live", 30, |s| {
        node_row(s).is_some_and(|r| r.contains("● live"))
    });
    // The agent dies: the node goes stale again, keeping its last state.
    agent.kill();
    tmux.wait_until("the node stale again", 15, |s| {
        node_row(s).is_some_and(|r| r.contains("stale")) && !s.contains("● live")
    });

    // SIGTERM ends the loop as a quit does: exit 0 and the terminal restored.
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -TERM {pid}");
    let s = tmux.wait_for("EMOE-EXITED", 15);
    assert!(s.contains("EMOE-EXITED 0"), "{s}");
    assert!(!s.contains("Cluster:"), "the console's screen is gone: {s}");
    let alt = tmux.run(&["display-message", "-p", "-t", "emoe", "#{alternate_on}"]);
    assert_eq!(alt.trim(), "0", "alternate screen still on");
    assert!(gone(pid), "emoe {pid} still running");
}
