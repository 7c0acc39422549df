//! The only code that touches BPF: install, read, apply, uninstall.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/reconciler`): one file per map, named
//! as in `reconciler-ebpf` (`SERVICES`, `SLOTS`, ...), and one per attached program link
//! (`link_connect4`, ...). Links are pinned last, so their presence marks a complete install;
//! everything keeps working while no reconciler process runs.
//!
//! # Apply protocol
//!
//! `SERVICES`, `SLOTS` and `BACKENDS` hold two sets; `ACTIVE_SET[0]` names the live one. An
//! apply never writes the live set:
//!
//! 1. mark the standby dirty in `METADATA` (and bump the generation);
//! 2. write the standby set until it equals the desired state;
//! 3. flip `ACTIVE_SET[0]`: every connect from now on reads the new set;
//! 4. wait for an RCU grace period ([`wait_for_readers`]): connects that read the old pointer
//!    have finished, so the old set has no readers;
//! 5. write the old set until it equals the desired state too, and mark the standby clean.
//!
//! So a connect sees the whole old state or the whole new state, one wait serves one apply,
//! and the standby is free of readers when the next apply starts. A crash in steps 2-5 leaves
//! the dirty mark; the next apply waits for a grace period first, then proceeds as usual,
//! which rewrites the standby from its real content.
mod batch;
mod destroy;
mod ours;
mod pindir;
mod state;
pub mod trace;
mod upgrade;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    maps::{Array, IterableMap as _, Map, MapData, MapError, PerCpuArray},
    programs::{
        links::{FdLink, LinkType, PinnedLink},
        CgroupAttachMode, CgroupSockAddr, ProgramError,
    },
    EbpfLoader,
};
use reconciler_common::{
    affinity, event, AffinityKey, AffinityValue, Backend, BackendCounters, BackendKey, HealthKey,
    Metadata, ReverseKey, ReverseValue, ServiceCounters, ServiceKey, ServiceName, ServiceValue,
    SlotKey, LAYOUT_VERSION, PROTO_UDP, REVISION_LEN,
};
// The typed content lives with the pure pipeline, which compiles it; here it is read and
// written.
pub use reconciler_core::diff::{predicted_writes, Change};
pub use reconciler_core::state::{
    Algorithm, BackendEntry, BackendState, Client, Frontend, MapState, Protocol, ServiceEntry,
};
pub use upgrade::{upgrade, Upgraded};

/// The BPF object built from `reconciler-ebpf` by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/reconciler-ebpf"));

pub use reconciler_core::state::DEFAULT_PIN_PATH;

pub const PROGRAMS: [&str; 8] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
];
const MAPS: [&str; 16] = [
    "ACTIVE_SET",
    "SERVICES",
    "SLOTS",
    "BACKENDS",
    "BACKEND_COUNTS",
    "SERVICE_COUNTS",
    "METADATA",
    "SERVICE_NAMES",
    "REVERSE",
    "EVENTS",
    "AFFINITY",
    "AFFINITY_EVENTS",
    "TRACE",
    "TRACE_ON",
    "TRACE_DROPS",
    "HEALTH_EXCLUDED",
];
/// Maps an older layout pinned that this build no longer has (3 retired `BACKEND_STATS`):
/// still recognised as ours, removed by an upgrade once no program reads them, and by
/// uninstall.
const RETIRED_MAPS: [&str; 1] = ["BACKEND_STATS"];

/// Every map name a data plane of ours may have pinned.
fn pinned_map_names() -> impl Iterator<Item = &'static str> {
    MAPS.into_iter().chain(RETIRED_MAPS)
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "{path} is not on a bpf filesystem; mount one with \
         `mount -t bpf -o mode=0700 bpf /sys/fs/bpf`"
    )]
    NotBpffs { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "the pin directory {path} is owned by uid {owner}, not by this process's uid {euid}; \
         its owner could replace the pinned maps, so it is refused"
    )]
    PinDirOwner { path: PathBuf, owner: u32, euid: u32 },
    #[error(
        "the pin directory {path} has mode {mode:04o}: group or others could replace the \
         pinned maps, so it is refused; `chmod 700` it"
    )]
    PinDirMode { path: PathBuf, mode: u32 },
    #[error(
        "{ancestor}, above the pin directory {path}, has mode {mode:04o}: group or others \
         could move the pin directory away, so it is refused; remove their write access or \
         set the sticky bit"
    )]
    AncestorMode { path: PathBuf, ancestor: PathBuf, mode: u32 },
    #[error(
        "{ancestor}, above the pin directory {path}, is owned by uid {owner}, who could move \
         the pin directory away, so it is refused"
    )]
    AncestorOwner { path: PathBuf, ancestor: PathBuf, owner: u32 },
    #[error(
        "refusing to uninstall {path}: it is not on a bpf filesystem, so it holds no data plane"
    )]
    UninstallNotBpffs { path: PathBuf },
    #[error("refusing to uninstall {path}: it holds no reconciler data plane")]
    NoDataplane { path: PathBuf },
    #[error(
        "refusing to uninstall {path}: {pin} is not part of a reconciler data plane ({reason})"
    )]
    ForeignPin { path: PathBuf, pin: PathBuf, reason: String },
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mounts)")]
    NoCgroup2Mount,
    #[error("no data plane is installed at {path}")]
    NotInstalled { path: PathBuf },
    #[error(
        "the data plane at {path} is attached to another cgroup (id {installed}, asked for \
         id {requested}); uninstall it first"
    )]
    OtherCgroup { path: PathBuf, installed: u64, requested: u64 },
    #[error(
        "cgroup {cgroup} already has a reconciler data plane attached (programs \
         {programs:?}){}; one installed at {path} too would run after it and lose, so it is \
         refused; uninstall the other first",
        pinned_at(.other)
    )]
    CgroupTaken { cgroup: PathBuf, path: PathBuf, programs: Vec<u32>, other: Option<PathBuf> },
    #[error(
        "the data plane at {path} has layout version {found}, this build uses {expected}; {}",
        if found < expected {
            "`reconciler apply` (or the daemon, at start) upgrades it in place"
        } else {
            "it was made by a newer reconciler: use that one"
        }
    )]
    LayoutMismatch { path: PathBuf, found: u32, expected: u32 },
    // Causes are part of each message, never `#[source]`s as well: `{:#}` would print them
    // twice, and the daemon logs the message alone.
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
    #[error("{what}: {error}")]
    Map { what: String, error: MapError },
    #[error("loading the BPF programs: {0}")]
    Load(aya::EbpfError),
    #[error("program {program}: {error}")]
    Program { program: &'static str, error: ProgramError },
    #[error("listing the loaded BPF programs: {0}")]
    ProgramList(ProgramError),
    #[error("reading the maps of BPF program {id}: {error}")]
    ProgramMaps { id: u32, error: ProgramError },
    #[error("the live generation is {found}, not the expected {expected}")]
    GenerationMoved { expected: u64, found: u64 },
    #[error(
        "the maps do not hold what the incremental plan recorded for the services it touches \
         (changed by hand, or an apply was interrupted)"
    )]
    NotAsRecorded,
    #[error("waiting for an RCU grace period (membarrier): {0}")]
    Membarrier(io::Error),
    #[error("{0}")]
    Invalid(String),
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

