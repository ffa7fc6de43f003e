//! Target expert placement: balanced counts with the fewest moves, plus load-aware replicas.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::device::DeviceId;

/// A replica is worth its bytes only if it cuts the bottleneck device's load by this fraction.
pub const MIN_REPLICA_GAIN: f64 = 0.01;

/// The balanced target of one layer: each expert on exactly one of `targets`, per-device counts as
/// even as possible (the larger counts go to the devices already holding the most), as many
/// experts kept in place as those counts allow, the rest placed on the devices with the most room,
/// new devices (`is_new`) first.
pub fn balanced_layer(
    current: &[Vec<DeviceId>],
    targets: &[DeviceId],
    is_new: impl Fn(DeviceId) -> bool,
) -> Vec<Vec<DeviceId>> {
    let n = targets.len();
    let e = current.len();
    if n == 0 {
        return vec![Vec::new(); e];
    }
    let pos: BTreeMap<DeviceId, usize> = targets.iter().enumerate().map(|(i, d)| (*d, i)).collect();
    let mut held = vec![0usize; n];
    for holders in current {
        for h in holders {
            if let Some(&i) = pos.get(h) {
                held[i] += 1;
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (Reverse(held[i]), i));
    let mut cap = vec![e / n; n];
    for &i in order.iter().take(e % n) {
        cap[i] += 1;
    }
    let mut count = vec![0usize; n];
    let mut owner: Vec<Option<usize>> = vec![None; e];
    for (x, holders) in current.iter().enumerate() {
        for h in holders {
            if let Some(&i) = pos.get(h)
                && count[i] < cap[i]
            {
                count[i] += 1;
                owner[x] = Some(i);
                break;
            }
        }
    }
    for slot in &mut owner {
        if slot.is_some() {
            continue;
        }
        let best = (0..n)
            .filter(|&i| count[i] < cap[i])
            .max_by_key(|&i| (is_new(targets[i]), cap[i] - count[i], Reverse(i)));
        if let Some(i) = best {
            count[i] += 1;
            *slot = Some(i);
        }
    }
    owner
        .into_iter()
        .map(|o| o.map(|i| vec![targets[i]]).unwrap_or_default())
        .collect()
}

fn clean(w: f64) -> f64 {
    if w.is_finite() && w > 0.0 { w } else { 0.0 }
}

/// Per-device load of a layer: each expert's load split evenly over its holders.
pub fn device_loads(layer: &[Vec<DeviceId>], targets: &[DeviceId], load: &[f64]) -> Vec<f64> {
    let pos: BTreeMap<DeviceId, usize> = targets.iter().enumerate().map(|(i, d)| (*d, i)).collect();
    let mut out = vec![0.0; targets.len()];
    for (x, holders) in layer.iter().enumerate() {
        if holders.is_empty() {
            continue;
        }
        let share = clean(load.get(x).copied().unwrap_or(0.0)) / holders.len() as f64;
        for h in holders {
            if let Some(&i) = pos.get(h) {
                out[i] += share;
            }
        }
    }
    out
}

fn argmax(v: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, x) in v.iter().enumerate() {
        if best.is_none_or(|b| *x > v[b]) {
            best = Some(i);
        }
    }
    best
}

/// Add up to `replicas` redundant copies of hot experts to one layer. Each round takes the most
/// loaded device, its hottest expert (by load share) that some other device can take, and puts a
/// copy on the least-loaded device with fewer than `room` experts that lacks it; the copy is kept
/// only if the bottleneck load falls by at least [`MIN_REPLICA_GAIN`] (a replica costs one
/// expert's bytes). A device that holds the expert in `previous` (the current placement) is
/// tried first, since it needs no copy. Deterministic: ties go to the lower expert and device
/// index.
pub fn add_replicas(
    layer: &mut [Vec<DeviceId>],
    previous: &[Vec<DeviceId>],
    targets: &[DeviceId],
    load: &[f64],
    replicas: u32,
    room: usize,
) {
    let mut counts = vec![0usize; targets.len()];
    for holders in layer.iter() {
        for h in holders {
            if let Some(i) = targets.iter().position(|d| d == h) {
                counts[i] += 1;
            }
        }
    }
    for _ in 0..replicas {
        let loads = device_loads(layer, targets, load);
        let Some(b) = argmax(&loads) else { return };
        let old_max = loads[b];
        if old_max <= 0.0 {
            return;
        }
        let mut candidates: Vec<(usize, f64)> = layer
            .iter()
            .enumerate()
            .filter(|(_, h)| h.contains(&targets[b]))
            .map(|(x, h)| {
                (
                    x,
                    clean(load.get(x).copied().unwrap_or(0.0)) / h.len() as f64,
                )
            })
            .filter(|(_, s)| *s > 0.0)
            .collect();
        candidates.sort_by(|a, c| c.1.total_cmp(&a.1).then(a.0.cmp(&c.0)));
        let mut accepted = false;
        for (x, _) in candidates {
            let eligible: Vec<usize> = (0..targets.len())
                .filter(|&i| counts[i] < room && !layer[x].contains(&targets[i]))
                .collect();
            let least = |only_former: bool| {
                eligible
                    .iter()
                    .copied()
                    .filter(|&i| {
                        !only_former || previous.get(x).is_some_and(|h| h.contains(&targets[i]))
                    })
                    .min_by(|&i, &j| loads[i].total_cmp(&loads[j]).then(i.cmp(&j)))
            };
            // A device that holds the expert now takes the replica at no copy cost.
            let tries = [least(true), least(false)];
            for d in tries.into_iter().flatten() {
                layer[x].push(targets[d]);
                layer[x].sort();
                let new_max = device_loads(layer, targets, load)
                    .into_iter()
                    .fold(0.0, f64::max);
                if old_max - new_max >= MIN_REPLICA_GAIN * old_max {
                    counts[d] += 1;
                    accepted = true;
                    break;
                }
                layer[x].retain(|h| *h != targets[d]);
            }
            if !eligible.is_empty() {
                break;
            }
        }
        if !accepted {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devs(n: u32) -> Vec<DeviceId> {
        (0..n).map(|i| DeviceId::new(0, i)).collect()
    }

    #[test]
    fn scale_up_keeps_the_most() {
        let d = devs(6);
        let current: Vec<Vec<DeviceId>> = (0..64).map(|x| vec![d[x / 16]]).collect();
        let t = balanced_layer(&current, &d, |x| x.index >= 4);
        let counts: Vec<usize> = d
            .iter()
            .map(|dev| t.iter().filter(|h| h.contains(dev)).count())
            .collect();
        assert_eq!(counts, vec![11, 11, 11, 11, 10, 10]);
        let moved = (0..64).filter(|&x| t[x] != current[x]).count();
        assert_eq!(moved, 20);
    }

    #[test]
    fn replica_goes_to_the_bottleneck() {
        let d = devs(2);
        let mut layer: Vec<Vec<DeviceId>> = vec![vec![d[0]], vec![d[0]], vec![d[1]], vec![d[1]]];
        let load = [10.0, 1.0, 1.0, 1.0];
        add_replicas(&mut layer, &[], &d, &load, 1, 3);
        assert_eq!(layer[0], vec![d[0], d[1]]);
    }
}
