//! The front door against a real agent in this process, over real HTTP: completions and chat,
//! streamed and whole (the same greedy answer both ways), log-probabilities, the model list,
//! tokenize/detokenize, metrics with vLLM's names, every refusal in OpenAI's shape, a queue
//! over its limit, a client that hangs up (its KV blocks come back), and a stream that crosses
//! a scale up and back down with the answer it has without scaling.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use emoe_agent::cluster::{ModelSource, NodeOptions};
use emoe_agent::daemon::{Access, Daemon, host};
use emoe_agent::http::{Front, client};
use emoe_agent::serve::{FaultHook, ServeOptions};
use emoe_core::ParallelConfig;
use emoe_core::scale::Strategy;

struct Agent {
    daemon: Arc<Daemon>,
    addr: SocketAddr,
    rt: tokio::runtime::Runtime,
    _cache: tempfile::TempDir,
}

fn node(cache: &tempfile::TempDir, config: &str) -> NodeOptions {
    NodeOptions {
        backend: Default::default(),
        node: 0,
        devices: Some(4),
        logical_per_gpu: 1,
        hbm: Some(256 << 20),
        granularity: None,
        model: ModelSource::Preset("micro-moe".into()),
        config: config.parse().unwrap(),
        first_device: 0,
        seed: 1,
        kv_tokens: 2048,
        cache_dir: Some(cache.path().to_path_buf()),
    }
}

fn agent(opts: ServeOptions, access: Access) -> Agent {
    agent_at("dp1tp1ep1", opts, access)
}

fn agent_at(config: &str, opts: ServeOptions, access: Access) -> Agent {
    let cache = tempfile::tempdir().unwrap();
    let (daemon, _) = host::build(&node(&cache, config), opts, access).unwrap();
    let tok = Front::load_tokenizer(&daemon).unwrap();
    let front = Front::new(Arc::clone(&daemon), tok);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    rt.spawn(emoe_agent::http::serve(front, l, std::future::pending()));
    Agent {
        daemon,
        addr,
        rt,
        _cache: cache,
    }
}

impl Agent {
    fn post(&self, path: &str, body: Value) -> client::Answer {
        self.rt
            .block_on(client::send(self.addr, "POST", path, None, Some(&body)))
            .unwrap()
    }

    fn get(&self, path: &str) -> client::Answer {
        self.rt
            .block_on(client::send(self.addr, "GET", path, None, None))
            .unwrap()
    }

    /// Stream `body`; every event's data, `[DONE]` last.
    fn stream(&self, path: &str, body: Value) -> Vec<String> {
        let mut events = Vec::new();
        let status = self
            .rt
            .block_on(client::stream(self.addr, path, None, &body, |d, _| {
                events.push(d.to_string());
                true
            }))
            .unwrap();
        assert_eq!(status, 200, "{events:?}");
        events
    }

    /// Stream `body` (made a streaming completion) in the background: its events, and a count
    /// of the events so far.
    fn spawn_stream(
        &self,
        body: &Value,
    ) -> (
        tokio::task::JoinHandle<anyhow::Result<Vec<String>>>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        let addr = self.addr;
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        let h = self.rt.spawn(async move {
            let mut events = Vec::new();
            client::stream(addr, "/v1/completions", None, &sb, |d, _| {
                seen.fetch_add(1, Ordering::Relaxed);
                events.push(d.to_string());
                true
            })
            .await
            .map(|_| events)
        });
        (h, count)
    }