fn pinned_at(other: &Option<PathBuf>) -> String {
    other.as_ref().map(|dir| format!(", pinned at {}", dir.display())).unwrap_or_default()
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DataplaneError {
    let what = what.into();
    move |error| DataplaneError::Io { what, error }
}

fn map_err(what: impl Into<String>) -> impl FnOnce(MapError) -> DataplaneError {
    let what = what.into();
    move |error| DataplaneError::Map { what, error }
}

/// What an apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Entry changes between the live state and the desired one.
    pub changes: usize,
    /// Every map element written or deleted, in both sets, plus the pointer flip and the
    /// metadata updates: `2 × versioned changes + name changes + 3`, or 0 with no change.
    pub map_writes: usize,
    /// The generation after the apply.
    pub generation: u64,
    /// Connected UDP sockets destroyed because the apply took their backend away.
    pub sockets_destroyed: usize,
    /// Why destroying those sockets failed, if it did; the maps are applied all the same.
    pub sockets_error: Option<String>,
}

/// The programs' `EVENTS` counters (see `reconciler_common::event` for each reason).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Events {
    /// Connects and datagrams to a service with no usable backend, refused.
    pub no_backend: u64,
    /// Refused because a slot was missing from the live set.
    pub slot_miss: u64,
    /// Refused because a backend was missing from the live set.
    pub backend_miss: u64,
    /// Reverse entries found stale (service or backend gone) and deleted.
    pub reverse_stale: u64,
    /// Translations that could not be recorded for the replies.
    pub reverse_full: u64,
    /// Connects that a session affinity entry sent to its backend.
    pub affinity_hits: u64,
    /// Connects of clients with no affinity entry, or an expired one.
    pub affinity_misses: u64,
    /// Affinity entries deleted because their backend was gone or in maintenance.
    pub affinity_dropped: u64,
}

/// What the metadata map says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub generation: u64,
    pub revision: Option<String>,
    pub applied_at_unix: Option<u64>,
    pub cgroup_id: u64,
    pub active_set: u8,
    pub standby_dirty: bool,
}

/// The live state: the active set's content and the metadata.
#[derive(Clone, Debug)]
pub struct LiveState {
    pub state: MapState,
    pub status: Status,
}

/// What [`Dataplane::uninstall`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uninstalled {
    /// Nothing was at the pin path.
    NothingThere,
    /// The programs are detached; the pins and the pin directory are gone.
    Removed,
    /// The programs are detached and the pins gone, but the pin directory stays: it holds
    /// these entries, which are not ours.
    KeptDirectory { others: Vec<PathBuf> },
}

/// An installed data plane, opened from its pins.
pub struct Dataplane {
    pin_path: PathBuf,
    active_set: Array<MapData, u32>,
    // The hash maps are read and written in batches (see `batch`), so they stay untyped.
    services: MapData,
    slots: MapData,
    backends: MapData,
    backend_counts: PerCpuArray<MapData, BackendCounters>,
    service_counts: PerCpuArray<MapData, ServiceCounters>,
    events: PerCpuArray<MapData, u64>,
    reverse: MapData,
    affinity: MapData,
    affinity_events: PerCpuArray<MapData, u64>,
    metadata: Array<MapData, Metadata>,
    names: MapData,
    health: MapData,
}

/// The mount point of the first cgroup2 filesystem in /proc/self/mounts.
pub fn default_cgroup() -> Result<PathBuf> {
    let mounts =
        fs::read_to_string("/proc/self/mounts").map_err(io_err("reading /proc/self/mounts"))?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .ok_or(DataplaneError::NoCgroup2Mount)
}

/// Whether a data plane is pinned at `pin_path`: the connect links, which every layout has
/// and every install pins first among its links. Hooks a newer build adds (or an install
/// that stopped early left out) are attached by [`upgrade`].
pub fn is_installed(pin_path: &Path) -> bool {
    PROGRAMS[..2].iter().all(|p| link_pin(pin_path, p).exists())
}

fn link_pin(pin_path: &Path, program: &str) -> PathBuf {
    pin_path.join(format!("link_{program}"))
}

fn statfs_type(path: &Path) -> Result<i64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| DataplaneError::Invalid(format!("{} contains a NUL byte", path.display())))?;
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and buf is a valid statfs buffer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut buf) } != 0 {
        return Err(io_err(format!("statfs {}", path.display()))(io::Error::last_os_error()));
    }
    Ok(buf.f_type as i64)
}

/// The cgroup ID the kernel uses for `path`: the cgroup directory's inode number.
fn cgroup_id(path: &Path) -> Result<u64> {
    if statfs_type(path)? != CGROUP2_SUPER_MAGIC {
        return Err(DataplaneError::NotCgroup2 { path: path.to_owned() });
    }
    let meta = fs::metadata(path).map_err(io_err(format!("stat {}", path.display())))?;
    Ok(meta.ino())
}

/// Waits until no BPF program run that started before this call is still running.
///
/// cgroup sock_addr programs run inside `rcu_read_lock()` (`bpf_prog_run_array_cg`), and a
/// program reads `ACTIVE_SET` once and uses that set until it returns. `membarrier(
/// MEMBARRIER_CMD_GLOBAL)` calls `synchronize_rcu()`, which returns only after every RCU
/// read-side section that was running has ended; so after it, no program can still be
/// reading the set that was active before the flip. (On a one-CPU machine the kernel skips
/// the call: there, a non-preemptible reader cannot be running while we are.)
pub fn wait_for_readers() -> Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let rc =
        unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0 as libc::c_long) };
    if rc != 0 {
        return Err(DataplaneError::Membarrier(io::Error::last_os_error()));
    }
    Ok(())
}

