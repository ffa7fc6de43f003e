//! Parallel configurations `DP×TP×EP` with `EP = DP × TP`. TP stays fixed while scaling.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A data-, tensor- and expert-parallel configuration. Always valid once constructed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ParallelConfig {
    dp: u32,
    tp: u32,
    ep: u32,
}

/// Why a parallel configuration was refused. Each names the rule and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParallelConfigError {
    #[error(
        "parallel config `{value}` is not of the form dpNtpNepN (e.g. `dp2tp4ep8`, `DP2-TP4-EP8`)"
    )]
    Syntax { value: String },
    #[error("parallel config `{value}`: {field} must be at least 1, got {got}")]
    Zero {
        value: String,
        field: &'static str,
        got: u32,
    },
    #[error(
        "parallel config `{value}`: {field} value `{got}` is not a whole number that fits in 32 bits"
    )]
    Number {
        value: String,
        field: &'static str,
        got: String,
    },
    #[error(
        "parallel config `{value}` breaks the rule EP = DP × TP: {dp} × {tp} = {product}, not {ep}"
    )]
    EpMismatch {
        value: String,
        dp: u32,
        tp: u32,
        ep: u32,
        product: u64,
    },
}

impl ParallelConfig {
    /// Build a config, checking every rule.
    pub fn new(dp: u32, tp: u32, ep: u32) -> Result<Self, ParallelConfigError> {
        let value = format!("dp{dp}tp{tp}ep{ep}");
        Self::check(&value, dp, tp, ep)
    }

    /// The config with `dp` data-parallel groups of tensor-parallel size `tp`.
    pub fn from_dp_tp(dp: u32, tp: u32) -> Result<Self, ParallelConfigError> {
        let ep = u64::from(dp) * u64::from(tp);
        let ep = u32::try_from(ep).map_err(|_| ParallelConfigError::EpMismatch {
            value: format!("dp{dp}tp{tp}"),
            dp,
            tp,
            ep: u32::MAX,
            product: ep,
        })?;
        Self::new(dp, tp, ep)
    }

    fn check(value: &str, dp: u32, tp: u32, ep: u32) -> Result<Self, ParallelConfigError> {
        for (field, got) in [("DP", dp), ("TP", tp), ("EP", ep)] {
            if got == 0 {
                return Err(ParallelConfigError::Zero {
                    value: value.to_string(),
                    field,
                    got,
                });
            }
        }
        let product = u64::from(dp) * u64::from(tp);
        if product != u64::from(ep) {
            return Err(ParallelConfigError::EpMismatch {
                value: value.to_string(),
                dp,
                tp,
                ep,
                product,
            });
        }
        Ok(Self { dp, tp, ep })
    }

    pub const fn dp(self) -> u32 {
        self.dp
    }
    pub const fn tp(self) -> u32 {
        self.tp
    }
    pub const fn ep(self) -> u32 {
        self.ep
    }
    /// Devices the config occupies (= EP).
    pub const fn devices(self) -> u32 {
        self.ep
    }
    /// The TP rank of the `i`-th device of the config (devices are grouped by DP replica).
    pub const fn tp_rank(self, i: u32) -> u32 {
        i % self.tp
    }
    /// The DP rank of the `i`-th device of the config.
    pub const fn dp_rank(self, i: u32) -> u32 {
        i / self.tp
    }
}

impl fmt::Display for ParallelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dp{}tp{}ep{}", self.dp, self.tp, self.ep)
    }
}

impl FromStr for ParallelConfig {
    type Err = ParallelConfigError;

    /// Case-insensitive `dpNtpNepN`; dashes, underscores or spaces between the parts are allowed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = s.trim().to_string();
        let syntax = || ParallelConfigError::Syntax {
            value: value.clone(),
        };
        let lower = value.to_ascii_lowercase();
        let mut rest = lower.as_str();
        let mut nums = [0u32; 3];
        for (i, (key, field)) in [("dp", "DP"), ("tp", "TP"), ("ep", "EP")]
            .iter()
            .enumerate()
        {
            if i > 0 {
                rest = rest.trim_start_matches(['-', '_', ' ']);
            }
            rest = rest.strip_prefix(key).ok_or_else(syntax)?;
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let digits = &rest[..end];
            if digits.is_empty() {
                return Err(syntax());
            }
            nums[i] = digits.parse().map_err(|_| ParallelConfigError::Number {
                value: value.clone(),
                field,
                got: digits.to_string(),
            })?;
            rest = &rest[end..];
        }
        if !rest.is_empty() {
            return Err(syntax());
        }
        Self::check(&value, nums[0], nums[1], nums[2])
    }
}

impl Serialize for ParallelConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ParallelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<ParallelConfig, ParallelConfigError> {
        s.parse()
    }

    #[test]
    fn accepted_spellings() {
        let want = ParallelConfig::new(2, 4, 8).unwrap();
        for s in [
            "dp2tp4ep8",
            "DP2-TP4-EP8",
            "dp2-tp4-ep8",
            "Dp2Tp4Ep8",
            " dp2_tp4_ep8 ",
        ] {
            assert_eq!(p(s).unwrap(), want, "{s}");
        }
        assert_eq!(want.to_string(), "dp2tp4ep8");
        assert_eq!(want.devices(), 8);
        assert_eq!(want.tp_rank(5), 1);
        assert_eq!(want.dp_rank(5), 1);
    }

    #[test]
    fn every_error_names_rule_and_value() {
        let e = p("dp2tp4ep6").unwrap_err();
        assert!(matches!(
            e,
            ParallelConfigError::EpMismatch { product: 8, .. }
        ));
        let m = e.to_string();
        assert!(m.contains("EP = DP × TP") && m.contains("dp2tp4ep6") && m.contains("not 6"));

        let e = p("dp0tp2ep0").unwrap_err();
        assert!(matches!(e, ParallelConfigError::Zero { field: "DP", .. }));
        assert!(e.to_string().contains("at least 1"));

        for bad in [
            "",
            "tp2dp1ep2",
            "dp2tp2",
            "dp2tp2ep4x",
            "dpxtp2ep2",
            "dp2--tp2ep4 7",
        ] {
            let e = p(bad).unwrap_err();
            assert!(
                matches!(e, ParallelConfigError::Syntax { .. }),
                "{bad}: {e:?}"
            );
            assert!(e.to_string().contains(&format!("`{}`", bad.trim())));
        }

        let e = p("dp99999999999tp1ep1").unwrap_err();
        assert!(matches!(e, ParallelConfigError::Number { field: "DP", .. }));

        assert!(ParallelConfig::from_dp_tp(u32::MAX, 4).is_err());
    }
}
