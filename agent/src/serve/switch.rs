//! Scaling while serving, by every strategy, in the same executor.
//!
//! - `elastic`: the plan's transition (zero-copy, P2P, remap); requests whose replica keeps its
//!   devices and KV memory move to the new instance, the rest drain.
//! - `colocated` / `extravagant`: a cold transition (every byte from disk) onto the target's
//!   devices / onto fresh devices, beside the serving instance; nothing can move (new KV
//!   memory), so every in-flight request drains on the old instance.
//! - `horizontal`: a cold replica of the current config on fresh devices; both serve after.
//! - `cold-restart`: the old instance stops (in-flight requests go back to the queue and start
//!   over), its memory is freed, the target loads from disk, then it serves: downtime.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use emoe_core::deploy::{DeployOptions, Deployment, Placement};
use emoe_core::engine::Engine;
use emoe_core::hmm::Hmm;
use emoe_core::model::ModelSpec;
use emoe_core::plan::{self, Plan, PlanError, PlanInput, Policy, Topology};
use emoe_core::scale::{ScaleError, Source, Strategy, Transition, TransitionOptions, pool_state};
use emoe_core::{DeviceId, ParallelConfig};

use super::{
    Instance, InstanceState, ScaleReport, ServeError, ServeEvent, Server, Shared, groups_of,
};
use crate::scale::{Event as ScaleEvent, Phase, PhaseTimes, run_copies};

/// How the new instance joins.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Join {
    /// It replaces the active instance, which drains and is released.
    Replace,
    /// It serves beside the active instance (a horizontal replica).
    Beside,
}

/// The live phase of the running (or last) operation and whose it is (the address of its
/// cancel flag, which its caller keeps alive for as long as the operation's record). A cancel
/// and the operation's step past its point of no return take this lock, so a cancel is either
/// carried out or refused, never acknowledged and ignored.
#[derive(Default)]
pub(super) struct Gate {
    flag: usize,
    phase: Option<Phase>,
}

fn flag_id(cancel: &AtomicBool) -> usize {
    std::ptr::from_ref(cancel) as usize
}

/// Where a cold restart's target goes and how big its KV cache is.
struct ColdFit {
    devices: Vec<DeviceId>,
    kv_tokens: u64,
}

/// What a caught panic said, for the operation's error.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

impl ServeError {
    /// Whether the operation was cancelled (and rolled back) rather than failed.
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            ServeError::Cancelled { .. } | ServeError::Scale(ScaleError::Cancelled { .. })
        )
    }

    /// Whether this is a refusal by a rule of the node (not enough devices or memory, one
    /// operation at a time) rather than a bad request.
    pub fn is_rule(&self) -> bool {
        match self {
            ServeError::Busy | ServeError::Refused(_) => true,
            ServeError::Plan(e) => matches!(
                e,
                PlanError::OperationRunning
                    | PlanError::NotEnoughDevices { .. }
                    | PlanError::NotEnoughMemory { .. }
                    | PlanError::UnknownDevice { .. }
            ),
            ServeError::Scale(e) => matches!(
                e,
                ScaleError::NotEnoughMemory { .. } | ScaleError::NotEnoughDevices { .. }
            ),
            _ => false,
        }
    }
}

impl Server {
    /// Plan a step from the active instance to `to` (no side effects). `to_devices`: the
    /// target's devices in config order (`None`: kept devices first, then the lowest devices
    /// no instance uses).
    pub fn plan_on(
        &self,
        to: ParallelConfig,
        to_devices: Option<Vec<DeviceId>>,
        policy: Policy,
        topology: &Topology,
    ) -> Result<Plan, ServeError> {
        let scaling = self.shared.lock().scaling;
        self.plan_with(to, to_devices, policy, topology, scaling)
    }

