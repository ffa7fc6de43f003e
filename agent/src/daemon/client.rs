//! Connecting to an agent: `unix:PATH` (the default socket) or `http://HOST:PORT`.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::proto::agent_client::AgentClient;

/// Where an agent listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentAddr {
    Unix(PathBuf),
    Http(String),
}

impl std::str::FromStr for AgentAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(
                    "`unix:` needs a socket path, e.g. unix:/run/user/1000/emoe/agent.sock".into(),
                );
            }
            return Ok(Self::Unix(PathBuf::from(p)));
        }
        if s.starts_with("http://") {
            return Ok(Self::Http(s.to_string()));
        }
        Err(format!(
            "`{s}` is not an agent address: use unix:PATH or http://HOST:PORT"
        ))
    }
}

impl std::fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Http(u) => f.write_str(u),
        }
    }
}

/// The default socket: `$XDG_RUNTIME_DIR/emoe/agent.sock`, else `/tmp/emoe-$USER/agent.sock`.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => Path::new(&d).join("emoe").join("agent.sock"),
        _ => {
            let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
            std::env::temp_dir()
                .join(format!("emoe-{user}"))
                .join("agent.sock")
        }
    }
}

/// A client for the agent at `addr`.
pub async fn connect(addr: &AgentAddr) -> anyhow::Result<AgentClient<Channel>> {
    let channel = match addr {
        AgentAddr::Http(u) => Endpoint::from_shared(u.clone())?.connect().await?,
        AgentAddr::Unix(path) => {
            let path = path.clone();
            // The URI is a placeholder: the connector below ignores it.
            Endpoint::try_from("http://[::]:50051")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(&path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                }))
                .await?
        }
    };
    Ok(AgentClient::new(channel).max_decoding_message_size(64 << 20))
}
