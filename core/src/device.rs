//! Device and node identities. Every structure is cluster-wide: a device is always named
//! `node/index`, even on a single-node host backend.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One accelerator (or one virtual device of the host backend), named `node/index`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct DeviceId {
    pub node: u32,
    pub index: u32,
}

impl DeviceId {
    pub const fn new(node: u32, index: u32) -> Self {
        Self { node, index }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.index)
    }
}

/// Why a device name did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device name `{value}` is not of the form NODE/INDEX with whole numbers (e.g. `0/3`)")]
pub struct DeviceIdError {
    pub value: String,
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    /// Accepts `node/index`, or a bare `index` meaning node 0.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DeviceIdError {
            value: s.to_string(),
        };
        let t = s.trim();
        match t.split_once('/') {
            Some((n, i)) => Ok(Self::new(
                n.parse().map_err(|_| err())?,
                i.parse().map_err(|_| err())?,
            )),
            None => Ok(Self::new(0, t.parse().map_err(|_| err())?)),
        }
    }
}

impl Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d: DeviceId = "2/13".parse().unwrap();
        assert_eq!(d, DeviceId::new(2, 13));
        assert_eq!(d.to_string(), "2/13");
        assert_eq!("5".parse::<DeviceId>().unwrap(), DeviceId::new(0, 5));
        let e = "a/1".parse::<DeviceId>().unwrap_err();
        assert!(e.to_string().contains("`a/1`"));
        assert!("1/".parse::<DeviceId>().is_err());
        assert_eq!(
            serde_json::to_string(&DeviceId::new(0, 3)).unwrap(),
            "\"0/3\""
        );
    }
}
