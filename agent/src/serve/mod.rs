//! Serving a real MoE model on the HMM while it scales (DESIGN §6–§7).
//!
//! A [`Server`] owns the HMM behind a read-write lock, the instances (each a [`Deployment`] — its
//! own views — with a state), the request queue and the KV blocks. One worker thread per replica
//! (a TP group of an instance) forms batches, runs [`Engine::step`] under the HMM's read lock and
//! applies the results; intake never pauses.
//!
//! Scaling runs beside the workers: the transition is prepared and committed under short write
//! locks, its copies run under the read lock while the old instance keeps serving. At the
//! switchover new requests go to the new instance; in-flight requests whose replica's devices
//! form a replica of the new instance move to it with their KV blocks (same memory, no copy);
//! the others finish on the old instance, which is released when it has drained.

mod kv;
mod switch;
mod worker;

pub use switch::panic_message;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use emoe_core::checkpoint::Checkpoint;
use emoe_core::deploy::Deployment;
use emoe_core::engine::{Engine, EngineError};
use emoe_core::hmm::Hmm;
use emoe_core::plan;
use emoe_core::scale::{ScaleError, TransitionStats};
use emoe_core::{DeviceId, ParallelConfig};

pub use kv::KvBlocks;

use crate::scale::{Event as ScaleEvent, ExecOptions, PhaseTimes};

/// How an instance takes part in serving.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Takes new requests.
    Active,
    /// Pre-initialized, not serving.
    Standby,
    /// Finishes its in-flight requests, takes no new ones.
    Draining,
}

/// An instance as clients see it.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceInfo {
    /// 0 for a standby runtime (no instance yet).
    pub id: u64,
    pub config: ParallelConfig,
    pub state: InstanceState,
    pub devices: Vec<DeviceId>,
}

/// A request as submitted.
#[derive(Clone, Debug)]
pub struct Submit {
    pub prompt: Vec<u32>,
    pub output_tokens: u32,
}

/// A finished request: its timings (seconds since the server started) and its answer.
#[derive(Clone, Debug, Serialize)]
pub struct Finished {
    pub id: u64,
    pub arrival_s: f64,
    pub first_token_s: f64,
    pub finish_s: f64,
    pub output: Vec<u32>,
    /// Instances that ran it (two when it crossed a switchover).
    pub instances: Vec<u64>,
}

/// Something that happened, for the event stream.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServeEvent {
    Step {
        ts: f64,
        instance: u64,
        replica: usize,
        batch: usize,
        tokens: usize,
    },
    /// A scaling operation's phase change or copy progress (its own `type` inside `event`).
    Scale {
        ts: f64,
        event: ScaleEvent,
    },
    Instance {
        ts: f64,
        instance: u64,
        config: ParallelConfig,
        state: InstanceState,
    },
    Error {
        ts: f64,
        message: String,
    },
}

/// A test hook called at named points of a scaling operation (`"preparing"`, `"copies"`,
/// `"reload"`, …): it may panic, or return an error that the operation treats as the failure
/// of what comes next. Never set outside tests.
#[derive(Clone)]
pub struct FaultHook(pub Arc<FaultFn>);

/// What a [`FaultHook`] runs: the point's name in, an injected failure out.
pub type FaultFn = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for FaultHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultHook")
    }
}

/// Knobs of a server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Most requests in one decode step of a replica.
    pub max_batch: usize,
    pub exec: ExecOptions,
    /// Pre-initialization: take the target's runtime from the standby cache and populate the
    /// new instance's weight mappings before the switchover. Off (the ablation), the runtime is
    /// built at the switchover and the first decode steps fault the pages in.
    pub pre_init: bool,
    /// Fault injection for tests ([`FaultHook`]).
    #[doc(hidden)]
    pub fault: Option<FaultHook>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_batch: 16,
            exec: ExecOptions::default(),
            pre_init: true,
            fault: None,
        }
    }
}

/// A request in flight.
#[derive(Debug)]
struct Running {
    id: u64,
    arrival_s: f64,
    first_token_s: Option<f64>,
    tokens: Vec<u32>,
    prompt: usize,
    output_tokens: u32,
    /// Positions already in the KV cache.
    done: usize,
    blocks: Vec<u32>,
    instance: u64,
    replica: usize,
    /// In a step right now (its worker will apply the result).
    busy: bool,
    /// Where it goes once the current step ends (a switchover while it was busy).
    move_to: Option<(u64, usize)>,
    instances: Vec<u64>,
}

