//! `emoe-agent bridge` and `ssh://` agent addresses against a real agent. No sshd is needed: a
//! stand-in for ssh (a shell script given as the ssh command) checks the arguments it gets and
//! runs the bridge locally, as sshd would on the agent's host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emoe_agent::daemon::client::{AgentAddr, ConnectOptions, connect, connect_with};
use emoe_agent::daemon::proto::{self, watch_update::Body};
use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Uri};

const BIN: &str = env!("CARGO_BIN_EXE_emoe-agent");

/// A running `emoe-agent serve` on a socket in a temp dir; stopped on drop.
struct Agent {
    child: Child,
    sock: PathBuf,
    dir: tempfile::TempDir,
}

impl Agent {
    async fn start() -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let sock = dir.path().join("a.sock");
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--socket")
            .arg(&sock)
            .args(["--model", "micro-moe", "--devices", "4", "--hbm", "256MiB"])
            .args(["--config", "dp1tp1ep1", "--tick", "50ms", "--traffic", "5"])
            .env("EMOE_CACHE_DIR", dir.path().join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start emoe-agent serve");
        let agent = Agent { child, sock, dir };
        let addr = AgentAddr::Unix(agent.sock.clone());
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(mut c) = connect(&addr).await
                && c.get_snapshot(proto::GetSnapshotRequest {}).await.is_ok()
            {
                return agent;
            }
            assert!(Instant::now() < end, "the agent did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Write a stand-in for ssh into the temp dir: `body` is its shell text after it has saved
    /// its pid to `pid` and its arguments, one a line, to `args`. Returns the ssh command.
    fn stand_in(&self, name: &str, body: &str) -> String {
        let d = self.dir.path().join(name);
        std::fs::create_dir(&d).expect("stand-in dir");
        let script = d.join("ssh");
        let text = format!(
            "#!/bin/sh\necho $$ > '{dir}/pid'\nprintf '%s\\n' \"$@\" > '{dir}/args'\n{body}\n",
            dir = quoted(&d)
        );
        std::fs::write(&script, text).expect("write the stand-in");
        // Run through sh: no executable file is written, so no ETXTBSY from a concurrent fork;
        // it also makes the ssh command two words.
        format!("sh {}", quoted(&script))
    }

    /// A stand-in that checks for `-T` and `host`, then becomes the bridge to this agent.
    fn bridging_stand_in(&self, name: &str, host: &str) -> String {
        self.stand_in(
            name,
            &format!(
                "[ \"$1\" = -T ] || {{ echo \"stand-in: -T is not first: $*\" >&2; exit 2; }}\n\
                 case \" $* \" in *\" {host} emoe-agent bridge \"*) ;; \
                 *) echo \"stand-in: no '{host} emoe-agent bridge' in: $*\" >&2; exit 2;; esac\n\
                 exec '{bin}' bridge --socket '{sock}'",
                bin = quoted(Path::new(BIN)),
                sock = quoted(&self.sock)
            ),
        )
    }

    fn read(&self, stand_in: &str, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(stand_in).join(file))
            .unwrap_or_else(|e| panic!("{stand_in}/{file}: {e}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `p` for single quotes in sh (temp paths have no quote in them).
fn quoted(p: &Path) -> String {
    let s = p.to_str().expect("a UTF-8 path");
    assert!(!s.contains('\'') && !s.contains(' '), "{s}");
    s.to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Is process `pid` gone (or a zombie, which is gone but for its exit status)?
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn bridge_carries_a_client_and_exits_0_when_it_closes() {
    runtime().block_on(async {
        let agent = Agent::start().await;
        let mut child = tokio::process::Command::new(BIN)
            .arg("bridge")
            .arg("--socket")
            .arg(&agent.sock)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start emoe-agent bridge");
        let io = tokio::io::join(
            child.stdout.take().expect("stdout"),
            child.stdin.take().expect("stdin"),
        );
        let io = Arc::new(Mutex::new(Some(io)));
        let channel = Endpoint::try_from("http://[::]:50051")
            .expect("endpoint")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let io = io.lock().expect("lock").take();
                async move {
                    io.map(TokioIo::new)
                        .ok_or_else(|| std::io::Error::other("one connection only"))
                }
            }))
            .await
            .expect("connect over the bridge");
        let mut c = proto::agent_client::AgentClient::new(channel);
        let snap = c
            .get_snapshot(proto::GetSnapshotRequest {})
            .await
            .expect("GetSnapshot over the bridge")
            .into_inner();
        assert_eq!(snap.instances.len(), 1);
        assert_eq!(snap.instances[0].config, "dp1tp1ep1");
        // Dropping the client closes the bridge's stdin; it shuts the socket, the agent closes
        // its side, and the bridge exits 0 having written nothing of its own.
        drop(c);
        let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .expect("the bridge exits when its stdin closes")
            .expect("wait for the bridge");
        assert!(
            out.status.success(),
            "{:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

#[test]
fn ssh_address_gets_snapshots_and_watches_through_the_ssh_command() {
    runtime().block_on(async {
        let agent = Agent::start().await;
        let opts = ConnectOptions {
            ssh_command: agent.bridging_stand_in("ssh", "fakehost"),
        };
        let addr: AgentAddr = "ssh://tester@fakehost:2222".parse().expect("address");
        let mut c = connect_with(&addr, &opts).await.expect("connect over ssh");
        let snap = c
            .get_snapshot(proto::GetSnapshotRequest {})
            .await
            .expect("GetSnapshot over ssh")
            .into_inner();
        assert_eq!(snap.instances[0].config, "dp1tp1ep1");
        let args: Vec<String> = agent
            .read("ssh", "args")
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(
            args,
            [
                "-T",
                "-o",
                "BatchMode=yes",
                "-p",
                "2222",
                "-l",
                "tester",
                "fakehost",
                "emoe-agent",
                "bridge"
            ]
        );
        let mut stream = c
            .watch(proto::WatchRequest::default())
            .await
            .expect("Watch over ssh")
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a first message")
            .expect("the stream")
            .expect("a first message, not the end");
        let Some(Body::Snapshot(s)) = first.body else {
            panic!("the first message is not a snapshot: {first:?}");
        };
        assert_eq!(s.instances[0].config, "dp1tp1ep1");
        let next = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("an update within 30 s (the agent serves traffic)")
            .expect("the stream")
            .expect("an update, not the end");
        assert!(matches!(next.body, Some(Body::Delta(_))), "{next:?}");
        assert!(next.seq > s.seq, "{} after {}", next.seq, s.seq);
    });
}

#[test]
fn a_failing_ssh_is_reported_with_what_it_said() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("ssh");
        std::fs::write(
            &script,
            "#!/bin/sh\necho 'ssh: Could not resolve hostname nohost: Name or service not known' >&2\nexit 255\n",
        )
        .expect("write the stand-in");
        let opts = ConnectOptions {
            ssh_command: format!("sh {}", quoted(&script)),
        };
        let addr: AgentAddr = "ssh://nohost".parse().expect("address");
        let e = connect_with(&addr, &opts)
            .await
            .expect_err("connecting to nohost fails");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("ssh: Could not resolve hostname nohost"),
            "{msg}"
        );
        assert!(msg.contains("255"), "the exit status: {msg}");
        assert!(msg.contains("nohost emoe-agent bridge"), "the command: {msg}");

        // An ssh command that cannot be run at all says so.
        let opts = ConnectOptions {
            ssh_command: dir.path().join("no-such-ssh").display().to_string(),
        };
        let msg = format!("{:#}", connect_with(&addr, &opts).await.expect_err("no ssh"));
        assert!(msg.contains("no-such-ssh") && msg.contains("cannot run"), "{msg}");
    });
}

#[test]
fn dropping_the_client_kills_the_ssh_process() {
    runtime().block_on(async {
        let agent = Agent::start().await;
        // Unlike ssh, this stand-in would outlive the end of its stdin by a minute: only the
        // kill ends it in time.
        let bridge = agent.bridging_stand_in("x", "node7");
        let ssh_command = agent.stand_in("ssh", &format!("{bridge} \"$@\"\nexec sleep 60"));
        let opts = ConnectOptions { ssh_command };
        let addr: AgentAddr = "ssh://node7".parse().expect("address");
        let mut c = connect_with(&addr, &opts).await.expect("connect over ssh");
        let mut stream = c
            .watch(proto::WatchRequest::default())
            .await
            .expect("Watch over ssh")
            .into_inner();
        stream
            .message()
            .await
            .expect("the stream")
            .expect("a snapshot");
        let pid: u32 = agent.read("ssh", "pid").trim().parse().expect("a pid");
        let bridge_pid: u32 = agent.read("x", "pid").trim().parse().expect("a pid");
        assert!(!gone(pid) && !gone(bridge_pid));
        drop(stream);
        drop(c);
        let end = Instant::now() + Duration::from_secs(5);
        while !(gone(pid) && gone(bridge_pid)) {
            assert!(
                Instant::now() < end,
                "the ssh process {pid} (gone: {}) or the bridge {bridge_pid} (gone: {}) is \
                 still there 5 s after the client was dropped",
                gone(pid),
                gone(bridge_pid)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn bridge_without_an_agent_says_so_and_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("none.sock");
    let out = Command::new(BIN)
        .arg("bridge")
        .arg("--socket")
        .arg(&sock)
        .stdin(Stdio::null())
        .output()
        .expect("run emoe-agent bridge");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&sock.display().to_string()), "{err}");
    assert!(err.contains("is `emoe-agent serve` running?"), "{err}");
}
