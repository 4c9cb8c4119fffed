//! Mask audit: how a method's MLP neuron mask agrees with the reference masks at the same
//! target sparsity, per layer — TEAL's down-input mask (|h| > t), CATS's gate mask
//! (|silu(g)| > t) and the CETT oracle (the neurons of largest |h_i|·||Wd[:,i]||). The
//! references are taken on the dense MLP of the same input, so an audited position costs a
//! dense gate and up on top of the method: audits run on sampled positions, off the timed
//! path.

use serde::Serialize;

use crate::error::Result;
use crate::profile::Profile;
use crate::sparsity::{Method, Proj, check_target, rank_by_importance};

/// The reference masks a method is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reference {
    Teal,
    Cats,
    Cett,
}

impl Reference {
    /// Every reference, in report order.
    pub const ALL: [Reference; 3] = [Reference::Teal, Reference::Cats, Reference::Cett];
}

/// Confusion counts of a predicted mask against a reference (true = neuron kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Agreement {
    pub both: u64,
    pub only_method: u64,
    pub only_reference: u64,
    pub neither: u64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

impl Agreement {
    /// Kept by the reference and by the method, over kept by the reference.
    pub fn recall(&self) -> f64 {
        ratio(self.both, self.both + self.only_reference)
    }
    /// Kept by both, over kept by the method.
    pub fn precision(&self) -> f64 {
        ratio(self.both, self.both + self.only_method)
    }
    /// Harmonic mean of recall and precision.
    pub fn f1(&self) -> f64 {
        ratio(2 * self.both, 2 * self.both + self.only_method + self.only_reference)
    }
    /// Intersection over union of the kept sets.
    pub fn jaccard(&self) -> f64 {
        ratio(self.both, self.both + self.only_method + self.only_reference)
    }
    fn add(&mut self, method: bool, reference: bool) {
        match (method, reference) {
            (true, true) => self.both += 1,
            (true, false) => self.only_method += 1,
            (false, true) => self.only_reference += 1,
            (false, false) => self.neither += 1,
        }
    }
    /// Sum of two counts.
    pub fn merged(&self, o: &Agreement) -> Agreement {
        Agreement {
            both: self.both + o.both,
            only_method: self.only_method + o.only_method,
            only_reference: self.only_reference + o.only_reference,
            neither: self.neither + o.neither,
        }
    }
}

/// Accumulated agreement per layer and reference.
#[derive(Debug, Clone)]
pub struct MaskAudit {
    /// Target sparsity the references are taken at.
    pub target: f32,
    teal_t: Vec<f32>,
    cats_t: Vec<f32>,
    cett_keep: usize,
    norms: Vec<Vec<f32>>,
    /// `agreement[layer][reference]`.
    pub agreement: Vec<[Agreement; 3]>,
    /// Positions audited.
    pub positions: usize,
    order: Vec<u32>,
    kept: Vec<bool>,
}

impl MaskAudit {
    /// References at `target` from the calibration profile.
    pub fn new(profile: &Profile, target: f32) -> Result<Self> {
        check_target(target)?;
        let layers = profile.quantiles.len();
        let teal = profile.plan(Method::TealUniform, target)?;
        let cats = profile.plan(Method::Cats, target)?;
        let cett = profile.plan(Method::Cett, target)?;
        Ok(Self {
            target,
            teal_t: teal.layers.iter().map(|l| l.proj[Proj::Down.index()]).collect(),
            cats_t: cats.layers.iter().map(|l| l.gate_act).collect(),
            cett_keep: cett.layers.first().map_or(0, |l| l.cett_keep),
            norms: profile.down_col_norms.clone(),
            agreement: vec![[Agreement::default(); 3]; layers],
            positions: 0,
            order: Vec::new(),
            kept: Vec::new(),
        })
    }

    /// Adds one layer's positions: `method_h` is the down input the method produced (zero =
    /// dropped) and `method_t` the threshold its down projection applies to it (0 when the
    /// method drops by zeroing); `act` and `h` are silu(g) and h of the dense MLP.
    pub fn add(&mut self, layer: usize, method_h: &[f32], method_t: f32, act: &[f32], h: &[f32]) {
        let Some(norms) = self.norms.get(layer) else { return };
        let width = norms.len();
        if width == 0 || method_h.len() != h.len() || act.len() != h.len() {
            return;
        }
        let (teal_t, cats_t) = (self.teal_t[layer], self.cats_t[layer]);
        for ((mh, a), hh) in method_h.chunks_exact(width).zip(act.chunks_exact(width)).zip(h.chunks_exact(width)) {
            let keep = self.cett_keep.min(width);
            rank_by_importance(hh, norms, keep, &mut self.order);
            self.kept.clear();
            self.kept.resize(width, false);
            for &i in &self.order[..keep] {
                self.kept[i as usize] = true;
            }
            let agree = &mut self.agreement[layer];
            for i in 0..width {
                let m = mh[i].abs() > method_t;
                agree[0].add(m, hh[i].abs() > teal_t);
                agree[1].add(m, a[i].abs() > cats_t);
                agree[2].add(m, self.kept[i]);
            }
            if layer == 0 {
                self.positions += 1;
            }
        }
    }

    /// Agreement with `r` over all layers.
    pub fn overall(&self, r: Reference) -> Agreement {
        let i = Reference::ALL.iter().position(|&x| x == r).unwrap_or(0);
        self.agreement.iter().fold(Agreement::default(), |acc, a| acc.merged(&a[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_metrics() {
        let mut a = Agreement::default();
        for (m, r) in [(true, true), (true, true), (true, false), (false, true), (false, false)] {
            a.add(m, r);
        }
        assert!((a.recall() - 2.0 / 3.0).abs() < 1e-12);
        assert!((a.precision() - 2.0 / 3.0).abs() < 1e-12);
        assert!((a.f1() - 2.0 / 3.0).abs() < 1e-12);
        assert!((a.jaccard() - 0.5).abs() < 1e-12);
    }
}
