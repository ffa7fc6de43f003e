//! `Transition::check` decides exactly as `Transition::prepare` does before its first
//! allocation, and changes nothing: a cold build that cannot fit beside the serving instance is
//! refused with its device and sizes, one that fits passes both.

use std::sync::Arc;

use emoe_core::backend::host::{HostBackend, HostConfig};
use emoe_core::checkpoint::{self, Checkpoint};
use emoe_core::deploy::{DeployOptions, Deployment};
use emoe_core::hmm::Hmm;
use emoe_core::model;
use emoe_core::plan::{self, PlanInput, Policy, Topology};
use emoe_core::scale::{ScaleError, Transition, TransitionOptions, pool_state};
use emoe_core::{DeviceId, ParallelConfig};

fn setup(capacity: u64) -> (Hmm, Deployment, Checkpoint, tempfile::TempDir) {
    let spec = model::preset("micro-moe").unwrap().spec();
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint::ensure_generated(&spec, 3, dir.path()).unwrap();
    let c = Checkpoint::open(&path).unwrap();
    let b = HostBackend::new(HostConfig {
        node: 0,
        devices: 8,
        capacity,
        granularity: 64 << 10,
    })
    .unwrap();
    let mut hmm = Hmm::new(Arc::new(b));
    let devices: Vec<DeviceId> = (0..4).map(|i| DeviceId::new(0, i)).collect();
    let o = DeployOptions {
        kv_tokens: 1024,
        ..DeployOptions::default()
    };
    let cfg: ParallelConfig = "dp2tp2ep4".parse().unwrap();
    let d = Deployment::load(&mut hmm, &spec, cfg, &devices, Some(&c), &o).unwrap();
    (hmm, d, c, dir)
}

fn plan_to(hmm: &Hmm, d: &Deployment, to: &str) -> plan::Plan {
    let pool = pool_state(hmm);
    let from: Vec<DeviceId> = d.devices.iter().map(|r| r.device).collect();
    plan::plan(&PlanInput {
        model: &d.model,
        from: d.config,
        from_devices: &from,
        placement: &d.placement,
        pool: &pool,
        to: to.parse().unwrap(),
        to_devices: None,
        policy: Policy::Balanced,
        operation_running: false,
        kv_tokens: 0,
        topology: &Topology::uniform(1e10, 1e10),
    })
    .unwrap()
}

#[test]
fn check_refuses_what_prepare_refuses_and_changes_nothing() {
    // 40 granules a device: dp2tp2ep4 holds 36, a cold copy beside it cannot fit.
    let (mut hmm, d, c, _dir) = setup(40 * (64 << 10));
    let p = plan_to(&hmm, &d, "dp3tp2ep6");
    let cold = TransitionOptions {
        cold: true,
        ..TransitionOptions::default()
    };
    let gen_before = hmm.generation();
    let allocs = hmm.all_allocations().count();
    let e = Transition::check(&hmm, &d, &p, Some(&c), &cold).unwrap_err();
    assert!(matches!(e, ScaleError::NotEnoughMemory { .. }), "{e}");
    assert_eq!(hmm.generation(), gen_before, "check touched the HMM");
    let e2 = Transition::prepare(&mut hmm, &d, &p, Some(&c), &cold).unwrap_err();
    assert_eq!(e.to_string(), e2.to_string());
    assert_eq!(hmm.all_allocations().count(), allocs);
}

#[test]
fn check_passes_what_prepare_builds() {
    let (mut hmm, d, c, _dir) = setup(64 << 20);
    let p = plan_to(&hmm, &d, "dp3tp2ep6");
    for o in [
        TransitionOptions::default(),
        TransitionOptions {
            cold: true,
            ..TransitionOptions::default()
        },
    ] {
        let allocs = hmm.all_allocations().count();
        Transition::check(&hmm, &d, &p, Some(&c), &o).unwrap();
        assert_eq!(hmm.all_allocations().count(), allocs);
        let t = Transition::prepare(&mut hmm, &d, &p, Some(&c), &o).unwrap();
        t.rollback(&mut hmm).unwrap();
        assert_eq!(hmm.all_allocations().count(), allocs);
    }
}
