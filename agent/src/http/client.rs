//! A small client of the front door (hyper's HTTP/1 client over one TCP connection per
//! request): what `bench http` and the tests drive it with. Streams hand each server-sent
//! event's `data` to the caller as it arrives, with its arrival time.

use std::net::SocketAddr;
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// Bytes of an answer read at most (a whole completion's JSON is far smaller).
pub const MAX_ANSWER: usize = 16 << 20;

/// An answer read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

async fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string());
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let bytes = match body {
        Some(b) => {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            Bytes::from(serde_json::to_vec(b)?)
        }
        None => Bytes::new(),
    };
    Ok(send.send_request(req.body(Full::new(bytes))?).await?)
}

/// `method path` with an optional JSON body, the answer read whole (bounded).
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<Answer> {
    let r = open(addr, method, path, token, body).await?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = http_body_util::Limited::new(r.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// POST `body` to `path` and hand each event's data (`[DONE]` included) to `on_event` as it
/// arrives; `on_event` returns false to hang up. Returns the status; a non-200 answer's body
/// comes as one event.
pub async fn stream(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &serde_json::Value,
    mut on_event: impl FnMut(&str, Instant) -> bool,
) -> anyhow::Result<u16> {
    let r = open(addr, "POST", path, token, Some(body)).await?;
    let status = r.status().as_u16();
    let mut body = r.into_body();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = Instant::now();
        buf.extend_from_slice(data);
        if buf.len() > MAX_ANSWER {
            anyhow::bail!("an event is over {MAX_ANSWER} bytes");
        }
        if status != 200 {
            continue;
        }
        // Events end with a blank line.
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            for line in text.lines() {
                if let Some(d) = line.strip_prefix("data:")
                    && !on_event(d.trim_start(), now)
                {
                    return Ok(status);
                }
            }
        }
    }
    if status != 200 {
        on_event(&String::from_utf8_lossy(&buf), Instant::now());
    }
    Ok(status)
}
