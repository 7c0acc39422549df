//! Failover against the capacities: what a service's `fallback` can add to the maps when its
//! own backends are all down (the worst case, which `validate` counts), and what a compile
//! does when health exclusions would make fallbacks overflow the data plane anyway (the
//! services that would take a fallback fail open instead: they keep their own backends).
use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use reconciler_common::maglev;

use crate::{
    capacity::Capacity,
    compile::{
        compile_allowing, fallback_port, slots_needed, table_size, usable_backends, CompileError,
    },
    model::{Port, Service},
    state::{Algorithm, MapState, Overlay},
};

/// The most one service port can hold: slots and backend entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Need {
    pub slots: u64,
    pub backends: u64,
}

/// What `service` on `port` needs with its own backends, and at most (all of them down, the
/// first service along its `fallback` chain with backends taking over, each in turn: any
/// of them can be the one): `(own, worst)`. `lookup` finds a service by name.
pub fn worst_case<'a>(
    service: &'a Service,
    port: &Port,
    lookup: impl Fn(&str) -> Option<&'a Service>,
) -> (Need, Need) {
    let spec = &service.spec;
    let own = Need { slots: slots_needed(spec), backends: spec.backends.len() as u64 };
    let listed: BTreeSet<SocketAddr> = spec.backends.iter().map(|b| b.address_for(port)).collect();
    let mut worst = own;
    let mut visited = BTreeSet::from([service.metadata.name.as_str()]);
    let mut next = spec.fallback.as_deref();
    while let Some(other) = next.filter(|name| visited.insert(name)).and_then(&lookup) {
        let Some(other_port) = fallback_port(other, port) else { break };
        let taken: Vec<u32> = usable_backends(&other.spec)
            .into_iter()
            .map(|i| &other.spec.backends[i])
            .filter(|b| !listed.contains(&b.address_for(other_port)))
            .map(|b| b.weight)
            .collect();
        let slots = match spec.load_balancing.algorithm {
            Algorithm::Random => taken.iter().map(|&w| u64::from(w)).sum(),
            // The service's own table, grown for a fallback with more backends than slots.
            Algorithm::Maglev if taken.is_empty() => 0,
            Algorithm::Maglev => {
                let size = table_size(spec);
                let n = taken.len() as u32;
                u64::from(if size < n { maglev::default_table_size(n) } else { size })
            }
        };
        worst.slots = worst.slots.max(slots);
        worst.backends = worst.backends.max(own.backends + taken.len() as u64);
        next = other.spec.fallback.as_deref();
    }
    (own, worst)
}

