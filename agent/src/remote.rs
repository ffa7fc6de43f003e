//! An instance in its own OS process, attached zero-copy to the HMM's memory (host backend).
//!
//! The owner sends the instance's [`Manifest`] and then every allocation as a file descriptor
//! (SCM_RIGHTS over a Unix socket); the child imports them into its own HMM books, rebuilds the
//! instance's views over the same pages, and runs decode steps on request. Its KV writes land in
//! the owner's memory. Killing the child loses nothing: every byte belongs to the owner's
//! allocations, and a new child attaches to them and carries on.
//!
//! Protocol (one stream socket): owner → child `u64` length + JSON [`Hello`]; then the
//! descriptors in batches of up to [`FD_BATCH`], each batch on a one-byte message; child → owner
//! one JSON line `{"ready":true}` (or `{"error":…}`); then requests and replies as JSON lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use emoe_core::backend::SharedHandle;
use emoe_core::backend::fdpass::{recv_fds, send_fds};
use emoe_core::backend::host::{HostBackend, HostConfig};
use emoe_core::deploy::{Deployment, Manifest};
use emoe_core::engine::{Engine, StepInput};
use emoe_core::hmm::Hmm;

/// Descriptors per SCM_RIGHTS message (below the kernel's 253).
pub const FD_BATCH: usize = 200;

/// What the child needs before the descriptors.
#[derive(Serialize, Deserialize)]
pub struct Hello {
    /// The owner's host backend: the child's books use the same devices and granules.
    pub node: u32,
    pub devices: u32,
    pub capacity: u64,
    pub granularity: u64,
    pub manifest: Manifest,
}

/// One request to the child.
#[derive(Serialize, Deserialize)]
pub struct StepRequest {
    pub group: usize,
    pub inputs: Vec<(u32, u32, Vec<u32>)>,
}

#[derive(Serialize, Deserialize)]
struct StepReply {
    next: Option<Vec<u32>>,
    error: Option<String>,
}

/// The owner's handle on an instance process.
pub struct RemoteInstance {
    child: Child,
    stream: BufReader<UnixStream>,
    _dir: tempfile::TempDir,
}

impl RemoteInstance {
    /// Start `exe attach-instance SOCKET`, hand it `dep`'s memory and wait until it is ready.
    pub fn spawn(
        exe: &Path,
        hmm: &Hmm,
        dep: &Deployment,
        host: &HostConfig,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("emoe-instance").tempdir()?;
        let sock: PathBuf = dir.path().join("attach.sock");
        let listener =
            UnixListener::bind(&sock).with_context(|| format!("bind {}", sock.display()))?;
        listener.set_nonblocking(true)?;
        let mut child = Command::new(exe)
            .arg("attach-instance")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", exe.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(st) = child.try_wait()? {
                        bail!("the instance process exited before attaching: {st}");
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        bail!("the instance process did not connect within 60 s");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let (manifest, order) = dep.manifest(hmm)?;
        let hello = Hello {
            node: host.node,
            devices: host.devices,
            capacity: host.capacity,
            granularity: host.granularity,
            manifest,
        };
        let body = serde_json::to_vec(&hello)?;
        (&stream).write_all(&(body.len() as u64).to_le_bytes())?;
        (&stream).write_all(&body)?;
        for batch in order.chunks(FD_BATCH) {
            let mut fds = Vec::with_capacity(batch.len());
            for a in batch {
                match hmm.export(*a)? {
                    SharedHandle::Fd(fd) => fds.push(fd),
                    SharedHandle::Token(_) => bail!("only the host backend exports descriptors"),
                }
            }
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            send_fds(&stream, &borrowed, &[batch.len() as u8])?;
        }
        let mut me = Self {
            child,
            stream: BufReader::new(stream),
            _dir: dir,
        };
        let line = me.read_line()?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        if v["ready"] != true {
            let _ = me.child.kill();
            bail!("the instance process failed to attach: {}", v["error"]);
        }
        Ok(me)
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stream.read_line(&mut line)? == 0 {
            bail!("the instance process closed the connection");
        }
        Ok(line)
    }

