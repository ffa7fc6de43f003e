//! Running a scaling operation: the phases of DESIGN §6 around a core [`Transition`], its copy
//! jobs on worker threads bounded per link, progress events, cancel and rollback.
//!
//! Phases: `preparing` (plan checked, target view built, copies run) → `switching` (copied experts
//! remapped; the new instance takes traffic) → `releasing` (the old view unmapped, what nothing
//! maps any more freed) → `done`. Before `switching`, a failure or a cancel rolls back: the new
//! allocations are freed and the old deployment is untouched.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use emoe_core::DeviceId;
use emoe_core::checkpoint::Checkpoint;
use emoe_core::deploy::Deployment;
use emoe_core::hmm::Hmm;
use emoe_core::model::PackKey;
use emoe_core::plan::Plan;
use emoe_core::scale::{ScaleError, Transition, TransitionOptions, TransitionStats};

/// Where an operation is.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Planned,
    Preparing,
    Switching,
    Releasing,
    Done,
    Failed,
    Cancelled,
}

/// A progress event, with the time since the operation started.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Phase {
        t_s: f64,
        phase: Phase,
    },
    CopyStarted {
        t_s: f64,
        job: usize,
        what: PackKey,
        /// `None`: read from disk.
        src: Option<DeviceId>,
        dst: DeviceId,
        bytes: u64,
    },
    CopyDone {
        t_s: f64,
        job: usize,
        jobs_done: usize,
        jobs: usize,
        bytes_done: u64,
        bytes: u64,
    },
    Error {
        t_s: f64,
        message: String,
    },
}

/// Knobs of the executor.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// Copies in flight at once on one link (source device → destination device).
    pub copies_per_link: usize,
    /// Worker threads for copies (default: the machine's parallelism), at most one per copy
    /// queue of the backend (one stream per GPU or NPU).
    pub workers: usize,
    pub transition: TransitionOptions,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self {
            copies_per_link: 2,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            transition: TransitionOptions::default(),
        }
    }
}

/// Seconds spent in each phase.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PhaseTimes {
    /// Checking the plan, allocating, building the target view.
    pub prepare_s: f64,
    /// The copy jobs.
    pub copy_s: f64,
    /// Remapping copied experts: the new instance is ready after this.
    pub commit_s: f64,
    /// Unmapping the old view and freeing what it alone held.
    pub release_s: f64,
}

impl PhaseTimes {
    /// Command to a ready new instance (the paper's scaling latency).
    pub fn latency_s(&self) -> f64 {
        self.prepare_s + self.copy_s + self.commit_s
    }
}

/// A finished elastic step.
#[derive(Debug)]
pub struct Outcome {
    pub deployment: Deployment,
    pub stats: TransitionStats,
    pub times: PhaseTimes,
}

/// A step that did not happen: why, and the old deployment, untouched.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct NotScaled {
    pub error: ScaleError,
    pub old: Box<Deployment>,
}

type Link = (Option<DeviceId>, DeviceId);

/// The shared queue of copy jobs: per link, what waits and how many run.
struct Sched {
    queues: BTreeMap<Link, VecDeque<usize>>,
    active: BTreeMap<Link, usize>,
    running: usize,
    done_jobs: usize,
    done_bytes: u64,
    error: Option<ScaleError>,
}

impl Sched {
    /// The next job on a link below its bound, links taken round-robin from `cursor`.
    fn take(&mut self, bound: usize, cursor: &mut usize) -> Option<(Link, usize)> {
        let links: Vec<Link> = self.queues.keys().copied().collect();
        let n = links.len();
        for k in 0..n {
            let link = links[(*cursor + k) % n];
            if self.active.get(&link).copied().unwrap_or(0) >= bound {
                continue;
            }
            if let Some(job) = self.queues.get_mut(&link).and_then(VecDeque::pop_front) {
                *cursor = (*cursor + k + 1) % n;
                *self.active.entry(link).or_default() += 1;
                self.running += 1;
                if self.queues.get(&link).is_some_and(VecDeque::is_empty) {
                    self.queues.remove(&link);
                }
                return Some((link, job));
            }
        }
        None
    }
}