/// Program `name` of `ebpf`, loaded into the kernel (verified) unless it already is.
fn loaded_program<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr> {
    let program: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or_else(|| DataplaneError::Invalid(format!("the BPF object has no program {name}")))?
        .try_into()
        .map_err(|error| DataplaneError::Program { program: name, error })?;
    if program.fd().is_err() {
        program.load().map_err(|error| DataplaneError::Program { program: name, error })?;
    }
    Ok(program)
}

/// Loads program `name` of `ebpf`, attaches it to the cgroup `cgroup_dir` and pins its link.
fn attach_and_pin(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    cgroup_dir: &fs::File,
    pin_path: &Path,
) -> Result<()> {
    let program = loaded_program(ebpf, name)?;
    // aya attaches through a BPF link, which the kernel always attaches as one of many
    // (other tools' programs keep running) and which takes no mode flags: anything but the
    // default (0) is EINVAL.
    let link_id = program
        .attach(cgroup_dir, CgroupAttachMode::default())
        .map_err(|error| DataplaneError::Program { program: name, error })?;
    let link = program
        .take_link(link_id)
        .map_err(|error| DataplaneError::Program { program: name, error })?;
    let link: FdLink = link
        .try_into()
        .map_err(|e| DataplaneError::Invalid(format!("link of {name} is not a BPF link: {e}")))?;
    link.pin(link_pin(pin_path, name))
        .map_err(|e| DataplaneError::Invalid(format!("pinning link of {name}: {e}")))?;
    Ok(())
}

/// The `METADATA` map pinned at `pin_path`.
fn metadata_map(pin_path: &Path) -> Result<Array<MapData, Metadata>> {
    Map::from_map_data(map_data(pin_path, "METADATA")?)
        .map_err(map_err("opening METADATA"))?
        .try_into()
        .map_err(map_err("map METADATA has an unexpected type"))
}

/// The kernel's ID of the `ACTIVE_SET` map pinned at `pin_path`, if one is there: what tells
/// this data plane's programs from another's.
fn pinned_active_set(pin_path: &Path) -> Option<u32> {
    Some(map_data(pin_path, "ACTIVE_SET").ok()?.info().ok()?.id())
}

/// The layout version recorded in the `METADATA` pinned at `pin_path`, if one is there.
/// (`Metadata` itself has kept its layout in every version.)
fn pinned_layout_version(pin_path: &Path) -> Option<u32> {
    metadata_map(pin_path).ok()?.get(&0, 0).ok().map(|m| m.layout_version)
}

fn map_data(pin_path: &Path, name: &str) -> Result<MapData> {
    let path = pin_path.join(name);
    MapData::from_pin(&path).map_err(map_err(format!("opening {}", path.display())))
}

fn open_map(pin_path: &Path, name: &str) -> Result<Map> {
    Map::from_map_data(map_data(pin_path, name)?)
        .map_err(map_err(format!("opening {}", pin_path.join(name).display())))
}

macro_rules! typed_map {
    ($pin_path:expr, $name:literal) => {
        open_map($pin_path, $name)?.try_into().map_err(map_err(concat!(
            "map ",
            $name,
            " has an unexpected type"
        )))?
    };
}

/// Whether programs may be reading the maps while an apply writes them.
#[derive(Clone, Copy)]
enum Readers {
    /// Attached: the standby set is written, flipped to and waited for before the other.
    Maybe,
    /// A first install, before its programs are attached: both sets are written at once.
    NotYet,
}

/// The BPF object loaded, its maps created and its programs verified, but nothing pinned or
/// attached: most of an install's time (the per-CPU counter arrays alone are a quarter
/// million per-CPU allocations), so a first apply does it on another core while it validates
/// the definitions. Dropped unused, it leaves nothing behind.
pub struct Loaded(aya::Ebpf);

impl Loaded {
    pub fn load() -> Result<Loaded> {
        let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(DataplaneError::Load)?;
        for name in PROGRAMS {
            loaded_program(&mut ebpf, name)?;
        }
        Ok(Loaded(ebpf))
    }
}

impl Dataplane {
    /// Loads the programs, pins maps and links under `pin_path` and attaches the programs to
    /// `cgroup`. An existing complete install at `pin_path` is reused as it is.
    ///
    /// Creates the pin directory with mode 0700 and refuses one that others could change
    /// (see `pindir`). Refuses a cgroup that has another data plane attached (see
    /// `ours::check_cgroup`).
    pub fn install(pin_path: &Path, cgroup: &Path) -> Result<Self> {
        Ok(Self::install_loaded(pin_path, cgroup, None, None)?.0)
    }