    /// Wait until `f` holds, up to a minute.
    fn until(&self, what: &str, f: impl Fn(&Daemon) -> bool) {
        let end = Instant::now() + Duration::from_secs(60);
        while !f(&self.daemon) {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A fault hook that stops a scaling operation at `point` until `go` is sent; `reached` says
/// it got there.
fn stall_at(point: &'static str) -> (FaultHook, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (tx, reached) = mpsc::channel::<()>();
    let (go, grx) = mpsc::channel::<()>();
    let grx = Mutex::new(grx);
    let hook = FaultHook(Arc::new(move |p: &str| {
        if p == point {
            let _ = tx.send(());
            let _ = grx.lock().unwrap().recv_timeout(Duration::from_secs(120));
        }
        Ok(())
    }));
    (hook, reached, go)
}

/// The text of a stream: completions' `text`, chat's `delta.content`.
fn streamed_text(events: &[String]) -> (String, Option<Value>, Vec<String>) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut text = String::new();
    let mut usage = None;
    let mut finish = Vec::new();
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert!(v.get("error").is_none(), "{v}");
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            usage = Some(u.clone());
        }
        for c in v["choices"].as_array().unwrap() {
            if let Some(t) = c["text"].as_str() {
                text.push_str(t);
            }
            if let Some(t) = c["delta"]["content"].as_str() {
                text.push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                finish.push(f.to_string());
            }
        }
    }
    (text, usage, finish)
}

#[test]
fn completions_and_chat_answer_the_same_greedy_text_streamed_or_whole() {
    let a = agent(ServeOptions::default(), Access::default());
    let body = json!({"model": "micro-moe", "prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0, "ignore_eos": true});
    let r = a.post("/v1/completions", body.clone());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json().unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "micro-moe");
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(!text.is_empty(), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 12);
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        v["usage"]["total_tokens"].as_u64(),
        Some(prompt_tokens + 12)
    );

    // The same prompt as token ids (from /tokenize) answers the same.
    let t = a
        .post("/tokenize", json!({"prompt": "The quick brown fox"}))
        .json()
        .unwrap();
    assert_eq!(t["count"].as_u64(), Some(prompt_tokens));
    let ids = t["tokens"].clone();
    let d = a
        .post("/detokenize", json!({"tokens": ids}))
        .json()
        .unwrap();
    assert_eq!(d["prompt"], "The quick brown fox");
    let by_ids = a
        .post(
            "/v1/completions",
            json!({"prompt": ids, "max_tokens": 12, "ignore_eos": true}),
        )
        .json()
        .unwrap();
    assert_eq!(by_ids["choices"][0]["text"].as_str(), Some(text.as_str()));

    // Streamed, with usage: the same text, then the usage chunk, then [DONE].
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let events = a.stream("/v1/completions", sb);
    let (streamed, usage, finish) = streamed_text(&events);
    assert_eq!(streamed, text);
    assert_eq!(finish, ["length"]);
    assert_eq!(usage.unwrap()["completion_tokens"], 12);
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"], json!([]), "the usage chunk has no choices");

    // Chat, whole and streamed.
    let chat = json!({"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 10, "ignore_eos": true});
    let c = a.post("/v1/chat/completions", chat.clone()).json().unwrap();
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["choices"][0]["message"]["role"], "assistant");
    let ctext = c["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let mut cs = chat.clone();
    cs["stream"] = json!(true);
    let events = a.stream("/v1/chat/completions", cs);
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(streamed_text(&events).0, ctext);
}

#[test]
fn logprobs_are_the_engines_and_the_chosen_token_is_the_most_likely() {
    let a = agent(ServeOptions::default(), Access::default());
    let v = a
        .post(
            "/v1/completions",
            json!({"prompt": "abc", "max_tokens": 4, "logprobs": 3, "ignore_eos": true}),
        )
        .json()
        .unwrap();
    let lp = &v["choices"][0]["logprobs"];
    let chosen = lp["token_logprobs"].as_array().unwrap();
    let tops = lp["top_logprobs"].as_array().unwrap();
    assert_eq!(chosen.len(), 4, "{v}");
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4);
    for (c, t) in chosen.iter().zip(tops) {
        let c = c.as_f64().unwrap();
        assert!(c < 0.0, "a log-probability below 0: {c}");
        let best = t
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(t.as_object().unwrap().len() <= 3);
        assert_eq!(c, best, "greedy picks the most likely token");
    }
    let c = a
        .post("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "logprobs": true, "top_logprobs": 2, "ignore_eos": true}))
        .json()
        .unwrap();
    let content = c["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3, "{c}");
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
}

#[test]
fn refusals_come_in_openais_shape_with_their_status() {
    let a = agent(ServeOptions::default(), Access::default());
    for (path, body, status, param, says) in [
        (
            "/v1/completions",
            json!({"prompt": "x", "temperature": 0.5}),
            400,
            Some("temperature"),
            "temperature 0.5",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "model": "gpt-9"}),
            404,
            Some("model"),
            "gpt-9",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 100000}),
            413,
            Some("max_tokens"),
            "holds 2048",
        ),
        (
            "/v1/completions",
            json!({"prompt": [5000]}),
            400,
            Some("prompt"),
            "outside the vocabulary",
        ),
        (
            "/v1/completions",
            json!({"prompt": ""}),
            400,
            Some("prompt"),
            "empty",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}),
            400,
            Some("messages"),
            "0 given",
        ),
        ("/v1/nothing", json!({}), 404, None, "no such endpoint"),
    ] {
        let r = a.post(path, body.clone());
        assert_eq!(
            r.status,
            status,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json().unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{v}"
        );
        assert_eq!(v["error"]["param"].as_str(), param, "{v}");
        assert!(v["error"]["type"].is_string());
    }
    let nf = a
        .post("/v1/completions", json!({"prompt": "x", "model": "gpt-9"}))
        .json()
        .unwrap();
    assert_eq!(nf["error"]["code"], "model_not_found");
    let r =
        a.rt.block_on(client::send(a.addr, "POST", "/v1/completions", None, None))
            .unwrap();
    assert_eq!(r.status, 400, "an empty body is not JSON");
    assert_eq!(a.daemon.snapshot().serving.unwrap().http_refused, 9);

    let m = a.get("/v1/models").json().unwrap();
    assert_eq!(m["data"][0]["id"], "micro-moe");
    assert_eq!(m["data"][0]["max_model_len"], 2048);
    assert_eq!(a.get("/health").status, 200);
}

