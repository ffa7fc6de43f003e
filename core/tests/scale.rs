//! Executing scaling plans on real host memory: the planned placement, checksums that match the
//! checkpoint, no leaked allocation, rollback that changes nothing, the peak-memory bound of
//! vpage-remap against realloc-and-copy, and the paper's baselines side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use emoe_core::backend::host::{HostBackend, HostConfig};
use emoe_core::checkpoint::{self, Checkpoint};
use emoe_core::deploy::{DeployOptions, Deployment, Placement};
use emoe_core::hmm::{AllocId, Hmm};
use emoe_core::model::{self, ModelSpec, PackKey};
use emoe_core::plan::{self, Plan, PlanInput, Policy, Topology};
use emoe_core::scale::{
    self, ExpertMode, ScaleError, Strategy, Transition, TransitionOptions, pool_state, run_baseline,
};
use emoe_core::{DeviceId, ParallelConfig};

struct Model {
    spec: ModelSpec,
    dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

fn micro() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let spec = model::preset("micro-moe").unwrap().spec();
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint::ensure_generated(&spec, 3, dir.path()).unwrap();
        Model { spec, dir, path }
    })
}

fn ckpt() -> Checkpoint {
    let m = micro();
    assert!(m.dir.path().exists());
    Checkpoint::open(&m.path).unwrap()
}

fn cfg(s: &str) -> ParallelConfig {
    s.parse().unwrap()
}

fn host(devices: u32, granularity: u64) -> Hmm {
    let b = HostBackend::new(HostConfig {
        node: 0,
        devices,
        capacity: 64 << 20,
        granularity,
    })
    .unwrap();
    Hmm::new(Arc::new(b))
}

fn opts() -> DeployOptions {
    DeployOptions {
        kv_tokens: 256,
        ..DeployOptions::default()
    }
}

fn load(hmm: &mut Hmm, c: &Checkpoint, config: &str) -> Deployment {
    let config = cfg(config);
    let devices: Vec<DeviceId> = (0..config.devices()).map(|i| DeviceId::new(0, i)).collect();
    Deployment::load(hmm, &micro().spec, config, &devices, Some(c), &opts()).unwrap()
}

fn plan_for(hmm: &Hmm, dep: &Deployment, to: &str) -> Plan {
    let pool = pool_state(hmm);
    let from_devices: Vec<DeviceId> = dep.devices.iter().map(|r| r.device).collect();
    let topology = Topology::uniform(10e9, 10e9);
    plan::plan(&PlanInput {
        model: &dep.model,
        from: dep.config,
        from_devices: &from_devices,
        placement: &dep.placement,
        pool: &pool,
        to: cfg(to),
        to_devices: None,
        policy: Policy::Balanced,
        operation_running: false,
        kv_tokens: opts().kv_tokens,
        topology: &topology,
    })
    .unwrap()
}

/// Every allocation the HMM holds, and every view.
fn books(hmm: &Hmm) -> (BTreeSet<AllocId>, usize, BTreeMap<DeviceId, u64>) {
    let allocs = hmm.all_allocations().map(|a| a.id).collect();
    let used = hmm
        .devices()
        .iter()
        .map(|d| (d.id, hmm.usage(d.id).unwrap().used))
        .collect();
    (allocs, hmm.views().count(), used)
}