    /// One decode step in the child: `(token, pos, blocks)` per input; the next tokens.
    pub fn step(
        &mut self,
        group: usize,
        inputs: &[(u32, u32, Vec<u32>)],
    ) -> anyhow::Result<Vec<u32>> {
        let req = StepRequest {
            group,
            inputs: inputs.to_vec(),
        };
        let mut line = serde_json::to_string(&req)?;
        line.push('\n');
        self.stream.get_ref().write_all(line.as_bytes())?;
        let reply: StepReply = serde_json::from_str(&self.read_line()?)?;
        match (reply.next, reply.error) {
            (Some(n), _) => Ok(n),
            (None, e) => Err(anyhow!(
                "the instance process refused the step: {}",
                e.unwrap_or_default()
            )),
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill the process outright (SIGKILL) and reap it.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

/// The child side: attach over `socket` and serve steps until the owner hangs up.
pub fn serve_attached(socket: &Path) -> anyhow::Result<()> {
    let stream =
        UnixStream::connect(socket).with_context(|| format!("connect {}", socket.display()))?;
    let mut len = [0u8; 8];
    (&stream).read_exact(&mut len)?;
    let len = usize::try_from(u64::from_le_bytes(len))?;
    if len > 256 << 20 {
        bail!("the manifest is {len} bytes; refusing more than 256 MiB");
    }
    let mut body = vec![0u8; len];
    (&stream).read_exact(&mut body)?;
    let hello: Hello = serde_json::from_slice(&body)?;
    let attached = attach(&stream, &hello);
    let mut out = &stream;
    let (mut hmm, dep, engine) = match attached {
        Ok(x) => {
            out.write_all(b"{\"ready\":true}\n")?;
            x
        }
        Err(e) => {
            let msg = serde_json::json!({ "error": format!("{e:#}") });
            out.write_all(format!("{msg}\n").as_bytes())?;
            return Err(e);
        }
    };
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let reply = match serde_json::from_str::<StepRequest>(&line) {
            Ok(req) => {
                let inputs: Vec<StepInput> = req
                    .inputs
                    .iter()
                    .map(|(token, pos, blocks)| StepInput {
                        token: *token,
                        pos: *pos,
                        blocks,
                        logprobs: None,
                    })
                    .collect();
                match engine.step(&hmm, &dep, req.group, &inputs) {
                    Ok(o) => StepReply {
                        next: Some(o.next),
                        error: None,
                    },
                    Err(e) => StepReply {
                        next: None,
                        error: Some(e.to_string()),
                    },
                }
            }
            Err(e) => StepReply {
                next: None,
                error: Some(format!("bad request: {e}")),
            },
        };
        let mut s = serde_json::to_string(&reply)?;
        s.push('\n');
        out.write_all(s.as_bytes())?;
    }
    // The owner hung up: drop our view and our references; the memory stays the owner's.
    let _ = hmm.drop_view(dep.view);
    Ok(())
}

fn attach(stream: &UnixStream, hello: &Hello) -> anyhow::Result<(Hmm, Deployment, Engine)> {
    let backend = HostBackend::new(HostConfig {
        node: hello.node,
        devices: hello.devices,
        capacity: hello.capacity,
        granularity: hello.granularity,
    })?;
    let mut hmm = Hmm::new(Arc::new(backend));
    let m = &hello.manifest;
    let mut fds = Vec::with_capacity(m.allocs.len());
    while fds.len() < m.allocs.len() {
        let mut one = [0u8; 1];
        let (_, got) = recv_fds(stream, &mut one, FD_BATCH)?;
        if got.is_empty() {
            bail!("a descriptor batch arrived without descriptors");
        }
        fds.extend(got);
    }
    if fds.len() != m.allocs.len() {
        bail!(
            "{} descriptors for {} allocations",
            fds.len(),
            m.allocs.len()
        );
    }
    let mut ids = Vec::with_capacity(fds.len());
    for (fd, a) in fds.into_iter().zip(&m.allocs) {
        ids.push(hmm.import(a.device, SharedHandle::Fd(fd), a.len, a.tag)?);
    }
    let dep = Deployment::attach(&mut hmm, m, &ids, "attached")?;
    let engine = Engine::new(&dep.model, dep.config.tp())?;
    Ok((hmm, dep, engine))
}

impl Drop for RemoteInstance {
    /// No orphan: a dropped handle stops its process.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