    /// [`install`](Self::install) with the object `loaded` ahead, if given, and `first`
    /// (the desired state and its revision) applied before the programs are attached, so
    /// that both sets are written at once (no program reads them yet). Returns that apply's
    /// report; `None` when a complete install was there already (another process's, say):
    /// then nothing is applied.
    pub fn install_loaded(
        pin_path: &Path,
        cgroup: &Path,
        loaded: Option<Loaded>,
        first: Option<(&MapState, Option<&str>)>,
    ) -> Result<(Self, Option<ApplyReport>)> {
        let requested = cgroup_id(cgroup)?;
        // Held throughout: installs at two pin paths on one cgroup at once take turns, so the
        // second sees the first's programs and is refused (one data plane per cgroup).
        let cgroup_dir = lock(cgroup)?;
        let created = pindir::create(pin_path)?;
        pindir::check(pin_path)?;
        // Held until the links are pinned: a concurrent install at this pin path waits here,
        // then finds a complete install to reuse instead of pinning over this one's maps.
        let _lock = lock(pin_path)?;
        if is_installed(pin_path) {
            upgrade::upgrade_locked(pin_path)?;
            let dataplane = Self::open(pin_path)?;
            let installed = dataplane.read_metadata()?.cgroup_id;
            if installed != requested {
                return Err(DataplaneError::OtherCgroup {
                    path: pin_path.to_owned(),
                    installed,
                    requested,
                });
            }
            ours::check_cgroup(&cgroup_dir, cgroup, pin_path, pinned_active_set(pin_path))?;
            return Ok((dataplane, None));
        }
        // Programs of an unfinished install here are its own, and go with its pins below.
        let own = pinned_active_set(pin_path);
        if let Err(e) = ours::check_cgroup(&cgroup_dir, cgroup, pin_path, own) {
            if created {
                let _ = fs::remove_dir(pin_path);
            }
            return Err(e);
        }
        // Pins without all links are left by an install that did not finish; start again
        // from nothing.
        remove_pins(pin_path)?;

        let mut ebpf = match loaded {
            Some(loaded) => loaded.0,
            None => EbpfLoader::new().load(OBJECT).map_err(DataplaneError::Load)?,
        };
        for name in MAPS {
            let map = ebpf.map(name).ok_or_else(|| {
                DataplaneError::Invalid(format!("the BPF object has no map {name}"))
            })?;
            map.pin(pin_path.join(name))
                .map_err(|e| DataplaneError::Invalid(format!("pinning map {name}: {e}")))?;
        }
        let mut dataplane = Self::open_maps(pin_path)?;
        dataplane.active_set.set(0, 0, 0).map_err(map_err("initialising ACTIVE_SET"))?;
        let metadata = Metadata {
            layout_version: LAYOUT_VERSION,
            standby_dirty: 0,
            _pad: [0; 3],
            generation: 0,
            cgroup_id: requested,
            applied_at_unix: 0,
            revision: [0; REVISION_LEN],
            revision_len: 0,
            _pad2: [0; 7],
        };
        dataplane.write_metadata(&metadata)?;
        // A crash from here until the links are pinned leaves an unfinished install, which
        // the next one removes (above).
        let report = first
            .map(|(desired, revision)| {
                dataplane.apply_locked(None, desired, revision, None, Readers::NotYet)
            })
            .transpose()?;

        for name in PROGRAMS {
            attach_and_pin(&mut ebpf, name, &cgroup_dir, pin_path)?;
        }
        Ok((dataplane, report))
    }

    /// Opens the data plane pinned at `pin_path`; refuses a pin directory that others could
    /// change, as install does.
    pub fn open(pin_path: &Path) -> Result<Self> {
        if !is_installed(pin_path) {
            return Err(DataplaneError::NotInstalled { path: pin_path.to_owned() });
        }
        pindir::check(pin_path)?;
        // Before the maps: a build of another layout may not have pinned them all.
        let found = metadata_map(pin_path)?.get(&0, 0).map_err(map_err("reading METADATA"))?;
        if found.layout_version != LAYOUT_VERSION {
            return Err(DataplaneError::LayoutMismatch {
                path: pin_path.to_owned(),
                found: found.layout_version,
                expected: LAYOUT_VERSION,
            });
        }
        Self::open_maps(pin_path)
    }

    fn open_maps(pin_path: &Path) -> Result<Self> {
        Ok(Self {
            pin_path: pin_path.to_owned(),
            active_set: typed_map!(pin_path, "ACTIVE_SET"),
            services: map_data(pin_path, "SERVICES")?,
            slots: map_data(pin_path, "SLOTS")?,
            backends: map_data(pin_path, "BACKENDS")?,
            backend_counts: typed_map!(pin_path, "BACKEND_COUNTS"),
            service_counts: typed_map!(pin_path, "SERVICE_COUNTS"),
            events: typed_map!(pin_path, "EVENTS"),
            reverse: map_data(pin_path, "REVERSE")?,
            affinity: map_data(pin_path, "AFFINITY")?,
            affinity_events: typed_map!(pin_path, "AFFINITY_EVENTS"),
            metadata: typed_map!(pin_path, "METADATA"),
            names: map_data(pin_path, "SERVICE_NAMES")?,
            health: map_data(pin_path, "HEALTH_EXCLUDED")?,
        })
    }

