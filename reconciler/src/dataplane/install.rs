//! Installing the data plane (load, pin, attach), opening an installed one from its pins, and
//! uninstalling it.
use std::{
    collections::BTreeSet,
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use reconciler_common::{Metadata, LAYOUT_VERSION, REVISION_LEN};
use reconciler_core::{
    capacity::{Capacity, DEFAULT},
    state::MapState,
};

use super::{
    apply::ApplyReport,
    error::{io_err, map_err, DataplaneError, Result},
    ours,
    pins::{
        self, cgroup_id, check_pins, is_installed, lock, map_data, metadata_map, pinned_active_set,
        remove_pins, statfs_type, typed_map,
    },
    programs::{attach_and_pin, load_program},
    sizes::sized_loader,
    upgrade, Dataplane, MAPS, OBJECT, PROGRAMS,
};

/// How long an uninstall waits for its programs to detach (they do within milliseconds).
const UNLOAD_WAIT: Duration = Duration::from_secs(2);

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

/// The BPF object loaded, its maps created at a capacity and its programs verified, but
/// nothing pinned or attached: a good part of an install's time, so a first apply does it on
/// another core while it validates the definitions. Dropped unused, it leaves nothing behind.
pub struct Loaded(aya::Ebpf, Capacity);

impl Loaded {
    pub fn load(capacity: &Capacity) -> Result<Loaded> {
        let mut ebpf = sized_loader(capacity).load(OBJECT).map_err(DataplaneError::Load)?;
        for name in PROGRAMS {
            load_program(&mut ebpf, name)?;
        }
        Ok(Loaded(ebpf, *capacity))
    }
}

/// An install, set up as aya's `EbpfLoader` is: [`new`](Self::new) says where, the options
/// say how, [`run`](Self::run) does it. [`Dataplane::install`] is the plain case.
///
/// ```no_run
/// # fn example(
/// #     pin_path: &std::path::Path,
/// #     cgroup: &std::path::Path,
/// #     desired: &reconciler_core::state::MapState,
/// # ) -> Result<(), reconciler::dataplane::DataplaneError> {
/// use reconciler::dataplane::{Install, Loaded};
///
/// // Loading takes most of an install's time: start it, validate meanwhile.
/// let loading = std::thread::spawn(|| Loaded::load(&reconciler_core::capacity::DEFAULT));
/// let loaded = loading.join().expect("the loading thread panicked")?;
/// let (dataplane, report) =
///     Install::new(pin_path, cgroup).loaded(Some(loaded)).fill(desired, Some("r1")).run()?;
/// # Ok(())
/// # }
/// ```
#[must_use = "an install does nothing until it runs"]
pub struct Install<'a> {
    pin_path: &'a Path,
    cgroup: &'a Path,
    loaded: Option<Loaded>,
    capacity: Capacity,
    fill: Option<(&'a MapState, Option<&'a str>)>,
}

impl<'a> Install<'a> {
    /// An install of the data plane with its pins under `pin_path`, its programs attached to
    /// the cgroup v2 directory `cgroup`.
    pub fn new(pin_path: &'a Path, cgroup: &'a Path) -> Self {
        Install { pin_path, cgroup, loaded: None, capacity: DEFAULT, fill: None }
    }

    /// The maps' capacity (default: [`DEFAULT`]); an object [`loaded`](Self::loaded) ahead
    /// at another one is loaded again at this one.
    pub fn capacity(mut self, capacity: Capacity) -> Self {
        self.capacity = capacity;
        self
    }

    /// The BPF object loaded ahead ([`Loaded::load`], on another thread, say), if it was;
    /// without it, [`run`](Self::run) loads the object itself.
    pub fn loaded(mut self, loaded: Option<Loaded>) -> Self {
        self.loaded = loaded;
        self
    }

    /// Applies `desired`, recording `revision`, before the programs are attached: both sets
    /// are written at once, as no program reads them yet. The report is [`run`](Self::run)'s.
    pub fn fill(mut self, desired: &'a MapState, revision: Option<&'a str>) -> Self {
        self.fill = Some((desired, revision));
        self
    }

    /// Loads the programs, pins maps and links under the pin path and attaches the programs
    /// to the cgroup. An existing complete install at the pin path is reused as it is (after
    /// an upgrade to this build, if it needs one); then nothing is filled, and the report is
    /// `None`, as it is without [`fill`](Self::fill).
    ///
    /// Creates the pin directory with mode 0700 and refuses one that others could change
    /// (see `pins`). Refuses a cgroup that has another data plane attached (see
    /// `ours::check_cgroup`).
    pub fn run(self) -> Result<(Dataplane, Option<ApplyReport>)> {
        let requested = cgroup_id(self.cgroup)?;
        // Held throughout: installs at two pin paths on one cgroup at once take turns, so the
        // second sees the first's programs and is refused (one data plane per cgroup).
        let cgroup_dir = lock(self.cgroup)?;
        let created = pins::create_dir(self.pin_path)?;
        pins::check_dir(self.pin_path)?;
        // Held until the links are pinned: a concurrent install at this pin path waits here,
        // then finds a complete install to reuse instead of pinning over this one's maps.
        let _lock = lock(self.pin_path)?;
        if is_installed(self.pin_path) {
            return Ok((self.reuse(&cgroup_dir, requested)?, None));
        }
        self.start_afresh(&cgroup_dir, created)?;
        let mut ebpf = match self.loaded {
            Some(Loaded(ebpf, capacity)) if capacity == self.capacity => ebpf,
            _ => sized_loader(&self.capacity).load(OBJECT).map_err(DataplaneError::Load)?,
        };
        let mut dataplane = Dataplane::pin_maps(&ebpf, self.pin_path, requested)?;
        // A crash from here until the links are pinned leaves an unfinished install, which
        // the next one removes (`start_afresh`).
        let report = match self.fill {
            Some((desired, revision)) => Some(dataplane.fill(desired, revision)?),
            None => None,
        };
        for name in PROGRAMS {
            attach_and_pin(&mut ebpf, name, &cgroup_dir, self.pin_path)?;
        }
        Ok((dataplane, report))
    }