/// The deployment is exactly what the HMM holds: no leaked allocation, no stray view, and each
/// weight's bytes equal the checkpoint's.
fn check_clean(hmm: &Hmm, dep: &Deployment, c: &Checkpoint) {
    let mine: BTreeSet<AllocId> = dep
        .devices
        .iter()
        .flat_map(|r| r.weights().map(|w| w.2).chain([r.kv_alloc]))
        .collect();
    let held: BTreeSet<AllocId> = hmm.all_allocations().map(|a| a.id).collect();
    assert_eq!(
        held, mine,
        "the HMM holds exactly the deployment's allocations"
    );
    assert_eq!(hmm.views().count(), 1, "one view remains");
    for d in hmm.devices() {
        let sum: u64 = hmm.allocations(d.id).map(|a| a.size).sum();
        assert_eq!(hmm.usage(d.id).unwrap().used, sum, "{} accounting", d.id);
    }
    assert!(
        dep.verify(hmm).unwrap().is_empty(),
        "checksums match the load"
    );
    let mut buf = Vec::new();
    for r in &dep.devices {
        for (key, _, a) in r.weights() {
            if let PackKey::Expert { layer, expert } = key {
                let pack = dep.model.expert_pack(layer, expert);
                buf.resize(pack.bytes as usize, 0);
                c.read_pack(&pack, &mut buf).unwrap();
                let want = xxhash_rust::xxh3::xxh3_64(&buf);
                assert_eq!(hmm.checksum(a).unwrap(), want, "{key:?} on {}", r.device);
            }
        }
    }
    // Each device's experts sit in its slots in ascending order, as the placement says.
    for r in &dep.devices {
        for (l, s) in &r.experts {
            let mapped: Vec<u32> = s.slots.iter().flatten().map(|x| x.0).collect();
            assert_eq!(mapped, dep.placement.experts_on(*l, r.device));
            let res = hmm.reservation(s.reservation).unwrap();
            for (i, slot) in s.slots.iter().enumerate() {
                assert_eq!(res.slots[i].mapped, slot.map(|x| x.1));
            }
        }
    }
}

fn step(hmm: &mut Hmm, c: &Checkpoint, dep: Deployment, to: &str) -> Deployment {
    let p = plan_for(hmm, &dep, to);
    let new = scale::execute(hmm, &dep, &p, Some(c), &TransitionOptions::default()).unwrap();
    assert_eq!(new.placement, p.target_placement);
    assert_eq!(new.config, p.to);
    dep.unload(hmm).unwrap();
    new
}

#[test]
fn scale_up_and_down_on_real_memory() {
    let c = ckpt();
    let mut hmm = host(8, 64 << 10);
    let dep = load(&mut hmm, &c, "dp2tp2ep4");
    let up = step(&mut hmm, &c, dep, "dp3tp2ep6");
    check_clean(&hmm, &up, &c);
    let down = step(&mut hmm, &c, up, "dp1tp2ep2");
    check_clean(&hmm, &down, &c);
}

#[test]
fn kept_devices_are_zero_copy_and_new_bytes_come_by_p2p() {
    let c = ckpt();
    let mut hmm = host(8, 64 << 10);
    let dep = load(&mut hmm, &c, "dp2tp2ep4");
    let before = c.bytes_read();
    let p = plan_for(&hmm, &dep, "dp3tp2ep6");
    let t =
        Transition::prepare(&mut hmm, &dep, &p, Some(&c), &TransitionOptions::default()).unwrap();
    let s = t.stats();
    assert_eq!(s.disk_bytes, 0);
    assert_eq!(s.local_bytes, 0);
    assert_eq!(
        s.p2p_bytes, p.p2p_bytes,
        "exactly the planned P2P bytes move"
    );
    assert!(s.zero_copy_bytes >= p.zero_copy_bytes);
    // Kept devices map the very allocations of the old instance.
    let old_kv: Vec<AllocId> = dep.devices.iter().map(|r| r.kv_alloc).collect();
    t.run_all(&hmm, Some(&c)).unwrap();
    let new = t.commit(&mut hmm).unwrap();
    for r in new
        .devices
        .iter()
        .filter(|r| !p.devices_added.contains(&r.device))
    {
        assert!(
            old_kv.contains(&r.kv_alloc),
            "{} keeps its KV cache",
            r.device
        );
        assert_eq!(
            hmm.views_of(r.kv_alloc).len(),
            2,
            "mapped by both instances"
        );
    }
    assert_eq!(c.bytes_read(), before, "nothing is read from disk");
    dep.unload(&mut hmm).unwrap();
    check_clean(&hmm, &new, &c);
}

