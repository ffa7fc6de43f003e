//! A real `emoe-agent serve` for the hardening tests: started, awaited, signalled, timed.
#![allow(dead_code)] // each test file uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_emoe-agent");

/// The flags of a small node.
pub const NODE: [&str; 6] = [
    "--model",
    "micro-moe",
    "--hbm",
    "256MiB",
    "--config",
    "dp2tp2ep4",
];

/// A model cache shared by the tests of a run (generating the checkpoint once), unless a test
/// needs a fresh one.
pub fn cache() -> PathBuf {
    std::env::var_os("EMOE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("emoe-hardening-cache"))
}

/// `emoe-agent ARGS` to its end, stdin closed.
pub fn run(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .stdin(Stdio::null())
        .env("EMOE_CACHE_DIR", cache());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("run emoe-agent")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub struct Agent {
    pub child: Child,
    pub sock: Option<PathBuf>,
}

impl Agent {
    /// `serve ARGS` with `cmd` adjusted by `f`; waits until `ready` holds (polling, 120 s).
    pub fn spawn(args: &[&str], f: impl FnOnce(&mut Command), ready: impl Fn() -> bool) -> Self {
        let mut c = Command::new(BIN);
        c.arg("serve")
            .args(args)
            .env("EMOE_CACHE_DIR", cache())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        f(&mut c);
        let mut child = c.spawn().expect("spawn emoe-agent serve");
        let end = Instant::now() + Duration::from_secs(120);
        while !ready() {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("the agent exited with {st} before it was ready: {err}");
            }
            assert!(Instant::now() < end, "the agent did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, sock: None }
    }

    /// On the Unix socket `sock` (ready once a client can connect).
    pub fn on_socket(sock: &Path, extra: &[&str]) -> Self {
        let s = sock.to_str().unwrap().to_string();
        let mut args = vec!["--socket", s.as_str()];
        args.extend_from_slice(&NODE);
        args.extend_from_slice(extra);
        let p = sock.to_path_buf();
        let mut a = Self::spawn(
            &args,
            |_| {},
            || std::os::unix::net::UnixStream::connect(&p).is_ok(),
        );
        a.sock = Some(sock.to_path_buf());
        a
    }

    pub fn addr(&self) -> String {
        format!("unix:{}", self.sock.as_ref().unwrap().display())
    }

    /// SIGTERM; the time to exit (asserting it exits 0 within 30 s) and its stderr.
    pub fn terminate(mut self) -> (Duration, String) {
        let t0 = Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let end = t0 + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let took = t0.elapsed();
                let mut err = String::new();
                use std::io::Read;
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                assert!(st.success(), "the agent exited with {st}: {err}");
                return (took, err);
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the agent did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}
