//! Loading a model into the HMM: every checkpoint byte read once, replicas by device-to-device
//! copy, experts in one contiguous range per device and layer, refusals that change nothing.

use std::sync::Arc;

use emoe_core::backend::host::{HostBackend, HostConfig};
use emoe_core::backend::modeled::ModeledBackend;
use emoe_core::backend::{DeviceBackend, DeviceInfo};
use emoe_core::checkpoint::{self, Checkpoint};
use emoe_core::deploy::{DeployError, DeployOptions, Deployment};
use emoe_core::hmm::Hmm;
use emoe_core::model::{self, ModelSpec, PackKey};
use emoe_core::{DeviceId, ParallelConfig};

fn host(devices: u32, capacity: u64) -> Hmm {
    let b = HostBackend::new(HostConfig {
        node: 0,
        devices,
        capacity,
        granularity: 64 << 10,
    })
    .unwrap();
    Hmm::new(Arc::new(b))
}

fn micro() -> (ModelSpec, Checkpoint, tempfile::TempDir) {
    let spec = model::preset("micro-moe").unwrap().spec();
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint::ensure_generated(&spec, 7, dir.path()).unwrap();
    let c = Checkpoint::open(&path).unwrap();
    (spec, c, dir)
}

fn devs(n: u32) -> Vec<DeviceId> {
    (0..n).map(|i| DeviceId::new(0, i)).collect()
}

#[test]
fn every_checkpoint_byte_is_read_once_and_replicas_come_by_p2p() {
    let (spec, ckpt, _dir) = micro();
    let mut hmm = host(8, 256 << 20);
    let cfg: ParallelConfig = "dp2tp2ep4".parse().unwrap();
    let d = Deployment::load(
        &mut hmm,
        &spec,
        cfg,
        &devs(4),
        Some(&ckpt),
        &DeployOptions::default(),
    )
    .unwrap();
    let total: u64 = spec.tensors().iter().map(|t| t.bytes()).sum();
    for t in spec.tensors() {
        assert_eq!(ckpt.reads_of(&t.name), t.bytes(), "{} read once", t.name);
    }
    assert_eq!(ckpt.bytes_read(), total);
    assert_eq!(d.stats.disk_bytes, total);
    assert!(d.stats.p2p_bytes > 0);
    assert!(
        d.verify(&hmm).unwrap().is_empty(),
        "every allocation matches its load checksum"
    );

    // DP replicas (devices 0/0 and 0/2 are TP rank 0) hold identical non-expert bytes.
    let (r0, r2) = (&d.devices[0], &d.devices[2]);
    assert_eq!((r0.tp_rank, r2.tp_rank, r2.dp_rank), (0, 0, 1));
    for ((k0, a0), (k2, a2)) in r0.non_expert_allocs.iter().zip(&r2.non_expert_allocs) {
        assert_eq!(k0, k2);
        assert_ne!(a0, a2);
        assert_eq!(hmm.checksum(*a0).unwrap(), hmm.checksum(*a2).unwrap());
    }
}

#[test]
fn experts_are_one_contiguous_range_per_device_and_layer() {
    let (spec, ckpt, _dir) = micro();
    let mut hmm = host(4, 256 << 20);
    let cfg: ParallelConfig = "dp1tp2ep2".parse().unwrap();
    let d = Deployment::load(
        &mut hmm,
        &spec,
        cfg,
        &devs(2),
        Some(&ckpt),
        &DeployOptions::default(),
    )
    .unwrap();
    let dev = &d.devices[1];
    let layer = spec.moe_layers()[1];
    let slots = &dev.experts[&layer];
    let res = hmm.reservation(slots.reservation).unwrap().clone();
    // 16 experts over EP 2: device 1 holds 8..16 in slots 0..8; slots up to 16/TP + 2 spare.
    assert_eq!(res.slots.len(), 16 / 2 + 2);
    let held: Vec<u32> = slots.slots.iter().flatten().map(|(x, _)| *x).collect();
    assert_eq!(held, (8..16).collect::<Vec<_>>());

    // The mapped slots read as one tensor: slot i holds expert 8 + i's checkpoint bytes.
    let stride = res.slots[1].offset;
    let expert = spec.expert_pack(layer, 0).bytes as usize;
    let mut contiguous = vec![0u8; stride as usize * 8];
    hmm.read_view(res.id, 0, &mut contiguous).unwrap();
    for i in 0..8u32 {
        let pack = spec.expert_pack(layer, 8 + i);
        let mut want = vec![0u8; pack.bytes as usize];
        ckpt.read_pack(&pack, &mut want).unwrap();
        let at = (u64::from(i) * stride) as usize;
        assert_eq!(&contiguous[at..at + expert], &want[..], "slot {i}");
    }

    // Remap slot 0 to expert 15's allocation: the same address now reads expert 15, no copy.
    let (_, a15) = slots.slots[7].unwrap();
    let used = hmm.usage(dev.device).unwrap().used;
    let old = hmm.map(res.id, 0, a15).unwrap();
    assert_eq!(old, Some(slots.slots[0].unwrap().1));
    let mut first = vec![0u8; expert];
    hmm.read_view(res.id, 0, &mut first).unwrap();
    assert_eq!(
        &first[..],
        &contiguous[7 * stride as usize..7 * stride as usize + expert]
    );
    assert_eq!(
        hmm.usage(dev.device).unwrap().used,
        used,
        "a remap allocates nothing"
    );
}

