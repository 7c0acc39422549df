//! Lowers service definitions to the map entries the data plane needs.
//!
//! The compiler reads the live state so that an apply stays small: a frontend keeps its
//! service ID, a backend keeps its ID, and a slot keeps its backend wherever the backend
//! still has a slot to fill. Changing one backend's weight by `d` thus changes `|d|` slots
//! plus the slot count, not the whole service. A Maglev service's slots are its table
//! (`reconciler_common::maglev`), a function of its backends alone, so the diff of two tables
//! is what an apply writes: about M/N slots when one of N backends goes.
use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use reconciler_common::{maglev, MAX_BACKENDS, MAX_SERVICES, MAX_SLOTS, MAX_SLOTS_PER_SERVICE};

use crate::{
    blend,
    ids::{self, IdAllocator},
    model::{Port, Service, ServiceSpec},
    ramp,
    state::{
        excluded_of, Algorithm, BackendEntry, BackendState, Blend, Client, Exclusion, Frontend,
        MapState, Overlay, ServiceEntry,
    },
};

/// Services (VIP, port, protocol) the data plane holds: their IDs run from 1 (0 is "none" in
/// the maps) to one below the maps' size. `validate` refuses a repository over it.
pub const SERVICE_CAPACITY: u32 = MAX_SERVICES - 1;
/// Backends (per service port) the data plane holds, likewise.
pub const BACKEND_CAPACITY: u32 = MAX_BACKENDS - 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("service {service}: backend weights add up to {slots}, more than {max}")]
    TooManySlots { service: String, slots: u64, max: u32 },
    #[error("service {service}: Maglev table size {size} {problem}")]
    TableSize { service: String, size: u32, problem: &'static str },
    #[error("{what}: {count} is more than the data plane holds ({max})")]
    Capacity { what: &'static str, count: usize, max: u32 },
}

/// The backends of `spec` that take new clients, by index: the active ones of weight > 0,
/// or, while the service has none, its draining ones (Kubernetes' terminating endpoints:
/// a rolling restart never empties a service). Maintenance backends never do.
pub(crate) fn usable_backends(spec: &ServiceSpec) -> Vec<usize> {
    usable_among(spec, |_| true)
}

/// [`usable_backends`] among the backends that `healthy` (by index) keeps.
fn usable_among(spec: &ServiceSpec, healthy: impl Fn(usize) -> bool) -> Vec<usize> {
    let with = |state| {
        spec.backends
            .iter()
            .enumerate()
            .filter(|(i, b)| b.state == state && b.weight > 0 && healthy(*i))
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    let active = with(BackendState::Active);
    if active.is_empty() {
        with(BackendState::Draining)
    } else {
        active
    }
}

/// The Maglev table size of `spec`: its `tableSize`, or the smallest prime at least 100
/// times the backends it lists, in any state (so that a state change never resizes the
/// table, which would move every client).
pub(crate) fn table_size(spec: &ServiceSpec) -> u32 {
    let listed = u32::try_from(spec.backends.len()).unwrap_or(u32::MAX);
    spec.load_balancing.table_size.unwrap_or_else(|| maglev::default_table_size(listed))
}

/// The selection slots `spec` fills per port: its usable backends' weights, or its Maglev
/// table; none without a usable backend.
pub(crate) fn slots_needed(spec: &ServiceSpec) -> u64 {
    let usable = usable_backends(spec);
    match spec.load_balancing.algorithm {
        _ if usable.is_empty() => 0,
        Algorithm::Random => usable.iter().map(|&i| u64::from(spec.backends[i].weight)).sum(),
        Algorithm::Maglev => u64::from(table_size(spec)),
    }
}

/// The desired map state for `services`, every service there is, reusing IDs and slot
/// positions from `live`, with the backend addresses `excluded` taken out of every service
/// that lists them (their state `unhealthy`). `&live.health_excluded` keeps the exclusions
/// `live` records, so a plan made by hand neither undoes the daemon's health checks nor
/// shows them as drift. A service whose usable backends are all excluded keeps them all
/// instead (fails open): a health check that is wrong, or a network blip on the prober's
/// side, never empties a service by itself.
pub fn compile<S: Borrow<Service>>(
    services: &[S],
    live: &MapState,
    excluded: &BTreeSet<Exclusion>,
) -> Result<MapState, CompileError> {
    let highest = (SERVICE_CAPACITY, BACKEND_CAPACITY);
    let overlay = Overlay::recorded_in(live, excluded);
    let (state, _) = compile_allowing(services, live, &overlay, &BTreeSet::new(), highest)?;
    ids_fit(&state, highest)?;
    slot_capacity(state.slots.len())?;
    Ok(state)
}

/// The map state of some of the services of `live`, the others staying as they are there:
/// so their new IDs are ones no service of `live` uses, whatever the capacity; the caller
/// checks them (no exclusions, no fallback given way), for a node in `zone`.
pub fn compile_part<S: Borrow<Service>>(
    services: &[S],
    live: &MapState,
    zone: Option<&str>,
) -> Result<MapState, CompileError> {
    let overlay = Overlay { zone: zone.map(str::to_owned), ..Overlay::default() };
    Ok(compile_services(services, live, &overlay, &BTreeSet::new())?.0)
}

/// [`compile`], without the checks of the IDs and the slots of all services, for a data
/// plane whose highest IDs are `highest` (services, backends), the services labelled in
/// `no_fallback` failing open rather than taking their fallback's backends; with the labels
/// of the services that took a fallback's and the slots each has beyond its own.
pub(crate) fn compile_allowing<S: Borrow<Service>>(
    services: &[S],
    live: &MapState,
    overlay: &Overlay,
    no_fallback: &BTreeSet<String>,
    highest: (u32, u32),
) -> Result<(MapState, Vec<(String, u64)>), CompileError> {
    let (mut state, took) = compile_services(services, live, overlay, no_fallback)?;
    ids::reuse_freed(&mut state, highest.0, highest.1);
    Ok((state, took))
}

/// Every frontend of `services` compiled, new IDs avoiding `live`'s.
fn compile_services<S: Borrow<Service>>(
    services: &[S],
    live: &MapState,
    overlay: &Overlay,
    no_fallback: &BTreeSet<String>,
) -> Result<(MapState, Vec<(String, u64)>), CompileError> {
    let services: Vec<&Service> = services.iter().map(Borrow::borrow).collect();
    let mut compiler = Compiler::new(&services, live, overlay, no_fallback);
    for &service in &services {
        for port in &service.spec.ports {
            compiler.frontend(service, port)?;
        }
    }
    Ok(compiler.finish())
}

/// Whether the service and backend IDs of `state` are within `highest` (services, backends):
/// they index the counter arrays, so no more entries fit than the highest ID. The error
/// names the entries over it, or else the ID over it.
pub(crate) fn ids_fit(state: &MapState, highest: (u32, u32)) -> Result<(), CompileError> {
    let services = state.services.values().map(|s| s.id).max().unwrap_or(0);
    let backends = state.backends.keys().copied().max().unwrap_or(0);
    for (what, count, highest_id, max) in [
        ("services", state.services.len(), services, highest.0),
        ("backends", state.backends.len(), backends, highest.1),
    ] {
        let count = match count > max as usize {
            true => count,
            false if highest_id > max => highest_id as usize,
            false => continue,
        };
        return Err(CompileError::Capacity { what, count, max });
    }
    Ok(())
}

/// Whether a map set of `slots` selection slots fits the data plane.
pub fn slot_capacity(slots: usize) -> Result<(), CompileError> {
    if slots > MAX_SLOTS as usize {
        return Err(CompileError::Capacity { what: "slots", count: slots, max: MAX_SLOTS });
    }
    Ok(())
}

/// Whether `slots` selection slots of one service fit the data plane
/// (`MAX_SLOTS_PER_SERVICE`). The one check of that limit: `validate` makes it on the
/// definitions, `compile` on each frontend before and after laying out its slots.
pub(crate) fn service_slot_capacity(service: &str, slots: u64) -> Result<(), CompileError> {
    if slots > u64::from(MAX_SLOTS_PER_SERVICE) {
        let service = service.to_owned();
        return Err(CompileError::TooManySlots { service, slots, max: MAX_SLOTS_PER_SERVICE });
    }
    Ok(())
}

/// A backend that takes clients: its ID, address and weight.
pub(crate) type Chosen = (u32, SocketAddr, u32);

/// One compile: the desired state as the frontends are lowered one by one, and the IDs they
/// keep or take.
struct Compiler<'a> {
    live: &'a MapState,
    /// The daemon's overlay: exclusions (and why), ramps.
    overlay: &'a Overlay,
    /// Services (labels) that fail open rather than take their fallback's backends.
    no_fallback: &'a BTreeSet<String>,
    /// Services (labels) that took their fallback's backends, with their slots beyond
    /// their own.
    took_fallback: Vec<(String, u64)>,
    /// Every service compiled, by name: where fallbacks are found.
    by_name: BTreeMap<&'a str, &'a Service>,
    /// The live backend IDs by (service ID, address), of the services compiled here only: an
    /// incremental compile of one service against 100 000 live backends indexes its own ten.
    live_backend_ids: BTreeMap<(u32, SocketAddr), u32>,
    service_ids: IdAllocator,
    backend_ids: IdAllocator,
    desired: MapState,
}

impl<'a> Compiler<'a> {
    fn new(
        services: &[&'a Service],
        live: &'a MapState,
        overlay: &'a Overlay,
        no_fallback: &'a BTreeSet<String>,
    ) -> Self {
        let compiled: BTreeSet<u32> = services
            .iter()
            .flat_map(|s| s.spec.ports.iter().map(|p| (s.spec.vip, p)))
            .filter_map(|(vip, p)| {
                live.services
                    .get(&Frontend { vip, port: p.port, protocol: p.protocol })
                    .map(|e| e.id)
            })
            .collect();
        let live_backend_ids = live
            .backends
            .iter()
            .filter(|(_, b)| compiled.contains(&b.service_id))
            .map(|(id, b)| ((b.service_id, b.addr), *id))
            .collect();
        Compiler {
            live,
            overlay,
            no_fallback,
            took_fallback: Vec::new(),
            by_name: services.iter().map(|s| (s.metadata.name.as_str(), *s)).collect(),
            live_backend_ids,
            service_ids: IdAllocator::new(live.services.values().map(|s| s.id)),
            backend_ids: IdAllocator::new(live.backends.keys().copied()),
            desired: MapState::default(),
        }
    }

    /// Lowers `service` on `port`: its service entry, backends, slots and name.
    fn frontend(&mut self, service: &Service, port: &Port) -> Result<(), CompileError> {
        let (spec, live) = (&service.spec, self.live);
        let frontend = Frontend { vip: spec.vip, port: port.port, protocol: port.protocol };
        let label = service.label(port);
        let live_entry = live.services.get(&frontend);
        let id = match live_entry {
            Some(entry) => entry.id,
            None => self.service_ids.allocate(),
        };
        let own = self.own_backends(spec, port, id);
        let (mut chosen, fell_back) = self.chosen_backends(service, port, id, &own);
        if !fell_back {
            self.prefer_zone(spec, port, &label, &mut chosen);
        }
        let blend = self.overlay.blends.get(&label);
        if let Some(blend) = blend {
            let previous = self.previous_entries(id, &own, &label, blend);
            blend::apply(&mut chosen, &previous, blend.percent);
            self.desired.blends.insert(label.clone(), blend.clone());
        }
        service_slot_capacity(&label, slots_needed(spec))?;
        let slots = match spec.load_balancing.algorithm {
            Algorithm::Random => {
                let rolling = blend.is_some();
                self.random_layout(&label, live_entry, rolling, &mut chosen)
            }
            Algorithm::Maglev if chosen.is_empty() => Vec::new(),
            Algorithm::Maglev => maglev_slots(spec, &label, own.len(), chosen)?,
        };
        // Checked again on what was laid out: a fallback's weights, or a Maglev table grown
        // for a fallback, are not the service's own.
        service_slot_capacity(&label, slots.len() as u64)?;
        if fell_back {
            let beyond = (slots.len() as u64).saturating_sub(slots_needed(spec));
            self.took_fallback.push((label.clone(), beyond));
        }
        for (slot, backend_id) in slots.iter().enumerate() {
            self.desired.slots.insert((id, slot as u32), *backend_id);
        }
        self.desired.services.insert(frontend, service_entry(spec, id, slots.len() as u32));
        self.desired.names.insert(id, label);
        Ok(())
    }

    /// The backends `spec` lists, in its order, as (ID, address) on `port`, entered as
    /// backends of service `id`.
    fn own_backends(&mut self, spec: &ServiceSpec, port: &Port, id: u32) -> Vec<(u32, SocketAddr)> {
        let mut own = Vec::with_capacity(spec.backends.len());
        for backend in &spec.backends {
            // Validated: no backend twice for a port, one address family.
            let addr = backend.address_for(port);
            let backend_id = self.backend_id(id, addr);
            let entry = BackendEntry { addr, service_id: id, state: backend.state };
            self.desired.backends.insert(backend_id, entry);
            own.push((backend_id, addr));
            if spec.load_balancing.algorithm == Algorithm::Maglev {
                self.desired.weights.insert(backend_id, backend.weight); // For plans (`MapState`)
            }
        }
        own
    }

    /// The ID of service `id`'s backend at `addr`: its live one, else a new one.
    fn backend_id(&mut self, id: u32, addr: SocketAddr) -> u32 {
        match self.live_backend_ids.get(&(id, addr)) {
            Some(&known) => known,
            None => self.backend_ids.allocate(),
        }
    }

    /// The backends that take the clients of `service` (ID `id`) on `port`: its healthy
    /// usable ones; while it has none, its fallback's healthy ones (unless it is one of
    /// `no_fallback`); without those, all its usable ones (fail open). Unless it failed open,
    /// its excluded backends are unhealthy. And whether they are a fallback's.
    fn chosen_backends(
        &mut self,
        service: &Service,
        port: &Port,
        id: u32,
        own: &[(u32, SocketAddr)],
    ) -> (Vec<Chosen>, bool) {
        let (spec, excluded) = (&service.spec, &self.overlay.excluded);
        let label = service.label(port);
        let down = excluded_of(excluded, &label);
        let healthy = usable_among(spec, |i| !down.contains(&own[i].1));
        let may_fall_back = !self.no_fallback.contains(&label);
        let fallback = match healthy.is_empty() && !usable_backends(spec).is_empty() {
            true if may_fall_back => fallback_backends(&self.by_name, service, port, excluded),
            _ => None,
        };
        let fell_back = fallback.is_some();
        let failed_open = healthy.is_empty() && fallback.is_none();
        let chosen = match fallback {
            Some(fallback) => self.fallback_entries(id, own, &fallback),
            None => {
                let usable = if failed_open { usable_backends(spec) } else { healthy };
                usable.iter().map(|&i| (own[i].0, own[i].1, spec.backends[i].weight)).collect()
            }
        };
        if !failed_open {
            self.mark_unhealthy(own, &down);
        }
        (chosen, fell_back)
    }

    /// The `fallback` backends (address, weight) that service `id` does not list itself,
    /// entered as its own (active).
    fn fallback_entries(
        &mut self,
        id: u32,
        own: &[(u32, SocketAddr)],
        fallback: &[(SocketAddr, u32)],
    ) -> Vec<Chosen> {
        let listed: BTreeSet<SocketAddr> = own.iter().map(|&(_, addr)| addr).collect();
        let mut chosen = Vec::new();
        for &(addr, weight) in fallback.iter().filter(|(addr, _)| !listed.contains(addr)) {
            let backend_id = self.backend_id(id, addr);
            let entry = BackendEntry { addr, service_id: id, state: BackendState::Active };
            self.desired.backends.insert(backend_id, entry);
            chosen.push((backend_id, addr, weight));
        }
        chosen
    }

    /// The slots of the `random` service labelled `label` (its live entry `live_entry`) over
    /// `chosen`, ramps applied unless it is `rolling` out (a rollout sets the weights itself).
    fn random_layout(
        &mut self,
        label: &str,
        live_entry: Option<&ServiceEntry>,
        rolling: bool,
        chosen: &mut [Chosen],
    ) -> Vec<u32> {
        if !rolling {
            let ramps = ramp::apply(chosen, label, &self.overlay.ramps);
            let ramping = ramps.into_iter().map(|(addr, share)| ((label.to_owned(), addr), share));
            self.desired.ramps.extend(ramping);
        }
        let mut live = live_entry.map_or_else(Vec::new, |e| live_slots(self.live, e));
        // A rollout that ends (done, or undone) is laid out from the revision before's slots,
        // the first ones (`blend` keeps them), as a direct apply from it would be.
        if let (false, Some(ended)) = (rolling, self.live.blends.get(label)) {
            live.truncate(ended.previous.iter().map(|&(_, weight)| weight as usize).sum());
        }
        random_slots(&live, chosen)
    }

    /// `spec.topology`: of `chosen`, the node's zone's backends while at least `minBackends`
    /// of them take clients, else all; which, noted for plans and `/status`.
    fn prefer_zone(
        &mut self,
        spec: &ServiceSpec,
        port: &Port,
        label: &str,
        chosen: &mut Vec<Chosen>,
    ) {
        let (Some(topology), Some(zone)) = (&spec.topology, self.overlay.zone.as_deref()) else {
            return;
        };
        let in_zone: BTreeSet<SocketAddr> = spec
            .backends
            .iter()
            .filter(|b| b.zone.as_deref() == Some(zone))
            .map(|b| b.address_for(port))
            .collect();
        let local: Vec<Chosen> =
            chosen.iter().filter(|c| in_zone.contains(&c.1)).copied().collect();
        let note = if local.len() as u64 >= u64::from(topology.min_backends) {
            let note = format!("zone {zone}: {} of {} backends", local.len(), chosen.len());
            *chosen = local;
            note
        } else {
            let (usable, min) = (local.len(), topology.min_backends);
            format!("every zone: {usable} usable in zone {zone}, fewer than {min}")
        };
        self.desired.topology.insert(label.to_owned(), note);
    }

    /// The backends of `blend.previous` as backends of service `id`: its own where it lists
    /// them and they take clients, else entered (active) as a fallback's are; those `label`
    /// takes out left out.
    fn previous_entries(
        &mut self,
        id: u32,
        own: &[(u32, SocketAddr)],
        label: &str,
        blend: &Blend,
    ) -> Vec<Chosen> {
        let down = excluded_of(&self.overlay.excluded, label);
        let usable: Vec<(SocketAddr, u32)> =
            blend.previous.iter().filter(|(addr, _)| !down.contains(addr)).copied().collect();
        let takes_clients = |backend_id: &u32| {
            self.desired.backends.get(backend_id).is_some_and(|b| b.state.takes_clients())
        };
        let mut entries: Vec<Chosen> = usable
            .iter()
            .filter_map(|&(addr, weight)| {
                let &(backend_id, _) = own.iter().find(|(_, a)| *a == addr)?;
                takes_clients(&backend_id).then_some((backend_id, addr, weight))
            })
            .collect();
        entries.extend(self.fallback_entries(id, own, &usable));
        entries
    }

    /// Marks the backends of `own` that are `down` unhealthy.
    fn mark_unhealthy(&mut self, own: &[(u32, SocketAddr)], down: &BTreeSet<SocketAddr>) {
        for (backend_id, _) in own.iter().filter(|(_, addr)| down.contains(addr)) {
            if let Some(entry) = self.desired.backends.get_mut(backend_id) {
                entry.state = BackendState::Unhealthy;
            }
        }
    }

    /// The desired state, once every frontend is in (exclusions of addresses that are no
    /// backend any more lapse), and the services that took a fallback's backends.
    fn finish(mut self) -> (MapState, Vec<(String, u64)>) {
        let desired = &self.desired;
        let listed: BTreeSet<Exclusion> = desired
            .backends
            .values()
            .filter_map(|b| Some((desired.names.get(&b.service_id)?.clone(), b.addr)))
            .collect();
        let overlay = self.overlay;
        self.desired.health_excluded = overlay.excluded.intersection(&listed).cloned().collect();
        self.desired.ejected =
            overlay.ejected.intersection(&self.desired.health_excluded).cloned().collect();
        (self.desired, self.took_fallback)
    }
}

/// The live slots of the service of `entry` (`u32::MAX` where one is missing).
fn live_slots(live: &MapState, entry: &ServiceEntry) -> Vec<u32> {
    (0..entry.slot_count)
        .map(|slot| live.slots.get(&(entry.id, slot)).copied().unwrap_or(u32::MAX))
        .collect()
}

/// The slots of a `random` service: each chosen backend fills its weight in slots, keeping
/// the `live` slots it already holds.
fn random_slots(live: &[u32], chosen: &[Chosen]) -> Vec<u32> {
    let quotas = chosen.iter().map(|&(id, _, weight)| (id, weight)).collect();
    let order: Vec<u32> = chosen.iter().map(|&(id, ..)| id).collect();
    layout_slots(live, quotas, &order)
}

/// The Maglev table of `spec` over `chosen`, of its size for the `listed` backends it lists,
/// or larger for a fallback with more backends than that.
fn maglev_slots(
    spec: &ServiceSpec,
    label: &str,
    listed: usize,
    chosen: Vec<Chosen>,
) -> Result<Vec<u32>, CompileError> {
    let mut size = table_size(spec);
    if let Some(problem) = maglev::table_size_problem(size, listed as u32) {
        return Err(CompileError::TableSize { service: label.to_owned(), size, problem });
    }
    // A fallback with more backends than this table has slots: its own size.
    if size < chosen.len() as u32 {
        size = maglev::default_table_size(chosen.len() as u32);
    }
    Ok(maglev_table(chosen, size))
}

/// The service entry of `spec` on one frontend: ID `id`, `slot_count` slots.
fn service_entry(spec: &ServiceSpec, id: u32, slot_count: u32) -> ServiceEntry {
    let affinity = spec.session_affinity.as_ref();
    ServiceEntry {
        id,
        slot_count,
        algorithm: spec.load_balancing.algorithm,
        maglev_client: spec.load_balancing.client.unwrap_or_default(),
        affinity_timeout_secs: affinity.map_or(0, |a| a.timeout_seconds),
        affinity_client: affinity.map_or(Client::Cgroup, |a| a.client),
    }
}

/// Slot -> backend for a service whose backends fill `quotas` slots each: a slot that
/// already holds a backend with quota left keeps it; the other slots take what is left over,
/// in `order`.
fn layout_slots(live: &[u32], mut quotas: BTreeMap<u32, u32>, order: &[u32]) -> Vec<u32> {
    let total: u32 = quotas.values().sum();
    let mut slots: Vec<Option<u32>> = vec![None; total as usize];
    for (slot, backend) in slots.iter_mut().zip(live) {
        if let Some(left) = quotas.get_mut(backend).filter(|left| **left > 0) {
            *left -= 1;
            *slot = Some(*backend);
        }
    }
    let mut leftovers = order
        .iter()
        .flat_map(|id| std::iter::repeat_n(*id, quotas.get(id).copied().unwrap_or(0) as usize));
    slots.into_iter().map(|slot| slot.or_else(|| leftovers.next()).unwrap_or(u32::MAX)).collect()
}

/// While every backend of `service` on `port` is down: the healthy backends (address and
/// weight) of the first service along its `fallback` chain that has some, on the fallback's
/// port of the same number and protocol (else its first of the protocol). `None` when the
/// chain has none (validation refuses cycles; a visited set stops one anyway).
fn fallback_backends(
    by_name: &BTreeMap<&str, &Service>,
    service: &Service,
    port: &Port,
    excluded: &BTreeSet<Exclusion>,
) -> Option<Vec<(SocketAddr, u32)>> {
    let mut visited = BTreeSet::from([service.metadata.name.as_str()]);
    let mut next = service.spec.fallback.as_deref();
    while let Some(name) = next.filter(|name| visited.insert(name)) {
        let other = by_name.get(name)?;
        let other_port = fallback_port(other, port)?;
        let spec = &other.spec;
        let down = excluded_of(excluded, &other.label(other_port));
        let healthy =
            usable_among(spec, |i| !down.contains(&spec.backends[i].address_for(other_port)));
        if !healthy.is_empty() {
            let backends = healthy
                .iter()
                .map(|&i| (spec.backends[i].address_for(other_port), spec.backends[i].weight));
            return Some(backends.collect());
        }
        next = spec.fallback.as_deref();
    }
    None
}

/// The port of fallback service `other` that takes over `port`: the one of the same number
/// and protocol, else its first of the protocol.
pub(crate) fn fallback_port<'a>(other: &'a Service, port: &Port) -> Option<&'a Port> {
    let mut same_protocol = other.spec.ports.iter().filter(|p| p.protocol == port.protocol);
    same_protocol.clone().find(|p| p.port == port.port).or_else(|| same_protocol.next())
}

