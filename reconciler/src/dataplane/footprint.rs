//! What each map of the data plane holds and costs: its capacity, its entries, and the
//! kernel memory it locks (`memlock` of `/proc/self/fdinfo/FD`, the figure `bpftool map
//! show` prints), here and on a host with more CPUs: a per-CPU map holds one value per
//! possible CPU (`/sys/devices/system/cpu/possible`), so its memory grows with them.
use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{MapData, MapType};
use reconciler_common::{
    exclusion::HealthKey, AffinityKey, AffinityValue, Backend, BackendKey, ReverseKey,
    ReverseValue, ServiceKey, ServiceName, ServiceValue, SlotKey, VipKey,
};

use super::{
    batch,
    error::{io_err, map_err, DataplaneError, Result},
    pins::map_data,
    Dataplane, MAPS,
};

/// The CPU count of a large node today, to which `status` and `make bench` project the
/// memory of per-CPU maps.
pub const LARGE_HOST_CPUS: u64 = 256;

/// Every map's capacity, fill and memory, and this host's possible CPUs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Footprint {
    pub possible_cpus: u64,
    pub maps: Vec<MapFootprint>,
}

impl Footprint {
    /// The kernel memory the maps lock, in bytes, on a host with `cpus` possible CPUs.
    pub fn memory_at(&self, cpus: u64) -> u64 {
        self.maps.iter().map(|map| map.memory_at(cpus, self.possible_cpus)).sum()
    }

    /// The kernel memory the maps lock here, in bytes.
    pub fn memory(&self) -> u64 {
        self.maps.iter().map(|map| map.memory_bytes).sum()
    }
}

/// One map's capacity, fill and memory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapFootprint {
    pub name: &'static str,
    /// The map's type, as bpftool names it (`hash`, `lru_hash`, `array`, `percpu_array`,
    /// `ringbuf`).
    pub kind: &'static str,
    /// Entries it can hold (for a ring buffer, bytes; 0 for socket storage, one entry per
    /// socket).
    pub capacity: u32,
    /// Entries it holds; `None` for arrays (every entry exists), ring buffers and socket
    /// storage (its entries live with the sockets, charged to them).
    pub entries: Option<usize>,
    /// Kernel memory it locks, in bytes.
    pub memory_bytes: u64,
    /// Whether it holds a value per possible CPU.
    pub per_cpu: bool,
}

impl MapFootprint {
    /// `memory_bytes` on a host with `cpus` possible CPUs, from this host's `possible`: a
    /// per-CPU map's memory is almost all values, so it scales with the CPUs.
    pub fn memory_at(&self, cpus: u64, possible: u64) -> u64 {
        if self.per_cpu {
            self.memory_bytes.saturating_mul(cpus) / possible.max(1)
        } else {
            self.memory_bytes
        }
    }
}

impl Dataplane {
    /// Every map's capacity, fill and memory, in `MAPS` order.
    pub fn footprint(&self) -> Result<Footprint> {
        let possible = aya::util::nr_cpus().map_err(|(what, error)| io_err(what)(error))?;
        Ok(Footprint {
            possible_cpus: possible as u64,
            maps: MAPS.iter().map(|name| self.map_footprint(name)).collect::<Result<_>>()?,
        })
    }

    fn map_footprint(&self, name: &'static str) -> Result<MapFootprint> {
        let map = map_data(&self.pin_path, name)?;
        let info = map.info().map_err(map_err(format!("reading the info of {name}")))?;
        let kind = info.map_type().map_err(map_err(format!("reading the type of {name}")))?;
        Ok(MapFootprint {
            name,
            kind: kind_name(kind),
            capacity: info.max_entries(),
            entries: self.entries(name)?,
            memory_bytes: memlock(&map, name)?,
            per_cpu: matches!(
                kind,
                MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash
            ),
        })
    }

    /// How many entries a hash map holds; `None` for the other maps.
    fn entries(&self, name: &str) -> Result<Option<usize>> {
        let read = |name: &str| io_err(format!("reading {name}"));
        let count = match name {
            "SERVICES" => {
                batch::count::<ServiceKey, ServiceValue>(&self.services).map_err(read(name))?
            }
            "VIPS" => batch::count::<VipKey, u32>(&self.vips).map_err(read(name))?,
            "SLOTS" => batch::count::<SlotKey, u32>(&self.slots).map_err(read(name))?,
            "BACKENDS" => {
                batch::count::<BackendKey, Backend>(&self.backends).map_err(read(name))?
            }
            "SERVICE_NAMES" => batch::count::<u32, ServiceName>(&self.names).map_err(read(name))?,
            "HEALTH_EXCLUDED" => {
                batch::count::<HealthKey, u32>(&self.health).map_err(read(name))?
            }
            "REVERSE" => {
                batch::count::<ReverseKey, ReverseValue>(&self.reverse).map_err(read(name))?
            }
            "AFFINITY" => {
                batch::count::<AffinityKey, AffinityValue>(&self.affinity).map_err(read(name))?
            }
            _ => return Ok(None),
        };
        Ok(Some(count))
    }
}

/// The kernel memory `map` locks: the `memlock` line of its file descriptor's fdinfo.
fn memlock(map: &MapData, name: &'static str) -> Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", map.fd().as_fd().as_raw_fd());
    let text = fs::read_to_string(&path).map_err(io_err(format!("reading {path}")))?;
    text.lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or(DataplaneError::NoMemlock { map: name })
}

/// The map type's name, as bpftool prints it.
fn kind_name(kind: MapType) -> &'static str {
    match kind {
        MapType::Hash => "hash",
        MapType::LruHash => "lru_hash",
        MapType::Array => "array",
        MapType::PerCpuArray => "percpu_array",
        MapType::PerCpuHash => "percpu_hash",
        MapType::LruPerCpuHash => "lru_percpu_hash",
        MapType::RingBuf => "ringbuf",
        MapType::SkStorage => "sk_storage",
        _ => "other",
    }
}