#[test]
fn a_token_guards_the_api_but_not_health() {
    let access = Access {
        token: Some("s3cret".into()),
        ..Access::default()
    };
    let a = agent(ServeOptions::default(), access);
    let body = json!({"prompt": "x", "max_tokens": 1});
    let r = a.post("/v1/completions", body.clone());
    assert_eq!(r.status, 401);
    assert_eq!(r.json().unwrap()["error"]["type"], "authentication_error");
    let wrong =
        a.rt.block_on(client::send(
            a.addr,
            "POST",
            "/v1/completions",
            Some("nope"),
            Some(&body),
        ))
        .unwrap();
    assert_eq!(wrong.status, 401);
    let ok =
        a.rt.block_on(client::send(
            a.addr,
            "POST",
            "/v1/completions",
            Some("s3cret"),
            Some(&body),
        ))
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(a.get("/v1/models").status, 401);
    assert_eq!(a.get("/health").status, 200);
}

#[test]
fn a_full_queue_answers_429_and_a_client_that_hangs_up_frees_its_blocks() {
    let opts = ServeOptions {
        max_batch: 1,
        max_queue: 1,
        ..ServeOptions::default()
    };
    let a = agent(opts, Access::default());
    let long = json!({"prompt": "hold", "max_tokens": 1500, "ignore_eos": true, "stream": true});
    // The first runs (the replica's one batch slot), the second waits, the third is refused.
    let (hang_up, hung_up) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut streams = Vec::new();
    for _ in 0..2 {
        let (addr, body) = (a.addr, long.clone());
        let (hang_up, hung_up) = (Arc::clone(&hang_up), Arc::clone(&hung_up));
        streams.push(a.rt.spawn(async move {
            client::stream(addr, "/v1/completions", None, &body, |_, _| {
                if hang_up.load(Ordering::Acquire) {
                    hung_up.store(true, Ordering::Release);
                    return false;
                }
                true
            })
            .await
        }));
        // In order: the first is running before the second queues.
        let want = streams.len();
        a.until("the request to be admitted or queued", |d| {
            let (q, r) = d.server().queue();
            q + r == want
        });
    }
    a.until("one running, one waiting", |d| d.server().queue() == (1, 1));
    let r = a.post("/v1/completions", json!({"prompt": "x", "max_tokens": 1}));
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    assert!(
        r.json().unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-queue 1")
    );
    // Both hang up: the running one is aborted and its blocks return; the queued one goes too.
    hang_up.store(true, Ordering::Release);
    for s in streams {
        a.rt.block_on(s).unwrap().unwrap();
    }
    assert!(hung_up.load(Ordering::Acquire));
    a.until("nothing queued or running", |d| {
        d.server().queue() == (0, 0)
    });
    assert_eq!(
        a.daemon.server().kv_usage(),
        0.0,
        "every KV block is free again"
    );
}

