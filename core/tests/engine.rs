//! The MoE engine on real host memory: answers are a function of the weights and the prompt
//! only — the same across replicas, batches, scaling steps, rebalancing and a switchover in the
//! middle of a request, bit for bit (tokens and log-probabilities), for the generated
//! `micro-moe` and one reference fixture of each family.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use emoe_core::backend::host::{HostBackend, HostConfig};
use emoe_core::checkpoint::{self, Checkpoint};
use emoe_core::deploy::{DeployOptions, Deployment};
use emoe_core::engine::{BlockPool, Engine, StepInput, blocks_for};
use emoe_core::hmm::Hmm;
use emoe_core::model::{self, ModelSpec};
use emoe_core::plan::{self, PlanInput, Policy, Topology};
use emoe_core::scale::{self, TransitionOptions, pool_state};
use emoe_core::{DeviceId, ParallelConfig};

struct Model {
    name: String,
    spec: ModelSpec,
    _dir: Option<tempfile::TempDir>,
    path: std::path::PathBuf,
}

/// One fixture of each family (from `tests/fixtures/reference/`, written by
/// `scripts/make-reference.py`), beside the generated `micro-moe`.
const FAMILY_FIXTURES: [&str; 5] = [
    "deepseek_v2_qlora",
    "deepseek_v3",
    "qwen3_moe",
    "qwen2_moe",
    "mixtral",
];

fn models() -> &'static [Model] {
    static M: OnceLock<Vec<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let spec = model::preset("micro-moe").unwrap().spec();
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint::ensure_generated(&spec, 5, dir.path()).unwrap();
        let mut all = vec![Model {
            name: "micro-moe".into(),
            spec,
            _dir: Some(dir),
            path,
        }];
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference");
        for name in FAMILY_FIXTURES {
            let path = root.join(name);
            let spec = Checkpoint::open(&path)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .spec()
                .clone();
            all.push(Model {
                name: name.into(),
                spec,
                _dir: None,
                path,
            });
        }
        all
    })
}

fn micro() -> &'static Model {
    &models()[0]
}

fn node(config: &str) -> (Hmm, Deployment, Checkpoint) {
    node_of(micro(), config)
}

fn node_of(m: &Model, config: &str) -> (Hmm, Deployment, Checkpoint) {
    let c = Checkpoint::open(&m.path).unwrap();
    let b = HostBackend::new(HostConfig {
        node: 0,
        devices: 8,
        capacity: 64 << 20,
        granularity: 64 << 10,
    })
    .unwrap();
    let mut hmm = Hmm::new(Arc::new(b));
    let cfg: ParallelConfig = config.parse().unwrap();
    let devices: Vec<DeviceId> = (0..cfg.devices()).map(|i| DeviceId::new(0, i)).collect();
    let o = DeployOptions {
        kv_tokens: 512,
        ..DeployOptions::default()
    };
    let d = Deployment::load(&mut hmm, &m.spec, cfg, &devices, Some(&c), &o)
        .unwrap_or_else(|e| panic!("{} {config}: {e}", m.name));
    (hmm, d, c)
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![1, 2, 3, 4, 5],
        vec![900, 17, 17, 300],
        (0..21).map(|i| (i * 37 + 11) % 1024).collect(),
        vec![1023],
    ]
}

/// A request being generated: its tokens so far and its KV blocks.
#[derive(Clone, Debug)]
struct Seq {
    tokens: Vec<u32>,
    prompt: usize,
    blocks: Vec<u32>,
    /// The bits of each generated token's log-probability.
    logprobs: Vec<u32>,
}

/// A generated token and the bits of its log-probability.
type Answer = Vec<(u32, u32)>;

impl Seq {
    fn answer(&self, out: usize) -> Answer {
        let n = out.min(self.tokens.len() - self.prompt);
        self.tokens[self.prompt..self.prompt + n]
            .iter()
            .copied()
            .zip(self.logprobs.iter().copied())
            .collect()
    }
}

fn start(prompts: &[Vec<u32>], out: usize, pool: &mut BlockPool) -> Vec<Seq> {
    prompts
        .iter()
        .map(|p| Seq {
            tokens: p.clone(),
            prompt: p.len(),
            blocks: pool.take(blocks_for((p.len() + out) as u32)).unwrap(),
            logprobs: Vec::new(),
        })
        .collect()
}