#[test]
fn refusals_change_nothing() {
    let (spec, ckpt, _dir) = micro();
    let cfg: ParallelConfig = "dp2tp2ep4".parse().unwrap();

    // Too little memory: refused before any allocation.
    let mut hmm = host(4, 1 << 20);
    let e = Deployment::load(
        &mut hmm,
        &spec,
        cfg,
        &devs(4),
        Some(&ckpt),
        &DeployOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, DeployError::OutOfMemory { .. }), "{e}");
    assert!(
        e.to_string().contains("not enough memory on device 0/0"),
        "{e}"
    );
    for d in devs(4) {
        assert_eq!(hmm.usage(d).unwrap().used, 0);
        assert_eq!(hmm.usage(d).unwrap().peak, 0);
    }
    assert_eq!(hmm.views().count(), 0);

    let mut hmm = host(8, 256 << 20);
    let e = Deployment::load(
        &mut hmm,
        &spec,
        cfg,
        &devs(3),
        Some(&ckpt),
        &DeployOptions::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("needs 4 devices, 3 were given"),
        "{e}"
    );
    let mut twice = devs(3);
    twice.push(DeviceId::new(0, 1));
    let e = Deployment::load(
        &mut hmm,
        &spec,
        cfg,
        &twice,
        Some(&ckpt),
        &DeployOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("0/1 is listed twice"), "{e}");
    let far = [0, 1, 2, 9].map(|i| DeviceId::new(0, i));
    let e = Deployment::load(
        &mut hmm,
        &spec,
        cfg,
        &far,
        Some(&ckpt),
        &DeployOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown device 0/9"), "{e}");
    let e = Deployment::load(
        &mut hmm,
        &spec,
        cfg,
        &devs(4),
        None,
        &DeployOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, DeployError::NoWeights { .. }), "{e}");
    let tiny = model::preset("tiny-moe").unwrap().spec();
    let e = Deployment::load(
        &mut hmm,
        &tiny,
        cfg,
        &devs(4),
        Some(&ckpt),
        &DeployOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, DeployError::WrongCheckpoint { .. }), "{e}");
    assert_eq!(hmm.all_allocations().count(), 0);
    assert_eq!(hmm.views().count(), 0);
}

#[test]
fn unload_returns_every_byte() {
    let (spec, ckpt, _dir) = micro();
    let mut hmm = host(8, 256 << 20);
    let cfg: ParallelConfig = "dp3tp2ep6".parse().unwrap();
    let d = Deployment::load(
        &mut hmm,
        &spec,
        cfg,
        &devs(6),
        Some(&ckpt),
        &DeployOptions::default(),
    )
    .unwrap();
    // 16 experts on EP 6: as even as possible.
    let l = spec.moe_layers()[0];
    let counts: Vec<usize> = devs(6)
        .iter()
        .map(|x| d.placement.experts_on(l, *x).len())
        .collect();
    assert_eq!(counts, vec![3, 3, 3, 3, 2, 2]);
    d.unload(&mut hmm).unwrap();
    for x in devs(8) {
        assert_eq!(hmm.usage(x).unwrap().used, 0);
    }
    assert_eq!(hmm.all_allocations().count(), 0);
}

#[test]
fn modeled_backend_loads_deepseek_v3_by_accounting_alone() {
    let spec = model::preset("deepseek-v3").unwrap().spec();
    let infos = (0..32)
        .map(|i| DeviceInfo {
            id: DeviceId::new(0, i),
            name: "modeled".into(),
            capacity: 64 << 30,
            granularity: 2 << 20,
        })
        .collect();
    let backend = ModeledBackend::new(infos);
    assert!(!backend.holds_bytes());
    let mut hmm = Hmm::new(Arc::new(backend));
    let cfg: ParallelConfig = "dp4tp8ep32".parse().unwrap();
    let d = Deployment::load(
        &mut hmm,
        &spec,
        cfg,
        &devs(32),
        None,
        &DeployOptions::default(),
    )
    .unwrap();
    assert_eq!(d.stats.disk_bytes, 0);
    assert!(d.checksums.is_empty());
    let expert = hmm
        .round_up(DeviceId::new(0, 0), spec.expert_bytes())
        .unwrap();
    let experts_on_0 = hmm
        .allocations(DeviceId::new(0, 0))
        .filter(|a| a.tag.kind == emoe_core::hmm::RegionKind::Expert)
        .count() as u64;
    assert_eq!(experts_on_0, 8 * 58);
    assert!(hmm.usage(DeviceId::new(0, 0)).unwrap().used > experts_on_0 * expert);
    assert!(matches!(
        d.devices[0].non_expert_allocs[0].0,
        PackKey::Globals
    ));
}