#[test]
fn metrics_carry_vllms_names_with_the_model_label() {
    let a = agent(ServeOptions::default(), Access::default());
    for _ in 0..3 {
        let r = a.post(
            "/v1/completions",
            json!({"prompt": "m", "max_tokens": 5, "ignore_eos": true}),
        );
        assert_eq!(r.status, 200);
    }
    a.daemon.tick();
    let text = String::from_utf8(a.get("/metrics").body).unwrap();
    for want in [
        "vllm:num_requests_running{model_name=\"micro-moe\"} 0",
        "vllm:num_requests_waiting{model_name=\"micro-moe\"} 0",
        "vllm:e2e_request_latency_seconds_count{model_name=\"micro-moe\"} 3",
        "vllm:time_to_first_token_seconds_count{model_name=\"micro-moe\"} 3",
        "vllm:inter_token_latency_seconds_count{model_name=\"micro-moe\"} 12",
        "vllm:generation_tokens_total{model_name=\"micro-moe\"} 15",
        "vllm:kv_cache_usage_perc{model_name=\"micro-moe\"} 0",
        "# TYPE vllm:time_to_first_token_seconds histogram",
        "emoe_requests_finished_total 3",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    assert_eq!(a.daemon.snapshot().serving.unwrap().http_finished, 3);
}

/// A stream crosses a scale up and a scale down: each switchover happens while it runs (the
/// scale waits at its copies until the stream has tokens), and its text is the text of the
/// same request on an agent that does not scale.
#[test]
fn a_stream_crosses_scale_up_and_down_with_the_answer_it_has_without_scaling() {
    let (hook, reached, go) = stall_at("copies");
    let opts = ServeOptions {
        fault: Some(hook),
        ..ServeOptions::default()
    };
    let a = agent(opts, Access::default());
    let body = json!({"prompt": "Across the switchover", "max_tokens": 1200, "ignore_eos": true});
    let reference = a.post("/v1/completions", body.clone()).json().unwrap();
    let want = reference["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    a.daemon.server().take_finished();

    let (stream, tokens) = a.spawn_stream(&body);
    a.until("the stream's first tokens", |_| {
        tokens.load(Ordering::Relaxed) > 0
    });
    for to in ["dp2tp1ep2", "dp1tp1ep1"] {
        let to: ParallelConfig = to.parse().unwrap();
        let d = Arc::clone(&a.daemon);
        let op = std::thread::spawn(move || {
            d.server()
                .scale_with(Strategy::Elastic, to, d.topology(), &AtomicBool::new(false))
                .map(|r| r.moved_requests)
        });
        reached.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(
            a.daemon.server().queue().1,
            1,
            "the stream is running at the {to} switchover"
        );
        go.send(()).unwrap();
        let moved = op.join().unwrap().unwrap();
        assert_eq!(moved, 1, "the stream moved to {to} with its KV");
    }
    let events = a.rt.block_on(stream).unwrap().unwrap();
    let (text, _, finish) = streamed_text(&events);
    assert_eq!(finish, ["length"]);
    assert_eq!(
        text, want,
        "the answer did not change across two switchovers"
    );
    let f = a.daemon.server().take_finished();
    assert_eq!(f.len(), 1);
    assert_eq!(
        f[0].instances.len(),
        3,
        "it ran on three instances: {:?}",
        f[0].instances
    );
}

/// While a cold restart reloads nothing is active: `/health` and new requests get 503 with
/// `Retry-After`; a stream that was running goes on after the reload where it was (its tokens
/// are not sent twice) and ends with the answer it has without the restart.
#[test]
fn a_cold_restart_answers_503_while_reloading_and_a_stream_resumes_where_it_was() {
    let (hook, reached, go) = stall_at("reload");
    let opts = ServeOptions {
        fault: Some(hook),
        ..ServeOptions::default()
    };
    let a = agent(opts, Access::default());
    let body = json!({"prompt": "Through a restart", "max_tokens": 600, "ignore_eos": true});
    let want = a.post("/v1/completions", body.clone()).json().unwrap()["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let (stream, tokens) = a.spawn_stream(&body);
    a.until("the stream's first tokens", |_| {
        tokens.load(Ordering::Relaxed) > 0
    });
    let d = Arc::clone(&a.daemon);
    let op = std::thread::spawn(move || {
        let to: ParallelConfig = "dp2tp1ep2".parse().unwrap();
        d.server()
            .scale_with(
                Strategy::ColdRestart,
                to,
                d.topology(),
                &AtomicBool::new(false),
            )
            .map(|_| ())
    });
    reached.recv_timeout(Duration::from_secs(60)).unwrap();
    let h = a.get("/health");
    assert_eq!(h.status, 503);
    let r = a.post("/v1/completions", json!({"prompt": "x", "max_tokens": 1}));
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    assert_eq!(
        r.json().unwrap()["error"]["type"],
        "service_unavailable_error"
    );
    go.send(()).unwrap();
    op.join().unwrap().unwrap();
    assert_eq!(a.get("/health").status, 200);
    let events = a.rt.block_on(stream).unwrap().unwrap();
    let (text, _, finish) = streamed_text(&events);
    assert_eq!(finish, ["length"]);
    assert_eq!(
        text, want,
        "the stream went on where it was, nothing sent twice"
    );
}

/// On a scale-down the stream on the replica that stays moves with its KV; the one on the
/// replica that goes away finishes on the draining instance. Neither is aborted, and both end
/// with the answers they have without scaling.
#[test]
fn on_scale_down_a_stream_of_the_removed_replica_finishes_on_the_draining_instance() {
    let (hook, reached, go) = stall_at("copies");
    // One request per replica.
    let opts = ServeOptions {
        max_batch: 1,
        fault: Some(hook),
        ..ServeOptions::default()
    };
    let a = agent_at("dp2tp1ep2", opts, Access::default());
    let bodies: Vec<Value> = ["First stream", "Second stream"]
        .iter()
        .map(|p| json!({"prompt": p, "max_tokens": 800, "ignore_eos": true}))
        .collect();
    let want: Vec<String> = bodies
        .iter()
        .map(|b| {
            a.post("/v1/completions", b.clone()).json().unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    a.daemon.server().take_finished();
    let streams: Vec<_> = bodies.iter().map(|b| a.spawn_stream(b).0).collect();
    a.until("both streams running, one per replica", |d| {
        d.server().running_by_instance().get(&1) == Some(&2)
    });
    let d = Arc::clone(&a.daemon);
    let op = std::thread::spawn(move || {
        let to: ParallelConfig = "dp1tp1ep1".parse().unwrap();
        d.server()
            .scale_with(Strategy::Elastic, to, d.topology(), &AtomicBool::new(false))
            .map(|r| (r.moved_requests, r.drained_requests))
    });
    reached.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(a.daemon.server().queue().1, 2, "both run at the switchover");
    go.send(()).unwrap();
    assert_eq!(
        op.join().unwrap().unwrap(),
        (1, 1),
        "one moved, one drained"
    );
    for (s, want) in streams.into_iter().zip(want) {
        let events = a.rt.block_on(s).unwrap().unwrap();
        let (text, _, finish) = streamed_text(&events);
        assert_eq!(finish, ["length"], "finished, not aborted");
        assert_eq!(text, want);
    }
}
