//! Per-device accounting: used, free and peak bytes, and a first-fit arena over the device's
//! linear `[0, capacity)` space so every allocation has a place on a memory map.
//!
//! The arena works in granules. Capacity checks are by totals: when no single hole is big enough
//! an allocation takes several extents, as VMM physical pages need no contiguity.

use std::collections::BTreeMap;

use super::error::HmmError;
use super::types::Usage;
use crate::backend::DeviceInfo;
use crate::device::DeviceId;

/// Free space of one device as disjoint, coalesced holes `start -> len`, in granules.
#[derive(Clone, Debug)]
pub(super) struct Arena {
    holes: BTreeMap<u64, u64>,
    free: u64,
}

impl Arena {
    pub(super) fn new(granules: u64) -> Self {
        let mut holes = BTreeMap::new();
        if granules > 0 {
            holes.insert(0, granules);
        }
        Self {
            holes,
            free: granules,
        }
    }

    /// Takes `n` granules: the first hole that holds them all, else the lowest holes in order.
    /// `None` (and nothing taken) when fewer than `n` are free.
    pub(super) fn take(&mut self, n: u64) -> Option<Vec<(u64, u64)>> {
        if n == 0 || n > self.free {
            return None;
        }
        let first_fit = self
            .holes
            .iter()
            .find(|&(_, &len)| len >= n)
            .map(|(&s, &len)| (s, len));
        let extents = match first_fit {
            Some((start, len)) => {
                self.holes.remove(&start);
                if len > n {
                    self.holes.insert(start + n, len - n);
                }
                vec![(start, n)]
            }
            None => {
                let mut extents = Vec::new();
                let mut need = n;
                while need > 0 {
                    let (start, len) = self.holes.pop_first()?;
                    let used = len.min(need);
                    if len > used {
                        self.holes.insert(start + used, len - used);
                    }
                    extents.push((start, used));
                    need -= used;
                }
                extents
            }
        };
        self.free -= n;
        Some(extents)
    }

    /// Returns extents taken earlier, merging them with neighbouring holes.
    pub(super) fn give(&mut self, extents: &[(u64, u64)]) {
        for &(start, len) in extents {
            let mut s = start;
            let mut l = len;
            if let Some((&ps, &pl)) = self.holes.range(..start).next_back()
                && ps + pl == start
            {
                self.holes.remove(&ps);
                s = ps;
                l += pl;
            }
            if let Some(nl) = self.holes.remove(&(start + len)) {
                l += nl;
            }
            self.holes.insert(s, l);
            self.free += len;
        }
    }

    #[cfg(test)]
    pub(super) fn holes(&self) -> Vec<(u64, u64)> {
        self.holes.iter().map(|(&s, &l)| (s, l)).collect()
    }
}

/// The books of one device.
#[derive(Clone, Debug)]
pub(super) struct DeviceAccount {
    pub(super) id: DeviceId,
    capacity: u64,
    /// Never zero, so rounding cannot divide by zero whatever a backend reports.
    granule: u64,
    used: u64,
    peak: u64,
    arena: Arena,
}

impl DeviceAccount {
    pub(super) fn new(info: &DeviceInfo) -> Self {
        let granule = info.granularity.max(1);
        Self {
            id: info.id,
            capacity: info.capacity,
            granule,
            used: 0,
            peak: 0,
            arena: Arena::new(info.capacity / granule),
        }
    }

    pub(super) fn usage(&self) -> Usage {
        Usage {
            capacity: self.capacity,
            used: self.used,
            free: self.capacity - self.used,
            peak: self.peak,
        }
    }

    pub(super) fn reset_peak(&mut self) {
        self.peak = self.used;
    }

    /// `bytes` rounded up to the granularity; the rounded size is what counts.
    pub(super) fn round_up(&self, what: &'static str, bytes: u64) -> Result<u64, HmmError> {
        bytes
            .checked_next_multiple_of(self.granule)
            .ok_or(HmmError::TooLarge { what, bytes })
    }

    fn out_of_memory(&self, need: u64) -> HmmError {
        HmmError::OutOfMemory {
            device: self.id,
            need,
            free: self.capacity - self.used,
        }
    }

    /// Whether `bytes` (rounded) would fit now, without taking them.
    pub(super) fn check_fits(&self, bytes: u64) -> Result<u64, HmmError> {
        let need = self.round_up("allocation", bytes)?;
        // A capacity that is not a whole number of granules leaves a tail nobody can use.
        if need > self.capacity - self.used || need / self.granule > self.arena.free {
            return Err(self.out_of_memory(need));
        }
        Ok(need)
    }

    /// Takes `size` bytes (already rounded): byte extents, sorted by offset.
    pub(super) fn take(&mut self, size: u64) -> Result<Vec<(u64, u64)>, HmmError> {
        self.check_fits(size)?;
        let g = self.granule;
        let extents = self
            .arena
            .take(size / g)
            .ok_or_else(|| self.out_of_memory(size))?;
        self.used += size;
        self.peak = self.peak.max(self.used);
        Ok(extents.into_iter().map(|(s, l)| (s * g, l * g)).collect())
    }

    /// Gives back what [`take`](Self::take) returned.
    pub(super) fn give(&mut self, size: u64, extents: &[(u64, u64)]) {
        let g = self.granule;
        let granules: Vec<_> = extents.iter().map(|&(s, l)| (s / g, l / g)).collect();
        self.arena.give(&granules);
        self.used -= size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_then_extents_when_fragmented() {
        let mut a = Arena::new(10);
        let x = a.take(3).unwrap();
        let y = a.take(3).unwrap();
        let z = a.take(3).unwrap();
        assert_eq!(
            (x.clone(), y, z.clone()),
            (vec![(0, 3)], vec![(3, 3)], vec![(6, 3)])
        );
        a.give(&x);
        a.give(&z);
        assert_eq!(a.holes(), vec![(0, 3), (6, 4)]);
        // No single hole of 5: takes the lowest holes in order.
        assert_eq!(a.take(5).unwrap(), vec![(0, 3), (6, 2)]);
        assert_eq!(a.holes(), vec![(8, 2)]);
        assert!(a.take(3).is_none(), "only 2 free");
        assert_eq!(a.holes(), vec![(8, 2)], "a refused take changes nothing");
    }

    #[test]
    fn give_coalesces_both_sides() {
        let mut a = Arena::new(6);
        let p = a.take(2).unwrap();
        let q = a.take(2).unwrap();
        let r = a.take(2).unwrap();
        a.give(&p);
        a.give(&r);
        a.give(&q);
        assert_eq!(a.holes(), vec![(0, 6)]);
    }

    #[test]
    fn account_counts_rounded_bytes_and_peak() {
        let info = DeviceInfo {
            id: DeviceId::new(0, 3),
            name: "t".into(),
            capacity: 16 * 4096,
            granularity: 4096,
        };
        let mut acc = DeviceAccount::new(&info);
        let need = acc.check_fits(5000).unwrap();
        assert_eq!(need, 8192);
        let e = acc.take(need).unwrap();
        assert_eq!(e, vec![(0, 8192)]);
        acc.give(need, &e);
        assert_eq!(acc.usage().used, 0);
        assert_eq!(acc.usage().peak, 8192);
        acc.reset_peak();
        assert_eq!(acc.usage().peak, 0);
        let err = acc.check_fits(17 * 4096).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not enough memory on device 0/3: need 69632 bytes, have 65536 free"
        );
        assert!(matches!(
            acc.round_up("allocation", u64::MAX),
            Err(HmmError::TooLarge { .. })
        ));
    }
}
