//! Installing the data plane (load, pin, attach), opening an installed one from its pins, and
//! uninstalling it.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::EbpfLoader;
use reconciler_common::{Metadata, LAYOUT_VERSION, REVISION_LEN};
use reconciler_core::state::MapState;

use super::{
    apply::{ApplyReport, Readers},
    error::{io_err, map_err, DataplaneError, Result},
    ours,
    pins::{
        self, cgroup_id, check_pins, is_installed, lock, map_data, metadata_map, pinned_active_set,
        remove_pins, statfs_type, typed_map,
    },
    programs::{attach_and_pin, loaded_program},
    upgrade, Dataplane, MAPS, OBJECT, PROGRAMS,
};

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
    /// (see `pins`). Refuses a cgroup that has another data plane attached (see
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
        let created = pins::create_dir(pin_path)?;
        pins::check_dir(pin_path)?;
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
            let map = ebpf.map(name).ok_or(DataplaneError::MissingMap { name })?;
            map.pin(pin_path.join(name)).map_err(|error| DataplaneError::Pin {
                what: format!("pinning map {name}"),
                error,
            })?;
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
            slots: map_data(pin_path, "SLOTS")?,
            backends: map_data(pin_path, "BACKENDS")?,
            backend_counts: typed_map(pin_path, "BACKEND_COUNTS")?,
            service_counts: typed_map(pin_path, "SERVICE_COUNTS")?,
            events: typed_map(pin_path, "EVENTS")?,
            reverse: map_data(pin_path, "REVERSE")?,
            affinity: map_data(pin_path, "AFFINITY")?,
            affinity_events: typed_map(pin_path, "AFFINITY_EVENTS")?,
            metadata: typed_map(pin_path, "METADATA")?,
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
        if statfs_type(pin_path)? != libc::BPF_FS_MAGIC {
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
}
