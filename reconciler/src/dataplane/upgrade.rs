//! Upgrades in place: a data plane pinned by an older build (an older layout, or one whose
//! install stopped before all its links were pinned) is brought up to this build without a
//! connect failing and without touching what it serves.
//!
//! 1. The maps: every pinned map is reused as it is (the new object is loaded against the
//!    pins, `EbpfLoader::map_pin_path`), and the maps this build adds are created and pinned
//!    then, so they exist before any program that reads them runs. Each reused map is
//!    checked against this build's definition first (aya reuses a pin as it finds it). The
//!    changes to existing maps are migrated by `migrate`: a counter array grown (`EVENTS` in
//!    layout 5: the old pin set aside, a new map created, the counts copied), counters moved
//!    to new maps (layout 6: the sums copied), and a map derived from another (`VIPS` from
//!    `SERVICES`) filled, all before step 2.
//! 2. The programs: each hook that has a pinned link gets the new program through
//!    `BPF_LINK_UPDATE`, which swaps the program in one step (a connect runs the old program
//!    or the new one, never none); each hook without one is attached and its link pinned.
//! 3. The pins of maps this build retired are removed, as no program reads them now.
//! 4. `METADATA` records the new layout version, last: a crash before it repeats the upgrade.
use std::{
    ffi::CString,
    fs, io, mem,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::Path,
};

use aya::maps::MapData;
use aya_obj::generated::{bpf_attr, bpf_cmd};
use reconciler_common::LAYOUT_VERSION;

use super::{
    error::{io_err, map_err, DataplaneError, Result},
    migrate,
    pins::{
        self, default_cgroup, is_installed, link_pin, lock, metadata_map, pinned_layout_version,
    },
    programs::{attach_and_pin, load_against_pins, with_loaded_program},
    sizes, sys, MAPS, OBJECT, PROGRAMS, RETIRED_MAPS,
};

/// What an upgrade did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgraded {
    /// The layout version the data plane had.
    pub from_layout: u32,
    /// Hooks whose program was replaced in its link.
    pub replaced: Vec<&'static str>,
    /// Hooks attached anew.
    pub attached: Vec<&'static str>,
}

/// Brings the data plane at `pin_path` up to this build (see the module docs); `None` when
/// it already is, or when none is installed there.
pub fn upgrade(pin_path: &Path) -> Result<Option<Upgraded>> {
    if !is_installed(pin_path) {
        return Ok(None);
    }
    pins::check_dir(pin_path)?;
    let _lock = lock(pin_path)?;
    upgrade_locked(pin_path)
}

/// [`upgrade`], for a caller that holds the pin directory's lock.
pub(super) fn upgrade_locked(pin_path: &Path) -> Result<Option<Upgraded>> {
    let from_layout = pinned_layout_version(pin_path)
        .ok_or_else(|| DataplaneError::NoMetadata { path: pin_path.to_owned() })?;
    let missing: Vec<&'static str> =
        PROGRAMS.iter().copied().filter(|p| !link_pin(pin_path, p).exists()).collect();
    if from_layout == LAYOUT_VERSION && missing.is_empty() {
        return Ok(None);
    }
    if from_layout > LAYOUT_VERSION {
        return Err(DataplaneError::LayoutMismatch {
            path: pin_path.to_owned(),
            found: from_layout,
            expected: LAYOUT_VERSION,
        });
    }
    // Links and maps pinned here by anyone else are never replaced or reused.
    pins::check_pins(pin_path)?;
    migrate::set_aside_outgrown(pin_path)?;
    check_reused_maps(pin_path)?;
    let mut ebpf = load_against_pins(pin_path)?;
    migrate::copy_outgrown_counts(pin_path)?;
    migrate::copy_moved_counters(pin_path)?;
    migrate::fill_vips(pin_path)?;

    let mut metadata = metadata_map(pin_path)?;
    let mut record = metadata.get(&0, 0).map_err(map_err("reading METADATA"))?;
    let cgroup = if missing.is_empty() { None } else { Some(cgroup_of(record.cgroup_id)?) };
    let mut upgraded = Upgraded { from_layout, replaced: Vec::new(), attached: Vec::new() };
    for name in PROGRAMS {
        // `cgroup` was found above whenever a hook is missing.
        if let Some(cgroup) = cgroup.as_ref().filter(|_| missing.contains(&name)) {
            attach_and_pin(&mut ebpf, name, cgroup, pin_path)?;
            upgraded.attached.push(name);
            continue;
        }
        with_loaded_program(&mut ebpf, name, |fd| replace_program(&link_pin(pin_path, name), fd))?
            .map_err(io_err(format!("replacing the program of link_{name}")))?;
        upgraded.replaced.push(name);
    }
    // No program reads a retired map any more: its pin goes.
    for name in RETIRED_MAPS {
        match fs::remove_file(pin_path.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err(format!("removing the retired map {name}"))(e));
            }
            _ => {}
        }
    }
    record.layout_version = LAYOUT_VERSION;
    metadata.set(0, record, 0).map_err(map_err("writing METADATA"))?;
    Ok(Some(upgraded))
}

/// Refuses to reuse a pinned map whose key size, value size or capacity differs from this
/// build's definition of it: the new programs would read a map they were not built for.
fn check_reused_maps(pin_path: &Path) -> Result<()> {
    let object = aya_obj::Object::parse(OBJECT).map_err(DataplaneError::ParseObject)?;
    // The maps sized by the capacity are checked against the installed one.
    let sized = sizes::map_sizes(&sizes::installed(pin_path)?);
    for name in MAPS {
        let pin = pin_path.join(name);
        let Some(definition) = object.maps.get(name).filter(|_| pin.exists()) else {
            continue;
        };
        let info = MapData::from_pin(&pin)
            .and_then(|map| map.info())
            .map_err(map_err(format!("reading pinned map {name}")))?;
        let shape =
            |key, value, entries| format!("key {key} B, value {value} B, {entries} entries");
        let pinned = shape(info.key_size(), info.value_size(), info.max_entries());
        let entries = sized
            .iter()
            .find(|(sized, _)| *sized == name)
            .map_or(definition.max_entries(), |(_, entries)| *entries);
        let wanted = shape(definition.key_size(), definition.value_size(), entries);
        if pinned != wanted {
            return Err(DataplaneError::MapShapeChanged { name, pinned, wanted });
        }
    }
    Ok(())
}

/// The cgroup v2 directory whose ID (its inode) is `id`, found under the cgroup2 mount.
fn cgroup_of(id: u64) -> Result<fs::File> {
    let root = default_cgroup()?;
    let mut pending = vec![root];
    while let Some(dir) = pending.pop() {
        let meta = pins::metadata(&dir)?;
        if meta.ino() == id {
            return fs::File::open(&dir).map_err(io_err(format!("opening {}", dir.display())));
        }
        for entry in fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))? {
            let Ok(entry) = entry else { continue };
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    Err(DataplaneError::NoCgroupWithId { id })
}

/// `BPF_LINK_UPDATE` of the link pinned at `pin` to `program` (aya 0.14 keeps its wrapper
/// private): the kernel swaps the link's program atomically.
fn replace_program(pin: &Path, program: BorrowedFd<'_>) -> io::Result<()> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    // SAFETY: bpf_attr is plain data; zero is "no flags, no options" for every command.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    let link = sys::bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(link) };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.link_update.link_fd = link.as_raw_fd() as u32;
    attr.link_update.__bindgen_anon_1.new_prog_fd = program.as_raw_fd() as u32;
    sys::bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(|_| ())
}