    /// Detaches the programs and removes the data plane's pins under `pin_path`, then the
    /// directory unless something else is in it. A path that does not exist is no error.
    ///
    /// Removes nothing, and says why, when `pin_path` is not a bpffs directory, holds none of
    /// a data plane's pins, or holds something else under one of their names (see
    /// `check_pins`): a mistyped `--pin-path` must not delete anything.
    pub fn uninstall(pin_path: &Path) -> Result<Uninstalled> {
        let meta = match fs::metadata(pin_path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Uninstalled::NothingThere),
            meta => meta.map_err(io_err(format!("stat {}", pin_path.display())))?,
        };
        if statfs_type(pin_path)? != BPF_FS_MAGIC {
            return Err(DataplaneError::UninstallNotBpffs { path: pin_path.to_owned() });
        }
        if !meta.is_dir() {
            return Err(DataplaneError::NotADirectory { path: pin_path.to_owned() });
        }
        for (path, link) in check_pins(pin_path)? {
            fs::remove_file(&path).map_err(io_err(format!("unpinning {}", path.display())))?;
            // That was the last reference but this one: the link detaches as it closes.
            drop(link);
        }
        remove_pins(pin_path)?;
        match fs::remove_dir(pin_path) {
            Ok(()) => Ok(Uninstalled::Removed),
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                let others = fs::read_dir(pin_path)
                    .and_then(|entries| entries.map(|e| Ok(e?.path())).collect())
                    .map_err(io_err(format!("listing {}", pin_path.display())))?;
                Ok(Uninstalled::KeptDirectory { others })
            }
            Err(e) => Err(io_err(format!("removing {}", pin_path.display()))(e)),
        }
    }

    fn read_metadata(&self) -> Result<Metadata> {
        self.metadata.get(&0, 0).map_err(map_err("reading METADATA"))
    }

    fn write_metadata(&mut self, metadata: &Metadata) -> Result<()> {
        self.metadata.set(0, metadata, 0).map_err(map_err("writing METADATA"))
    }

    fn read_active_set(&self) -> Result<u8> {
        let set = self.active_set.get(&0, 0).map_err(map_err("reading ACTIVE_SET"))?;
        Ok((set & 1) as u8)
    }

    /// The metadata, in readable form.
    pub fn status(&self) -> Result<Status> {
        let metadata = self.read_metadata()?;
        let revision_len = usize::from(metadata.revision_len).min(REVISION_LEN);
        Ok(Status {
            generation: metadata.generation,
            revision: (revision_len > 0)
                .then(|| String::from_utf8_lossy(&metadata.revision[..revision_len]).into_owned()),
            applied_at_unix: (metadata.applied_at_unix > 0).then_some(metadata.applied_at_unix),
            cgroup_id: metadata.cgroup_id,
            active_set: self.read_active_set()?,
            standby_dirty: metadata.standby_dirty != 0,
        })
    }

    /// The active set's content and the metadata.
    pub fn read_live(&self) -> Result<LiveState> {
        let status = self.status()?;
        let [state, _] = self.read_sets(status.active_set, false)?;
        Ok(LiveState { state, status })
    }

    /// The metadata and both sets, `[active, standby]`, every entry.
    pub fn read_both_sets(&self) -> Result<(Status, [MapState; 2])> {
        let status = self.status()?;
        let sets = self.read_sets(status.active_set, true)?;
        Ok((status, sets))
    }

    /// Set `first` and, with `other_too`, the other (else it is left empty), `[first,
    /// other]`, in one pass over each map. Entries that no build of ours writes (an unknown
    /// protocol) are skipped here and so are replaced by an apply.
    fn read_sets(&self, first: u8, other_too: bool) -> Result<[MapState; 2]> {
        let mut sets = [MapState::default(), MapState::default()];
        // The index into `sets` of an entry of `set`, if that set is wanted.
        let index = |set: u8| Some(usize::from(set != first)).filter(|&i| i == 0 || other_too);
        let read_error = |name: &str| io_err(format!("reading {name}"));
        for (key, value) in batch::lookup_all::<ServiceKey, ServiceValue>(&self.services)
            .map_err(read_error("SERVICES"))?
        {
            if let (Some(frontend), Some(i)) = (state::frontend_of(&key), index(key.set)) {
                sets[i].services.insert(frontend, state::service_entry(&value));
            }
        }
        for (key, backend) in
            batch::lookup_all::<SlotKey, u32>(&self.slots).map_err(read_error("SLOTS"))?
        {
            if let Some(i) = index(key.set) {
                sets[i].slots.insert((key.service_id, key.slot), backend);
            }
        }
        for (key, value) in batch::lookup_all::<BackendKey, Backend>(&self.backends)
            .map_err(read_error("BACKENDS"))?
        {
            if let Some(i) = index(key.set) {
                sets[i].backends.insert(key.backend_id, state::backend_entry(&value));
            }
        }
        let names: BTreeMap<u32, String> = batch::lookup_all::<u32, ServiceName>(&self.names)
            .map_err(read_error("SERVICE_NAMES"))?
            .iter()
            .map(|(id, value)| (*id, state::name_of(value)))
            .collect();
        let health = self.read_health()?;
        if other_too {
            sets[1].names = names.clone();
            sets[1].health_excluded = health.clone();
        }
        sets[0].names = names;
        sets[0].health_excluded = health;
        Ok(sets)
    }

    /// `HEALTH_EXCLUDED`, which is not versioned: the same for both sets.
    fn read_health(&self) -> Result<BTreeSet<SocketAddr>> {
        Ok(batch::lookup_all::<HealthKey, u32>(&self.health)
            .map_err(io_err("reading HEALTH_EXCLUDED"))?
            .iter()
            .map(|(key, _)| state::health_addr(key))
            .collect())
    }

    /// Both sets' entries under the keys of `recorded` and `desired` (`[active, standby]`,
    /// with the health map), if they are what `recorded` says and the standby is clean
    /// (`standby_dirty` as the metadata says); `None` otherwise.
    fn read_recorded(
        &self,
        active: u8,
        standby_dirty: bool,
        recorded: &MapState,
        desired: &MapState,
    ) -> Result<Option<[MapState; 2]>> {
        if standby_dirty {
            return Ok(None);
        }
        let sets = self.read_entries(active, recorded, desired)?;
        Ok(sets.iter().all(|set| set == recorded).then_some(sets))
    }

    /// What sets `first` and the other hold under the keys of `a` and `b`, `[first, other]`,
    /// one lookup per key and set; the health map whole.
    fn read_entries(&self, first: u8, a: &MapState, b: &MapState) -> Result<[MapState; 2]> {
        let frontends: BTreeSet<Frontend> =
            a.services.keys().chain(b.services.keys()).copied().collect();
        let slots: BTreeSet<(u32, u32)> = a.slots.keys().chain(b.slots.keys()).copied().collect();
        let backends: BTreeSet<u32> = a.backends.keys().chain(b.backends.keys()).copied().collect();
        let names: BTreeSet<u32> = a.names.keys().chain(b.names.keys()).copied().collect();
        let read_error = |name: &str| io_err(format!("reading {name}"));
        let health = self.read_health()?;
        let mut sets = [MapState::default(), MapState::default()];
        for (index, set) in [first, first ^ 1].into_iter().enumerate() {
            let state = &mut sets[index];
            let keys = frontends.iter().map(|f| state::service_key(f, set));
            for (key, value) in batch::lookup_each::<_, ServiceValue>(&self.services, keys)
                .map_err(read_error("SERVICES"))?
            {
                if let (Some(frontend), Some(value)) = (state::frontend_of(&key), value) {
                    state.services.insert(frontend, state::service_entry(&value));
                }
            }
            let keys = slots.iter().map(|slot| state::slot_key(*slot, set));
            for (key, value) in
                batch::lookup_each::<_, u32>(&self.slots, keys).map_err(read_error("SLOTS"))?
            {
                if let Some(backend) = value {
                    state.slots.insert((key.service_id, key.slot), backend);
                }
            }
            let keys = backends.iter().map(|id| state::backend_key(*id, set));
            for (key, value) in batch::lookup_each::<_, Backend>(&self.backends, keys)
                .map_err(read_error("BACKENDS"))?
            {
                if let Some(value) = value {
                    state.backends.insert(key.backend_id, state::backend_entry(&value));
                }
            }
            for (id, value) in
                batch::lookup_each::<_, ServiceName>(&self.names, names.iter().copied())
                    .map_err(read_error("SERVICE_NAMES"))?
            {
                if let Some(value) = value {
                    state.names.insert(id, state::name_of(&value));
                }
            }
            state.health_excluded = health.clone();
        }
        Ok(sets)
    }

    /// The counters of backends `ids`, summed over CPUs.
    pub fn backend_counters(
        &self,
        ids: impl IntoIterator<Item = u32>,
    ) -> Result<BTreeMap<u32, BackendCounters>> {
        per_cpu_sums(&self.backend_counts, ids, "reading BACKEND_COUNTS")
    }

    /// The refusal counters of services `ids`, summed over CPUs.
    pub fn service_counters(
        &self,
        ids: impl IntoIterator<Item = u32>,
    ) -> Result<BTreeMap<u32, ServiceCounters>> {
        per_cpu_sums(&self.service_counts, ids, "reading SERVICE_COUNTS")
    }

    /// Zeroes the counters of the backend and service IDs that `desired` gives to new owners
    /// (IDs `live` does not hold): an ID freed by an earlier apply keeps its old counts
    /// otherwise. Done before the new owners are written, so no count of theirs is lost.
    fn reset_counters_of_new_ids(&mut self, live: &MapState, desired: &MapState) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io_err("counting CPUs")(e))?;
        let live_services: BTreeSet<u32> = live.services.values().map(|s| s.id).collect();
        let new_services: Vec<u32> = desired
            .services
            .values()
            .map(|s| s.id)
            .filter(|id| !live_services.contains(id))
            .collect();
        batch::zero_per_cpu(
            self.service_counts.map(),
            &new_services,
            size_of::<ServiceCounters>(),
            cpus,
        )
        .map_err(io_err("zeroing SERVICE_COUNTS"))?;
        let new_backends: Vec<u32> =
            desired.backends.keys().copied().filter(|id| !live.backends.contains_key(id)).collect();
        batch::zero_per_cpu(
            self.backend_counts.map(),
            &new_backends,
            size_of::<BackendCounters>(),
            cpus,
        )
        .map_err(io_err("zeroing BACKEND_COUNTS"))
    }

    /// What the programs counted besides choosing backends, by `event::*` reason, summed
    /// over CPUs.
    pub fn events(&self) -> Result<Events> {
        let sum = |map: &PerCpuArray<MapData, u64>, index: u32, name: &'static str| {
            map.get(&index, 0).map(|values| values.iter().sum::<u64>()).map_err(map_err(name))
        };
        let event = |reason| sum(&self.events, reason, "reading EVENTS");
        let affinity = |what| sum(&self.affinity_events, what, "reading AFFINITY_EVENTS");
        Ok(Events {
            no_backend: event(event::NO_BACKEND)?,
            slot_miss: event(event::SLOT_MISS)?,
            backend_miss: event(event::BACKEND_MISS)?,
            reverse_stale: event(event::REVERSE_STALE)?,
            reverse_full: event(event::REVERSE_FULL)?,
            affinity_hits: affinity(affinity::HIT)?,
            affinity_misses: affinity(affinity::MISS)?,
            affinity_dropped: affinity(affinity::DROPPED)?,
        })
    }

    /// Session affinity entries still within their service's timeout, per service ID (as
    /// `live`'s services say it; services without affinity have none).
    pub fn affinity_entries(&self, live: &MapState) -> Result<BTreeMap<u32, usize>> {
        let timeouts: BTreeMap<u32, u64> = live
            .services
            .values()
            .map(|s| (s.id, u64::from(s.affinity_timeout_secs) * 1_000_000_000))
            .collect();
        // bpf_ktime_get_ns() is CLOCK_MONOTONIC.
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec into `now`.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let now = (now.tv_sec as u64).saturating_mul(1_000_000_000) + now.tv_nsec as u64;
        let mut counts = BTreeMap::new();
        for (key, value) in batch::lookup_all::<AffinityKey, AffinityValue>(&self.affinity)
            .map_err(io_err("reading AFFINITY"))?
        {
            let timeout = timeouts.get(&key.service_id).copied().unwrap_or(0);
            if now.saturating_sub(value.last_used_ns) <= timeout {
                *counts.entry(key.service_id).or_default() += 1;
            }
        }
        Ok(counts)
    }

    /// Makes the live state equal `desired` (see the module docs for the protocol) and
    /// records `revision` as applied. Writes nothing when nothing differs. With
    /// `expected_generation`, refuses (writing nothing) if the live generation is another.
    ///
    /// Holds an exclusive `flock` on the pin directory throughout, so two reconcilers (a
    /// daemon and a manual apply, say) never interleave their writes to the standby set.
    pub fn apply(
        &mut self,
        desired: &MapState,
        revision: Option<&str>,
        expected_generation: Option<u64>,
    ) -> Result<ApplyReport> {
        self.apply_within(None, desired, revision, expected_generation)
    }

    /// [`apply`](Self::apply) confined to the entries of some services (the incremental
    /// path): `recorded` is what both sets hold of them at `expected_generation`, as the
    /// caller recorded it, and `desired` what they become. Reads only those entries, and
    /// refuses (writing nothing) unless both sets hold exactly `recorded` of them and the
    /// standby is clean; entries of other services are neither read nor touched.
    pub fn apply_touched(
        &mut self,
        recorded: &MapState,
        desired: &MapState,
        revision: Option<&str>,
        expected_generation: u64,
    ) -> Result<ApplyReport> {
        self.apply_within(Some(recorded), desired, revision, Some(expected_generation))
    }

    /// Whether both sets hold `recorded` under its keys and those of `desired`, with a clean
    /// standby: what [`apply_touched`](Self::apply_touched) checks again under its lock.
    pub fn confirm(&self, recorded: &MapState, desired: &MapState) -> Result<bool> {
        let status = self.status()?;
        let sets =
            self.read_recorded(status.active_set, status.standby_dirty, recorded, desired)?;
        Ok(sets.is_some())
    }

    fn apply_within(
        &mut self,
        recorded: Option<&MapState>,
        desired: &MapState,
        revision: Option<&str>,
        expected_generation: Option<u64>,
    ) -> Result<ApplyReport> {
        let _lock = lock(&self.pin_path)?;
        self.apply_locked(recorded, desired, revision, expected_generation, Readers::Maybe)
    }

    /// [`apply_within`](Self::apply_within) with the pin directory locked by the caller.
    fn apply_locked(
        &mut self,
        recorded: Option<&MapState>,
        desired: &MapState,
        revision: Option<&str>,
        expected_generation: Option<u64>,
        readers: Readers,
    ) -> Result<ApplyReport> {
        if revision.is_some_and(|r| r.len() > REVISION_LEN) {
            return Err(DataplaneError::Invalid(format!(
                "revision is longer than {REVISION_LEN} bytes"
            )));
        }
        let mut metadata = self.read_metadata()?;
        if let Some(expected) = expected_generation.filter(|g| *g != metadata.generation) {
            return Err(DataplaneError::GenerationMoved { expected, found: metadata.generation });
        }
        let active = self.read_active_set()?;
        let standby = active ^ 1;
        let [live, standby_content] = match recorded {
            None => {
                if metadata.standby_dirty != 0 {
                    // An earlier apply stopped after its flip, maybe before its wait: wait now.
                    wait_for_readers()?;
                }
                self.read_sets(active, true)?
            }
            Some(recorded) => self
                .read_recorded(active, metadata.standby_dirty != 0, recorded, desired)?
                .ok_or(DataplaneError::NotAsRecorded)?,
        };

        let changes = live.changes_to(desired);
        let revision_changed = revision.is_some_and(|r| {
            usize::from(metadata.revision_len) != r.len()
                || &metadata.revision[..r.len()] != r.as_bytes()
        });
        let versioned: Vec<&Change> = changes.iter().filter(|c| c.is_versioned()).collect();
        // The standby normally equals the live set (every apply ends so): then its changes are
        // the live set's, not computed (and held) twice.
        let standby_own: Option<Vec<Change>> = (standby_content != live).then(|| {
            standby_content.changes_to(desired).into_iter().filter(Change::is_versioned).collect()
        });
        drop(standby_content);
        let standby_changes: Vec<&Change> = match &standby_own {
            Some(own) => own.iter().collect(),
            None => versioned.clone(),
        };
        // A dirty mark with both sets already as desired (an apply killed after its last
        // entry write, before its final metadata) still takes this apply to clear it.
        if changes.is_empty()
            && standby_changes.is_empty()
            && !revision_changed
            && metadata.standby_dirty == 0
        {
            return Ok(ApplyReport { generation: metadata.generation, ..ApplyReport::default() });
        }

        self.reset_counters_of_new_ids(&live, desired)?;
        let mut writes = 0;
        metadata.generation += 1;
        if !versioned.is_empty() || !standby_changes.is_empty() {
            metadata.standby_dirty = 1;
            self.write_metadata(&metadata)?;
            writes += 1;
            match readers {
                Readers::Maybe => {
                    writes += self.write_changes(standby_changes.iter().copied(), standby)?;
                    self.flip_to(standby)?;
                    wait_for_readers()?;
                    writes += self.write_changes(versioned.iter().copied(), active)?;
                }
                Readers::NotYet => {
                    // Each set on its own core: the kernel's hash inserts are most of a
                    // first install's writes.
                    let (standby_writes, active_writes) = std::thread::scope(|scope| {
                        let standby_side = scope
                            .spawn(|| self.write_changes(standby_changes.iter().copied(), standby));
                        let active_writes = self.write_changes(versioned.iter().copied(), active);
                        let standby_writes = standby_side
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                        (standby_writes, active_writes)
                    });
                    writes += standby_writes? + active_writes?;
                    self.flip_to(standby)?;
                }
            }
            writes += 1;
        }
        // Both sets hold `desired` now, whether written here or found so.
        metadata.standby_dirty = 0;
        writes += self.write_changes(changes.iter().filter(|c| !c.is_versioned()), active)?;
        if let Some(revision) = revision {
            metadata.revision = [0; REVISION_LEN];
            metadata.revision[..revision.len()].copy_from_slice(revision.as_bytes());
            metadata.revision_len = revision.len() as u8;
        }
        metadata.applied_at_unix =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.write_metadata(&metadata)?;
        writes += 1;
        let (sockets_destroyed, sockets_error) = match self.forget_removed_backends(&live, desired)
        {
            Ok(destroyed) => (destroyed, None),
            Err(e) => (0, Some(e.to_string())),
        };
        Ok(ApplyReport {
            changes: changes.len(),
            map_writes: writes,
            generation: metadata.generation,
            sockets_destroyed,
            sockets_error,
        })
    }

    fn flip_to(&mut self, set: u8) -> Result<()> {
        self.active_set.set(0, u32::from(set), 0).map_err(map_err("flipping ACTIVE_SET"))
    }

    /// After an apply from `live` to `desired`: the reverse entries of backends that are gone
    /// (or moved) are deleted, and the connected UDP sockets they name are destroyed (see
    /// `destroy`); a backend put in maintenance or found unhealthy loses its UDP entries and
    /// sockets alike (its
    /// TCP connections are the backend's to end). Returns how many sockets were destroyed.
    fn forget_removed_backends(&self, live: &MapState, desired: &MapState) -> Result<usize> {
        let mut removed = BTreeSet::new();
        let mut to_maintenance = BTreeSet::new();
        for (id, old) in &live.backends {
            match desired.backends.get(id) {
                Some(new) if new.addr == old.addr && new.service_id == old.service_id => {
                    if old.state.takes_clients() && !new.state.takes_clients() {
                        to_maintenance.insert(*id);
                    }
                }
                _ => {
                    removed.insert(*id);
                }
            }
        }
        if removed.is_empty() && to_maintenance.is_empty() {
            return Ok(0);
        }
        let entries = batch::lookup_all::<ReverseKey, ReverseValue>(&self.reverse)
            .map_err(io_err("reading REVERSE"))?;
        let stale: Vec<(ReverseKey, ReverseValue)> = entries
            .into_iter()
            .filter(|(_, value)| {
                removed.contains(&value.backend_id)
                    || (to_maintenance.contains(&value.backend_id) && value.protocol == PROTO_UDP)
            })
            .collect();
        let udp: BTreeMap<u64, SocketAddr> = stale
            .iter()
            .filter(|(_, value)| value.protocol == PROTO_UDP)
            .map(|(key, _)| {
                (
                    key.cookie,
                    SocketAddr::new(state::words_to_addr(&key.addr), u16::from_be(key.port)),
                )
            })
            .collect();
        let keys: Vec<ReverseKey> = stale.into_iter().map(|(key, _)| key).collect();
        batch::delete_all(&self.reverse, &keys).map_err(io_err("deleting from REVERSE"))?;
        destroy::connected_udp_sockets(&udp)
            .map_err(io_err("destroying the connected UDP sockets of removed backends"))
    }

    /// Writes `changes` into map set `set` (names ignore the set), in batches per map;
    /// returns how many entries were written or deleted. Deleting an entry that is not there
    /// is not an error: the entry is gone either way.
    fn write_changes<'a>(
        &self,
        changes: impl Iterator<Item = &'a Change>,
        set: u8,
    ) -> Result<usize> {
        let mut batches = Batches::default();
        for change in changes {
            match change {
                Change::Service(frontend, value) => {
                    let key = state::service_key(frontend, set);
                    match value {
                        Some(entry) => batches.services.0.push((key, state::service_value(entry))),
                        None => batches.services.1.push(key),
                    }
                }
                Change::Slot(slot, value) => {
                    let key = state::slot_key(*slot, set);
                    match value {
                        Some(backend) => batches.slots.0.push((key, *backend)),
                        None => batches.slots.1.push(key),
                    }
                }
                Change::Backend(id, value) => {
                    let key = state::backend_key(*id, set);
                    match value {
                        Some(entry) => batches.backends.0.push((key, state::backend_value(entry))),
                        None => batches.backends.1.push(key),
                    }
                }
                Change::Name(id, value) => match value {
                    Some(name) => batches.names.0.push((*id, state::name_value(name))),
                    None => batches.names.1.push(*id),
                },
                Change::Health(addr, excluded) => {
                    let key = state::health_key(addr);
                    if *excluded {
                        batches.health.0.push((key, 1));
                    } else {
                        batches.health.1.push(key);
                    }
                }
            }
        }
        let what = |map: &str| io_err(format!("writing {map} (set {set})"));
        batches.services.write(&self.services).map_err(what("SERVICES"))?;
        batches.slots.write(&self.slots).map_err(what("SLOTS"))?;
        batches.backends.write(&self.backends).map_err(what("BACKENDS"))?;
        batches.names.write(&self.names).map_err(what("SERVICE_NAMES"))?;
        batches.health.write(&self.health).map_err(what("HEALTH_EXCLUDED"))?;
        Ok(batches.len())
    }
}