    fn plan_with(
        &self,
        to: ParallelConfig,
        to_devices: Option<Vec<DeviceId>>,
        policy: Policy,
        topology: &Topology,
        operation_running: bool,
    ) -> Result<Plan, ServeError> {
        let (active, dep) = self.active_entry()?;
        // Devices another instance (a horizontal replica, a draining one) holds are not free.
        let others: BTreeSet<DeviceId> = {
            let st = self.shared.lock();
            st.instances
                .iter()
                .filter(|(id, _)| **id != active)
                .flat_map(|(_, i)| i.deployment.devices.iter().map(|r| r.device))
                .collect()
        };
        let hmm = self.shared.read();
        let pool = pool_state(&hmm);
        let from: Vec<DeviceId> = dep.devices.iter().map(|r| r.device).collect();
        let to_devices = match to_devices {
            Some(t) => {
                if let Some(d) = t.iter().find(|d| others.contains(d)) {
                    return Err(ServeError::Refused(format!(
                        "device {d} serves another instance: a step takes only free devices"
                    )));
                }
                Some(t)
            }
            None if to == dep.config => Some(from.clone()),
            None if to.devices() as usize > from.len() && !others.is_empty() => {
                let need = to.devices() as usize - from.len();
                let free: Vec<DeviceId> = pool
                    .iter()
                    .map(|d| d.id)
                    .filter(|d| !from.contains(d) && !others.contains(d))
                    .collect();
                if free.len() < need {
                    return Err(PlanError::NotEnoughDevices {
                        need: u32::try_from(need).unwrap_or(u32::MAX),
                        free: u32::try_from(free.len()).unwrap_or(u32::MAX),
                    }
                    .into());
                }
                Some(from.iter().chain(free.iter().take(need)).copied().collect())
            }
            None => None,
        };
        Ok(plan::plan(&PlanInput {
            model: &dep.model,
            from: dep.config,
            from_devices: &from,
            placement: &dep.placement,
            pool: &pool,
            to,
            to_devices,
            policy,
            operation_running,
            kv_tokens: 0,
            topology,
        })?)
    }

    /// [`plan_on`](Self::plan_on) with the default devices.
    pub fn plan(
        &self,
        to: ParallelConfig,
        policy: Policy,
        topology: &Topology,
    ) -> Result<Plan, ServeError> {
        self.plan_on(to, None, policy, topology)
    }

    /// Whether a scaling operation is running.
    pub fn is_scaling(&self) -> bool {
        self.shared.lock().scaling
    }

