//! The only code that touches BPF: install, read, apply, uninstall.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/reconciler`): one file per map, named
//! as in `reconciler-ebpf` (`SERVICES`, `SLOTS`, ...), and one per attached program link
//! (`link_connect4`, ...). Links are pinned last, so their presence marks a complete install;
//! everything keeps working while no reconciler process runs.
//!
//! The files, by lifecycle:
//!
//! - `install`: install (load, pin, attach), open from the pins, uninstall;
//! - `upgrade`: bring a data plane pinned by an older build up to this one, in place;
//!   `migrate`: the maps it changes (a grown counter array, a derived map filled);
//! - `apply`: the apply protocol, which writes a desired state without a connect seeing half
//!   of it; `grace`: its RCU wait (an update of a map of maps);
//! - `read`: the metadata, the sets, the counters, the events, the affinity entries;
//! - `footprint`: each map's capacity, fill and the kernel memory it locks; `sizes`: which
//!   map each figure of the configured capacity sizes;
//! - `exclude`: the cgroup subtrees the programs never translate;
//! - `trace`: `reconciler trace`'s side of the `TRACE` ring buffer;
//! - `pins`: the pin directory (who may change it, its lock) and the pins in it;
//! - `programs`: loading, attaching and pinning the programs;
//! - `ours`: telling this project's programs from others' on a cgroup;
//! - `encode`: the typed content to and from the map entries the programs read;
//! - `write`: writing changes into one set, in batches per map;
//! - `batch`: batched hash map reads and writes; `sys`: bpf(2) for what aya does not do;
//! - `destroy`: destroying connected UDP sockets whose backend an apply took away, found by
//!   the `udp_records` socket iterator (`records`) in every network namespace (`namespaces`);
//! - `error`: [`DataplaneError`].
mod apply;
mod batch;
mod destroy;
mod encode;
mod error;
mod exclude;
mod footprint;
mod grace;
mod install;
mod migrate;
mod namespaces;
mod ours;
mod pins;
mod programs;
mod read;
mod records;
mod sizes;
mod sys;
pub mod trace;
mod upgrade;
mod write;

use std::path::PathBuf;

use aya::maps::{Array, MapData, PerCpuArray};
use reconciler_common::{
    flows::BackendFlows, BackendCounters, ExcludedCgroup, Metadata, ServiceCounters,
};

pub use apply::{ApplyReport, ApplyTo, Scope};
pub use destroy::supported as socket_destroy_supported;
pub use error::DataplaneError;
pub use footprint::{Footprint, MapFootprint, LARGE_HOST_CPUS};
pub use install::{Install, Loaded, Uninstalled};
pub use pins::{default_cgroup, is_installed};
pub use read::{Events, LiveState, Status};
pub use upgrade::{upgrade, Upgraded};

/// The BPF object built from `reconciler-ebpf` by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/reconciler-ebpf"));

/// The hooks attached to the cgroup, each through a link pinned as `link_NAME`: the
/// socket-address programs (the first two, the connects, are what tells an install is there)
/// and the `flows` sock_ops program.
pub const PROGRAMS: [&str; 9] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
    "flows",
];
const MAPS: [&str; 21] = [
    "ACTIVE_SET",
    "SERVICES",
    "VIPS",
    "SLOTS",
    "BACKENDS",
    "BACKEND_TOTALS",
    "BACKEND_FLOWS",
    "SERVICE_TOTALS",
    "METADATA",
    "SERVICE_NAMES",
    "SOCKETS",
    "REVERSE",
    "EVENTS",
    "HANDSHAKES",
    "AFFINITY",
    "AFFINITY_EVENTS",
    "TRACE",
    "TRACE_ON",
    "TRACE_DROPS",
    "HEALTH_EXCLUDED",
    "EXCLUDED",
];
/// Per-CPU counter arrays whose capacity a layout grew (`EVENTS`: 5 entries to 16 in layout
/// 5), each with the name its outgrown pin waits under until its counts are copied and no
/// program reads it (listed in `RETIRED_MAPS`, so the upgrade removes it at the end; the
/// map itself keeps its name). See `migrate`.
const GROWN_MAPS: [(&str, &str); 1] = [("EVENTS", "EVENTS_OUTGROWN")];

/// Maps an older layout pinned that this build no longer has (3 retired `BACKEND_STATS`; 5
/// outgrew the first `EVENTS`; 6 replaced the per-CPU `BACKEND_COUNTS` and `SERVICE_COUNTS`,
/// see `migrate`): still recognised as ours, removed by an upgrade once no program reads
/// them, and by uninstall.
const RETIRED_MAPS: [&str; 4] =
    ["BACKEND_STATS", "EVENTS_OUTGROWN", "BACKEND_COUNTS", "SERVICE_COUNTS"];

/// An installed data plane, opened from its pins.
pub struct Dataplane {
    pin_path: PathBuf,
    active_set: Array<MapData, u32>,
    // The hash maps are read and written in batches (see `batch`), so they stay untyped.
    services: MapData,
    vips: MapData,
    slots: MapData,
    backends: MapData,
    backend_counters: Array<MapData, BackendCounters>,
    backend_flows: Array<MapData, BackendFlows>,
    handshakes: PerCpuArray<MapData, u64>,
    service_counters: Array<MapData, ServiceCounters>,
    events: PerCpuArray<MapData, u64>,
    reverse: MapData,
    affinity: MapData,
    affinity_events: PerCpuArray<MapData, u64>,
    metadata: Array<MapData, Metadata>,
    names: MapData,
    health: MapData,
    excluded: Array<MapData, ExcludedCgroup>,
}

#[cfg(test)]
mod tests {
    use super::{MAPS, RETIRED_MAPS};

    #[test]
    fn every_map_name_fits_the_kernels_name_field() {
        // BPF_OBJ_NAME_LEN is 16 with the NUL: a longer name is cut, and its pin no longer
        // matches the map's name (what uninstall checks).
        for name in MAPS.iter().chain(RETIRED_MAPS.iter()) {
            assert!(name.len() <= 15, "{name}");
        }
    }
}