/// Run every copy job of `t` on up to `opts.workers` threads, at most `opts.copies_per_link`
/// at once per link. Stops at the first error or when `cancel` is set, after the copies in
/// flight finish; the caller rolls back.
pub fn run_copies(
    t: &Transition,
    hmm: &Hmm,
    checkpoint: Option<&Checkpoint>,
    opts: &ExecOptions,
    cancel: &AtomicBool,
    start: Instant,
    on_event: &(dyn Fn(Event) + Sync),
) -> Result<(), ScaleError> {
    let jobs = t.jobs();
    let total_bytes: u64 = jobs.iter().map(|j| j.bytes).sum();
    let mut queues: BTreeMap<Link, VecDeque<usize>> = BTreeMap::new();
    for (i, j) in jobs.iter().enumerate() {
        queues.entry(j.link()).or_default().push_back(i);
    }
    let state = Mutex::new(Sched {
        queues,
        active: BTreeMap::new(),
        running: 0,
        done_jobs: 0,
        done_bytes: 0,
        error: None,
    });
    let wake = Condvar::new();
    let bound = opts.copies_per_link.max(1);
    // Threads beyond the backend's copy queues only queue on their locks: measured on an H200
    // (4 logical devices, one stream), tiny-moe's copies took 14 ms on 1 thread, 21–25 on 16.
    let queues = hmm.backend().copy_queues().unwrap_or(usize::MAX);
    let workers = opts
        .workers
        .max(1)
        .min(queues.max(1))
        .min(jobs.len().max(1));
    let t_s = || start.elapsed().as_secs_f64();
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());

    std::thread::scope(|s| {
        for w in 0..workers {
            let wake = &wake;
            s.spawn(move || {
                let mut cursor = w;
                loop {
                    let (link, job) = {
                        let mut g = lock();
                        loop {
                            if g.error.is_some() || cancel.load(Ordering::Acquire) {
                                return;
                            }
                            if let Some(x) = g.take(bound, &mut cursor) {
                                break x;
                            }
                            if g.queues.is_empty() {
                                return;
                            }
                            g = wake.wait(g).unwrap_or_else(|p| p.into_inner());
                        }
                    };
                    let j = &jobs[job];
                    on_event(Event::CopyStarted {
                        t_s: t_s(),
                        job,
                        what: j.what,
                        src: j.src_device,
                        dst: j.dst_device,
                        bytes: j.bytes,
                    });
                    let r = t.run_job(hmm, job, checkpoint);
                    // Report before the link's slot is given back, so an observer never sees
                    // more than `bound` copies in flight on a link.
                    let ev = {
                        let mut g = lock();
                        match r {
                            Ok(bytes) => {
                                g.done_jobs += 1;
                                g.done_bytes += bytes;
                                Some(Event::CopyDone {
                                    t_s: t_s(),
                                    job,
                                    jobs_done: g.done_jobs,
                                    jobs: jobs.len(),
                                    bytes_done: g.done_bytes,
                                    bytes: total_bytes,
                                })
                            }
                            Err(e) => {
                                g.error.get_or_insert(e);
                                None
                            }
                        }
                    };
                    if let Some(ev) = ev {
                        on_event(ev);
                    }
                    {
                        let mut g = lock();
                        g.running -= 1;
                        if let Some(a) = g.active.get_mut(&link) {
                            *a -= 1;
                        }
                    }
                    wake.notify_all();
                }
            });
        }
    });

    let g = state.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = g.error {
        return Err(e);
    }
    if g.done_jobs < jobs.len() {
        return Err(ScaleError::Cancelled {
            done: g.done_jobs,
            total: jobs.len(),
        });
    }
    Ok(())
}

