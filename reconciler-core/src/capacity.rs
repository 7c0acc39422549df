//! How many entries the data plane's maps hold: set at install (`dataplane.capacity` in the
//! daemon's configuration, `--capacity` on the command line), read back from the installed
//! maps ever after. Every map's kernel memory follows from it (docs/dataplane.md,
//! "Capacity and memory").
use std::{fmt, str::FromStr};

use reconciler_common::{MAX_AFFINITY, MAX_BACKENDS, MAX_REVERSE, MAX_SERVICES, MAX_SLOTS};
use serde::Deserialize;

use crate::{
    compile::{self, CompileError},
    state::MapState,
};

/// The capacity of each kind of entry, per map set where the maps hold two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capacity {
    /// Services (VIP, port, protocol): `SERVICES`, `VIPS` (two sets each), `SERVICE_NAMES`,
    /// `SERVICE_TOTALS`. IDs index the last, so one fewer service fits (ID 0 is "none").
    pub services: u32,
    /// Backends (per service port): `BACKENDS` (two sets), `BACKEND_TOTALS`,
    /// `HEALTH_EXCLUDED`; one fewer fits, likewise.
    pub backends: u32,
    /// Selection slots over all services: `SLOTS` (two sets).
    pub slots: u32,
    /// Datagram translations an unconnected socket's record gave up (`REVERSE`, an LRU):
    /// only sockets that send to several services need them.
    pub connections: u32,
    /// Clients of services with session affinity (`AFFINITY`, an LRU).
    pub affinity: u32,
}

/// What a node gets unless it says otherwise: thousands of services and tens of thousands
/// of backends, in at most 64 MiB of kernel memory with every map full, whatever the CPU
/// count (docs/dataplane.md, "Capacity and memory").
pub const DEFAULT: Capacity = Capacity {
    services: 16_384,
    backends: 32_768,
    slots: 131_072,
    connections: 65_536,
    affinity: 65_536,
};

/// The most the maps can be given (`reconciler_common::MAX_*`).
pub const MAXIMUM: Capacity = Capacity {
    services: MAX_SERVICES,
    backends: MAX_BACKENDS,
    slots: MAX_SLOTS,
    connections: MAX_REVERSE,
    affinity: MAX_AFFINITY,
};

impl Default for Capacity {
    fn default() -> Self {
        DEFAULT
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapacityError {
    #[error("capacity {what} must be between {min} and {max}, not {value}")]
    OutOfRange { what: &'static str, value: u64, min: u32, max: u32 },
    #[error(
        "capacity: `{0}` is not NAME=COUNT (names: services, backends, slots, connections, \
         affinity)"
    )]
    Syntax(String),
}

impl Capacity {
    /// Each figure with its name, its least and its most.
    fn figures(&self) -> [(&'static str, u32, u32, u32); 5] {
        [
            ("services", self.services, 2, MAXIMUM.services),
            ("backends", self.backends, 2, MAXIMUM.backends),
            ("slots", self.slots, 1, MAXIMUM.slots),
            ("connections", self.connections, 1, MAXIMUM.connections),
            ("affinity", self.affinity, 1, MAXIMUM.affinity),
        ]
    }

    /// Refuses a figure outside what the maps can be given.
    pub fn check(&self) -> Result<(), CapacityError> {
        for (what, value, min, max) in self.figures() {
            if !(min..=max).contains(&value) {
                return Err(CapacityError::OutOfRange { what, value: value.into(), min, max });
            }
        }
        Ok(())
    }

    /// Whether `state` fits maps of this capacity: its services and backends (IDs, which
    /// index the counter arrays: distinct and from 1, so no fewer than the entries) and its
    /// slots. The error names the capacity `state` exceeds.
    pub fn fits(&self, state: &MapState) -> Result<(), CompileError> {
        self.fits_ids(state)?;
        self.fits_slots(state.slots.len())
    }

    /// [`fits`](Self::fits) for the service and backend IDs of `state` alone.
    pub fn fits_ids(&self, state: &MapState) -> Result<(), CompileError> {
        compile::ids_fit(state, self.highest_ids())
    }

    /// The highest service and backend IDs that fit.
    pub fn highest_ids(&self) -> (u32, u32) {
        (self.services - 1, self.backends - 1)
    }

    /// Whether a map set of `slots` selection slots fits.
    pub fn fits_slots(&self, slots: usize) -> Result<(), CompileError> {
        if slots > self.slots as usize {
            return Err(CompileError::Capacity { what: "slots", count: slots, max: self.slots });
        }
        Ok(())
    }
}

impl FromStr for Capacity {
    type Err = CapacityError;

    /// `services=N,backends=N,...`: the figures given replace the defaults'.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut capacity = DEFAULT;
        for item in text.split(',').filter(|item| !item.trim().is_empty()) {
            let syntax = || CapacityError::Syntax(item.trim().to_owned());
            let (name, value) = item.split_once('=').ok_or_else(syntax)?;
            let value: u32 = value.trim().parse().map_err(|_| syntax())?;
            let field = match name.trim() {
                "services" => &mut capacity.services,
                "backends" => &mut capacity.backends,
                "slots" => &mut capacity.slots,
                "connections" => &mut capacity.connections,
                "affinity" => &mut capacity.affinity,
                _ => return Err(syntax()),
            };
            *field = value;
        }
        capacity.check()?;
        Ok(capacity)
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Capacity { services, backends, slots, connections, affinity } = self;
        write!(
            f,
            "services={services},backends={backends},slots={slots},connections={connections},\
             affinity={affinity}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BackendEntry, BackendState};

    #[test]
    fn a_capacity_is_read_as_names_and_counts_over_the_defaults() {
        let capacity: Capacity = "services=100, slots=1000".parse().unwrap();
        assert_eq!(capacity, Capacity { services: 100, slots: 1000, ..DEFAULT });
        assert_eq!(capacity.to_string().parse::<Capacity>().unwrap(), capacity);
        assert_eq!("".parse::<Capacity>().unwrap(), DEFAULT);
        assert!(matches!("service=1".parse::<Capacity>(), Err(CapacityError::Syntax(_))));
        assert!(matches!("slots=x".parse::<Capacity>(), Err(CapacityError::Syntax(_))));
        let too_many = format!("backends={}", u64::from(MAX_BACKENDS) + 1);
        assert!(too_many.parse::<Capacity>().is_err());
        assert!(matches!(
            "services=1".parse::<Capacity>(),
            Err(CapacityError::OutOfRange { what: "services", .. })
        ));
        DEFAULT.check().unwrap();
        MAXIMUM.check().unwrap();
    }

    #[test]
    fn a_state_fits_while_its_counts_and_ids_stay_below_the_capacity() {
        let capacity = Capacity { backends: 4, ..DEFAULT };
        let mut state = MapState::default();
        let backend = |port| BackendEntry {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            service_id: 1,
            state: BackendState::Active,
        };
        for id in 1..=3 {
            state.backends.insert(id, backend(id as u16));
        }
        capacity.fits(&state).unwrap();
        // Three backends, but ID 4 indexes past a counter array of 4 (0 is "none").
        state.backends.remove(&1);
        state.backends.insert(4, backend(4));
        assert_eq!(
            capacity.fits(&state),
            Err(CompileError::Capacity { what: "backends", count: 4, max: 3 })
        );
    }
}
