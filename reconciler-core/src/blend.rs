//! A rollout in the slot table: while the daemon rolls out a change of a service's backends
//! (`spec.rollout`), the service's weights are its share of each backend of the new revision
//! and of the previous one, `percent` of new connections to the new set, the rest to the old,
//! each set by its own weights. Both algorithms take the blended weights: `random` as its
//! slots' shares, `maglev` as its table's.
use std::collections::BTreeMap;

/// A backend that takes clients: its ID, address and weight (as `compile` lays them out).
type Chosen = (u32, std::net::SocketAddr, u32);

/// Slots the blended weights of a service add up to (about), at least: shares in steps of
/// 0.1%.
const RESOLUTION: f64 = 1000.0;
/// At most: a rolling service's slots count against the node's capacity while it rolls.
const MOST: f64 = 10_000.0;

/// `chosen` (the new revision's backends that take clients) blended with `previous` (the
/// old one's, with their IDs in this service) at `percent`: each backend's weight its share
/// of both, in thousandths (at least 1 for a share above 0). Without backends on one side,
/// the other takes everything.
pub(crate) fn apply(chosen: &mut Vec<Chosen>, previous: &[Chosen], percent: u8) {
    let total = |set: &[Chosen]| set.iter().map(|c| f64::from(c.2)).sum::<f64>();
    let (new_total, old_total) = (total(chosen), total(previous));
    if old_total == 0.0 {
        return;
    }
    let new_part = if new_total == 0.0 { 0.0 } else { f64::from(percent.min(100)) / 100.0 };
    // 100 slots per old weight: at 99% for the new set each old backend keeps as many slots
    // as it had, so the first slots stay the old revision's throughout (an ended rollout is
    // laid out from them, as a direct apply from the old revision would be).
    let resolution = (100.0 * old_total).clamp(RESOLUTION, MOST);
    let mut shares: BTreeMap<u32, (std::net::SocketAddr, f64)> = BTreeMap::new();
    let mut order = Vec::new();
    for (set, part, set_total) in
        [(&chosen[..], new_part, new_total), (previous, 1.0 - new_part, old_total)]
    {
        for &(id, addr, weight) in set {
            let share = part * f64::from(weight) / set_total.max(1.0);
            let entry = shares.entry(id).or_insert_with(|| {
                order.push(id);
                (addr, 0.0)
            });
            entry.1 += share;
        }
    }
    *chosen = order
        .into_iter()
        .filter_map(|id| {
            let (addr, share) = shares[&id];
            let weight = (share * resolution).round() as u32;
            (share > 0.0).then_some((id, addr, weight.max(1)))
        })
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u32]) -> Vec<Chosen> {
        let addr = |id: u32| format!("10.1.0.{id}:80").parse().unwrap();
        ids.iter().map(|&id| (id, addr(id), 1)).collect()
    }

    #[test]
    fn the_new_set_takes_its_percentage_and_a_backend_in_both_its_share_of_each() {
        // Old {1, 2}, new {2, 3} at 25%: 1 has 37.5%, 2 has 37.5% + 12.5%, 3 has 12.5%.
        let mut chosen = set(&[2, 3]);
        apply(&mut chosen, &set(&[1, 2]), 25);
        let weights: Vec<(u32, u32)> = chosen.iter().map(|c| (c.0, c.2)).collect();
        assert_eq!(weights, [(2, 500), (3, 125), (1, 375)]);
        // Large old sets: 100 slots per old weight, each old backend its old weight at 99%.
        let mut heavy: Vec<Chosen> = set(&[9]);
        let old: Vec<Chosen> = set(&[1, 2]).into_iter().map(|(i, a, _)| (i, a, 10)).collect();
        apply(&mut heavy, &old, 99);
        assert_eq!(
            heavy.iter().map(|c| (c.0, c.2)).collect::<Vec<_>>(),
            [(9, 1980), (1, 10), (2, 10)]
        );
        // Nothing new takes clients: the old set keeps everything.
        let mut none = Vec::new();
        apply(&mut none, &set(&[1]), 50);
        assert_eq!(none.iter().map(|c| (c.0, c.2)).collect::<Vec<_>>(), [(1, 1000)]);
        // At 100% the old set's backends have no share and no slot.
        let mut all = set(&[3]);
        apply(&mut all, &set(&[1]), 100);
        assert_eq!(all.iter().map(|c| (c.0, c.2)).collect::<Vec<_>>(), [(3, 1000)]);
    }
}
