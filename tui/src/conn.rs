//! One task per agent: connect, stream `Watch`, run the console's commands, and on any failure
//! mark the node stale and reconnect with a growing backoff (resuming from the last sequence).

use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use emoe_agent::daemon::client::{AgentAddr, ConnectOptions, connect_with};
use emoe_agent::daemon::proto::{self, agent_client::AgentClient};
use tonic::transport::Channel;

/// First and longest wait between connection attempts.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What the console asks of one agent.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeCmd {
    Plan(String),
    Scale(String),
    Cancel(u64),
    Rebalance(u32),
}

/// An agent's answer to a command.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Plan {
        to: String,
        result: Result<proto::PlanReply, String>,
    },
    Scale {
        to: String,
        result: Result<u64, String>,
    },
    Cancel {
        op: u64,
        result: Result<String, String>,
    },
    Rebalance(Result<u64, String>),
}

/// What a connection task tells the console.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeMsg {
    Update(Box<proto::WatchUpdate>),
    Lost { error: String, retry_s: f64 },
    Reply(Reply),
}

/// A message from node `node`.
#[derive(Clone, Debug, PartialEq)]
pub struct Msg {
    pub node: usize,
    pub body: NodeMsg,
}

/// How connections are made.
#[derive(Clone, Debug, Default)]
pub struct ConnOptions {
    /// The bearer token mutating calls carry.
    pub token: Option<String>,
    /// The ssh program for `ssh://` agents.
    pub ssh_command: String,
}

/// Start the task for node `node` at `addr`; commands go in through the returned sender.
pub fn spawn(
    node: usize,
    addr: AgentAddr,
    opts: ConnOptions,
    tx: UnboundedSender<Msg>,
) -> UnboundedSender<NodeCmd> {
    let (ctx, crx) = unbounded_channel();
    tokio::spawn(run(node, addr, opts, tx, crx));
    ctx
}

fn status_text(s: &tonic::Status) -> String {
    if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_string()
    }
}

fn request<T>(opts: &ConnOptions, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = &opts.token
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

async fn command(mut c: AgentClient<Channel>, opts: ConnOptions, cmd: NodeCmd) -> Reply {
    match cmd {
        NodeCmd::Plan(to) => {
            let r = c
                .plan(request(&opts, proto::PlanRequest { to: to.clone() }))
                .await;
            Reply::Plan {
                to,
                result: r.map(|r| r.into_inner()).map_err(|s| status_text(&s)),
            }
        }
        NodeCmd::Scale(to) => {
            let msg = proto::ScaleRequest {
                to: to.clone(),
                strategy: "elastic".into(),
            };
            let r = c.scale(request(&opts, msg)).await;
            Reply::Scale {
                to,
                result: r
                    .map(|r| r.into_inner().operation)
                    .map_err(|s| status_text(&s)),
            }
        }
        NodeCmd::Cancel(op) => {
            let r = c
                .cancel(request(&opts, proto::CancelRequest { operation: op }))
                .await;
            Reply::Cancel {
                op,
                result: r.map(|r| r.into_inner().phase).map_err(|s| status_text(&s)),
            }
        }
        NodeCmd::Rebalance(replicas) => {
            let r = c
                .rebalance(request(&opts, proto::RebalanceRequest { replicas }))
                .await;
            Reply::Rebalance(
                r.map(|r| r.into_inner().operation)
                    .map_err(|s| status_text(&s)),
            )
        }
    }
}

/// Where a watch resumes after a reconnection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resume {
    incarnation: Option<String>,
    seq: Option<u64>,
}

impl Resume {
    /// Note an update: a snapshot sets the incarnation.
    pub fn saw(&mut self, u: &proto::WatchUpdate) {
        if let Some(proto::watch_update::Body::Snapshot(s)) = &u.body {
            self.incarnation = Some(s.incarnation.clone());
        }
        self.seq = Some(u.seq);
    }