/// Run an elastic step from `old` along `plan` and release the old instance. The HMM is held
/// exclusively here; serving beside the copies comes with the serving engine (the copies take
/// `&Hmm` for that). On failure or cancel before the switchover, `old` comes back untouched.
pub fn run_elastic(
    hmm: &mut Hmm,
    old: Deployment,
    plan: &Plan,
    checkpoint: Option<&Checkpoint>,
    opts: &ExecOptions,
    cancel: &AtomicBool,
    on_event: &(dyn Fn(Event) + Sync),
) -> Result<Outcome, NotScaled> {
    let start = Instant::now();
    let t_s = || start.elapsed().as_secs_f64();
    let phase = |p: Phase| {
        on_event(Event::Phase {
            t_s: t_s(),
            phase: p,
        })
    };
    let fail = |old: Deployment, e: ScaleError, p: Phase| {
        on_event(Event::Error {
            t_s: t_s(),
            message: e.to_string(),
        });
        phase(p);
        NotScaled {
            error: e,
            old: Box::new(old),
        }
    };
    let mut times = PhaseTimes::default();
    phase(Phase::Preparing);
    let t = match Transition::prepare(hmm, &old, plan, checkpoint, &opts.transition) {
        Ok(t) => t,
        Err(e) => return Err(fail(old, e, Phase::Failed)),
    };
    times.prepare_s = t_s();
    let copies = run_copies(&t, hmm, checkpoint, opts, cancel, start, on_event);
    times.copy_s = t_s() - times.prepare_s;
    if let Err(e) = copies {
        let cancelled = matches!(e, ScaleError::Cancelled { .. });
        let rb = t.rollback(hmm);
        let e = match rb {
            Ok(()) => e,
            Err(r) => r,
        };
        let p = if cancelled {
            Phase::Cancelled
        } else {
            Phase::Failed
        };
        return Err(fail(old, e, p));
    }
    let stats = t.stats();
    let before_commit = t_s();
    let new = match t.commit(hmm) {
        Ok(d) => d,
        Err(e) => return Err(fail(old, e, Phase::Failed)),
    };
    times.commit_s = t_s() - before_commit;
    phase(Phase::Switching);
    let before_release = Instant::now();
    phase(Phase::Releasing);
    if let Err(e) = old.unload(hmm) {
        // The new instance serves; what the old one held stays allocated until a retry.
        on_event(Event::Error {
            t_s: t_s(),
            message: format!("releasing the old instance: {e}"),
        });
    }
    times.release_s = before_release.elapsed().as_secs_f64();
    phase(Phase::Done);
    Ok(Outcome {
        deployment: new,
        stats,
        times,
    })
}