#[test]
fn rollback_before_switchover_changes_nothing() {
    let c = ckpt();
    let mut hmm = host(8, 64 << 10);
    let dep = load(&mut hmm, &c, "dp2tp2ep4");
    let before = books(&hmm);
    let p = plan_for(&hmm, &dep, "dp4tp2ep8");
    let t =
        Transition::prepare(&mut hmm, &dep, &p, Some(&c), &TransitionOptions::default()).unwrap();
    for i in 0..t.jobs().len() / 2 {
        t.run_job(&hmm, i, Some(&c)).unwrap();
    }
    assert!(t.jobs_done() < t.jobs().len());
    t.rollback(&mut hmm).unwrap();
    assert_eq!(books(&hmm), before);
    check_clean(&hmm, &dep, &c);

    // Commit with copies pending refuses and rolls back too.
    let t =
        Transition::prepare(&mut hmm, &dep, &p, Some(&c), &TransitionOptions::default()).unwrap();
    let e = t.commit(&mut hmm).unwrap_err();
    assert!(matches!(e, ScaleError::CopiesPending { .. }), "{e}");
    assert_eq!(books(&hmm), before);
}

#[test]
fn a_plan_for_another_state_is_refused_before_anything_changes() {
    let c = ckpt();
    let mut hmm = host(8, 64 << 10);
    let dep = load(&mut hmm, &c, "dp2tp2ep4");
    let other = {
        let mut h2 = host(8, 64 << 10);
        let d2 = load(&mut h2, &c, "dp3tp2ep6");
        plan_for(&h2, &d2, "dp4tp2ep8")
    };
    let before = books(&hmm);
    let e = Transition::prepare(
        &mut hmm,
        &dep,
        &other,
        Some(&c),
        &TransitionOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("dp3tp2ep6"), "{e}");
    assert_eq!(books(&hmm), before);

    // Not enough memory: the plan fits an empty pool, not this one.
    let mut small = {
        let b = HostBackend::new(HostConfig {
            node: 0,
            devices: 8,
            capacity: 4 << 20,
            granularity: 64 << 10,
        })
        .unwrap();
        Hmm::new(Arc::new(b))
    };
    let d = load(&mut small, &c, "dp2tp2ep4");
    let p = plan_for(&small, &d, "dp3tp2ep6");
    // Fill device 4 (a new one) so the plan no longer fits.
    let dev = p.devices_added[0];
    let free = small.usage(dev).unwrap().free;
    let filler = small
        .alloc(dev, free - (64 << 10), emoe_core::hmm::RegionTag::kv(None))
        .unwrap();
    let before = books(&small);
    let e = Transition::prepare(&mut small, &d, &p, Some(&c), &TransitionOptions::default())
        .unwrap_err();
    assert!(
        matches!(e, ScaleError::NotEnoughMemory { device, .. } if device == dev),
        "{e}"
    );
    assert!(e.to_string().contains(&dev.to_string()));
    assert_eq!(books(&small), before);
    small.free(filler).unwrap();
}

/// One device over a step: used and expert bytes before and after, and the HMM-measured peak.
#[derive(Clone, Copy, Debug)]
struct Footprint {
    start: u64,
    start_experts: u64,
    end: u64,
    end_experts: u64,
    peak: u64,
}

fn expert_bytes_on(hmm: &Hmm, d: DeviceId) -> u64 {
    hmm.allocations(d)
        .filter(|a| a.tag.kind == emoe_core::hmm::RegionKind::Expert)
        .map(|a| a.size)
        .sum()
}