/// Run `steps` batched steps: every unfinished sequence feeds its next unprocessed token.
/// `done[i]` counts positions already in the KV cache; a sequence is finished once it holds its
/// prompt and `OUT` generated tokens.
fn run(
    engine: &Engine,
    hmm: &Hmm,
    inst: &Deployment,
    group: usize,
    seqs: &mut [Seq],
    done: &mut [usize],
    steps: usize,
) {
    for _ in 0..steps {
        let active: Vec<usize> = (0..seqs.len())
            .filter(|&i| done[i] < seqs[i].prompt + OUT - 1)
            .collect();
        if active.is_empty() {
            return;
        }
        let inputs: Vec<StepInput> = active
            .iter()
            .map(|&i| StepInput {
                token: seqs[i].tokens[done[i]],
                pos: done[i] as u32,
                blocks: &seqs[i].blocks,
                logprobs: Some(0),
            })
            .collect();
        let out = engine.step(hmm, inst, group, &inputs).unwrap();
        for ((&i, next), lp) in active.iter().zip(out.next).zip(out.logprobs) {
            done[i] += 1;
            if done[i] >= seqs[i].prompt && done[i] == seqs[i].tokens.len() {
                seqs[i].tokens.push(next);
                seqs[i]
                    .logprobs
                    .push(lp.expect("asked for").logprob.to_bits());
            }
        }
    }
}

/// Greedy answers (generated tokens only) of `prompts`, all in one batch on `group`.
fn answers(
    engine: &Engine,
    hmm: &Hmm,
    inst: &Deployment,
    group: usize,
    prompts: &[Vec<u32>],
    out: usize,
) -> Vec<Answer> {
    let kv = engine.kv_layout(hmm, inst);
    let mut pool = BlockPool::new(kv.blocks);
    let mut seqs = start(prompts, out, &mut pool);
    let mut done = vec![0; seqs.len()];
    // Prompts of different lengths in one batch: each step advances every sequence by one.
    let longest = prompts.iter().map(Vec::len).max().unwrap();
    run(
        engine,
        hmm,
        inst,
        group,
        &mut seqs,
        &mut done,
        longest + out - 1,
    );
    seqs.iter().map(|s| s.answer(out)).collect()
}

fn plan_to(hmm: &Hmm, d: &Deployment, to: &str, policy: Policy) -> plan::Plan {
    let pool = pool_state(hmm);
    let from: Vec<DeviceId> = d.devices.iter().map(|r| r.device).collect();
    let topo = Topology::uniform(1e10, 1e10);
    let to: ParallelConfig = to.parse().unwrap();
    let to_devices = (to == d.config).then(|| from.clone());
    plan::plan(&PlanInput {
        model: &d.model,
        from: d.config,
        from_devices: &from,
        placement: &d.placement,
        pool: &pool,
        to,
        to_devices,
        policy,
        operation_running: false,
        kv_tokens: 512,
        topology: &topo,
    })
    .unwrap()
}

fn scale_to(hmm: &mut Hmm, c: &Checkpoint, d: Deployment, to: &str, policy: Policy) -> Deployment {
    let p = plan_to(hmm, &d, to, policy);
    let new = scale::execute(hmm, &d, &p, Some(c), &TransitionOptions::default()).unwrap();
    d.unload(hmm).unwrap();
    new
}

const OUT: usize = 6;

/// Each model's answers on replica 0 of dp2tp2ep4, what every other run must give bit for bit.
fn references() -> &'static Vec<Vec<Answer>> {
    static R: OnceLock<Vec<Vec<Answer>>> = OnceLock::new();
    R.get_or_init(|| {
        models()
            .iter()
            .map(|m| {
                let (hmm, d, _c) = node_of(m, "dp2tp2ep4");
                let e = Engine::new(&d.model, 2).unwrap();
                answers(&e, &hmm, &d, 0, &prompts(), OUT)
            })
            .collect()
    })
}

#[test]
fn answers_are_real_and_the_same_on_every_replica_and_batch() {
    for (m, r) in models().iter().zip(references()) {
        assert_eq!(r.len(), 4);
        assert!(r.iter().all(|a| a.len() == OUT), "{}", m.name);
        let distinct: std::collections::BTreeSet<&Answer> = r.iter().collect();
        assert!(
            distinct.len() > 1,
            "{}: different prompts give different answers: {r:?}",
            m.name
        );
        let (hmm, d, _c) = node_of(m, "dp2tp2ep4");
        let e = Engine::new(&d.model, 2).unwrap();
        let one = answers(&e, &hmm, &d, 1, &prompts(), OUT);
        assert_eq!(&one, r, "{} replica 1", m.name);
        // One prompt alone gives what it gave inside the batch.
        for (i, p) in prompts().iter().enumerate() {
            let alone = answers(&e, &hmm, &d, 0, std::slice::from_ref(p), OUT);
            assert_eq!(alone[0], r[i], "{} prompt {i} alone", m.name);
        }
    }
}

