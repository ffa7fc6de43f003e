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

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use emoe_core::deploy::{DeployOptions, Deployment};
use emoe_core::engine::Engine;
use emoe_core::hmm::Hmm;
use emoe_core::model::ModelSpec;
use emoe_core::plan::{self, Plan, PlanInput, Policy, Topology};
use emoe_core::scale::{Source, Strategy, Transition, TransitionOptions, pool_state};
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

impl Server {
    /// Plan a step from the active instance to `to` (no side effects). `to_devices`: the
    /// target's devices in config order (`None`: kept devices first, then the lowest free).
    pub fn plan_on(
        &self,
        to: ParallelConfig,
        to_devices: Option<Vec<DeviceId>>,
        policy: Policy,
        topology: &Topology,
    ) -> Result<Plan, ServeError> {
        let dep = self.try_active()?;
        let scaling = self.shared.lock().scaling;
        let hmm = self.shared.read();
        let pool = pool_state(&hmm);
        let from: Vec<DeviceId> = dep.devices.iter().map(|r| r.device).collect();
        let to_devices = to_devices.or_else(|| (to == dep.config).then(|| from.clone()));
        Ok(plan::plan(&PlanInput {
            model: &dep.model,
            from: dep.config,
            from_devices: &from,
            placement: &dep.placement,
            pool: &pool,
            to,
            to_devices,
            policy,
            operation_running: scaling,
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

    /// Scale the active instance along `plan` (ElasticMoE) while serving. Returns once the old
    /// instance has drained and been released; `latency_s` ends at the switchover.
    pub fn scale(&self, plan: &Plan, cancel: &AtomicBool) -> Result<ScaleReport, ServeError> {
        self.exclusive(|| {
            self.transition_step(
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
        let cold = TransitionOptions {
            cold: true,
            ..self.shared.opts.exec.transition.clone()
        };
        self.exclusive(|| match strategy {
            Strategy::Elastic => {
                let p = self.plan_inner(to, None, topology)?;
                self.transition_step(&p, &self.shared.opts.exec.transition, Join::Replace, cancel)
            }
            Strategy::Colocated => {
                let p = self.plan_inner(to, None, topology)?;
                self.transition_step(&p, &cold, Join::Replace, cancel)
            }
            Strategy::Extravagant => {
                let fresh = self.fresh_devices(to.devices() as usize)?;
                let p = self.plan_inner(to, Some(fresh), topology)?;
                self.transition_step(&p, &cold, Join::Replace, cancel)
            }
            Strategy::Horizontal => {
                let from = self.try_active()?.config;
                if to.devices() < from.devices() {
                    return Err(ServeError::Refused(
                        "horizontal scaling adds a whole replica; it has no scale-down step".into(),
                    ));
                }
                let fresh = self.fresh_devices(from.devices() as usize)?;
                let p = self.plan_inner(from, Some(fresh), topology)?;
                self.transition_step(&p, &cold, Join::Beside, cancel)
            }
            Strategy::ColdRestart => self.cold_restart(to),
        })
    }

    fn plan_inner(
        &self,
        to: ParallelConfig,
        to_devices: Option<Vec<DeviceId>>,
        topology: &Topology,
    ) -> Result<Plan, ServeError> {
        // `scaling` is set by `exclusive`; plan as if nothing ran.
        self.shared.lock().scaling = false;
        let p = self.plan_on(to, to_devices, Policy::Balanced, topology);
        self.shared.lock().scaling = true;
        p
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

    /// One scaling operation at a time.
    fn exclusive(
        &self,
        f: impl FnOnce() -> Result<ScaleReport, ServeError>,
    ) -> Result<ScaleReport, ServeError> {
        {
            let mut st = self.shared.lock();
            if st.scaling {
                return Err(ServeError::Busy);
            }
            st.scaling = true;
        }
        let r = f();
        self.shared.lock().scaling = false;
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

    /// A transition built beside the active instance, then the switchover.
    fn transition_step(
        &self,
        plan: &Plan,
        opts: &TransitionOptions,
        join: Join,
        cancel: &AtomicBool,
    ) -> Result<ScaleReport, ServeError> {
        let sh = &self.shared;
        let started = sh.t();
        let start = Instant::now();
        let phase = |p: Phase| {
            self.event(ScaleEvent::Phase {
                t_s: start.elapsed().as_secs_f64(),
                phase: p,
            })
        };
        let (old_id, old) = self.active_entry()?;
        let devices = self.reset_peaks();
        let mut times = PhaseTimes::default();
        phase(Phase::Preparing);
        if (opts.cold || opts.source == Source::Disk)
            && let Some(c) = &sh.checkpoint
        {
            // Reading from disk means from disk, as after a fresh start: not the page cache.
            let _ = c.drop_page_cache();
        }
        let t = {
            let mut hmm = sh.write();
            Transition::prepare(&mut hmm, &old, plan, sh.checkpoint.as_ref(), opts)
        };
        let t = match t {
            Ok(t) => t,
            Err(e) => {
                phase(Phase::Failed);
                return Err(e.into());
            }
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
        };
        times.copy_s = start.elapsed().as_secs_f64() - times.prepare_s;
        if let Err(e) = copies {
            let p = if matches!(e, emoe_core::scale::ScaleError::Cancelled { .. }) {
                Phase::Cancelled
            } else {
                Phase::Failed
            };
            let _ = t.rollback(&mut sh.write());
            phase(p);
            return Err(e.into());
        }
        let stats = t.stats();
        let before_commit = start.elapsed().as_secs_f64();
        let new = match t.commit(&mut sh.write()) {
            Ok(d) => d,
            Err(e) => {
                phase(Phase::Failed);
                return Err(e.into());
            }
        };
        times.commit_s = start.elapsed().as_secs_f64() - before_commit;
        let (engine, standby_hit, init_s) = match self.initialize(&new) {
            Ok(x) => x,
            Err(e) => {
                let _ = new.unload(&mut sh.write());
                phase(Phase::Failed);
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

    /// Stop, free, load from disk, serve: the naive baseline, with its downtime.
    fn cold_restart(&self, to: ParallelConfig) -> Result<ScaleReport, ServeError> {
        let sh = &self.shared;
        let started = sh.t();
        let start = Instant::now();
        let phase = |p: Phase| {
            self.event(ScaleEvent::Phase {
                t_s: start.elapsed().as_secs_f64(),
                phase: p,
            })
        };
        let devices = self.reset_peaks();
        let (old_id, old) = self.active_entry()?;
        let needed = to.devices() as usize;
        let to_devices: Vec<DeviceId> = {
            let mut t: Vec<DeviceId> = old.devices.iter().map(|r| r.device).collect();
            t.extend(
                devices
                    .iter()
                    .filter(|d| !t.contains(d))
                    .copied()
                    .collect::<Vec<_>>(),
            );
            t.truncate(needed);
            t
        };
        if to_devices.len() < needed {
            return Err(ServeError::Refused(format!(
                "not enough devices: {to} needs {needed}, the node has {}",
                devices.len()
            )));
        }
        let model = old.model.clone();
        let from = old.config;
        let kv_tokens = {
            let hmm = sh.read();
            let len = old
                .devices
                .first()
                .and_then(|r| hmm.allocation(r.kv_alloc))
                .map_or(0, |a| a.len);
            let per =
                model.kv_bytes_per_token_per_layer(old.config.tp()) * u64::from(model.num_layers);
            len / per.max(1)
        };
        phase(Phase::Preparing);
        // Stop: the old instance takes no more steps; its requests start over later.
        let aborted = {
            let mut st = sh.lock();
            if let Some(o) = st.instances.get_mut(&old_id) {
                o.state = InstanceState::Draining;
            }
            let ids: Vec<u64> = st
                .running
                .values()
                .filter(|r| r.instance == old_id)
                .map(|r| r.id)
                .collect();
            ids.len()
        };
        self.abort_instance(old_id);
        drop(old);
        self.release_drained(old_id);
        phase(Phase::Switching);
        if let Some(c) = &sh.checkpoint {
            let _ = c.drop_page_cache();
        }
        let loaded = {
            let mut hmm = sh.write();
            Deployment::load(
                &mut hmm,
                &model,
                to,
                &to_devices,
                sh.checkpoint.as_ref(),
                &DeployOptions {
                    kv_tokens,
                    view_name: format!("cold-restart@{to}"),
                    ..DeployOptions::default()
                },
            )
        };
        let new = match loaded {
            Ok(d) => d,
            Err(e) => {
                phase(Phase::Failed);
                return Err(ServeError::Refused(format!(
                    "cold restart lost the instance and could not load {to}: {e}"
                )));
            }
        };
        let (engine, standby_hit, init_s) = match self.initialize(&new) {
            Ok(x) => x,
            Err(e) => {
                let _ = new.unload(&mut sh.write());
                phase(Phase::Failed);
                return Err(e);
            }
        };
        let stats = emoe_core::scale::TransitionStats {
            disk_bytes: new.stats.disk_bytes,
            p2p_bytes: new.stats.p2p_bytes,
            allocated_bytes: new.stats.allocated_bytes,
            ..Default::default()
        };
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

fn release(sh: &Shared, hmm: &mut Hmm, id: u64, dep: Deployment) {
    if let Err(e) = dep.unload(hmm) {
        let ts = sh.t();
        sh.lock().events.push(ServeEvent::Error {
            ts,
            message: format!("releasing instance {id}: {e}"),
        });
    }
}