    /// The request that resumes after what was seen (a fresh watch before any snapshot).
    pub fn request(&self) -> proto::WatchRequest {
        proto::WatchRequest {
            resume_from: self.seq.filter(|_| self.incarnation.is_some()),
            incarnation: self.incarnation.clone(),
        }
    }
}

/// Answer a command that cannot be sent because the node is away.
fn refuse(cmd: NodeCmd, why: &str) -> Reply {
    let e = Err(format!("not connected: {why}"));
    match cmd {
        NodeCmd::Plan(to) => Reply::Plan { to, result: e },
        NodeCmd::Scale(to) => Reply::Scale {
            to,
            result: Err(format!("not connected: {why}")),
        },
        NodeCmd::Cancel(op) => Reply::Cancel {
            op,
            result: Err(format!("not connected: {why}")),
        },
        NodeCmd::Rebalance(_) => Reply::Rebalance(Err(format!("not connected: {why}"))),
    }
}

async fn run(
    node: usize,
    addr: AgentAddr,
    opts: ConnOptions,
    tx: UnboundedSender<Msg>,
    mut cmds: UnboundedReceiver<NodeCmd>,
) {
    let send = |body: NodeMsg| tx.send(Msg { node, body }).is_ok();
    let mut backoff = BACKOFF_MIN;
    // Where to resume: the incarnation of the agent's start our snapshot came from, and the
    // last sequence seen. A restarted agent has another incarnation and answers with a full
    // snapshot, so its new numbering never applies to the old state.
    let mut resume = Resume::default();
    loop {
        let copts = ConnectOptions {
            ssh_command: opts.ssh_command.clone(),
        };
        let error = match connect_with(&addr, &copts).await {
            Err(e) => format!("{e:#}"),
            Ok(client) => {
                let mut w = client.clone();
                match w.watch(request(&opts, resume.request())).await {
                    Err(s) => status_text(&s),
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        backoff = BACKOFF_MIN;
                        loop {
                            tokio::select! {
                                biased;
                                cmd = cmds.recv() => {
                                    let Some(cmd) = cmd else { return };
                                    let (c, o, tx) = (client.clone(), opts.clone(), tx.clone());
                                    tokio::spawn(async move {
                                        let r = command(c, o, cmd).await;
                                        let _ = tx.send(Msg { node, body: NodeMsg::Reply(r) });
                                    });
                                }
                                m = stream.message() => match m {
                                    Ok(Some(u)) => {
                                        resume.saw(&u);
                                        if !send(NodeMsg::Update(Box::new(u))) {
                                            return;
                                        }
                                    }
                                    Ok(None) => break "the agent closed the stream".to_string(),
                                    Err(s) => break status_text(&s),
                                },
                            }
                        }
                    }
                }
            }
        };
        if !send(NodeMsg::Lost {
            error: error.clone(),
            retry_s: backoff.as_secs_f64(),
        }) {
            return;
        }
        // Wait out the backoff, answering commands meanwhile.
        let until = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return };
                    if !send(NodeMsg::Reply(refuse(cmd, &error))) {
                        return;
                    }
                }
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::watch_update::Body;

    #[test]
    fn a_resume_carries_the_incarnation_of_the_snapshot_seen() {
        let mut r = Resume::default();
        assert_eq!(
            r.request(),
            proto::WatchRequest::default(),
            "nothing seen: a fresh watch"
        );
        r.saw(&proto::WatchUpdate {
            seq: 4,
            body: Some(Body::Delta(proto::Delta::default())),
        });
        assert_eq!(
            r.request().resume_from,
            None,
            "no snapshot yet: nothing to resume"
        );
        r.saw(&proto::WatchUpdate {
            seq: 7,
            body: Some(Body::Snapshot(proto::Snapshot {
                incarnation: "a-1".into(),
                ..Default::default()
            })),
        });
        r.saw(&proto::WatchUpdate {
            seq: 8,
            body: Some(Body::Delta(proto::Delta::default())),
        });
        let q = r.request();
        assert_eq!(q.resume_from, Some(8));
        assert_eq!(q.incarnation.as_deref(), Some("a-1"));
    }
}
