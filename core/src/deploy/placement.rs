//! Expert placement: for each MoE layer, which devices hold each logical expert.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::device::DeviceId;
use crate::model::ModelSpec;
use crate::model::even_range;

/// For every MoE layer, the devices holding each logical expert (one or more: replicas).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, serde::Deserialize)]
pub struct Placement {
    /// `layers[layer][expert]` = the devices that hold it, in device order.
    pub layers: BTreeMap<u32, Vec<Vec<DeviceId>>>,
}

impl Placement {
    /// The initial placement of a fresh load: EP rank `i` (the `i`-th device) holds a contiguous
    /// block of experts, as evenly as possible (64 experts on EP 6: four devices hold 11, two
    /// hold 10), the same in every layer.
    pub fn contiguous(spec: &ModelSpec, devices: &[DeviceId]) -> Self {
        let e = u64::from(spec.num_routed_experts);
        let ep = u32::try_from(devices.len()).unwrap_or(u32::MAX).max(1);
        let mut owner = vec![Vec::new(); e as usize];
        for (i, d) in devices.iter().enumerate() {
            let (a, b) = even_range(e, ep, i as u32);
            for x in a..b {
                owner[x as usize].push(*d);
            }
        }
        let layers = spec
            .moe_layers()
            .into_iter()
            .map(|l| (l, owner.clone()))
            .collect();
        Self { layers }
    }

    /// Logical experts of `layer` held by `device`, ascending.
    pub fn experts_on(&self, layer: u32, device: DeviceId) -> Vec<u32> {
        self.layers.get(&layer).map_or_else(Vec::new, |experts| {
            experts
                .iter()
                .enumerate()
                .filter(|(_, holders)| holders.contains(&device))
                .map(|(x, _)| x as u32)
                .collect()
        })
    }

    /// Devices holding expert `expert` of `layer`.
    pub fn holders(&self, layer: u32, expert: u32) -> &[DeviceId] {
        self.layers
            .get(&layer)
            .and_then(|v| v.get(expert as usize))
            .map_or(&[], Vec::as_slice)
    }

    /// Most experts any device holds in any layer.
    pub fn max_per_device(&self) -> usize {
        let mut counts: BTreeMap<(u32, DeviceId), usize> = BTreeMap::new();
        for (l, experts) in &self.layers {
            for holders in experts {
                for d in holders {
                    *counts.entry((*l, *d)).or_default() += 1;
                }
            }
        }
        counts.values().copied().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::preset;

    #[test]
    fn uneven_counts_are_spread_evenly() {
        let spec = preset("tiny-moe").unwrap().spec();
        let devs: Vec<_> = (0..6).map(|i| DeviceId::new(0, i)).collect();
        let p = Placement::contiguous(&spec, &devs);
        let counts: Vec<usize> = devs.iter().map(|d| p.experts_on(1, *d).len()).collect();
        assert_eq!(counts, vec![11, 11, 11, 11, 10, 10]);
        assert_eq!(p.max_per_device(), 11);
        assert_eq!(p.holders(1, 0), &[devs[0]]);
        assert_eq!(p.holders(1, 63), &[devs[5]]);
        assert!(p.holders(0, 0).is_empty(), "layer 0 is dense");
    }
}
