//! KV blocks per device. A replica's request holds the same block ids on every device of its TP
//! group, so a block is taken only where it is free on all of them. Kept devices keep their
//! books across a switchover: their KV allocation is the same memory in both instances.

use std::collections::{BTreeMap, BTreeSet};

use emoe_core::DeviceId;

#[derive(Debug)]
pub struct KvBlocks {
    blocks: u32,
    free: BTreeMap<DeviceId, BTreeSet<u32>>,
}

impl KvBlocks {
    /// Books for devices whose KV cache holds `blocks` blocks each.
    pub fn new(blocks: u32) -> Self {
        Self {
            blocks,
            free: BTreeMap::new(),
        }
    }

    pub fn blocks_per_device(&self) -> u32 {
        self.blocks
    }

    /// Start books for `device` (all blocks free) unless it has them already.
    pub fn add_device(&mut self, device: DeviceId) {
        self.free
            .entry(device)
            .or_insert_with(|| (0..self.blocks).collect());
    }

    /// Forget devices not in `keep` (released with their instance).
    pub fn retain_devices(&mut self, keep: &[DeviceId]) {
        self.free.retain(|d, _| keep.contains(d));
    }

    /// `n` block ids free on every device of `group`, lowest first, taken on all of them; `None`
    /// (and nothing taken) when there are not enough.
    pub fn take(&mut self, group: &[DeviceId], n: usize) -> Option<Vec<u32>> {
        let (first, rest) = group.split_first()?;
        let candidates = self.free.get(first)?;
        let mut picked = Vec::with_capacity(n);
        for b in candidates {
            if picked.len() == n {
                break;
            }
            if rest
                .iter()
                .all(|d| self.free.get(d).is_some_and(|f| f.contains(b)))
            {
                picked.push(*b);
            }
        }
        if picked.len() < n {
            return None;
        }
        for d in group {
            if let Some(f) = self.free.get_mut(d) {
                for b in &picked {
                    f.remove(b);
                }
            }
        }
        Some(picked)
    }

    /// Give `blocks` back on every device of `group` that still has books.
    pub fn give(&mut self, group: &[DeviceId], blocks: &[u32]) {
        for d in group {
            if let Some(f) = self.free.get_mut(d) {
                f.extend(blocks.iter().copied());
            }
        }
    }

    /// Free blocks on the device with the fewest.
    pub fn free_in(&self, group: &[DeviceId]) -> usize {
        group
            .iter()
            .map(|d| self.free.get(d).map_or(0, BTreeSet::len))
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_taken_where_free_on_the_whole_group() {
        let (a, b) = (DeviceId::new(0, 0), DeviceId::new(0, 1));
        let mut kv = KvBlocks::new(4);
        kv.add_device(a);
        kv.add_device(b);
        assert_eq!(kv.take(&[a], 1), Some(vec![0]));
        assert_eq!(kv.take(&[a, b], 2), Some(vec![1, 2]));
        assert_eq!(kv.free_in(&[a, b]), 1);
        assert_eq!(kv.take(&[a, b], 2), None, "nothing taken on refusal");
        assert_eq!(kv.free_in(&[b]), 2);
        kv.give(&[a, b], &[1, 2]);
        assert_eq!(kv.take(&[a, b], 3), Some(vec![1, 2, 3]));
        kv.retain_devices(&[b]);
        assert_eq!(kv.take(&[a, b], 1), None);
    }
}