/// The values of `ids` in a per-CPU array, summed over CPUs.
fn per_cpu_sums<T: aya::Pod + Default + core::ops::Add<Output = T>>(
    map: &PerCpuArray<MapData, T>,
    ids: impl IntoIterator<Item = u32>,
    what: &'static str,
) -> Result<BTreeMap<u32, T>> {
    ids.into_iter()
        .map(|id| {
            let values = map.get(&id, 0).map_err(map_err(what))?;
            Ok((id, values.iter().fold(T::default(), |sum, v| sum + *v)))
        })
        .collect()
}

/// Upserts and deletes for one map.
struct MapBatch<K, V>(Vec<(K, V)>, Vec<K>);

impl<K, V> Default for MapBatch<K, V> {
    fn default() -> Self {
        MapBatch(Vec::new(), Vec::new())
    }
}

impl<K: aya::Pod, V: aya::Pod> MapBatch<K, V> {
    fn write(&self, map: &MapData) -> io::Result<()> {
        batch::update_all(map, &self.0)?;
        batch::delete_all(map, &self.1)
    }

    fn len(&self) -> usize {
        self.0.len() + self.1.len()
    }
}

#[derive(Default)]
struct Batches {
    services: MapBatch<ServiceKey, ServiceValue>,
    slots: MapBatch<SlotKey, u32>,
    backends: MapBatch<BackendKey, Backend>,
    names: MapBatch<u32, ServiceName>,
    health: MapBatch<HealthKey, u32>,
}

