//! `emoe-agent bridge`: stdin and stdout joined to the local agent's Unix socket, so that
//! `ssh HOST emoe-agent bridge` carries a client's connection (`--agent ssh://HOST`). Nothing
//! but the agent's bytes is written to stdout.

use std::path::{Path, PathBuf};

use clap::Args;
use tokio::io::AsyncWriteExt;

use crate::daemon::client::default_socket_checked;
use crate::exit::CliError;

#[derive(Debug, Args)]
pub struct BridgeArgs {
    /// The agent's Unix socket (default: $XDG_RUNTIME_DIR/emoe/agent.sock, else
    /// $TMPDIR/emoe-$USER/agent.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

pub fn run(a: &BridgeArgs) -> Result<(), CliError> {
    // The default socket only in a directory private to us: the bridge carries the token.
    let path = match &a.socket {
        Some(p) => p.clone(),
        None => default_socket_checked().map_err(|e| CliError::usage(anyhow::anyhow!(e)))?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::failed)?;
    let r = rt.block_on(bridge(&path));
    // A read of stdin may still block a thread of the runtime: do not wait for it.
    rt.shutdown_background();
    r
}

/// Copy both ways until the agent closes the socket. When stdin ends first, the socket's write
/// side is shut and what the agent still sends is copied until it closes.
async fn bridge(path: &Path) -> Result<(), CliError> {
    let sock = tokio::net::UnixStream::connect(path).await.map_err(|e| {
        CliError::failed(anyhow::anyhow!(
            "cannot reach the agent socket {}: {e} (is `emoe-agent serve` running?)",
            path.display()
        ))
    })?;
    let (mut from_agent, mut to_agent) = sock.into_split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let up = async {
        tokio::io::copy(&mut stdin, &mut to_agent).await?;
        to_agent.shutdown().await
    };
    let down = async {
        tokio::io::copy(&mut from_agent, &mut stdout).await?;
        stdout.flush().await
    };
    tokio::pin!(up, down);
    let r = tokio::select! {
        r = &mut down => r,
        r = &mut up => match r {
            Ok(()) => down.await,
            Err(e) => Err(e),
        },
    };
    match r {
        Ok(()) => Ok(()),
        // The other end went away: that is how a session ends too.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(CliError::failed(anyhow::anyhow!(
            "bridge to {}: {e}",
            path.display()
        ))),
    }
}
