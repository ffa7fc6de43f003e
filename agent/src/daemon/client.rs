//! Connecting to an agent: `unix:PATH` (the default socket), `http://HOST:PORT`, or
//! `ssh://[USER@]HOST[:PORT]` (through `emoe-agent bridge` on that host, see [`super::ssh`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::proto::agent_client::AgentClient;
use super::ssh;

/// Where an agent listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentAddr {
    Unix(PathBuf),
    Http(String),
    /// The default socket of the agent on `host`, reached with `ssh HOST emoe-agent bridge`.
    /// An IPv6 `host` is kept without its brackets.
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
    },
}

const SSH_FORM: &str = "use ssh://[USER@]HOST[:PORT]";

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
        if let Some(rest) = s.strip_prefix("ssh://") {
            return parse_ssh(s, rest);
        }
        Err(format!(
            "`{s}` is not an agent address: use unix:PATH, http://HOST:PORT or \
             ssh://[USER@]HOST[:PORT]"
        ))
    }
}

/// `rest` is what follows `ssh://` in `s`.
fn parse_ssh(s: &str, rest: &str) -> Result<AgentAddr, String> {
    if let Some(i) = rest.find(['/', '?', '#']) {
        return Err(format!(
            "`{s}`: an ssh address ends after the host and port (found `{}`); {SSH_FORM}",
            &rest[i..]
        ));
    }
    let (user, hostport) = match rest.split_once('@') {
        None => (None, rest),
        Some((u, hp)) => {
            if u.is_empty() {
                return Err(format!("`{s}`: the user before `@` is empty; {SSH_FORM}"));
            }
            if hp.contains('@') {
                return Err(format!("`{s}` has more than one `@`; {SSH_FORM}"));
            }
            if u.starts_with('-') || u.contains(':') || u.chars().any(bad_char) {
                return Err(format!(
                    "`{s}`: the user `{u}` must not start with `-` or contain `:`, spaces or \
                     control characters"
                ));
            }
            (Some(u.to_string()), hp)
        }
    };
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let Some((h, after)) = inner.split_once(']') else {
            return Err(format!(
                "`{s}`: `[` opens an IPv6 address that no `]` closes; {SSH_FORM}"
            ));
        };
        // Hex digits, `:` and `.`, and after `%` a zone such as `eth0`.
        let (ip, zone) = h.split_once('%').unwrap_or((h, "a"));
        if !ip.contains(':')
            || !ip
                .chars()
                .all(|c| c.is_ascii_hexdigit() || ":.".contains(c))
            || zone.is_empty()
            || !zone
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            return Err(format!(
                "`{s}`: `[{h}]` is not an IPv6 address (brackets are only for those)"
            ));
        }
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => {
                    return Err(format!(
                        "`{s}`: after `]` only `:PORT` may follow, found `{after}`; {SSH_FORM}"
                    ));
                }
            },
        };
        (h, port)
    } else {
        if hostport.matches(':').count() > 1 {
            return Err(format!(
                "`{s}`: an IPv6 host goes in brackets, e.g. ssh://[::1]:22"
            ));
        }
        match hostport.split_once(':') {
            None => (hostport, None),
            Some((h, p)) => (h, Some(p)),
        }
    };
    if host.is_empty() {
        return Err(format!("`{s}` has no host; {SSH_FORM}"));
    }
    if host.starts_with('-')
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:%".contains(c))
    {
        return Err(format!(
            "`{s}`: the host `{host}` must be a name or address (letters, digits, `-`, `.`, `_`; \
             not starting with `-`)"
        ));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(format!(
                    "`{s}`: the port `{p}` must be a number from 1 to 65535"
                ));
            }
        },
    };
    Ok(AgentAddr::Ssh {
        user,
        host: host.to_string(),
        port,
    })
}