impl Running {
    fn finished(&self) -> bool {
        self.tokens.len() >= self.prompt + self.output_tokens as usize
    }
}

struct Instance {
    deployment: Arc<Deployment>,
    state: InstanceState,
    /// The instance's pre-initialized runtime (its compute layout for the config).
    engine: Arc<Engine>,
}

/// Pre-initialized runtimes of configs not serving now, most recently used first.
#[derive(Default)]
struct Standby {
    entries: Vec<(ParallelConfig, Arc<Engine>)>,
}

impl Standby {
    /// Standby runtimes kept at most.
    const CAPACITY: usize = 4;

    fn take(&mut self, config: ParallelConfig) -> Option<Arc<Engine>> {
        let i = self.entries.iter().position(|(c, _)| *c == config)?;
        Some(self.entries.remove(i).1)
    }

    fn put(&mut self, config: ParallelConfig, engine: Arc<Engine>) {
        self.entries.retain(|(c, _)| *c != config);
        self.entries.insert(0, (config, engine));
        self.entries.truncate(Self::CAPACITY);
    }

    fn configs(&self) -> Vec<ParallelConfig> {
        self.entries.iter().map(|(c, _)| *c).collect()
    }
}

/// Everything the workers share, under one mutex.
struct State {
    next_instance: u64,
    instances: BTreeMap<u64, Instance>,
    active: u64,
    queue: VecDeque<(u64, f64, Submit)>,
    running: BTreeMap<u64, Running>,
    kv: KvBlocks,
    finished: Vec<Finished>,
    events: Vec<ServeEvent>,
    /// Per MoE layer, tokens routed to each expert since the last reset.
    expert_load: BTreeMap<u32, Vec<u64>>,
    next_request: u64,
    stop: bool,
    scaling: bool,
    standby: Standby,
}

struct Shared {
    hmm: RwLock<Hmm>,
    state: Mutex<State>,
    /// The running (or last) operation's live phase; see [`switch::Gate`].
    gate: Mutex<switch::Gate>,
    wake: Condvar,
    start: Instant,
    opts: ServeOptions,
    checkpoint: Option<Checkpoint>,
}