impl Batches {
    fn len(&self) -> usize {
        self.services.len()
            + self.slots.len()
            + self.backends.len()
            + self.names.len()
            + self.health.len()
    }
}

/// Makes sure that everything under `pin_path` named as a data plane's pins is one, and that
/// the directory holds a data plane: a `METADATA` map of this build's layout, or a link. Map
/// pins must be maps of their name; link pins must be cgroup links of reconciler programs.
/// Returns the links, open, with their pin paths.
fn check_pins(pin_path: &Path) -> Result<Vec<(PathBuf, FdLink)>> {
    let foreign = |pin: &Path, reason: String| DataplaneError::ForeignPin {
        path: pin_path.to_owned(),
        pin: pin.to_owned(),
        reason,
    };
    // Whatever has one of our names, dangling symbolic links too, since remove_pins removes
    // it.
    let present = |path: &Path| fs::symlink_metadata(path).is_ok();
    let mut metadata = false;
    for name in pinned_map_names() {
        let path = pin_path.join(name);
        if !present(&path) {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|map| map.info())
            .map_err(|e| foreign(&path, format!("not a BPF map: {e}")))?;
        if info.name_as_str() != Some(name) {
            let found = String::from_utf8_lossy(info.name());
            return Err(foreign(&path, format!("a map named {found:?}")));
        }
        metadata |= name == "METADATA" && info.value_size() as usize == size_of::<Metadata>();
    }
    let mut links = Vec::new();
    for name in PROGRAMS {
        let path = link_pin(pin_path, name);
        if !present(&path) {
            continue;
        }
        let link = FdLink::from(
            PinnedLink::from_pin(&path)
                .map_err(|e| foreign(&path, format!("not a BPF object: {e}")))?,
        );
        let info = link.info().map_err(|e| foreign(&path, format!("not a BPF link: {e}")))?;
        if !matches!(info.link_type(), Ok(LinkType::Cgroup)) {
            return Err(foreign(&path, "not a cgroup link".into()));
        }
        links.push((path, link, info.program_id()));
    }
    let programs = ours::programs(&links.iter().map(|(_, _, program)| *program).collect())?;
    if let Some((path, _, program)) = links.iter().find(|(_, _, p)| !programs.contains_key(p)) {
        return Err(foreign(path, format!("a link of program {program}, which is not ours")));
    }
    if !metadata && links.is_empty() {
        return Err(DataplaneError::NoDataplane { path: pin_path.to_owned() });
    }
    Ok(links.into_iter().map(|(path, link, _)| (path, link)).collect())
}

/// Blocks until this open file description holds the exclusive lock (`flock`) on the
/// directory `dir`; released on drop.
fn lock(dir: &Path) -> Result<fs::File> {
    let what = || format!("locking {}", dir.display());
    let file = fs::File::open(dir).map_err(io_err(what()))?;
    file.lock().map_err(io_err(what()))?;
    Ok(file)
}

/// Removes every pin file the data plane makes under `pin_path` (not the directory).
fn remove_pins(pin_path: &Path) -> Result<()> {
    let links = PROGRAMS.iter().map(|p| link_pin(pin_path, p));
    for path in pinned_map_names().map(|m| pin_path.join(m)).chain(links) {
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err(format!("removing {}", path.display()))(e));
            }
            _ => {}
        }
    }
    Ok(())
}