fn bad_char(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

impl std::fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Http(u) => f.write_str(u),
            Self::Ssh { user, host, port } => {
                f.write_str("ssh://")?;
                if let Some(u) = user {
                    write!(f, "{u}@")?;
                }
                if host.contains(':') {
                    write!(f, "[{host}]")?;
                } else {
                    f.write_str(host)?;
                }
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                Ok(())
            }
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

/// Refuse the default socket's directory unless it is private to us: a directory (not a link),
/// owned by our user, not writable by group or others. Anyone who can write there could swap
/// the socket and capture the bearer token. An absent directory passes (it is created 0700).
pub fn check_private_dir(dir: &Path) -> Result<(), String> {
    check_private_dir_of(dir, rustix::process::getuid().as_raw())
}

/// [`check_private_dir`] for the user `uid`.
pub fn check_private_dir_of(dir: &Path, uid: u32) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot inspect {}: {e}", dir.display())),
    };
    let refuse = |why: String| {
        Err(format!(
            "refusing the default socket directory {}: {why}; remove it, or pass --socket PATH",
            dir.display()
        ))
    };
    if !m.file_type().is_dir() {
        return refuse("it is not a directory".into());
    }
    if m.uid() != uid {
        return refuse(format!("it is owned by uid {}, not by uid {uid}", m.uid()));
    }
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return refuse(format!("it is group- or world-writable (mode {mode:04o})"));
    }
    Ok(())
}

/// The default socket, after checking its directory ([`check_private_dir`]).
pub fn default_socket_checked() -> Result<PathBuf, String> {
    let p = default_socket();
    if let Some(dir) = p.parent() {
        check_private_dir(dir)?;
    }
    Ok(p)
}

/// How to reach an agent, beyond its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The ssh client for `ssh://` addresses: a program and, optionally, leading arguments,
    /// split on whitespace (e.g. `ssh -F /path/config`). Default `ssh`.
    pub ssh_command: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            ssh_command: "ssh".into(),
        }
    }
}

/// A client for the agent at `addr`, with the default [`ConnectOptions`].
pub async fn connect(addr: &AgentAddr) -> anyhow::Result<AgentClient<Channel>> {
    connect_with(addr, &ConnectOptions::default()).await
}