impl Shared {
    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Hmm> {
        self.hmm.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Hmm> {
        self.hmm.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a scaling step while serving measured.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    pub from: ParallelConfig,
    pub to: ParallelConfig,
    pub started_s: f64,
    /// Command to the switchover (the new instance serving).
    pub latency_s: f64,
    pub times: PhaseTimes,
    pub stats: TransitionStats,
    /// Requests that moved to the new instance with their KV, and that drained on the old one.
    pub moved_requests: usize,
    pub drained_requests: usize,
    /// Highest HMM-measured per-device peak during the step.
    pub peak_bytes: u64,
    /// The target's runtime came pre-initialized from the standby cache.
    pub standby_hit: bool,
    /// Seconds spent initializing the runtime and populating the new view before the
    /// switchover (part of `latency_s`).
    pub init_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Scale(#[from] ScaleError),
    #[error("an operation is already running: one scaling operation at a time")]
    Busy,
    /// Cancelled before its point of no return; nothing changed.
    #[error("cancelled while {phase}, before the switchover: nothing changed")]
    Cancelled { phase: &'static str },
    /// The operation's thread panicked; the operation failed and the next one may start.
    #[error("the operation panicked: {0}")]
    Panicked(String),
    #[error("the prompt is empty; a request needs at least one prompt token")]
    EmptyPrompt,
    #[error("output_tokens must be at least 1")]
    NoOutput,
    #[error("{0}")]
    Refused(String),
    #[error(
        "the request needs {need} KV blocks ({tokens} tokens), a replica holds {have}: it can never run"
    )]
    TooLong { need: usize, tokens: u64, have: u32 },
}

/// A serving node: the HMM, its instances and their workers.
pub struct Server {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

fn groups_of(d: &Deployment) -> Vec<Vec<DeviceId>> {
    let tp = d.config.tp() as usize;
    d.devices
        .chunks(tp.max(1))
        .map(|c| c.iter().map(|r| r.device).collect())
        .collect()
}

impl Server {
    /// Serve `deployment` (already loaded into `hmm`) as the active instance.
    pub fn start(
        hmm: Hmm,
        deployment: Deployment,
        checkpoint: Option<Checkpoint>,
        opts: ServeOptions,
    ) -> Result<Self, ServeError> {
        let engine = Arc::new(Engine::new(&deployment.model, deployment.config.tp())?);
        let kv_layout = engine.kv_layout(&hmm, &deployment);
        let mut kv = KvBlocks::new(kv_layout.blocks);
        for r in &deployment.devices {
            kv.add_device(r.device);
        }
        let mut state = State {
            next_instance: 2,
            instances: BTreeMap::new(),
            active: 1,
            queue: VecDeque::new(),
            running: BTreeMap::new(),
            kv,
            finished: Vec::new(),
            events: Vec::new(),
            expert_load: BTreeMap::new(),
            next_request: 0,
            stop: false,
            scaling: false,
            standby: Standby::default(),
        };
        let config = deployment.config;
        state.instances.insert(
            1,
            Instance {
                deployment: Arc::new(deployment),
                state: InstanceState::Active,
                engine,
            },
        );
        let shared = Arc::new(Shared {
            hmm: RwLock::new(hmm),
            state: Mutex::new(state),
            gate: Mutex::new(switch::Gate::default()),
            wake: Condvar::new(),
            start: Instant::now(),
            opts,
            checkpoint,
        });
        shared.lock().events.push(ServeEvent::Instance {
            ts: 0.0,
            instance: 1,
            config,
            state: InstanceState::Active,
        });
        let s = Self {
            shared,
            workers: Mutex::new(Vec::new()),
        };
        s.spawn_workers(1);
        Ok(s)
    }

    fn spawn_workers(&self, instance: u64) {
        let groups = {
            let st = self.shared.lock();
            st.instances
                .get(&instance)
                .map_or(0, |i| groups_of(&i.deployment).len())
        };
        let mut w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        // Workers of released instances have exited: join them here so the list holds only
        // the live ones (one per replica of each instance), however many steps run.
        let (done, live): (Vec<_>, Vec<_>) = std::mem::take(&mut *w)
            .into_iter()
            .partition(JoinHandle::is_finished);
        *w = live;
        for h in done {
            let _ = h.join();
        }
        for g in 0..groups {
            let sh = Arc::clone(&self.shared);
            w.push(
                std::thread::Builder::new()
                    .name(format!("emoe-i{instance}-r{g}"))
                    .spawn(move || worker::run(&sh, instance, g))
                    .expect("spawn a worker thread"),
            );
        }
    }

    /// Pre-initialize a standby runtime for `config` (kept in an LRU cache of
    /// [`Standby::CAPACITY`]) and fill the backend's pre-allocated pool with what a step to it
    /// would allocate, so the step skips both. Returns the seconds it took.
    pub fn pre_initialize(&self, config: ParallelConfig) -> Result<f64, ServeError> {
        let active = self.try_active()?;
        let t = Instant::now();
        let engine = Arc::new(Engine::new(&active.model, config.tp())?);
        if self.shared.opts.pre_init && config != active.config {
            // The step's allocations wait in the pre-allocated pool (where the backend has one).
            let topo = emoe_core::plan::Topology::uniform(1e10, 1e10);
            if let Ok(p) = self.plan(config, emoe_core::plan::Policy::Balanced, &topo) {
                let hmm = self.shared.read();
                let _ = emoe_core::scale::prefault(&hmm, &active, &p);
            }
        }
        let s = t.elapsed().as_secs_f64();
        self.shared.lock().standby.put(config, engine);
        Ok(s)
    }

    /// Every instance: id, config, state and devices (standby runtimes hold no devices).
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let st = self.shared.lock();
        let mut v: Vec<InstanceInfo> = st
            .instances
            .iter()
            .map(|(id, i)| InstanceInfo {
                id: *id,
                config: i.deployment.config,
                state: i.state,
                devices: i.deployment.devices.iter().map(|r| r.device).collect(),
            })
            .collect();
        v.extend(st.standby.configs().into_iter().map(|c| InstanceInfo {
            id: 0,
            config: c,
            state: InstanceState::Standby,
            devices: Vec::new(),
        }));
        v
    }

    /// Requests running, per instance id.
    pub fn running_by_instance(&self) -> BTreeMap<u64, usize> {
        let st = self.shared.lock();
        let mut m = BTreeMap::new();
        for r in st.running.values() {
            *m.entry(r.instance).or_default() += 1;
        }
        m
    }

    /// Requests queued and running.
    pub fn queue(&self) -> (usize, usize) {
        let st = self.shared.lock();
        (st.queue.len(), st.running.len())
    }

    /// Configs with a pre-initialized standby runtime, most recently used first.
    pub fn standby(&self) -> Vec<ParallelConfig> {
        self.shared.lock().standby.configs()
    }

    /// Seconds since the server started (the time base of every record).
    pub fn now(&self) -> f64 {
        self.shared.t()
    }

    /// Queue a request; it is admitted by the active instance as soon as a replica has room.
    pub fn submit(&self, req: Submit) -> Result<u64, ServeError> {
        if req.prompt.is_empty() {
            return Err(ServeError::EmptyPrompt);
        }
        if req.output_tokens == 0 {
            return Err(ServeError::NoOutput);
        }
        let tokens = req.prompt.len() as u64 + u64::from(req.output_tokens);
        let need = emoe_core::engine::blocks_for(u32::try_from(tokens).unwrap_or(u32::MAX));
        let mut st = self.shared.lock();
        let have = st.kv.blocks_per_device();
        if need > have as usize {
            return Err(ServeError::TooLong { need, tokens, have });
        }
        let id = st.next_request;
        st.next_request += 1;
        let t = self.shared.t();
        st.queue.push_back((id, t, req));
        drop(st);
        self.shared.wake.notify_all();
        Ok(id)
    }

    /// Requests finished so far (drained from the server).
    pub fn take_finished(&self) -> Vec<Finished> {
        std::mem::take(&mut self.shared.lock().finished)
    }

    /// Events so far (drained).
    pub fn take_events(&self) -> Vec<ServeEvent> {
        std::mem::take(&mut self.shared.lock().events)
    }

    /// Requests queued or running.
    pub fn pending(&self) -> usize {
        let st = self.shared.lock();
        st.queue.len() + st.running.len()
    }

    /// Wait until nothing is queued or running, or `timeout` passes; returns whether idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if st.queue.is_empty() && st.running.is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            st = self
                .shared
                .wake
                .wait_timeout(st, end - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The active instance's deployment; `None` while a cold restart has released the old
    /// instance and not yet loaded the new one (or failed to).
    pub fn active(&self) -> Option<Arc<Deployment>> {
        self.active_entry().ok().map(|(_, d)| d)
    }

    /// The active instance's deployment, or a refusal naming why there is none.
    pub fn try_active(&self) -> Result<Arc<Deployment>, ServeError> {
        self.active_entry().map(|(_, d)| d)
    }

    /// The active instance's id and deployment.
    pub(crate) fn active_entry(&self) -> Result<(u64, Arc<Deployment>), ServeError> {
        let st = self.shared.lock();
        st.instances
            .get(&st.active)
            .map(|i| (st.active, Arc::clone(&i.deployment)))
            .ok_or_else(|| {
                ServeError::Refused(
                    "no active instance: a cold restart is reloading the model (or failed to); \
                     try again when it is done"
                        .into(),
                )
            })
    }

    /// Per MoE layer, tokens routed to each expert since the start.
    pub fn expert_load(&self) -> BTreeMap<u32, Vec<u64>> {
        self.shared.lock().expert_load.clone()
    }

    /// Run `f` with the HMM read-locked (inspection).
    pub fn with_hmm<T>(&self, f: impl FnOnce(&Hmm) -> T) -> T {
        f(&self.shared.read())
    }

    /// Worker threads not yet joined (live ones, and any that exited since the last step).
    pub fn worker_threads(&self) -> usize {
        self.workers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Stop the workers (in-flight requests are abandoned) and return the HMM and the active
    /// deployment.
    pub fn shutdown(self) -> (Hmm, Vec<Deployment>) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in workers {
            let _ = w.join();
        }
        let shared = match Arc::try_unwrap(self.shared) {
            Ok(s) => s,
            Err(_) => unreachable!("every worker has exited"),
        };
        let st = shared.state.into_inner().unwrap_or_else(|p| p.into_inner());
        let deps = st
            .instances
            .into_values()
            .filter_map(|i| Arc::try_unwrap(i.deployment).ok())
            .collect();
        (
            shared.hmm.into_inner().unwrap_or_else(|p| p.into_inner()),
            deps,
        )
    }
}