/// The Maglev table of `size` slots over `backends` (ID, address, weight), as backend IDs:
/// sorted by their key first, so every node builds the same table from the same backends.
fn maglev_table(mut backends: Vec<Chosen>, size: u32) -> Vec<u32> {
    let key = |addr: &SocketAddr| {
        maglev::backend_key(&crate::state::addr_to_words(addr.ip()), addr.port().to_be())
    };
    backends.sort_by_key(|(_, addr, _)| key(addr));
    let mut fillers: Vec<maglev::Filler> = backends
        .iter()
        .map(|(_, addr, weight)| maglev::Filler::new(&key(addr), *weight, size))
        .collect();
    let mut table = vec![0; size as usize];
    maglev::fill(&mut table, &mut fillers);
    table.iter().map(|&index| backends.get(index as usize).map_or(u32::MAX, |b| b.0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, vip: &str, backends: &[(&str, u32)]) -> Service {
        let backends: Vec<String> =
            backends.iter().map(|(a, w)| format!("    - {{address: {a}, weight: {w}}}")).collect();
        let text = format!(
            "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\n\
             spec:\n  vip: {vip}\n  ports: [{{port: 80, targetPort: 8080}}]\n  backends:\n{}\n",
            backends.join("\n")
        );
        let doc = crate::load::parse(&text).unwrap().remove(0);
        serde_json::from_value(doc.value).unwrap()
    }

    #[test]
    fn slots_follow_weights_and_draining_backends_get_none() {
        let mut web = service("web", "10.96.0.10", &[("10.1.0.1", 1), ("10.1.0.2", 3)]);
        web.spec.backends[0].state = BackendState::Draining;
        let state = compile(&[web], &MapState::default(), &BTreeSet::new()).unwrap();
        let entry = state.services.values().next().unwrap();
        assert_eq!(entry.slot_count, 3);
        assert_eq!(state.backends.len(), 2, "draining backends stay known");
        let slotted: BTreeSet<u32> = state.slots.values().copied().collect();
        assert_eq!(slotted.len(), 1);
        assert_eq!(state.names.get(&entry.id).map(String::as_str), Some("web/80"));
    }

    #[test]
    fn recompiling_against_the_result_changes_nothing() {
        let services = [
            service("a", "10.96.0.10", &[("10.1.0.1", 2), ("10.1.0.2", 1)]),
            service("b", "fd00::10", &[("fd00::1", 1)]),
        ];
        let first = compile(&services, &MapState::default(), &BTreeSet::new()).unwrap();
        let second = compile(&services, &first, &first.health_excluded).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn one_weight_change_touches_only_its_slots_and_the_count() {
        let before =
            [service("web", "10.96.0.10", &[("10.1.0.1", 1), ("10.1.0.2", 1), ("10.1.0.3", 1)])];
        let after =
            [service("web", "10.96.0.10", &[("10.1.0.1", 3), ("10.1.0.2", 1), ("10.1.0.3", 1)])];
        let live = compile(&before, &MapState::default(), &BTreeSet::new()).unwrap();
        let desired = compile(&after, &live, &live.health_excluded).unwrap();
        // Two new slots and the slot count: nothing else moves.
        assert_eq!(live.changes_to(&desired).len(), 3);
        // And back down: two slots go, the count changes.
        let back = compile(&before, &desired, &desired.health_excluded).unwrap();
        assert_eq!(desired.changes_to(&back).len(), 3);
    }

    #[test]
    fn removing_a_backend_refills_only_its_slots() {
        let before =
            [service("web", "10.96.0.10", &[("10.1.0.1", 2), ("10.1.0.2", 2), ("10.1.0.3", 2)])];
        let after = [service("web", "10.96.0.10", &[("10.1.0.2", 2), ("10.1.0.3", 2)])];
        let live = compile(&before, &MapState::default(), &BTreeSet::new()).unwrap();
        let desired = compile(&after, &live, &live.health_excluded).unwrap();
        let kept: Vec<_> =
            desired.slots.iter().filter(|(k, v)| live.slots.get(k) == Some(v)).collect();
        // 4 slots survive; of the 6, 2 deleted (count shrinks), the first backend's 2
        // slots refilled only if they were inside the new range.
        assert!(kept.len() >= 2, "{kept:?}");
        // IDs of surviving backends are kept, and the removed one's ID is gone.
        let ids: BTreeSet<u32> = desired.backends.keys().copied().collect();
        assert!(ids.is_subset(&live.backends.keys().copied().collect()));
        assert_eq!(ids.len(), 2);
        let changes = live.changes_to(&desired);
        assert!(changes.len() <= 1 + 2 + 2 + 1, "{changes:?}");
    }

    #[test]
    fn removing_one_maglev_backend_rewrites_about_its_share_of_the_table() {
        let backends: Vec<String> = (1..=10).map(|i| format!("10.1.0.{i}")).collect();
        let with = |count: usize| {
            let list: Vec<(&str, u32)> =
                backends[..count].iter().map(|b| (b.as_str(), 1)).collect();
            let mut web = service("web", "10.96.0.10", &list);
            web.spec.load_balancing.algorithm = Algorithm::Maglev;
            web
        };
        let live = compile(&[with(10)], &MapState::default(), &BTreeSet::new()).unwrap();
        let entry = *live.services.values().next().unwrap();
        // The default size holds from 9 to 16 backends.
        assert_eq!(entry.slot_count, 1601);
        let desired = compile(&[with(9)], &live, &live.health_excluded).unwrap();
        let changes = live.changes_to(&desired);
        let share = 1601 / 10;
        // Its slots, the others' few moves (2-4% at this size), and its backend entry.
        assert!(
            (share..=share + 1601 * 4 / 100 + 1).contains(&changes.len()),
            "{} changes for one backend of 10 in 1601 slots",
            changes.len()
        );
        assert_eq!(desired.services.values().next().unwrap().slot_count, 1601);
    }

    #[test]
    fn health_exclusions_take_backends_out_and_persist_until_lifted() {
        let web = [service("web", "10.96.0.10", &[("10.1.0.1", 1), ("10.1.0.2", 1)])];
        let down: SocketAddr = "10.1.0.2:8080".parse().unwrap();
        let live = compile(&web, &MapState::default(), &BTreeSet::new()).unwrap();
        let web_down = ("web/80".to_owned(), down);
        let excluded = compile(&web, &live, &BTreeSet::from([web_down.clone()])).unwrap();
        let state_of = |state: &MapState, addr: SocketAddr| {
            state.backends.iter().find(|(_, b)| b.addr == addr).map(|(id, b)| (*id, b.state))
        };
        let (id, state) = state_of(&excluded, down).unwrap();
        assert_eq!(state, BackendState::Unhealthy);
        assert!(excluded.slots.values().all(|b| *b != id), "an excluded backend has slots");
        assert_eq!(excluded.health_excluded, BTreeSet::from([web_down.clone()]));
        // A plan by hand (compile against the live state) keeps the overlay: no changes.
        assert!(excluded
            .changes_to(&compile(&web, &excluded, &excluded.health_excluded).unwrap())
            .is_empty());
        // Lifted: back in.
        let lifted = compile(&web, &excluded, &BTreeSet::new()).unwrap();
        assert_eq!(lifted, live);
        // Every backend down: the service keeps them all (fails open).
        let all =
            BTreeSet::from([web_down, ("web/80".to_owned(), "10.1.0.1:8080".parse().unwrap())]);
        let open = compile(&web, &live, &all).unwrap();
        assert_eq!(open.slots, live.slots);
        assert!(open.backends.values().all(|b| b.state == BackendState::Active));
        // An exclusion of an address no service lists lapses.
        let gone: SocketAddr = "10.9.9.9:8080".parse().unwrap();
        let gone = BTreeSet::from([("web/80".to_owned(), gone)]);
        assert!(compile(&web, &live, &gone).unwrap().health_excluded.is_empty());
        // An exclusion judged by another service's check leaves this one's backend in.
        let others = BTreeSet::from([("api/80".to_owned(), down)]);
        assert_eq!(compile(&web, &live, &others).unwrap(), live);
    }

    #[test]
    fn a_service_with_every_backend_down_takes_its_fallbacks_healthy_backends() {
        let mut web = service("web", "10.96.0.10", &[("10.1.0.1", 1)]);
        web.spec.fallback = Some("dr".into());
        let dr = service("dr", "10.96.0.20", &[("10.2.0.1", 1), ("10.2.0.2", 3)]);
        let services = [web, dr];
        let live = compile(&services, &MapState::default(), &BTreeSet::new()).unwrap();
        let down = BTreeSet::from([("web/80".to_owned(), "10.1.0.1:8080".parse().unwrap())]);
        let state = compile(&services, &live, &down).unwrap();
        let web_id = state.names.iter().find(|(_, n)| *n == "web/80").map(|(id, _)| *id).unwrap();
        let web_backends: BTreeMap<SocketAddr, (u32, BackendState)> = state
            .backends
            .iter()
            .filter(|(_, b)| b.service_id == web_id)
            .map(|(id, b)| (b.addr, (*id, b.state)))
            .collect();
        assert_eq!(web_backends.len(), 3, "{web_backends:?}");
        assert_eq!(web_backends[&"10.1.0.1:8080".parse().unwrap()].1, BackendState::Unhealthy);
        let slots: Vec<u32> =
            state.slots.iter().filter(|((s, _), _)| *s == web_id).map(|(_, b)| *b).collect();
        let heavy = web_backends[&"10.2.0.2:8080".parse().unwrap()].0;
        assert_eq!(slots.len(), 4, "the fallback's weights: 1 + 3");
        assert_eq!(slots.iter().filter(|b| **b == heavy).count(), 3);
        // The fallback down too: web keeps its own (fails open).
        let all = BTreeSet::from([
            ("web/80".to_owned(), "10.1.0.1:8080".parse().unwrap()),
            ("dr/80".to_owned(), "10.2.0.1:8080".parse().unwrap()),
            ("dr/80".to_owned(), "10.2.0.2:8080".parse().unwrap()),
        ]);
        let open = compile(&services, &live, &all).unwrap();
        let web_slots: BTreeSet<u32> =
            open.slots.iter().filter(|((s, _), _)| *s == web_id).map(|(_, b)| *b).collect();
        let own = live.backends.iter().find(|(_, b)| b.service_id == web_id).map(|(id, _)| *id);
        assert_eq!(web_slots, BTreeSet::from([own.unwrap()]));
    }

    #[test]
    fn new_ids_skip_ids_the_live_state_still_uses() {
        let a = service("a", "10.96.0.10", &[("10.1.0.1", 1)]);
        let live = compile(&[a], &MapState::default(), &BTreeSet::new()).unwrap();
        let b = service("b", "10.96.0.20", &[("10.1.0.9", 1)]);
        let desired = compile(&[b], &live, &live.health_excluded).unwrap();
        let old: BTreeSet<u32> = live.backends.keys().copied().collect();
        assert!(desired.backends.keys().all(|id| !old.contains(id)));
        assert!(desired
            .services
            .values()
            .all(|s| s.id != live.services.values().next().unwrap().id));
    }
}
