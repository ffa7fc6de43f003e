//! The HMM's vocabulary: ids, region tags, allocations, views, reservations, usage.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::backend::{PhysHandle, VirtRange};
use crate::device::DeviceId;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_type!(
    /// A physical allocation (`a17`).
    AllocId,
    "a"
);
id_type!(
    /// A reservation: one contiguous virtual range of slots (`r3`).
    ReservationId,
    "r"
);
id_type!(
    /// One instance's mapping of HMM memory (`v1`).
    ViewId,
    "v"
);

/// Which weight group an allocation belongs to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionKind {
    /// Attention, dense layers, embeddings: this device's TP shard.
    NonExpert,
    /// One expert of one MoE layer.
    Expert,
    /// KV-cache blocks.
    Kv,
}

impl RegionKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NonExpert => "non_expert",
            Self::Expert => "expert",
            Self::Kv => "kv",
        }
    }
}

impl fmt::Display for RegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an allocation holds, for memory maps and placement.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct RegionTag {
    pub kind: RegionKind,
    pub layer: Option<u32>,
    pub expert: Option<u32>,
}

impl RegionTag {
    pub const fn non_expert(layer: Option<u32>) -> Self {
        Self {
            kind: RegionKind::NonExpert,
            layer,
            expert: None,
        }
    }

    pub const fn expert(layer: u32, expert: u32) -> Self {
        Self {
            kind: RegionKind::Expert,
            layer: Some(layer),
            expert: Some(expert),
        }
    }

    pub const fn kv(layer: Option<u32>) -> Self {
        Self {
            kind: RegionKind::Kv,
            layer,
            expert: None,
        }
    }
}

impl fmt::Display for RegionTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())?;
        if let Some(l) = self.layer {
            write!(f, " L{l}")?;
        }
        if let Some(e) = self.expert {
            write!(f, " E{e}")?;
        }
        Ok(())
    }
}

/// Byte-exact memory account of one device. `free = capacity - used`; `peak` is the highest
/// `used` since the last reset.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Usage {
    pub capacity: u64,
    pub used: u64,
    pub free: u64,
    pub peak: u64,
}

/// A physical allocation owned by the HMM.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Allocation {
    pub id: AllocId,
    pub device: DeviceId,
    /// Bytes held: `len` rounded up to the device granularity. This is what accounting counts.
    pub size: u64,
    /// Bytes asked for; reads, writes, copies and checksums cover these, so padding never
    /// changes a checksum.
    pub len: u64,
    pub tag: RegionTag,
    /// Places in the device's linear `[0, capacity)` space, by offset, disjoint, summing to
    /// `size`. Several when no single hole was big enough (VMM pages need no contiguity).
    pub extents: Vec<(u64, u64)>,
    /// How many reservation slots map this allocation.
    pub mappings: u32,
    pub handle: PhysHandle,
}

impl Allocation {
    /// Offset of the first extent in the device's linear space.
    pub fn offset(&self) -> u64 {
        self.extents.first().map_or(0, |e| e.0)
    }
}

/// One slot of a reservation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Slot {
    /// Offset from the reservation base.
    pub offset: u64,
    /// Granule-rounded size.
    pub size: u64,
    pub mapped: Option<AllocId>,
}

/// A contiguous virtual range on one device, laid out as slots back to back.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Reservation {
    pub id: ReservationId,
    pub view: ViewId,
    pub device: DeviceId,
    pub range: VirtRange,
    pub slots: Vec<Slot>,
}

impl Reservation {
    /// The address of slot `i`, when it exists.
    pub fn slot_addr(&self, i: usize) -> Option<u64> {
        self.slots.get(i).map(|s| self.range.base + s.offset)
    }
}

/// One instance's mapping of HMM memory: a name and its reservations.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct View {
    pub id: ViewId,
    pub name: String,
    /// In creation order.
    pub reservations: Vec<ReservationId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_tags_print_and_serialize() {
        assert_eq!(AllocId(17).to_string(), "a17");
        assert_eq!(ReservationId(3).to_string(), "r3");
        assert_eq!(ViewId(1).to_string(), "v1");
        assert_eq!(serde_json::to_string(&AllocId(4)).unwrap(), "4");
        let t = RegionTag::expert(2, 7);
        assert_eq!(t.to_string(), "expert L2 E7");
        let j = serde_json::to_string(&t).unwrap();
        assert_eq!(j, r#"{"kind":"expert","layer":2,"expert":7}"#);
        let k: RegionKind = serde_json::from_str("\"non_expert\"").unwrap();
        assert_eq!(k, RegionKind::NonExpert);
        assert_eq!(serde_json::to_string(&RegionKind::Kv).unwrap(), "\"kv\"");
    }
}