/// A client for the agent at `addr`.
///
/// For `ssh://` the ssh client runs `emoe-agent bridge` on the host and the channel speaks
/// through the ssh process's stdin and stdout; the process ends (is killed) when the channel is
/// dropped. When ssh ends before the agent answers, the error carries what ssh printed.
pub async fn connect_with(
    addr: &AgentAddr,
    opts: &ConnectOptions,
) -> anyhow::Result<AgentClient<Channel>> {
    // The URIs of the connectors below are placeholders: the connectors ignore them.
    let channel = match addr {
        AgentAddr::Http(u) => Endpoint::from_shared(u.clone())?.connect().await?,
        AgentAddr::Unix(path) => {
            let path = path.clone();
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
        AgentAddr::Ssh { user, host, port } => {
            let cmd = ssh::SshCommand::new(&opts.ssh_command, user.as_deref(), host, *port)?;
            // The first connection is opened here, so that its failure is this call's error
            // with ssh's own words; a reconnection later opens a new one.
            let first = Arc::new(Mutex::new(Some(cmd.open().await?)));
            Endpoint::try_from("http://[::]:50051")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let first = first.lock().unwrap_or_else(|p| p.into_inner()).take();
                    let cmd = cmd.clone();
                    async move {
                        let io = match first {
                            Some(io) => io,
                            None => cmd.open().await.map_err(std::io::Error::other)?,
                        };
                        Ok::<_, std::io::Error>(TokioIo::new(io))
                    }
                }))
                .await?
        }
    };
    Ok(AgentClient::new(channel).max_decoding_message_size(64 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(user: Option<&str>, host: &str, port: Option<u16>) -> AgentAddr {
        AgentAddr::Ssh {
            user: user.map(Into::into),
            host: host.into(),
            port,
        }
    }

    #[test]
    fn ssh_addresses_parse_and_print_back() {
        for (s, want) in [
            ("ssh://node1", ssh(None, "node1", None)),
            ("ssh://me@node1", ssh(Some("me"), "node1", None)),
            ("ssh://node1:2222", ssh(None, "node1", Some(2222))),
            (
                "ssh://me@node-1.example.org:22",
                ssh(Some("me"), "node-1.example.org", Some(22)),
            ),
            ("ssh://10.0.0.7", ssh(None, "10.0.0.7", None)),
            ("ssh://[::1]", ssh(None, "::1", None)),
            (
                "ssh://op@[fe80::1%eth0]:2200",
                ssh(Some("op"), "fe80::1%eth0", Some(2200)),
            ),
        ] {
            let a: AgentAddr = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(a, want, "{s}");
            assert_eq!(a.to_string(), s);
        }
    }

    #[test]
    fn bad_ssh_addresses_say_what_is_wrong() {
        for (s, says) in [
            ("ssh://", "has no host"),
            ("ssh://me@", "has no host"),
            ("ssh://:22", "has no host"),
            ("ssh://@node", "user before `@` is empty"),
            ("ssh://a@b@node", "more than one `@`"),
            ("ssh://node:", "port `` must be a number from 1 to 65535"),
            (
                "ssh://node:ssh",
                "port `ssh` must be a number from 1 to 65535",
            ),
            ("ssh://node:0", "port `0` must be"),
            ("ssh://node:65536", "port `65536` must be"),
            ("ssh://node/", "ends after the host and port (found `/`)"),
            ("ssh://node/tmp/a.sock", "(found `/tmp/a.sock`)"),
            ("ssh://node?x", "(found `?x`)"),
            ("ssh://-oProxyCommand=x", "not starting with `-`"),
            ("ssh://-l@node", "must not start with `-`"),
            ("ssh://no de", "must be a name or address"),
            ("ssh://::1", "IPv6 host goes in brackets"),
            ("ssh://[::1", "no `]` closes"),
            ("ssh://[node]", "is not an IPv6 address"),
            ("ssh://[fe80::1%]", "is not an IPv6 address"),
            ("ssh://[::1 ]", "is not an IPv6 address"),
            ("ssh://[::1]x", "only `:PORT` may follow"),
        ] {
            let e = s.parse::<AgentAddr>().expect_err(s);
            assert!(e.contains(&format!("`{s}`")), "{s}: {e}");
            assert!(e.contains(says), "{s}: {e}");
        }
    }

    #[test]
    fn a_default_socket_directory_must_be_private_and_ours() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("emoe-x");
        let me = rustix::process::getuid().as_raw();
        assert_eq!(
            check_private_dir_of(&dir, me),
            Ok(()),
            "absent: created later"
        );
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(check_private_dir_of(&dir, me), Ok(()));
        let e = check_private_dir_of(&dir, me + 1).unwrap_err();
        assert!(
            e.contains(&format!("owned by uid {me}, not by uid {}", me + 1)),
            "{e}"
        );
        for mode in [0o770, 0o702, 0o1777] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = check_private_dir_of(&dir, me).unwrap_err();
            assert!(e.contains("group- or world-writable"), "{mode:o}: {e}");
            assert!(e.contains(&dir.display().to_string()), "{e}");
        }
        let link = t.path().join("link");
        std::os::unix::fs::symlink(t.path(), &link).unwrap();
        let e = check_private_dir_of(&link, me).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn other_forms_are_listed() {
        let e = "node1:22".parse::<AgentAddr>().unwrap_err();
        assert!(
            e.contains("unix:PATH") && e.contains("http://HOST:PORT") && e.contains("ssh://"),
            "{e}"
        );
        assert_eq!(
            "unix:/tmp/a.sock".parse::<AgentAddr>(),
            Ok(AgentAddr::Unix("/tmp/a.sock".into()))
        );
    }
}