/// Run `f` and return its result with the wall time it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use emoe_core::backend::host::{HostBackend, HostConfig};
    use emoe_core::backend::{
        BackendKind, BackendResult, DeviceBackend, DeviceInfo, PhysHandle, SharedHandle, VirtRange,
    };
    use emoe_core::checkpoint::{self, Checkpoint};
    use emoe_core::deploy::DeployOptions;
    use emoe_core::model;
    use emoe_core::plan::{self, PlanInput, Policy, Topology};
    use emoe_core::scale::pool_state;

    use super::*;

    fn host() -> HostBackend {
        HostBackend::new(HostConfig {
            node: 0,
            devices: 8,
            capacity: 64 << 20,
            granularity: 64 << 10,
        })
        .unwrap()
    }

    fn setup(dir: &std::path::Path) -> (Hmm, Deployment, Checkpoint) {
        setup_on(dir, Arc::new(host()))
    }

    fn setup_on(dir: &std::path::Path, b: Arc<dyn DeviceBackend>) -> (Hmm, Deployment, Checkpoint) {
        let spec = model::preset("micro-moe").unwrap().spec();
        let path = checkpoint::ensure_generated(&spec, 1, dir).unwrap();
        let c = Checkpoint::open(&path).unwrap();
        let mut hmm = Hmm::new(b);
        let cfg = "dp1tp2ep2".parse().unwrap();
        let devices = [DeviceId::new(0, 0), DeviceId::new(0, 1)];
        let o = DeployOptions {
            kv_tokens: 128,
            ..DeployOptions::default()
        };
        let d = Deployment::load(&mut hmm, &spec, cfg, &devices, Some(&c), &o).unwrap();
        (hmm, d, c)
    }

    fn plan_to(hmm: &Hmm, d: &Deployment, to: &str) -> Plan {
        let pool = pool_state(hmm);
        let from: Vec<DeviceId> = d.devices.iter().map(|r| r.device).collect();
        let topo = Topology::uniform(1e10, 1e10);
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
            kv_tokens: 128,
            topology: &topo,
        })
        .unwrap()
    }

    #[test]
    fn copies_respect_the_per_link_bound_and_events_trace_the_phases() {
        let dir = tempfile::tempdir().unwrap();
        let (mut hmm, d, c) = setup(dir.path());
        let p = plan_to(&hmm, &d, "dp4tp2ep8");
        let events = Mutex::new(Vec::new());
        let opts = ExecOptions {
            copies_per_link: 1,
            workers: 4,
            ..ExecOptions::default()
        };
        let cancel = AtomicBool::new(false);
        let out = run_elastic(&mut hmm, d, &p, Some(&c), &opts, &cancel, &|e| {
            events.lock().unwrap().push(e)
        })
        .unwrap();
        assert!(out.deployment.verify(&hmm).unwrap().is_empty());
        let events = events.into_inner().unwrap();
        let mut in_flight: BTreeMap<(Option<DeviceId>, DeviceId), i32> = BTreeMap::new();
        let mut link_of = BTreeMap::new();
        let mut phases = Vec::new();
        let mut done = 0;
        for e in &events {
            match e {
                Event::CopyStarted { job, src, dst, .. } => {
                    link_of.insert(*job, (*src, *dst));
                    let n = in_flight.entry((*src, *dst)).or_default();
                    *n += 1;
                    assert!(*n <= 1, "two copies in flight on {src:?}→{dst}");
                }
                Event::CopyDone { job, jobs, .. } => {
                    *in_flight.get_mut(&link_of[job]).unwrap() -= 1;
                    done += 1;
                    assert_eq!(*jobs, out.stats.jobs);
                }
                Event::Phase { phase, .. } => phases.push(*phase),
                Event::Error { message, .. } => panic!("error event: {message}"),
            }
        }
        assert_eq!(done, out.stats.jobs);
        assert_eq!(
            phases,
            [
                Phase::Preparing,
                Phase::Switching,
                Phase::Releasing,
                Phase::Done
            ]
        );
        assert!(out.times.latency_s() > 0.0);
    }

    /// The host backend behind one copy queue, as a GPU whose logical devices share a stream;
    /// it records the most copies it ever saw at once.
    #[derive(Debug)]
    struct OneQueue {
        inner: HostBackend,
        now: std::sync::atomic::AtomicUsize,
        /// Shared with the test, which must not keep the backend itself: the HMM lends views
        /// only while it owns its backend alone.
        most: Arc<std::sync::atomic::AtomicUsize>,
    }

    // SAFETY: every call, `host_pointer` included, is the inner host backend's, which upholds
    // the contract; `copy` only adds counting and a delay around it.
    unsafe impl DeviceBackend for OneQueue {
        fn kind(&self) -> BackendKind {
            self.inner.kind()
        }
        fn devices(&self) -> &[DeviceInfo] {
            self.inner.devices()
        }
        fn holds_bytes(&self) -> bool {
            true
        }
        fn alloc_physical(&self, d: DeviceId, size: u64) -> BackendResult<PhysHandle> {
            self.inner.alloc_physical(d, size)
        }
        fn free_physical(&self, h: PhysHandle) -> BackendResult<()> {
            self.inner.free_physical(h)
        }
        fn reserve(&self, d: DeviceId, size: u64) -> BackendResult<VirtRange> {
            self.inner.reserve(d, size)
        }
        fn release(&self, r: VirtRange) -> BackendResult<()> {
            self.inner.release(r)
        }
        fn map(&self, r: VirtRange, addr: u64, h: PhysHandle) -> BackendResult<()> {
            self.inner.map(r, addr, h)
        }
        fn unmap(&self, r: VirtRange, addr: u64, size: u64) -> BackendResult<()> {
            self.inner.unmap(r, addr, size)
        }
        fn write(&self, h: PhysHandle, off: u64, data: &[u8]) -> BackendResult<()> {
            self.inner.write(h, off, data)
        }
        fn read(&self, h: PhysHandle, off: u64, out: &mut [u8]) -> BackendResult<()> {
            self.inner.read(h, off, out)
        }
        fn copy(
            &self,
            s: PhysHandle,
            so: u64,
            d: PhysHandle,
            dof: u64,
            n: u64,
        ) -> BackendResult<()> {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            // Long enough that a second thread would overlap if one were running.
            std::thread::sleep(Duration::from_micros(200));
            let r = self.inner.copy(s, so, d, dof, n);
            self.now.fetch_sub(1, Ordering::SeqCst);
            r
        }
        fn export(&self, h: PhysHandle) -> BackendResult<SharedHandle> {
            self.inner.export(h)
        }
        fn import(&self, d: DeviceId, s: SharedHandle, size: u64) -> BackendResult<PhysHandle> {
            self.inner.import(d, s, size)
        }
        fn host_pointer(&self, r: VirtRange, addr: u64) -> Option<*const u8> {
            self.inner.host_pointer(r, addr)
        }
        fn copy_queues(&self) -> Option<usize> {
            Some(1)
        }
    }

    #[test]
    fn copy_threads_never_outnumber_the_backends_copy_queues() {
        let dir = tempfile::tempdir().unwrap();
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let b = Arc::new(OneQueue {
            inner: host(),
            now: Default::default(),
            most: most.clone(),
        });
        let (mut hmm, d, c) = setup_on(dir.path(), b);
        let p = plan_to(&hmm, &d, "dp4tp2ep8");
        let opts = ExecOptions {
            copies_per_link: 4,
            workers: 8,
            ..ExecOptions::default()
        };
        let cancel = AtomicBool::new(false);
        let out = run_elastic(&mut hmm, d, &p, Some(&c), &opts, &cancel, &|_| {}).unwrap();
        assert!(out.stats.jobs > 1);
        assert!(out.deployment.verify(&hmm).unwrap().is_empty());
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn cancel_rolls_back_and_returns_the_old_instance_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (mut hmm, d, c) = setup(dir.path());
        let p = plan_to(&hmm, &d, "dp4tp2ep8");
        let allocs: Vec<_> = hmm.all_allocations().map(|a| a.id).collect();
        let used: Vec<_> = hmm
            .devices()
            .iter()
            .map(|x| hmm.usage(x.id).unwrap().used)
            .collect();
        let cancel = AtomicBool::new(false);
        let phases = Mutex::new(Vec::new());
        let opts = ExecOptions {
            workers: 1,
            ..ExecOptions::default()
        };
        let err = run_elastic(&mut hmm, d, &p, Some(&c), &opts, &cancel, &|e| match e {
            Event::CopyDone { .. } => cancel.store(true, Ordering::Release),
            Event::Phase { phase, .. } => phases.lock().unwrap().push(phase),
            _ => {}
        })
        .unwrap_err();
        assert!(
            matches!(err.error, ScaleError::Cancelled { done: 1, .. }),
            "{}",
            err.error
        );
        assert_eq!(
            *phases.lock().unwrap(),
            [Phase::Preparing, Phase::Cancelled]
        );
        let after: Vec<_> = hmm.all_allocations().map(|a| a.id).collect();
        assert_eq!(after, allocs, "every new allocation was freed");
        let used2: Vec<_> = hmm
            .devices()
            .iter()
            .map(|x| hmm.usage(x.id).unwrap().used)
            .collect();
        assert_eq!(used2, used);
        assert_eq!(hmm.views().count(), 1);
        assert!(err.old.verify(&hmm).unwrap().is_empty());
    }
}