fn measure_peak(mode: ExpertMode, from: &str, to: &str) -> BTreeMap<DeviceId, Footprint> {
    let c = ckpt();
    // 4 KiB granules so a 48 KiB expert is not padded.
    let mut hmm = host(8, 4 << 10);
    let dep = load(&mut hmm, &c, from);
    let p = plan_for(&hmm, &dep, to);
    let ids: Vec<DeviceId> = hmm.devices().iter().map(|d| d.id).collect();
    let start: BTreeMap<DeviceId, (u64, u64)> = ids
        .iter()
        .map(|d| (*d, (hmm.usage(*d).unwrap().used, expert_bytes_on(&hmm, *d))))
        .collect();
    for d in &ids {
        hmm.reset_peak(*d).unwrap();
    }
    let o = TransitionOptions {
        experts: mode,
        ..TransitionOptions::default()
    };
    let new = scale::execute(&mut hmm, &dep, &p, Some(&c), &o).unwrap();
    dep.unload(&mut hmm).unwrap();
    check_clean(&hmm, &new, &c);
    ids.iter()
        .map(|d| {
            let u = hmm.usage(*d).unwrap();
            let f = Footprint {
                start: start[d].0,
                start_experts: start[d].1,
                end: u.used,
                end_experts: expert_bytes_on(&hmm, *d),
                peak: u.peak,
            };
            (*d, f)
        })
        .collect()
}

#[test]
fn vpage_remap_peak_stays_at_the_footprint_realloc_and_copy_doubles_experts() {
    let expert = micro().spec.expert_bytes(); // 48 KiB, a multiple of the 4 KiB granule
    let steps = [
        ("dp4tp2ep8", "dp2tp2ep4"),
        ("dp2tp2ep4", "dp3tp2ep6"),
        ("dp3tp2ep6", "dp4tp2ep8"),
    ];
    for (from, to) in steps {
        let remap = measure_peak(ExpertMode::Remap, from, to);
        let realloc = measure_peak(ExpertMode::Realloc, from, to);
        for (d, f) in &remap {
            // VMM remap: the peak is the larger footprint — the final one on a device that gains
            // experts (scale-down survivors, new devices) — plus at most one expert.
            assert!(
                f.peak <= f.start.max(f.end) + expert,
                "{from}→{to} {d}: remap peak {} > max({}, {}) + one expert",
                f.peak,
                f.start,
                f.end
            );
            if f.end >= f.start {
                // A device that gains experts: the final footprint plus at most one expert.
                assert!(f.peak <= f.end + expert, "{from}→{to} {d}: {f:?}");
            } else {
                // A device that only sheds experts never rises above where it started: the old
                // instance serves from those experts until the switchover, so its starting
                // footprint is the floor for any method, and remap adds nothing to it.
                assert_eq!(f.peak, f.start, "{from}→{to} {d}: {f:?}");
            }
        }
        // Devices whose expert set changes (the others keep their buffers in both modes).
        let changed = realloc
            .iter()
            .filter(|(_, f)| f.start > 0 && f.end > 0 && f.peak > f.start);
        for (d, f) in changed {
            // Realloc-and-copy holds the whole old and the whole new expert set at once.
            let experts_at_peak = f.peak - (f.start - f.start_experts);
            assert_eq!(
                experts_at_peak,
                f.start_experts + f.end_experts,
                "{from}→{to} {d}: {f:?}"
            );
            let r = remap[d];
            let remap_experts_at_peak = r.peak - (r.start - r.start_experts);
            let ratio = experts_at_peak as f64 / remap_experts_at_peak as f64;
            assert!(
                ratio >= 1.5,
                "{from}→{to} {d}: realloc holds {ratio:.2}× the expert memory of remap"
            );
            println!(
                "{from}→{to} {d}: expert memory at peak, remap {} KiB, realloc {} KiB ({ratio:.2}×)",
                remap_experts_at_peak >> 10,
                experts_at_peak >> 10
            );
        }
    }
}

