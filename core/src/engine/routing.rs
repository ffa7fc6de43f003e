//! Expert choice and weights for one token, as the reference computes them for each family:
//! score (softmax or sigmoid of the router logits), choose (top-k, optionally among the best
//! groups, optionally on bias-corrected scores), weight (the chosen scores, optionally divided
//! by their sum, times the scaling factor).

use super::math;
use crate::model::{GroupRank, Routing, Scoring};

/// The routing rule of a model, in the engine's types.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub top_k: usize,
    pub scoring: Scoring,
    pub correction_bias: bool,
    pub groups: Option<(usize, usize)>,
    pub group_rank: GroupRank,
    pub normalize: bool,
    pub scaling: f32,
}

impl Rule {
    pub fn new(r: &Routing, top_k: u32) -> Self {
        Self {
            top_k: top_k as usize,
            scoring: r.scoring,
            correction_bias: r.correction_bias,
            groups: r.groups.map(|(n, k)| (n as usize, k as usize)),
            group_rank: r.group_rank,
            normalize: r.normalize,
            scaling: r.scaling_factor as f32,
        }
    }

    /// The chosen experts of one token and their weights, from its router `logits` (one per
    /// expert; overwritten with the scores) and the correction `bias` where the rule has one.
    pub fn route(&self, logits: &mut [f32], bias: Option<&[f32]>) -> Vec<(usize, f32)> {
        match self.scoring {
            Scoring::Softmax => math::softmax(logits),
            Scoring::Sigmoid => {
                for v in logits.iter_mut() {
                    *v = 1.0 / (1.0 + (-*v).exp());
                }
            }
        }
        let scores: &[f32] = logits;
        let choice: Vec<f32> = match bias {
            Some(b) if self.correction_bias => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
            _ => scores.to_vec(),
        };
        let chosen = match self.groups {
            None => math::top_k(&choice, self.top_k),
            Some((groups, kept)) => match self.group_rank {
                GroupRank::Max => math::group_limited_top_k(&choice, self.top_k, groups, kept),
                GroupRank::TopTwoSum => noaux_tc_top_k(&choice, self.top_k, groups, kept),
            },
        };
        let mut picked: Vec<(usize, f32)> = chosen.into_iter().map(|x| (x, scores[x])).collect();
        if self.normalize {
            let sum: f32 = picked.iter().map(|(_, w)| w).sum();
            // DeepSeek-V3 adds 1e-20 to the sum; below f32's resolution of any real sum.
            if sum > 0.0 {
                for (_, w) in &mut picked {
                    *w /= sum;
                }
            }
        }
        for (_, w) in &mut picked {
            *w *= self.scaling;
        }
        picked
    }
}

/// DeepSeek-V3's `noaux_tc` choice: groups ranked by the sum of their two best scores, the
/// `kept` best kept; the other experts' scores are set to −∞ (as the reference does) and top-k
/// taken over all.
fn noaux_tc_top_k(x: &[f32], k: usize, groups: usize, kept: usize) -> Vec<usize> {
    let size = (x.len() / groups.max(1)).max(1);
    let rank: Vec<f32> = x
        .chunks(size)
        .map(|g| {
            let t = math::top_k(g, 2);
            t.iter().map(|&i| g[i]).sum()
        })
        .collect();
    let keep = math::top_k(&rank, kept);
    let masked: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if keep.contains(&(i / size)) {
                *v
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    math::top_k(&masked, k)
}