    /// Cancel the operation whose cancel flag is `cancel`: carried out (`Ok`, the phase it was
    /// in) while it is before its switchover, or refused (`Err`, the phase it is in). An
    /// operation not begun yet sees the flag when it begins and ends cancelled.
    pub fn cancel_operation(&self, cancel: &AtomicBool) -> Result<Phase, Phase> {
        let g = self.gate();
        if g.flag != flag_id(cancel) || g.phase.is_none() {
            cancel.store(true, Ordering::Release);
            return Ok(Phase::Planned);
        }
        match g.phase.unwrap_or(Phase::Planned) {
            p @ (Phase::Planned | Phase::Preparing) => {
                cancel.store(true, Ordering::Release);
                Ok(p)
            }
            p => Err(p),
        }
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.shared.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record the live phase and emit it as an event.
    fn phase_at(&self, start: Instant, p: Phase) {
        self.gate().phase = Some(p);
        self.event(ScaleEvent::Phase {
            t_s: start.elapsed().as_secs_f64(),
            phase: p,
        });
    }

    /// The point of no return: past it a cancel is refused. Refuses to pass when a cancel came
    /// first (the caller rolls back).
    fn pass_point_of_no_return(&self, cancel: &AtomicBool) -> Result<(), ServeError> {
        let mut g = self.gate();
        if cancel.load(Ordering::Acquire) {
            return Err(ServeError::Cancelled { phase: "preparing" });
        }
        g.phase = Some(Phase::Switching);
        Ok(())
    }

    /// The test fault hook at `point`, if one is set.
    fn fault(&self, point: &str) -> Result<(), ServeError> {
        match &self.shared.opts.fault {
            Some(h) => (h.0)(point).map_err(ServeError::Refused),
            None => Ok(()),
        }
    }

    /// Scale the active instance along `plan` (ElasticMoE) while serving. Returns once the old
    /// instance has drained and been released; `latency_s` ends at the switchover.
    pub fn scale(&self, plan: &Plan, cancel: &AtomicBool) -> Result<ScaleReport, ServeError> {
        self.exclusive(cancel, |start| {
            self.transition_step(
                start,
                plan,
                &self.shared.opts.exec.transition,
                Join::Replace,
                cancel,
            )
        })
    }

    /// Scale to `to` by `strategy` while serving (the paper's baselines beside ElasticMoE).
    pub fn scale_with(
        &self,
        strategy: Strategy,
        to: ParallelConfig,
        topology: &Topology,
        cancel: &AtomicBool,
    ) -> Result<ScaleReport, ServeError> {
        self.exclusive(cancel, |start| match strategy {
            Strategy::ColdRestart => self.cold_restart(start, to, cancel),
            s => {
                let (p, opts, join) = self.step_plan(s, to, topology)?;
                self.transition_step(start, &p, &opts, join, cancel)
            }
        })
    }

    /// Refuse now, with the rule, a step to `to` by `strategy` that cannot fit the node (too few
    /// devices, too little memory, a horizontal target that is not two replicas): the same
    /// checks the step makes before it changes anything, without starting it.
    pub fn check_target(
        &self,
        strategy: Strategy,
        to: ParallelConfig,
        topology: &Topology,
    ) -> Result<(), ServeError> {
        let (old_id, old) = self.active_entry()?;
        if strategy == Strategy::ColdRestart {
            return self.cold_fit(old_id, &old, to).map(|_| ());
        }
        let (p, opts, _) = self.step_plan(strategy, to, topology)?;
        let hmm = self.shared.read();
        Transition::check(&hmm, &old, &p, self.shared.checkpoint.as_ref(), &opts)?;
        Ok(())
    }

    /// The plan, the transition options and how the new instance joins, for a strategy built
    /// on a transition (every one but cold restart).
    fn step_plan(
        &self,
        strategy: Strategy,
        to: ParallelConfig,
        topology: &Topology,
    ) -> Result<(Plan, TransitionOptions, Join), ServeError> {
        let warm = self.shared.opts.exec.transition.clone();
        let cold = TransitionOptions {
            cold: true,
            ..warm.clone()
        };
        // `scaling` may be set by `exclusive` (this operation): plan as if nothing ran.
        let plan = |to, devices| self.plan_with(to, devices, Policy::Balanced, topology, false);
        match strategy {
            Strategy::Elastic => Ok((plan(to, None)?, warm, Join::Replace)),
            Strategy::Colocated => Ok((plan(to, None)?, cold, Join::Replace)),
            Strategy::Extravagant => {
                let fresh = self.fresh_devices(to.devices() as usize)?;
                Ok((plan(to, Some(fresh))?, cold, Join::Replace))
            }
            Strategy::Horizontal => {
                let from = self.try_active()?.config;
                let total = ParallelConfig::from_dp_tp(from.dp().saturating_mul(2), from.tp())
                    .map_err(|e| ServeError::Refused(e.to_string()))?;
                if to != total {
                    return Err(ServeError::Refused(format!(
                        "horizontal scaling adds one replica of the current config {from}: \
                         the target must be {total} (DP doubled), got {to}"
                    )));
                }
                let fresh = self.fresh_devices(from.devices() as usize)?;
                Ok((plan(from, Some(fresh))?, cold, Join::Beside))
            }
            Strategy::ColdRestart => Err(ServeError::Refused(
                "a cold restart is not built on a transition".into(),
            )),
        }
    }

    /// Devices no instance uses, lowest first; `n` of them or a refusal.
    fn fresh_devices(&self, n: usize) -> Result<Vec<DeviceId>, ServeError> {
        let used: Vec<DeviceId> = {
            let st = self.shared.lock();
            st.instances
                .values()
                .flat_map(|i| i.deployment.devices.iter().map(|r| r.device))
                .collect()
        };
        let all: Vec<DeviceId> = self.with_hmm(|h| h.devices().iter().map(|d| d.id).collect());
        let free: Vec<DeviceId> = all.into_iter().filter(|d| !used.contains(d)).collect();
        if free.len() < n {
            return Err(ServeError::Refused(format!(
                "not enough devices: need {n} fresh devices, the node has {} free",
                free.len()
            )));
        }
        Ok(free.into_iter().take(n).collect())
    }

    /// One scaling operation at a time. However `f` ends — an error, a cancel, a panic — the
    /// flag is cleared, and a failure is reported as an `error` event (its reason) before the
    /// `failed` or `cancelled` phase.
    fn exclusive(
        &self,
        cancel: &AtomicBool,
        f: impl FnOnce(Instant) -> Result<ScaleReport, ServeError>,
    ) -> Result<ScaleReport, ServeError> {
        {
            let mut st = self.shared.lock();
            if st.scaling {
                return Err(ServeError::Busy);
            }
            st.scaling = true;
        }
        struct Clear<'a>(&'a Shared);
        impl Drop for Clear<'_> {
            fn drop(&mut self) {
                self.0.lock().scaling = false;
            }
        }
        let _clear = Clear(&self.shared);
        let start = Instant::now();
        let cancelled_before = {
            let mut g = self.gate();
            *g = Gate {
                flag: flag_id(cancel),
                phase: Some(Phase::Planned),
            };
            cancel.load(Ordering::Acquire)
        };
        let r = if cancelled_before {
            Err(ServeError::Cancelled { phase: "planned" })
        } else {
            catch_unwind(AssertUnwindSafe(|| f(start)))
                .unwrap_or_else(|p| Err(ServeError::Panicked(panic_message(&*p))))
        };
        if let Err(e) = &r {
            self.event(ScaleEvent::Error {
                t_s: start.elapsed().as_secs_f64(),
                message: e.to_string(),
            });
            let end = if e.is_cancelled() {
                Phase::Cancelled
            } else {
                Phase::Failed
            };
            self.phase_at(start, end);
        }
        r
    }

    /// The runtime for `config`: the standby one when pre-initialization is on and the cache
    /// has it, else built now. Returns it and whether it came from the cache.
    fn runtime_for(
        &self,
        model: &ModelSpec,
        config: ParallelConfig,
    ) -> Result<(Arc<Engine>, bool), ServeError> {
        if self.shared.opts.pre_init
            && let Some(e) = self.shared.lock().standby.take(config)
        {
            return Ok((e, true));
        }
        Ok((Arc::new(Engine::new(model, config.tp())?), false))
    }

    /// Initialize the new instance before it serves: its runtime, and (with pre-initialization)
    /// its weight mappings populated.
    fn initialize(&self, new: &Deployment) -> Result<(Arc<Engine>, bool, f64), ServeError> {
        let t = Instant::now();
        let (engine, hit) = self.runtime_for(&new.model, new.config)?;
        if self.shared.opts.pre_init {
            let hmm = self.shared.read();
            let _ = new.touch(&hmm);
        }
        Ok((engine, hit, t.elapsed().as_secs_f64()))
    }

    fn event(&self, e: ScaleEvent) {
        let ts = self.shared.t();
        self.shared
            .lock()
            .events
            .push(ServeEvent::Scale { ts, event: e });
    }

    fn reset_peaks(&self) -> Vec<DeviceId> {
        let mut hmm = self.shared.write();
        let ids: Vec<DeviceId> = hmm.devices().iter().map(|d| d.id).collect();
        for d in &ids {
            let _ = hmm.reset_peak(*d);
        }
        ids
    }

    fn peak(&self, devices: &[DeviceId]) -> u64 {
        let hmm = self.shared.read();
        devices
            .iter()
            .filter_map(|d| hmm.usage(*d).ok())
            .map(|u| u.peak)
            .max()
            .unwrap_or(0)
    }

    /// A transition built beside the active instance, then the switchover. On an error before
    /// the switchover the transition is rolled back; `exclusive` reports it.
    fn transition_step(
        &self,
        start: Instant,
        plan: &Plan,
        opts: &TransitionOptions,
        join: Join,
        cancel: &AtomicBool,
    ) -> Result<ScaleReport, ServeError> {
        let sh = &self.shared;
        let started = sh.t();
        let phase = |p: Phase| self.phase_at(start, p);
        let (old_id, old) = self.active_entry()?;
        let devices = self.reset_peaks();
        let mut times = PhaseTimes::default();
        phase(Phase::Preparing);
        self.fault("preparing")?;
        if (opts.cold || opts.source == Source::Disk)
            && let Some(c) = &sh.checkpoint
        {
            // Reading from disk means from disk, as after a fresh start: not the page cache.
            let _ = c.drop_page_cache();
        }
        let t = {
            let mut hmm = sh.write();
            Transition::prepare(&mut hmm, &old, plan, sh.checkpoint.as_ref(), opts)?
        };
        times.prepare_s = start.elapsed().as_secs_f64();
        let copies = {
            let hmm = sh.read();
            run_copies(
                &t,
                &hmm,
                sh.checkpoint.as_ref(),
                &sh.opts.exec,
                cancel,
                start,
                &|e| self.event(e),
            )
            .map_err(ServeError::from)
            .and_then(|()| self.fault("copies"))
            .and_then(|()| self.pass_point_of_no_return(cancel))
        };
        times.copy_s = start.elapsed().as_secs_f64() - times.prepare_s;
        if let Err(e) = copies {
            if let Err(r) = t.rollback(&mut sh.write()) {
                return Err(ServeError::Refused(format!(
                    "{e}; the rollback failed: {r}"
                )));
            }
            return Err(e);
        }
        // Past the point of no return: a fault here may only panic or stall (tests).
        let _ = self.fault("switching");
        let stats = t.stats();
        let before_commit = start.elapsed().as_secs_f64();
        let new = t.commit(&mut sh.write())?;
        times.commit_s = start.elapsed().as_secs_f64() - before_commit;
        let (engine, standby_hit, init_s) = match self.initialize(&new) {
            Ok(x) => x,
            Err(e) => {
                let _ = new.unload(&mut sh.write());
                return Err(e);
            }
        };

        phase(Phase::Switching);
        let (moved, drained) = self.switch_to(new, engine, old_id, &old, join);
        let latency_s = start.elapsed().as_secs_f64();
        drop(old);
        if join == Join::Replace {
            phase(Phase::Releasing);
            let before_release = Instant::now();
            self.release_drained(old_id);
            times.release_s = before_release.elapsed().as_secs_f64();
        }
        phase(Phase::Done);
        Ok(ScaleReport {
            from: plan.from,
            to: plan.to,
            started_s: started,
            latency_s,
            times,
            stats,
            moved_requests: moved,
            drained_requests: drained,
            peak_bytes: self.peak(&devices),
            standby_hit,
            init_s,
        })
    }

    /// Make `new` active. With `Join::Replace` the old instance drains: requests whose replica
    /// keeps its devices and KV memory move to the new instance, the others finish where they
    /// are. Returns `(moved, drained)`.
    fn switch_to(
        &self,
        new: Deployment,
        engine: Arc<Engine>,
        old_id: u64,
        old: &Deployment,
        join: Join,
    ) -> (usize, usize) {
        let sh = &self.shared;
        let new_groups = groups_of(&new);
        let old_groups = groups_of(old);
        // A replica can continue only where every device keeps the same KV allocation.
        let kv_of = |d: &Deployment, dev: DeviceId| {
            d.devices
                .iter()
                .find(|r| r.device == dev)
                .map(|r| r.kv_alloc)
        };
        let continues: Vec<Option<usize>> = old_groups
            .iter()
            .map(|g| {
                new_groups.iter().position(|n| {
                    n == g && g.iter().all(|dev| kv_of(&new, *dev) == kv_of(old, *dev))
                })
            })
            .collect();
        let config = new.config;
        let (id, moved, drained) = {
            let mut st = sh.lock();
            let id = st.next_instance;
            st.next_instance += 1;
            for g in &new_groups {
                for d in g {
                    st.kv.add_device(*d);
                }
            }
            st.instances.insert(
                id,
                Instance {
                    deployment: Arc::new(new),
                    state: InstanceState::Active,
                    engine,
                },
            );
            let (mut moved, mut drained) = (0, 0);
            if join == Join::Replace {
                if let Some(o) = st.instances.get_mut(&old_id) {
                    o.state = InstanceState::Draining;
                }
                st.active = id;
                for r in st.running.values_mut().filter(|r| r.instance == old_id) {
                    match continues.get(r.replica).copied().flatten() {
                        Some(g) if r.busy => {
                            r.move_to = Some((id, g));
                            moved += 1;
                        }
                        Some(g) => {
                            r.instance = id;
                            r.replica = g;
                            r.instances.push(id);
                            moved += 1;
                        }
                        None => drained += 1,
                    }
                }
            }
            let ts = sh.t();
            st.events.push(ServeEvent::Instance {
                ts,
                instance: id,
                config,
                state: InstanceState::Active,
            });
            if join == Join::Replace {
                st.events.push(ServeEvent::Instance {
                    ts,
                    instance: old_id,
                    config: old.config,
                    state: InstanceState::Draining,
                });
            }
            (id, moved, drained)
        };
        self.spawn_workers(id);
        sh.wake.notify_all();
        (moved, drained)
    }

    /// Where a cold restart from `old` to `to` loads, refused (nothing changed) when the node
    /// cannot hold it even with `old` unloaded: too few devices not serving another instance,
    /// or too little memory on one of them.
    fn cold_fit(
        &self,
        old_id: u64,
        old: &Deployment,
        to: ParallelConfig,
    ) -> Result<ColdFit, ServeError> {
        let sh = &self.shared;
        let others: BTreeSet<DeviceId> = {
            let st = sh.lock();
            st.instances
                .iter()
                .filter(|(id, _)| **id != old_id)
                .flat_map(|(_, i)| i.deployment.devices.iter().map(|r| r.device))
                .collect()
        };
        let hmm = sh.read();
        let needed = to.devices() as usize;
        let mut devices: Vec<DeviceId> = old.devices.iter().map(|r| r.device).collect();
        let free: Vec<DeviceId> = hmm
            .devices()
            .iter()
            .map(|d| d.id)
            .filter(|d| !devices.contains(d) && !others.contains(d))
            .collect();
        let have = devices.len() + free.len();
        if have < needed {
            return Err(ServeError::Refused(format!(
                "not enough devices: a cold restart to {to} needs {needed}, the node has {have} \
                 not serving another instance"
            )));
        }
        devices.extend(free);
        devices.truncate(needed);
        let model = &old.model;
        let kv_tokens = kv_tokens_of(&hmm, old);
        // What `Deployment::load` will ask of each device, against what is free once `old`
        // is unloaded.
        let need = load_need(&hmm, model, to, &devices, kv_tokens)?;
        for (&dev, need) in devices.iter().zip(need) {
            let held: u64 = old
                .devices
                .iter()
                .filter(|r| r.device == dev)
                .flat_map(|r| r.weights().map(|w| w.2).chain([r.kv_alloc]))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter_map(|a| hmm.allocation(a))
                .map(|a| a.size)
                .sum();
            let u = hmm
                .usage(dev)
                .map_err(|e| ServeError::Refused(e.to_string()))?;
            let avail = u.free.saturating_add(held);
            if need > avail {
                return Err(ServeError::Refused(format!(
                    "not enough memory on device {dev}: a cold restart to {to} needs {need} \
                     bytes there, {avail} are free once {} is unloaded (capacity {})",
                    old.config, u.capacity
                )));
            }
        }
        Ok(ColdFit { devices, kv_tokens })
    }

    /// Refuse `to` when this node could never hold it, even with nothing else loaded: more
    /// devices than the node has, or more memory on one than its capacity (with the active
    /// instance's KV cache size).
    pub fn check_can_ever_hold(&self, to: ParallelConfig) -> Result<(), ServeError> {
        let (_, old) = self.active_entry()?;
        let hmm = self.shared.read();
        let all: Vec<DeviceId> = hmm.devices().iter().map(|d| d.id).collect();
        let needed = to.devices() as usize;
        if all.len() < needed {
            return Err(ServeError::Refused(format!(
                "not enough devices: {to} needs {needed}, the node has {}",
                all.len()
            )));
        }
        let devices = &all[..needed];
        let need = load_need(&hmm, &old.model, to, devices, kv_tokens_of(&hmm, &old))?;
        for (&dev, need) in devices.iter().zip(need) {
            let cap = hmm
                .usage(dev)
                .map_err(|e| ServeError::Refused(e.to_string()))?
                .capacity;
            if need > cap {
                return Err(ServeError::Refused(format!(
                    "not enough memory on device {dev}: {to} needs {need} bytes there, more \
                     than its capacity of {cap}"
                )));
            }
        }
        Ok(())
    }

    /// Make a freshly loaded `new` the active instance, with its workers.
    fn install(&self, new: Deployment, engine: Arc<Engine>) -> u64 {
        let sh = &self.shared;
        let config = new.config;
        let id = {
            let mut st = sh.lock();
            let id = st.next_instance;
            st.next_instance += 1;
            for r in &new.devices {
                st.kv.add_device(r.device);
            }
            st.instances.insert(
                id,
                Instance {
                    deployment: Arc::new(new),
                    state: InstanceState::Active,
                    engine,
                },
            );
            st.active = id;
            let ts = sh.t();
            st.events.push(ServeEvent::Instance {
                ts,
                instance: id,
                config,
                state: InstanceState::Active,
            });
            id
        };
        self.spawn_workers(id);
        sh.wake.notify_all();
        id
    }

    /// Load `config` on `devices` from disk (the checkpoint, not the page cache).
    fn load_cold(
        &self,
        model: &ModelSpec,
        config: ParallelConfig,
        devices: &[DeviceId],
        kv_tokens: u64,
        view: &str,
    ) -> Result<Deployment, ServeError> {
        let sh = &self.shared;
        if let Some(c) = &sh.checkpoint {
            let _ = c.drop_page_cache();
        }
        let mut hmm = sh.write();
        Deployment::load(
            &mut hmm,
            model,
            config,
            devices,
            sh.checkpoint.as_ref(),
            &DeployOptions {
                kv_tokens,
                view_name: format!("{view}@{config}"),
                ..DeployOptions::default()
            },
        )
        .map_err(|e| ServeError::Refused(e.to_string()))
    }

    /// Stop, free, load from disk, serve: the naive baseline, with its downtime. A target the
    /// node cannot hold is refused before the old instance stops; should the load fail anyway,
    /// the old config is loaded again so the node keeps serving.
    fn cold_restart(
        &self,
        start: Instant,
        to: ParallelConfig,
        cancel: &AtomicBool,
    ) -> Result<ScaleReport, ServeError> {
        let sh = &self.shared;
        let started = sh.t();
        let phase = |p: Phase| self.phase_at(start, p);
        phase(Phase::Preparing);
        self.fault("preparing")?;
        let (old_id, old) = self.active_entry()?;
        let fit = self.cold_fit(old_id, &old, to)?;
        self.pass_point_of_no_return(cancel)?;
        let devices = self.reset_peaks();
        let model = old.model.clone();
        let from = old.config;
        let from_devices: Vec<DeviceId> = old.devices.iter().map(|r| r.device).collect();
        // Stop: the old instance takes no more steps; its requests start over later.
        let aborted = {
            let mut st = sh.lock();
            if let Some(o) = st.instances.get_mut(&old_id) {
                o.state = InstanceState::Draining;
            }
            st.running.values().filter(|r| r.instance == old_id).count()
        };
        self.abort_instance(old_id);
        drop(old);
        self.release_drained(old_id);
        phase(Phase::Switching);
        let loaded = self
            .fault("reload")
            .and_then(|()| self.load_cold(&model, to, &fit.devices, fit.kv_tokens, "cold-restart"))
            .and_then(|new| match self.initialize(&new) {
                Ok(x) => Ok((new, x)),
                Err(e) => {
                    let _ = new.unload(&mut sh.write());
                    Err(e)
                }
            });
        let (new, (engine, standby_hit, init_s)) = match loaded {
            Ok(x) => x,
            Err(e) => {
                // Nothing serves now: bring the old config back rather than leave the node
                // without an instance (and its queue growing).
                let back = self
                    .load_cold(&model, from, &from_devices, fit.kv_tokens, "restored")
                    .and_then(|d| {
                        let (engine, ..) = self.initialize(&d)?;
                        Ok(self.install(d, engine))
                    });
                return Err(ServeError::Refused(match back {
                    Ok(_) => format!(
                        "cold restart could not load {to}: {e}; {from} was loaded again and serves"
                    ),
                    Err(e2) => format!(
                        "cold restart could not load {to}: {e}, nor load {from} again: {e2}; \
                         the node has no instance"
                    ),
                }));
            }
        };
        let stats = emoe_core::scale::TransitionStats {
            disk_bytes: new.stats.disk_bytes,
            p2p_bytes: new.stats.p2p_bytes,
            allocated_bytes: new.stats.allocated_bytes,
            ..Default::default()
        };
        self.install(new, engine);
        let latency_s = start.elapsed().as_secs_f64();
        phase(Phase::Done);
        Ok(ScaleReport {
            from,
            to,
            started_s: started,
            latency_s,
            times: PhaseTimes {
                prepare_s: latency_s,
                ..PhaseTimes::default()
            },
            stats,
            moved_requests: 0,
            drained_requests: aborted,
            peak_bytes: self.peak(&devices),
            standby_hit,
            init_s,
        })
    }

    /// Take instance `id`'s requests back to the front of the queue (they start over), once
    /// its workers have finished the steps in flight.
    fn abort_instance(&self, id: u64) {
        let sh = &self.shared;
        let mut st = sh.lock();
        loop {
            let busy = st.running.values().any(|r| r.instance == id && r.busy);
            if !busy {
                break;
            }
            st = sh
                .wake
                .wait_timeout(st, Duration::from_millis(5))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let group_of = |st: &super::State, replica: usize| {
            st.instances
                .get(&id)
                .and_then(|i| groups_of(&i.deployment).get(replica).cloned())
                .unwrap_or_default()
        };
        let ids: Vec<u64> = st
            .running
            .values()
            .filter(|r| r.instance == id)
            .map(|r| r.id)
            .collect();
        let mut back = Vec::new();
        for rid in ids {
            if let Some(r) = st.running.remove(&rid) {
                let g = group_of(&st, r.replica);
                st.kv.give(&g, &r.blocks);
                back.push((
                    r.id,
                    r.arrival_s,
                    super::Submit {
                        prompt: r.tokens[..r.prompt].to_vec(),
                        output_tokens: r.output_tokens,
                        stop_tokens: r.stop_tokens,
                        logprobs: r.logprobs,
                        sink: r.sink,
                        source: r.source,
                        // Its stream has these tokens already: it goes on after them.
                        resume: Some(Box::new(super::Resumed {
                            output: r.tokens[r.prompt..].to_vec(),
                            token_s: r.token_s,
                            first_token_s: r.first_token_s,
                            instances: r.instances,
                        })),
                    },
                ));
            }
        }
        back.sort_by_key(|b| std::cmp::Reverse(b.0));
        for b in back {
            st.queue.push_front(b);
        }
    }

    /// Wait until instance `id` has no requests, then release its memory.
    pub(super) fn release_drained(&self, id: u64) {
        let sh = &self.shared;
        let dep = {
            let mut st = sh.lock();
            loop {
                let busy = st.running.values().any(|r| r.instance == id);
                if !busy || st.stop {
                    break;
                }
                st = sh
                    .wake
                    .wait_timeout(st, Duration::from_millis(20))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let Some(inst) = st.instances.remove(&id) else {
                return;
            };
            // The released instance's runtime stays pre-initialized for a step back.
            if sh.opts.pre_init {
                st.standby
                    .put(inst.deployment.config, Arc::clone(&inst.engine));
            }
            let ts = sh.t();
            st.events.push(ServeEvent::Instance {
                ts,
                instance: id,
                config: inst.deployment.config,
                state: InstanceState::Standby,
            });
            inst.deployment
        };
        sh.wake.notify_all();
        // Workers of the old instance hold clones only while stepping; wait for them to let go.
        let mut dep = dep;
        let dep = loop {
            match Arc::try_unwrap(dep) {
                Ok(d) => break d,
                Err(d) => {
                    dep = d;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        let mut hmm = sh.write();
        release(sh, &mut hmm, id, dep);
        drop(hmm);
        let active: Vec<DeviceId> = {
            let st = sh.lock();
            st.instances
                .values()
                .flat_map(|i| groups_of(&i.deployment))
                .flatten()
                .collect()
        };
        sh.lock().kv.retain_devices(&active);
    }
}

/// Tokens of KV cache per device of `dep`.
fn kv_tokens_of(hmm: &Hmm, dep: &Deployment) -> u64 {
    let model = &dep.model;
    let per = model
        .kv_bytes_per_token_per_layer(dep.config.tp())
        .saturating_mul(u64::from(model.num_layers));
    let len = dep
        .devices
        .first()
        .and_then(|r| hmm.allocation(r.kv_alloc))
        .map_or(0, |a| a.len);
    len / per.max(1)
}

/// The bytes `Deployment::load` allocates on each of `devices` for `model` under `config`
/// with `kv_tokens` of KV cache (granule-rounded, as it checks them).
fn load_need(
    hmm: &Hmm,
    model: &ModelSpec,
    config: ParallelConfig,
    devices: &[DeviceId],
    kv_tokens: u64,
) -> Result<Vec<u64>, ServeError> {
    let overflow = || ServeError::Refused(format!("the size of {config} overflows 64 bits"));
    let kv_bytes = kv_tokens
        .checked_mul(model.kv_bytes_per_token_per_layer(config.tp()))
        .and_then(|b| b.checked_mul(u64::from(model.num_layers)))
        .ok_or_else(overflow)?;
    let placement = Placement::contiguous(model, devices);
    let expert_bytes = model.expert_bytes();
    let round = |dev: DeviceId, b: u64| {
        hmm.round_up(dev, b)
            .map_err(|e| ServeError::Refused(e.to_string()))
    };
    let mut out = Vec::with_capacity(devices.len());
    for (i, &dev) in devices.iter().enumerate() {
        let rank = config.tp_rank(i as u32);
        let mut need = 0u64;
        for p in model.non_expert_packs(config.tp(), rank) {
            need = need
                .checked_add(round(dev, p.bytes)?)
                .ok_or_else(overflow)?;
        }
        let experts: u64 = placement
            .layers
            .keys()
            .map(|&l| placement.experts_on(l, dev).len() as u64)
            .sum();
        need = experts
            .checked_mul(round(dev, expert_bytes)?)
            .and_then(|e| e.checked_add(need))
            .and_then(|n| n.checked_add(round(dev, kv_bytes).ok()?))
            .ok_or_else(overflow)?;
        out.push(need);
    }
    Ok(out)
}

fn release(sh: &Shared, hmm: &mut Hmm, id: u64, dep: Deployment) {
    if let Err(e) = dep.unload(hmm) {
        let ts = sh.t();
        sh.lock().events.push(ServeEvent::Error {
            ts,
            message: format!("releasing instance {id}: {e}"),
        });
    }
}