#[test]
fn baselines_run_for_real_and_end_in_the_target_config() {
    let c = ckpt();
    let total: u64 = micro().spec.tensors().iter().map(|t| t.bytes()).sum();
    for s in [
        Strategy::ColdRestart,
        Strategy::Colocated,
        Strategy::Extravagant,
        Strategy::Horizontal,
    ] {
        let mut hmm = host(16, 64 << 10);
        let dep = load(&mut hmm, &c, "dp2tp2ep4");
        let to = cfg("dp3tp2ep6");
        let to_devices: Vec<DeviceId> = (0..6).map(|i| DeviceId::new(0, i)).collect();
        let read_before = c.bytes_read();
        let out = run_baseline(s, &mut hmm, dep, to, &to_devices, Some(&c), &opts()).unwrap();
        let read = c.bytes_read() - read_before;
        assert_eq!(
            read, total,
            "{s}: the new instance reads the checkpoint once from disk"
        );
        assert!(out.new.verify(&hmm).unwrap().is_empty(), "{s}");
        match s {
            Strategy::Horizontal => {
                let old = out.old.expect("horizontal keeps the first replica");
                assert_eq!(out.new.config, old.config);
                let a: BTreeSet<_> = old.devices.iter().map(|r| r.device).collect();
                assert!(out.new.devices.iter().all(|r| !a.contains(&r.device)));
            }
            Strategy::Extravagant => {
                out.old
                    .expect("released by the caller")
                    .unload(&mut hmm)
                    .unwrap();
                assert_eq!(out.new.config, to);
                assert!(
                    out.new.devices.iter().all(|r| r.device.index >= 4),
                    "fresh devices"
                );
                check_clean(&hmm, &out.new, &c);
            }
            _ => {
                if let Some(old) = out.old {
                    assert_eq!(s, Strategy::Colocated);
                    old.unload(&mut hmm).unwrap();
                }
                assert_eq!(out.new.config, to);
                check_clean(&hmm, &out.new, &c);
            }
        }
    }
    // Not enough devices is refused and gives the old deployment back untouched.
    let mut hmm = host(8, 64 << 10);
    let dep = load(&mut hmm, &c, "dp2tp2ep4");
    let to_devices: Vec<DeviceId> = (0..6).map(|i| DeviceId::new(0, i)).collect();
    let e = run_baseline(
        Strategy::Extravagant,
        &mut hmm,
        dep,
        cfg("dp3tp2ep6"),
        &to_devices,
        Some(&c),
        &opts(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("needs 10 devices"), "{e}");
    let old = e.old.expect("old deployment returned");
    check_clean(&hmm, &old, &c);
}

/// Valid configs of micro-moe (16 experts) on an 8-device pool: TP 1 or 2, EP ≤ 8.
fn configs() -> Vec<String> {
    let mut v = Vec::new();
    for tp in [1u32, 2] {
        for dp in 1..=8 / tp {
            v.push(format!("dp{dp}tp{tp}ep{}", dp * tp));
        }
    }
    v
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    /// Any valid step executes to its planned placement with matching checksums and no leak, and
    /// stepping back returns to an equivalent state: same config and devices, the same bytes
    /// used on every device, balanced expert counts.
    #[test]
    fn random_steps_execute_and_return(a in 0usize..12, b in 0usize..12) {
        let cs = configs();
        let (from, to) = (&cs[a % cs.len()], &cs[b % cs.len()]);
        let (fc, tc) = (cfg(from), cfg(to));
        proptest::prop_assume!(fc.tp() == tc.tp() && fc != tc);
        let c = ckpt();
        let mut hmm = host(8, 4 << 10);
        let dep = load(&mut hmm, &c, from);
        let used0: BTreeMap<DeviceId, u64> =
            hmm.devices().iter().map(|d| (d.id, hmm.usage(d.id).unwrap().used)).collect();
        let devices0: Vec<DeviceId> = dep.devices.iter().map(|r| r.device).collect();
        let fresh = Placement::contiguous(&dep.model, &devices0);

        let there = step(&mut hmm, &c, dep, to);
        check_clean(&hmm, &there, &c);
        let back = step(&mut hmm, &c, there, from);
        check_clean(&hmm, &back, &c);

        proptest::prop_assert_eq!(back.config, fc);
        let devices1: Vec<DeviceId> = back.devices.iter().map(|r| r.device).collect();
        proptest::prop_assert_eq!(&devices1, &devices0);
        let used1: BTreeMap<DeviceId, u64> =
            hmm.devices().iter().map(|d| (d.id, hmm.usage(d.id).unwrap().used)).collect();
        proptest::prop_assert_eq!(used1, used0);
        for l in back.model.moe_layers() {
            let mut got: Vec<usize> =
                devices0.iter().map(|d| back.placement.experts_on(l, *d).len()).collect();
            let mut want: Vec<usize> =
                devices0.iter().map(|d| fresh.experts_on(l, *d).len()).collect();
            got.sort_unstable();
            want.sort_unstable();
            proptest::prop_assert_eq!(got, want, "layer {} counts", l);
        }
    }
}

#[test]
fn ablations_copy_locally_or_read_from_disk_and_still_verify() {
    let c = ckpt();
    for (zero_copy, source) in [(false, scale::Source::P2p), (true, scale::Source::Disk)] {
        let mut hmm = host(8, 64 << 10);
        let dep = load(&mut hmm, &c, "dp2tp2ep4");
        let p = plan_for(&hmm, &dep, "dp3tp2ep6");
        let o = TransitionOptions {
            zero_copy,
            source,
            ..TransitionOptions::default()
        };
        let read = c.bytes_read();
        let t = Transition::prepare(&mut hmm, &dep, &p, Some(&c), &o).unwrap();
        let s = t.stats();
        if zero_copy {
            assert_eq!(s.p2p_bytes, 0);
            assert_eq!(
                s.disk_bytes, p.p2p_bytes,
                "what P2P would move comes from disk"
            );
        } else {
            assert!(s.local_bytes > 0, "kept devices copy their own weights");
            assert_eq!(s.p2p_bytes, p.p2p_bytes);
        }
        t.run_all(&hmm, Some(&c)).unwrap();
        assert_eq!(c.bytes_read() - read, s.disk_bytes);
        let new = t.commit(&mut hmm).unwrap();
        dep.unload(&mut hmm).unwrap();
        check_clean(&hmm, &new, &c);
    }
}

#[test]
fn the_preallocated_pool_serves_the_steps_allocations() {
    let c = ckpt();
    let mut hmm = host(8, 64 << 10);
    let dep = load(&mut hmm, &c, "dp2tp2ep4");
    let p = plan_for(&hmm, &dep, "dp3tp2ep6");
    let want: u64 = scale::step_allocations(&hmm, &dep, &p)
        .iter()
        .map(|(d, b)| hmm.round_up(*d, *b).unwrap())
        .sum();
    let used_before: u64 = hmm
        .devices()
        .iter()
        .map(|d| hmm.usage(d.id).unwrap().used)
        .sum();
    let n = scale::prefault(&hmm, &dep, &p).unwrap();
    assert!(n > 0);
    assert_eq!(hmm.backend().pooled_bytes(), want);
    let used_after: u64 = hmm
        .devices()
        .iter()
        .map(|d| hmm.usage(d.id).unwrap().used)
        .sum();
    assert_eq!(
        used_after, used_before,
        "the pool is not device memory until allocated"
    );
    let t =
        Transition::prepare(&mut hmm, &dep, &p, Some(&c), &TransitionOptions::default()).unwrap();
    assert_eq!(
        hmm.backend().pooled_bytes(),
        0,
        "every allocation came from the pool"
    );
    t.run_all(&hmm, Some(&c)).unwrap();
    let new = t.commit(&mut hmm).unwrap();
    dep.unload(&mut hmm).unwrap();
    check_clean(&hmm, &new, &c);
    // Bad pool sizes are refused by name.
    let e = hmm
        .backend()
        .prefault(DeviceId::new(0, 0), &[1000])
        .unwrap_err();
    assert!(e.to_string().contains("1000"), "{e}");
}