/// The desired state, as [`compile`](crate::compile::compile) makes it, fitting `capacity`:
/// when the health exclusions would have fallbacks overflow it, the services taking the
/// largest fallbacks fail open instead (they keep their own backends), as few as make it
/// fit; their names are returned. Never needed for a repository `validate` passed with this
/// capacity.
pub fn compile_within<S: Borrow<Service>>(
    services: &[S],
    live: &MapState,
    overlay: &Overlay,
    capacity: &Capacity,
) -> Result<(MapState, Vec<String>), CompileError> {
    let highest = capacity.highest_ids();
    let (state, mut took) = compile_allowing(services, live, overlay, &BTreeSet::new(), highest)?;
    let Err(error) = capacity.fits(&state) else { return Ok((state, Vec::new())) };
    // Ramps and rollouts scale their services' slots: over the capacity, the backends take
    // their full weights at once instead (the daemon says so).
    if !overlay.ramps.is_empty() || !overlay.blends.is_empty() {
        let plain = Overlay { ramps: BTreeMap::new(), blends: BTreeMap::new(), ..overlay.clone() };
        return compile_within(services, live, &plain, capacity);
    }
    if took.is_empty() {
        return Err(error);
    }
    // Largest first: the fewest services that make up for the slots over the capacity; if
    // that is not enough (backend IDs), every one.
    took.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let over = state.slots.len().saturating_sub(capacity.slots as usize) as u64;
    let (mut made_up, mut few) = (0, BTreeSet::new());
    for (label, beyond) in &took {
        if made_up >= over && over > 0 {
            break;
        }
        made_up += beyond;
        few.insert(label.clone());
    }
    let all: BTreeSet<String> = took.into_iter().map(|(label, _)| label).collect();
    for open in [few, all] {
        let (state, _) = compile_allowing(services, live, overlay, &open, highest)?;
        if capacity.fits(&state).is_ok() {
            return Ok((state, open.into_iter().collect()));
        }
    }
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{capacity::DEFAULT, state::Exclusion};

    fn service(name: &str, vip: &str, backends: &[(&str, u32)], fallback: Option<&str>) -> Service {
        let backends: Vec<String> =
            backends.iter().map(|(a, w)| format!("    - {{address: {a}, weight: {w}}}")).collect();
        let fallback = fallback.map_or(String::new(), |f| format!("  fallback: {f}\n"));
        let text = format!(
            "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\n\
             spec:\n  vip: {vip}\n  ports: [{{port: 80, targetPort: 8080}}]\n{fallback}  \
             backends:\n{}\n",
            backends.join("\n")
        );
        let doc = crate::load::parse(&text).unwrap().remove(0);
        serde_json::from_value(doc.value).unwrap()
    }

    /// Sixteen services of one backend each, falling back to `dr`, one backend of `weight`.
    fn sixteen_and_dr(weight: u32) -> Vec<Service> {
        let mut services: Vec<Service> = (1..=16)
            .map(|i| {
                let name = format!("s{i}");
                service(&name, &format!("10.96.0.{i}"), &[("10.1.0.1", 1)], Some("dr"))
            })
            .collect();
        services.push(service("dr", "10.96.1.1", &[("10.2.0.1", weight)], None));
        services
    }

    #[test]
    fn the_worst_case_is_the_largest_service_along_the_fallback_chain() {
        let services = sixteen_and_dr(65_536);
        let lookup = |name: &str| services.iter().find(|s| s.metadata.name == name);
        let port = &services[0].spec.ports[0];
        let (own, worst) = worst_case(&services[0], port, lookup);
        assert_eq!(own, Need { slots: 1, backends: 1 });
        assert_eq!(worst, Need { slots: 65_536, backends: 2 });
        // dr has no fallback: its worst is its own.
        let (own, worst) = worst_case(&services[16], port, lookup);
        assert_eq!(own, worst);
    }

    #[test]
    fn fallbacks_that_would_overflow_fail_open_instead_largest_first() {
        let services = sixteen_and_dr(1_000);
        // s1..s16 share 10.1.0.1: all down at once, every one takes dr's 1 000 slots.
        let shared: SocketAddr = "10.1.0.1:8080".parse().unwrap();
        let excluded: BTreeSet<Exclusion> =
            (1..=16).map(|i| (format!("s{i}/80"), shared)).collect();
        let capacity = Capacity { slots: 10_000, ..DEFAULT };
        let excluded = Overlay { excluded, ..Overlay::default() };
        let (state, failed_open) =
            compile_within(&services, &MapState::default(), &excluded, &capacity).unwrap();
        assert!(capacity.fits(&state).is_ok());
        // 17 000 slots needed, 10 000 held: each that fails open keeps 1 slot for 1 000, so
        // 8 of the 16 do (7 would leave 10 007), and 8 fall back.
        assert_eq!(failed_open.len(), 8, "{failed_open:?}");
        assert_eq!(state.slots.len(), 8 * 1_000 + 1_000 + 8);
        // Within the capacity nothing is held back.
        let roomy = Capacity { slots: 20_000, ..DEFAULT };
        let (state, failed_open) =
            compile_within(&services, &MapState::default(), &excluded, &roomy).unwrap();
        assert!(failed_open.is_empty());
        assert_eq!(state.slots.len(), 17 * 1_000);
    }

    #[test]
    fn a_full_data_plane_takes_a_replaced_backend_and_a_moved_service() {
        // 3 services of 2 backends: full at services=4, backends=7 (IDs from 1).
        let three = |vip_of_c: &str, last_backend: &str| {
            vec![
                service("a", "10.96.0.1", &[("10.1.0.1", 1), ("10.1.0.2", 1)], None),
                service("b", "10.96.0.2", &[("10.1.0.3", 1), ("10.1.0.4", 1)], None),
                service("c", vip_of_c, &[("10.1.0.5", 1), (last_backend, 1)], None),
            ]
        };
        let capacity = Capacity { services: 4, backends: 7, ..DEFAULT };
        let none = Overlay::default();
        let full =
            compile_within(&three("10.96.0.3", "10.1.0.6"), &MapState::default(), &none, &capacity)
                .unwrap()
                .0;
        for next in [three("10.96.0.3", "10.1.0.7"), three("10.96.0.9", "10.1.0.6")] {
            let (state, _) = compile_within(&next, &full, &none, &capacity).unwrap();
            assert!(capacity.fits(&state).is_ok());
            let services: BTreeSet<u32> = state.services.values().map(|s| s.id).collect();
            assert_eq!(services, BTreeSet::from([1, 2, 3]));
            assert_eq!(state.backends.keys().copied().max(), Some(6));
        }
    }

    #[test]
    fn ramps_that_would_overflow_the_capacity_give_way_to_full_weights() {
        let services = vec![service("a", "10.96.0.1", &[("10.1.0.1", 1), ("10.1.0.2", 1)], None)];
        let joining: SocketAddr = "10.1.0.2:8080".parse().unwrap();
        let ramps = BTreeMap::from([(("a/80".to_owned(), joining), 100)]);
        let overlay = Overlay { ramps, ..Overlay::default() };
        let roomy = Capacity { slots: 100, ..DEFAULT };
        let (state, _) = compile_within(&services, &MapState::default(), &overlay, &roomy).unwrap();
        assert_eq!((state.slots.len(), state.ramps.len()), (20 + 2, 1));
        let tight = Capacity { slots: 10, ..DEFAULT };
        let (state, _) = compile_within(&services, &MapState::default(), &overlay, &tight).unwrap();
        assert_eq!((state.slots.len(), state.ramps.len()), (2, 0));
    }
}
