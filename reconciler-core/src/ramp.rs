//! Slow start in the slot table: while backends of a `random` service ramp up (the daemon's
//! overlay, recorded in `HEALTH_EXCLUDED` as `exclusion::RAMP`), every weight of the service
//! is multiplied by a scale and a ramping backend's by its share of it, so that 5% of a
//! backend of weight 1 needs no fraction of a slot. A weighted random choice over the slots
//! then gives each ramping backend its share of its weight's share.
use std::{collections::BTreeMap, net::SocketAddr};

use reconciler_common::MAX_SLOTS_PER_SERVICE;

use crate::state::Exclusion;

/// The scale while a service ramps: shares in steps of 5%.
pub const SCALE: u64 = 20;

/// A backend's share of its weight while it ramps, in thousandths (`1..1000`).
pub type Permille = u16;

/// The weights of `chosen` (ID, address, weight) of the service labelled `label` with the
/// ramps of `ramps` applied: every weight times the scale, a ramping backend's times its
/// share. The scale is [`SCALE`], less where the slots would not fit one service
/// (`MAX_SLOTS_PER_SERVICE`); below 2 nothing ramps. Returns the ramps applied.
pub(crate) fn apply(
    chosen: &mut [(u32, SocketAddr, u32)],
    label: &str,
    ramps: &BTreeMap<Exclusion, Permille>,
) -> Vec<(SocketAddr, Permille)> {
    let ramp_of = |addr: SocketAddr| ramps.get(&(label.to_owned(), addr)).copied();
    if ramps.is_empty() || !chosen.iter().any(|&(_, addr, _)| ramp_of(addr).is_some()) {
        return Vec::new();
    }
    let total: u64 = chosen.iter().map(|&(_, _, weight)| u64::from(weight)).sum();
    let scale = SCALE.min(u64::from(MAX_SLOTS_PER_SERVICE) / total.max(1));
    if scale < 2 {
        return Vec::new();
    }
    let mut applied = Vec::new();
    for (_, addr, weight) in chosen.iter_mut() {
        let scaled = u64::from(*weight) * scale;
        *weight = match ramp_of(*addr) {
            Some(permille) if scaled > 0 => {
                applied.push((*addr, permille));
                (scaled * u64::from(permille) / 1000).max(1) as u32
            }
            _ => scaled as u32,
        };
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(weights: &[u32]) -> Vec<(u32, SocketAddr, u32)> {
        let addr = |i: usize| format!("10.1.0.{i}:80").parse().unwrap();
        weights.iter().enumerate().map(|(i, w)| (i as u32, addr(i), *w)).collect()
    }

    #[test]
    fn a_ramping_backend_gets_its_share_of_its_weight_in_scaled_slots() {
        let mut chosen = backends(&[1, 1, 1]);
        let ramps = BTreeMap::from([(("web/http".to_owned(), chosen[2].1), 250)]);
        let applied = apply(&mut chosen, "web/http", &ramps);
        assert_eq!(applied, [(chosen[2].1, 250)]);
        let weights: Vec<u32> = chosen.iter().map(|c| c.2).collect();
        assert_eq!(weights, [20, 20, 5]);
        // The smallest share is one slot; another service's ramps change nothing.
        let mut small = backends(&[1, 1]);
        let tiny = BTreeMap::from([(("web/http".to_owned(), small[1].1), 1)]);
        apply(&mut small, "web/http", &tiny);
        assert_eq!(small[1].2, 1);
        let mut other = backends(&[1, 1]);
        assert!(apply(&mut other, "db/sql", &tiny).is_empty());
        assert_eq!(other.iter().map(|c| c.2).collect::<Vec<_>>(), [1, 1]);
    }

    #[test]
    fn the_scale_shrinks_to_fit_the_slots_and_a_service_too_large_does_not_ramp() {
        let mut chosen = backends(&[10_000, 10_000]);
        let ramps = BTreeMap::from([(("s/p".to_owned(), chosen[1].1), 500)]);
        apply(&mut chosen, "s/p", &ramps);
        assert_eq!((chosen[0].2, chosen[1].2), (30_000, 15_000));
        let mut huge = backends(&[40_000, 1]);
        let ramps = BTreeMap::from([(("s/p".to_owned(), huge[1].1), 500)]);
        assert!(apply(&mut huge, "s/p", &ramps).is_empty());
        assert_eq!((huge[0].2, huge[1].2), (40_000, 1));
    }
}
