//! The ssh transport of `ssh://` agent addresses: `ssh … HOST emoe-agent bridge` as a child
//! process whose stdout and stdin are the connection.

use std::collections::VecDeque;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader, ReadBuf};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// How much of ssh's stderr is kept for an error message (the last bytes).
const STDERR_TAIL: usize = 4096;

/// `PROGRAM [ARGS…] -T -o BatchMode=yes [-p PORT] [-l USER] HOST emoe-agent bridge`.
#[derive(Clone, Debug)]
pub(crate) struct SshCommand {
    program: String,
    args: Vec<String>,
}

impl SshCommand {
    /// `ssh_command` is the program and its leading arguments, split on whitespace.
    pub(crate) fn new(
        ssh_command: &str,
        user: Option<&str>,
        host: &str,
        port: Option<u16>,
    ) -> anyhow::Result<Self> {
        let mut words = ssh_command.split_whitespace().map(String::from);
        let program = words.next().ok_or_else(|| {
            anyhow::anyhow!("the ssh command `{ssh_command}` is empty: give a program, e.g. ssh")
        })?;
        let mut args: Vec<String> = words.collect();
        args.extend(["-T", "-o", "BatchMode=yes"].map(String::from));
        if let Some(p) = port {
            args.extend(["-p".into(), p.to_string()]);
        }
        if let Some(u) = user {
            args.extend(["-l".into(), u.to_string()]);
        }
        args.extend([host.to_string(), "emoe-agent".into(), "bridge".into()]);
        Ok(Self { program, args })
    }

    /// The command line as a person would type it (for messages).
    fn shown(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Start the command and wait until the agent behind it speaks: an HTTP/2 server sends its
    /// SETTINGS frame first, so a byte on stdout means the bridge is through. If stdout ends
    /// before that, the error has ssh's exit status and the end of its stderr.
    pub(crate) async fn open(&self) -> anyhow::Result<SshIo> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run `{}` (the ssh command): {e}", self.program))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            anyhow::bail!("`{}`: its stdio was not piped", self.shown());
        };
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        // Drained for the whole session, so that ssh never blocks on a full stderr pipe.
        let drain = tokio::spawn(keep_tail(stderr, Arc::clone(&tail)));
        let mut stdout = BufReader::new(stdout);
        let first = stdout.fill_buf().await.map(|b| b.len());
        if let Ok(n) = first
            && n > 0
        {
            return Ok(SshIo {
                stdout,
                stdin,
                _child: child,
            });
        }
        let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            Ok(Ok(s)) => s.to_string(),
            Ok(Err(e)) => format!("its status is unknown: {e}"),
            Err(_) => {
                let _ = child.start_kill();
                "it closed its stdout and was killed".into()
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        let said = {
            let t = tail.lock().unwrap_or_else(|p| p.into_inner());
            let bytes: Vec<u8> = t.iter().copied().collect();
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ")
        };
        let read = match first {
            Err(e) => format!(", reading its stdout failed: {e}"),
            Ok(_) => String::new(),
        };
        let said = if said.is_empty() {
            "it printed nothing on stderr".to_string()
        } else {
            said
        };
        anyhow::bail!(
            "`{}` ended before the agent answered ({status}{read}): {said}",
            self.shown()
        )
    }
}

/// Read `stderr` to its end, keeping its last [`STDERR_TAIL`] bytes in `tail`.
async fn keep_tail(mut stderr: ChildStderr, tail: Arc<Mutex<VecDeque<u8>>>) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
        t.extend(&buf[..n]);
        let extra = t.len().saturating_sub(STDERR_TAIL);
        t.drain(..extra);
    }
}

/// The connection: reads from the child's stdout, writes to its stdin. Owns the child, which is
/// killed when this is dropped (the channel closed).
pub(crate) struct SshIo {
    stdout: BufReader<ChildStdout>,
    stdin: ChildStdin,
    _child: Child,
}

impl AsyncRead for SshIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stdout).poll_read(cx, buf)
    }
}

impl AsyncWrite for SshIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stdin).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stdin).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stdin.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stdin).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stdin).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line() {
        let c = SshCommand::new("ssh", Some("me"), "node1", Some(2222)).unwrap();
        assert_eq!(
            c.shown(),
            "ssh -T -o BatchMode=yes -p 2222 -l me node1 emoe-agent bridge"
        );
        let c = SshCommand::new("  ssh -F /etc/cfg ", None, "node1", None).unwrap();
        assert_eq!(c.program, "ssh");
        assert_eq!(
            c.args,
            [
                "-F",
                "/etc/cfg",
                "-T",
                "-o",
                "BatchMode=yes",
                "node1",
                "emoe-agent",
                "bridge"
            ]
        );
        let e = SshCommand::new(" ", None, "node1", None).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
    }
}
