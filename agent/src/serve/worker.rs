//! One replica's worker: admit queued requests while the instance is active, run a decode step
//! over its batch under the HMM's read lock, apply the tokens. Exits when its instance is gone.

use std::sync::Arc;
use std::time::Duration;

use emoe_core::DeviceId;
use emoe_core::engine::{StepInput, blocks_for};

use super::{
    FinishReason, Finished, InstanceState, Running, ServeEvent, Shared, TokenEvent, groups_of,
};

/// One request's part of a step, copied out of the state.
struct Input {
    id: u64,
    token: u32,
    pos: u32,
    blocks: Vec<u32>,
    logprobs: Option<u8>,
}

/// Prompt tokens of a request are fed one position per step (prefill by decode), so a replica
/// serves prefill and decode in the same batches.
pub(super) fn run(sh: &Arc<Shared>, instance: u64, replica: usize) {
    loop {
        // Form the batch under the state lock.
        let (dep, engine, group, batch) = {
            let mut st = sh.lock();
            loop {
                if st.stop {
                    return;
                }
                let Some(inst) = st.instances.get(&instance) else {
                    return;
                };
                let dep = Arc::clone(&inst.deployment);
                let engine = Arc::clone(&inst.engine);
                let active = inst.state == InstanceState::Active;
                let group: Vec<DeviceId> = groups_of(&dep)[replica].clone();
                if active {
                    admit(&mut st, instance, replica, &group, sh.opts.max_batch);
                }
                let mut batch: Vec<u64> = st
                    .running
                    .values()
                    .filter(|r| r.instance == instance && r.replica == replica)
                    .filter(|r| !r.busy && !r.finished())
                    .map(|r| r.id)
                    .collect();
                batch.truncate(sh.opts.max_batch);
                if !batch.is_empty() {
                    for id in &batch {
                        if let Some(r) = st.running.get_mut(id) {
                            r.busy = true;
                        }
                    }
                    break (dep, engine, group, batch);
                }
                st = sh
                    .wake
                    .wait_timeout(st, Duration::from_millis(20))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        // Inputs, copied out so the step runs without the state lock.
        let inputs: Vec<Input> = {
            let st = sh.lock();
            batch
                .iter()
                .filter_map(|id| st.running.get(id))
                .map(|r| Input {
                    id: r.id,
                    token: r.tokens[r.done],
                    pos: r.done as u32,
                    blocks: r.blocks.clone(),
                    // Log-probabilities only where this step makes an output token.
                    logprobs: r.logprobs.filter(|_| r.done + 1 >= r.prompt),
                })
                .collect()
        };
        let step_in: Vec<StepInput> = inputs
            .iter()
            .map(|i| StepInput {
                token: i.token,
                pos: i.pos,
                blocks: &i.blocks,
                logprobs: i.logprobs,
            })
            .collect();
        let out = engine.step_locked(|| sh.read(), &dep, replica, &step_in);
        drop(dep);
        let now = sh.t();
        let mut st = sh.lock();
        match out {
            Ok(out) => {
                let mut emitted = 0;
                let logprobs = out.logprobs.into_iter().chain(std::iter::repeat(None));
                for ((input, next), lp) in inputs.iter().zip(out.next).zip(logprobs) {
                    let Some(r) = st.running.get_mut(&input.id) else {
                        continue;
                    };
                    r.busy = false;
                    r.done += 1;
                    if r.reason.is_none() && r.done >= r.prompt && r.done == r.tokens.len() {
                        r.tokens.push(next);
                        r.token_s.push(now);
                        emitted += 1;
                        r.first_token_s.get_or_insert(now);
                        if r.stop_tokens.contains(&next) {
                            r.reason = Some(FinishReason::Stop);
                        }
                        let gone = r.sink.as_ref().is_some_and(|s| {
                            s.send(TokenEvent::Token {
                                id: next,
                                logprobs: lp,
                            })
                            .is_err()
                        });
                        if gone {
                            // The client went away: the request ends, its blocks go back.
                            r.reason = Some(FinishReason::Aborted);
                        }
                    }
                    if let Some((inst, g)) = r.move_to.take() {
                        r.instance = inst;
                        r.replica = g;
                        r.instances.push(inst);
                    }
                }
                for (l, counts) in out.expert_tokens {
                    let v = st
                        .expert_load
                        .entry(l)
                        .or_insert_with(|| vec![0; counts.len()]);
                    for (a, c) in v.iter_mut().zip(counts) {
                        *a += u64::from(c);
                    }
                }
                st.events.push(ServeEvent::Step {
                    ts: now,
                    instance,
                    replica,
                    batch: inputs.len(),
                    tokens: emitted,
                });
                finish(&mut st, now);
            }
            Err(e) => {
                // A failed step fails its requests (their blocks go back); the worker goes on.
                for input in &inputs {
                    if let Some(r) = st.running.remove(&input.id) {
                        st.kv.give(&group, &r.blocks);
                        if let Some(s) = &r.sink {
                            let _ = s.send(TokenEvent::Failed {
                                message: format!("the engine failed a step: {e}"),
                            });
                        }
                    }
                }
                st.events.push(ServeEvent::Error {
                    ts: now,
                    message: format!("instance {instance} replica {replica}: {e}"),
                });
            }
        }
        drop(st);
        sh.wake.notify_all();
    }
}

/// Move queued requests into this replica while it has batch room and KV blocks.
fn admit(
    st: &mut super::State,
    instance: u64,
    replica: usize,
    group: &[DeviceId],
    max_batch: usize,
) {
    let mine = st
        .running
        .values()
        .filter(|r| r.instance == instance && r.replica == replica)
        .count();
    let mut room = max_batch.saturating_sub(mine);
    while room > 0 {
        let Some((_, _, req)) = st.queue.front() else {
            return;
        };
        let need = blocks_for(
            u32::try_from(req.prompt.len() + req.output_tokens as usize).unwrap_or(u32::MAX),
        );
        let Some(blocks) = st.kv.take(group, need) else {
            return;
        };
        let Some((id, arrival_s, req)) = st.queue.pop_front() else {
            st.kv.give(group, &blocks);
            return;
        };
        let resume = req.resume.map(|r| *r).unwrap_or_default();
        let prompt = req.prompt.len();
        let mut tokens = req.prompt;
        tokens.extend_from_slice(&resume.output);
        let mut instances = resume.instances;
        instances.push(instance);
        st.running.insert(
            id,
            Running {
                id,
                arrival_s,
                first_token_s: resume.first_token_s,
                prompt,
                tokens,
                output_tokens: req.output_tokens,
                done: 0,
                blocks,
                instance,
                replica,
                busy: false,
                move_to: None,
                instances,
                stop_tokens: req.stop_tokens,
                logprobs: req.logprobs,
                sink: req.sink,
                source: req.source,
                reason: None,
                token_s: resume.token_s,
            },
        );
        room -= 1;
    }
}

/// Retire finished requests: their blocks go back on the devices of the replica that holds
/// them now, their timings are recorded, their streams get the reason.
pub(super) fn finish(st: &mut super::State, now: f64) {
    let done: Vec<u64> = st
        .running
        .values()
        .filter(|r| !r.busy && r.finished())
        .map(|r| r.id)
        .collect();
    for id in done {
        let Some(r) = st.running.remove(&id) else {
            continue;
        };
        let group = st
            .instances
            .get(&r.instance)
            .and_then(|i| groups_of(&i.deployment).get(r.replica).cloned())
            .unwrap_or_default();
        st.kv.give(&group, &r.blocks);
        let reason = r.reason.unwrap_or(FinishReason::Length);
        if let Some(s) = &r.sink {
            let _ = s.send(TokenEvent::Finished { reason });
        }
        st.finished.push(Finished {
            id: r.id,
            arrival_s: r.arrival_s,
            first_token_s: r.first_token_s.unwrap_or(now),
            finish_s: now,
            output: r.tokens[r.prompt..].to_vec(),
            instances: r.instances,
            source: r.source,
            reason,
            prompt_tokens: r.prompt as u32,
            token_s: r.token_s,
        });
    }
}