#[test]
fn answers_do_not_change_across_scale_up_down_and_rebalance() {
    for (m, r) in models().iter().zip(references()) {
        let (mut hmm, d, c) = node_of(m, "dp2tp2ep4");
        let e = Engine::new(&d.model, 2).unwrap();
        let up = scale_to(&mut hmm, &c, d, "dp4tp2ep8", Policy::Balanced);
        for g in 0..4 {
            let got = answers(&e, &hmm, &up, g, &prompts(), OUT);
            assert_eq!(&got, r, "{} after scale-up, replica {g}", m.name);
        }
        let down = scale_to(&mut hmm, &c, up, "dp3tp2ep6", Policy::Balanced);
        for g in 0..3 {
            let got = answers(&e, &hmm, &down, g, &prompts(), OUT);
            assert_eq!(&got, r, "{} after scale-down, replica {g}", m.name);
        }
        // Rebalance with hot-expert replicas: placement changes, answers do not.
        let experts = down.model.num_routed_experts as usize;
        let mut load = BTreeMap::new();
        for l in down.model.moe_layers() {
            let mut v = vec![1.0; experts];
            v[3] = 50.0;
            v[experts - 1] = 20.0;
            load.insert(l, v);
        }
        let before = down.placement.clone();
        let reb = scale_to(
            &mut hmm,
            &c,
            down,
            "dp3tp2ep6",
            Policy::LoadAware { load, replicas: 2 },
        );
        assert_ne!(
            reb.placement, before,
            "{}: rebalance changed the placement",
            m.name
        );
        for g in 0..3 {
            let got = answers(&e, &hmm, &reb, g, &prompts(), OUT);
            assert_eq!(&got, r, "{} after rebalance, replica {g}", m.name);
        }
    }
}

#[test]
fn a_request_continues_across_the_switchover_without_copying_its_kv() {
    for (m, r) in models().iter().zip(references()) {
        let (mut hmm, d, c) = node_of(m, "dp2tp2ep4");
        let e = Engine::new(&d.model, 2).unwrap();
        let kv = e.kv_layout(&hmm, &d);
        let mut pool = BlockPool::new(kv.blocks);
        let ps = prompts();
        let mut seqs = start(&ps, OUT, &mut pool);
        let mut done = vec![0; seqs.len()];
        let longest = ps.iter().map(Vec::len).max().unwrap();
        // Half-way on the old instance, replica 0 (devices 0/0 and 0/1) …
        let first = longest + 1;
        run(&e, &hmm, &d, 0, &mut seqs, &mut done, first);
        // … scale up while the requests are in flight …
        let p = plan_to(&hmm, &d, "dp4tp2ep8", Policy::Balanced);
        let new =
            scale::execute(&mut hmm, &d, &p, Some(&c), &TransitionOptions::default()).unwrap();
        assert_eq!(
            new.devices[0].kv_alloc, d.devices[0].kv_alloc,
            "{}: same KV memory, no copy",
            m.name
        );
        d.unload(&mut hmm).unwrap();
        // … and finish on the new instance's replica 0: the same devices and KV blocks.
        let rest = longest + OUT - 1 - first;
        run(&e, &hmm, &new, 0, &mut seqs, &mut done, rest);
        let got: Vec<Answer> = seqs.iter().map(|s| s.answer(OUT)).collect();
        assert_eq!(&got, r, "{}", m.name);
    }
}

#[test]
fn bad_step_inputs_are_refused_by_name() {
    let (hmm, d, _c) = node("dp2tp2ep4");
    let e = Engine::new(&d.model, 2).unwrap();
    let blocks = [0u32];
    let err = e
        .step(
            &hmm,
            &d,
            0,
            &[StepInput {
                token: 5000,
                pos: 0,
                blocks: &blocks,
                logprobs: None,
            }],
        )
        .unwrap_err();
    assert!(err.to_string().contains("5000"), "{err}");
    let err = e
        .step(
            &hmm,
            &d,
            0,
            &[StepInput {
                token: 1,
                pos: 40,
                blocks: &blocks,
                logprobs: None,
            }],
        )
        .unwrap_err();
    assert!(err.to_string().contains("block 2"), "{err}");
    let err = e
        .step(
            &hmm,
            &d,
            2,
            &[StepInput {
                token: 1,
                pos: 0,
                blocks: &blocks,
                logprobs: None,
            }],
        )
        .unwrap_err();
    assert!(err.to_string().contains("replica 2"), "{err}");
    let big = [u32::MAX];
    let err = e
        .step(
            &hmm,
            &d,
            0,
            &[StepInput {
                token: 1,
                pos: 0,
                blocks: &big,
                logprobs: None,
            }],
        )
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let v3 = model::preset("deepseek-v3").unwrap().spec();
    let err = Engine::new(&v3, 3).unwrap_err().to_string();
    assert!(
        err.contains("128 attention heads") && err.contains("TP 3"),
        "{err}"
    );
}
