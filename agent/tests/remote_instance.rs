//! An instance in its own process, attached zero-copy: it serves from the owner's memory, its
//! KV writes land there, killing it loses no byte, and a new process reattaches and finishes the
//! request with the same answer.

use std::path::Path;
use std::sync::Arc;

use emoe_agent::remote::RemoteInstance;
use emoe_core::backend::host::{HostBackend, HostConfig};
use emoe_core::checkpoint::{self, Checkpoint};
use emoe_core::deploy::{DeployOptions, Deployment};
use emoe_core::engine::{Engine, StepInput};
use emoe_core::hmm::Hmm;
use emoe_core::model;
use emoe_core::{DeviceId, ParallelConfig};

const HOST: HostConfig = HostConfig {
    node: 0,
    devices: 4,
    capacity: 64 << 20,
    granularity: 64 << 10,
};

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_emoe-agent"))
}

/// Greedy generation of `out` tokens from `prompt`, one step at a time through `step`.
fn generate(
    prompt: &[u32],
    out: usize,
    from: usize,
    tokens: &mut Vec<u32>,
    mut step: impl FnMut(u32, u32) -> u32,
    until: usize,
) {
    let _ = prompt;
    let mut pos = from;
    while pos < until.min(prompt.len() + out - 1) {
        let next = step(tokens[pos], pos as u32);
        pos += 1;
        if pos >= prompt.len() && pos == tokens.len() {
            tokens.push(next);
        }
    }
}

#[test]
fn a_killed_instance_process_loses_nothing_and_a_new_one_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let spec = model::preset("micro-moe").unwrap().spec();
    let path = checkpoint::ensure_generated(&spec, 2, dir.path()).unwrap();
    let c = Checkpoint::open(&path).unwrap();
    let mut hmm = Hmm::new(Arc::new(HostBackend::new(HOST).unwrap()));
    let cfg: ParallelConfig = "dp1tp2ep2".parse().unwrap();
    let devices = [DeviceId::new(0, 0), DeviceId::new(0, 1)];
    let o = DeployOptions {
        kv_tokens: 256,
        ..DeployOptions::default()
    };
    let dep = Deployment::load(&mut hmm, &spec, cfg, &devices, Some(&c), &o).unwrap();
    let engine = Engine::new(&spec, 2).unwrap();
    let prompt: Vec<u32> = vec![5, 77, 300, 12, 999, 4];
    const OUT: usize = 8;

    // The reference, in this process, on KV blocks 0–1.
    let mut want = prompt.clone();
    let ref_blocks = vec![0u32, 1];
    generate(
        &prompt,
        OUT,
        0,
        &mut want,
        |t, p| {
            let i = [StepInput {
                token: t,
                pos: p,
                blocks: &ref_blocks,
                logprobs: None,
            }];
            engine.step(&hmm, &dep, 0, &i).unwrap().next[0]
        },
        usize::MAX,
    );

    // Half of it in a child process on blocks 4–5.
    let blocks = vec![4u32, 5];
    let mut got = prompt.clone();
    let half = prompt.len() + OUT / 2;
    {
        let mut child = RemoteInstance::spawn(exe(), &hmm, &dep, &HOST).unwrap();
        assert_ne!(child.pid(), std::process::id());
        generate(
            &prompt,
            OUT,
            0,
            &mut got,
            |t, p| child.step(0, &[(t, p, blocks.clone())]).unwrap()[0],
            half,
        );
        // Kill it mid-request.
        child.kill().unwrap();
    }
    assert_eq!(
        got[..],
        want[..got.len()],
        "the child computed what we compute"
    );

    // Nothing was lost: every weight matches its load checksum; the KV the child wrote is in
    // our memory, identical to the reference's KV for the same positions.
    assert!(dep.verify(&hmm).unwrap().is_empty());
    let kv = engine.kv_layout(&hmm, &dep);
    for r in &dep.devices {
        for l in 0..kv.layers {
            let mut a = vec![0u8; kv.run_bytes() as usize];
            let mut b = vec![0u8; kv.run_bytes() as usize];
            hmm.read_view(r.kv, kv.offset(0, l, 0), &mut a).unwrap();
            hmm.read_view(r.kv, kv.offset(4, l, 0), &mut b).unwrap();
            let n = (half - 1).min(16) * kv.token_bytes as usize;
            assert!(b[..n].iter().any(|x| *x != 0), "the child's KV is there");
            assert_eq!(
                a[..n],
                b[..n],
                "{} layer {l}: same KV as the reference",
                r.device
            );
        }
    }

    // A new process attaches to the same memory and finishes the request.
    let mut child = RemoteInstance::spawn(exe(), &hmm, &dep, &HOST).unwrap();
    generate(
        &prompt,
        OUT,
        half - 1,
        &mut got,
        |t, p| child.step(0, &[(t, p, blocks.clone())]).unwrap()[0],
        usize::MAX,
    );
    assert_eq!(got, want);
    // A bad request is refused by name, and the child keeps serving.
    let e = child.step(0, &[(1, 0, vec![])]).unwrap_err();
    assert!(e.to_string().contains("block"), "{e}");
    drop(child);
    assert!(dep.verify(&hmm).unwrap().is_empty());
}