    /// The complete install found at the pin path, brought up to this build, if it is on the
    /// cgroup asked for (`requested`, its ID) and alone there.
    fn reuse(&self, cgroup_dir: &fs::File, requested: u64) -> Result<Dataplane> {
        upgrade::upgrade_locked(self.pin_path)?;
        let dataplane = Dataplane::open(self.pin_path)?;
        let installed = dataplane.read_metadata()?.cgroup_id;
        if installed != requested {
            return Err(DataplaneError::OtherCgroup {
                path: self.pin_path.to_owned(),
                installed,
                requested,
            });
        }
        let own = pinned_active_set(self.pin_path);
        ours::check_cgroup(cgroup_dir, self.cgroup, self.pin_path, own)?;
        Ok(dataplane)
    }

    /// Refuses a cgroup that another data plane has (removing the pin directory again if
    /// this install `created` it), then removes what an unfinished install left at the pin
    /// path.
    fn start_afresh(&self, cgroup_dir: &fs::File, created: bool) -> Result<()> {
        // Programs of an unfinished install here are its own, and go with its pins below.
        let own = pinned_active_set(self.pin_path);
        if let Err(e) = ours::check_cgroup(cgroup_dir, self.cgroup, self.pin_path, own) {
            if created {
                let _ = fs::remove_dir(self.pin_path);
            }
            return Err(e);
        }
        // Pins without all links are left by an install that did not finish; start again
        // from nothing, once they are known to be its own.
        pins::check_leftovers(self.pin_path)?;
        remove_pins(self.pin_path)
    }
}

impl Dataplane {
    /// Loads the programs, pins maps and links under `pin_path` and attaches the programs to
    /// `cgroup`: [`Install`] with no option, the report left out.
    pub fn install(pin_path: &Path, cgroup: &Path) -> Result<Self> {
        Ok(Install::new(pin_path, cgroup).run()?.0)
    }

    /// Pins the maps of `ebpf` under `pin_path` and opens them, as a new install on the cgroup
    /// whose ID is `cgroup_id`: set 0 active, generation 0, no revision.
    fn pin_maps(ebpf: &aya::Ebpf, pin_path: &Path, cgroup_id: u64) -> Result<Self> {
        for name in MAPS {
            let map = ebpf.map(name).ok_or(DataplaneError::MissingMap { name })?;
            map.pin(pin_path.join(name)).map_err(|error| DataplaneError::Pin {
                what: format!("pinning map {name}"),
                error,
            })?;
        }
        let mut dataplane = Self::open_maps(pin_path)?;
        dataplane.active_set.set(0, 0, 0).map_err(map_err("initialising ACTIVE_SET"))?;
        dataplane.write_metadata(&Metadata {
            layout_version: LAYOUT_VERSION,
            standby_dirty: 0,
            _pad: [0; 3],
            generation: 0,
            cgroup_id,
            applied_at_unix: 0,
            revision: [0; REVISION_LEN],
            revision_len: 0,
            _pad2: [0; 7],
        })?;
        Ok(dataplane)
    }

    /// Opens the data plane pinned at `pin_path`; refuses a pin directory that others could
    /// change, as install does.
    pub fn open(pin_path: &Path) -> Result<Self> {
        if !is_installed(pin_path) {
            return Err(DataplaneError::NotInstalled { path: pin_path.to_owned() });
        }
        pins::check_dir(pin_path)?;
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
            active_set: typed_map(pin_path, "ACTIVE_SET")?,
            services: map_data(pin_path, "SERVICES")?,
            vips: map_data(pin_path, "VIPS")?,
            slots: map_data(pin_path, "SLOTS")?,
            backends: map_data(pin_path, "BACKENDS")?,
            backend_counters: typed_map(pin_path, "BACKEND_TOTALS")?,
            backend_flows: typed_map(pin_path, "BACKEND_FLOWS")?,
            handshakes: typed_map(pin_path, "HANDSHAKES")?,
            service_counters: typed_map(pin_path, "SERVICE_TOTALS")?,
            events: typed_map(pin_path, "EVENTS")?,
            reverse: map_data(pin_path, "REVERSE")?,
            affinity: map_data(pin_path, "AFFINITY")?,
            affinity_events: typed_map(pin_path, "AFFINITY_EVENTS")?,
            metadata: typed_map(pin_path, "METADATA")?,
            names: map_data(pin_path, "SERVICE_NAMES")?,
            health: map_data(pin_path, "HEALTH_EXCLUDED")?,
            excluded: typed_map(pin_path, "EXCLUDED")?,
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
        if statfs_type(pin_path)? != libc::BPF_FS_MAGIC {
            return Err(DataplaneError::UninstallNotBpffs { path: pin_path.to_owned() });
        }
        if !meta.is_dir() {
            return Err(DataplaneError::NotADirectory { path: pin_path.to_owned() });
        }
        let mut programs = BTreeSet::new();
        for (path, link, program) in check_pins(pin_path)? {
            fs::remove_file(&path).map_err(io_err(format!("unpinning {}", path.display())))?;
            drop(link);
            programs.insert(program);
        }
        // The pin's own reference goes when the kernel frees its inode, after an RCU grace
        // period, and the link detaches later still (from a work queue): until then an
        // install on the cgroup would find these programs attached and be refused.
        ours::wait_unloaded(&programs, UNLOAD_WAIT);
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
}
