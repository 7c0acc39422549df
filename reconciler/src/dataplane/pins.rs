//! The pin directory and what is pinned in it: the paths of the pins, opening them, telling
//! ours from anything else, removing them, and the lock that serialises installs and applies.
//!
//! Who may change the pin directory: whoever can write it can swap a pinned map or link for
//! their own, and whoever can write a directory above it can move it away and put another
//! in its place: either way the next apply writes what they chose. So the pin directory
//! must belong to this process's user and be writable by nobody else, and every directory
//! above it on the bpffs must belong to root or this user and be writable by nobody else
//! unless it has the sticky bit (which stops others renaming what is not theirs).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData, MapError},
    programs::links::{FdLink, LinkType, PinnedLink},
};
use reconciler_common::Metadata;

use super::{
    error::{io_err, map_err, DataplaneError, Result},
    ours, GROWN_MAPS, MAPS, PROGRAMS, RETIRED_MAPS,
};

/// Every map name a data plane of ours may have pinned.
fn pinned_map_names() -> impl Iterator<Item = &'static str> {
    MAPS.into_iter().chain(RETIRED_MAPS)
}

/// Whether a data plane is pinned at `pin_path`: the connect links, which every layout has
/// and every install pins first among its links. Hooks a newer build adds (or an install
/// that stopped early left out) are attached by [`upgrade`](super::upgrade()).
pub fn is_installed(pin_path: &Path) -> bool {
    PROGRAMS[..2].iter().all(|p| link_pin(pin_path, p).exists())
}

pub(super) fn link_pin(pin_path: &Path, program: &str) -> PathBuf {
    pin_path.join(format!("link_{program}"))
}

/// The filesystem type (`f_type`) of `path`, to compare with libc's `*_MAGIC` constants.
/// On glibc targets `f_type` has their type (`long`), so they compare as they are; a cast
/// to a wider type would sign-extend a magic with its top bit set (bpffs' `0xcafe4a11`)
/// where `long` is 32 bits, and it would never match.
pub(super) fn statfs_type(path: &Path) -> Result<libc::c_long> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| DataplaneError::NulInPath { path: path.to_owned() })?;
    // SAFETY: statfs is plain data, for which all zeroes is a valid value.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and buf is a valid statfs buffer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut buf) } != 0 {
        return Err(io_err(format!("statfs {}", path.display()))(io::Error::last_os_error()));
    }
    Ok(buf.f_type)
}

/// The cgroup ID the kernel uses for `path`: the cgroup directory's inode number.
pub(super) fn cgroup_id(path: &Path) -> Result<u64> {
    if statfs_type(path)? != libc::CGROUP2_SUPER_MAGIC {
        return Err(DataplaneError::NotCgroup2 { path: path.to_owned() });
    }
    let meta = metadata(path)?;
    Ok(meta.ino())
}

/// The mount point of the first cgroup2 filesystem in /proc/self/mounts.
pub fn default_cgroup() -> Result<PathBuf> {
    cgroup2_mounts()?.into_iter().next().ok_or(DataplaneError::NoCgroup2Mount)
}

/// The mount points of the cgroup2 filesystems in /proc/self/mounts, in its order.
pub(super) fn cgroup2_mounts() -> Result<Vec<PathBuf>> {
    let mounts =
        fs::read_to_string("/proc/self/mounts").map_err(io_err("reading /proc/self/mounts"))?;
    Ok(mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .collect())
}

/// The `METADATA` map pinned at `pin_path`.
pub(super) fn metadata_map(pin_path: &Path) -> Result<Array<MapData, Metadata>> {
    Map::from_map_data(map_data(pin_path, "METADATA")?)
        .map_err(map_err("opening METADATA"))?
        .try_into()
        .map_err(map_err("map METADATA has an unexpected type"))
}

/// The kernel's ID of the `ACTIVE_SET` map pinned at `pin_path`, if one is there: what tells
/// this data plane's programs from another's.
pub(super) fn pinned_active_set(pin_path: &Path) -> Option<u32> {
    Some(map_data(pin_path, "ACTIVE_SET").ok()?.info().ok()?.id())
}

/// The layout version recorded in the `METADATA` pinned at `pin_path`, if one is there.
/// (`Metadata` itself has kept its layout in every version.)
pub(super) fn pinned_layout_version(pin_path: &Path) -> Option<u32> {
    metadata_map(pin_path).ok()?.get(&0, 0).ok().map(|m| m.layout_version)
}

pub(super) fn map_data(pin_path: &Path, name: &str) -> Result<MapData> {
    let path = pin_path.join(name);
    MapData::from_pin(&path).map_err(map_err(format!("opening {}", path.display())))
}

fn open_map(pin_path: &Path, name: &str) -> Result<Map> {
    Map::from_map_data(map_data(pin_path, name)?)
        .map_err(map_err(format!("opening {}", pin_path.join(name).display())))
}

/// The map `name` pinned at `pin_path`, as the map type `T` (an `Array`, a `RingBuf`, ...).
pub(super) fn typed_map<T: TryFrom<Map, Error = MapError>>(
    pin_path: &Path,
    name: &str,
) -> Result<T> {
    open_map(pin_path, name)?
        .try_into()
        .map_err(map_err(format!("map {name} has an unexpected type")))
}

/// Makes sure that everything under `pin_path` named as a data plane's pins is this data
/// plane's, and that the directory holds a data plane: a `METADATA` map of this build's
/// layout, or a link. Map pins must be maps of their name; link pins must be cgroup links of
/// reconciler programs whose `ACTIVE_SET` is the one pinned here, and every map those
/// programs use under one of our names must be the one pinned under it. Returns the links,
/// open, with their pin paths.
pub(super) fn check_pins(pin_path: &Path) -> Result<Vec<(PathBuf, FdLink, u32)>> {
    let maps = check_map_pins(pin_path)?;
    let links = check_link_pins(pin_path, &maps)?;
    if !maps.metadata && links.is_empty() {
        return Err(DataplaneError::NoDataplane { path: pin_path.to_owned() });
    }
    Ok(links)
}

/// Before a new install removes what one that stopped early left at `pin_path`: every pin
/// with one of our names is ours as [`check_pins`] says, and no program but those linked here
/// uses a map pinned here (a map of a data plane elsewhere, pinned here too, is never
/// replaced).
pub(super) fn check_leftovers(pin_path: &Path) -> Result<()> {
    let maps = check_map_pins(pin_path)?;
    let links = check_link_pins(pin_path, &maps)?;
    let pinned: BTreeSet<u32> = maps.ids.values().map(|(_, id)| *id).collect();
    if pinned.is_empty() {
        return Ok(());
    }
    let linked: BTreeSet<u32> = links.iter().map(|(_, _, program)| *program).collect();
    let Some((program, map)) = ours::used_elsewhere(&pinned, &linked) else {
        return Ok(());
    };
    let pin = maps.ids.iter().find(|(_, (_, id))| *id == map).map(|(pin, _)| pin_path.join(pin));
    Err(DataplaneError::ForeignPin {
        path: pin_path.to_owned(),
        pin: pin.unwrap_or_else(|| pin_path.to_owned()),
        reason: format!(
            "map {map}, which program {program} uses and no link here attaches: another data \
             plane's or another tool's, not left by an install of this directory"
        ),
    })
}

/// The maps pinned under our names: by pin name, the kernel's name and ID of each; and
/// whether `METADATA` is this build's.
struct PinnedMaps {
    ids: BTreeMap<&'static str, (String, u32)>,
    metadata: bool,
}

/// Refuses a pin under one of our map names that is not a map of that name.
fn check_map_pins(pin_path: &Path) -> Result<PinnedMaps> {
    let mut maps = PinnedMaps { ids: BTreeMap::new(), metadata: false };
    for name in pinned_map_names() {
        let path = pin_path.join(name);
        if !present(&path) {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|map| map.info())
            .map_err(|e| foreign(pin_path, &path, format!("not a BPF map: {e}")))?;
        // A map set aside by an upgrade keeps its own name (the kernel's, at most 15 bytes).
        let own_name =
            GROWN_MAPS.iter().find(|(_, aside)| *aside == name).map_or(name, |(own, _)| own);
        if info.name_as_str() != Some(own_name) {
            let found = String::from_utf8_lossy(info.name());
            return Err(foreign(pin_path, &path, format!("a map named {found:?}")));
        }
        maps.metadata |= name == "METADATA" && info.value_size() as usize == size_of::<Metadata>();
        maps.ids.insert(name, (own_name.to_owned(), info.id()));
    }
    Ok(maps)
}

/// Refuses a link pin that is not a cgroup link of this data plane's program (see
/// [`check_pins`]); the links, open, with their pin paths and program IDs.
fn check_link_pins(pin_path: &Path, maps: &PinnedMaps) -> Result<Vec<(PathBuf, FdLink, u32)>> {
    let mut links = Vec::new();
    for name in PROGRAMS {
        let path = link_pin(pin_path, name);
        if !present(&path) {
            continue;
        }
        let link = FdLink::from(
            PinnedLink::from_pin(&path)
                .map_err(|e| foreign(pin_path, &path, format!("not a BPF object: {e}")))?,
        );
        let info =
            link.info().map_err(|e| foreign(pin_path, &path, format!("not a BPF link: {e}")))?;
        if !matches!(info.link_type(), Ok(LinkType::Cgroup)) {
            return Err(foreign(pin_path, &path, "not a cgroup link".into()));
        }
        links.push((path, link, info.program_id()));
    }
    let programs = ours::programs(&links.iter().map(|(_, _, program)| *program).collect())?;
    for (path, _, program) in &links {
        let Some(used) = programs.get(program) else {
            let reason = format!("a link of program {program}, which is not ours");
            return Err(foreign(pin_path, path, reason));
        };
        if let Some(error) = not_this_data_planes(pin_path, (path, *program), used, maps) {
            return Err(error);
        }
    }
    Ok(links)
}

/// Why the link at `path` of program `program`, which uses `used`, is not this data plane's
/// (whose maps are `pinned`), as the error naming the pin that is not: the link, when its
/// program has another `ACTIVE_SET`; the map pin, when the program uses another map under
/// that pin's name (a map an upgrade set aside counts under its own name).
fn not_this_data_planes(
    pin_path: &Path,
    (path, program): (&Path, u32),
    used: &ours::ProgramMaps,
    pinned: &PinnedMaps,
) -> Option<DataplaneError> {
    let pinned_as = |name: &str| -> BTreeMap<&'static str, u32> {
        pinned
            .ids
            .iter()
            .filter(|(_, (own, _))| own == name)
            .map(|(pin, (_, id))| (*pin, *id))
            .collect()
    };
    if !pinned_as("ACTIVE_SET").values().any(|&id| id == used.active_set) {
        let reason = format!(
            "a link of program {program} of another data plane (its ACTIVE_SET is map {}, not \
             the one pinned here)",
            used.active_set
        );
        return Some(foreign(pin_path, path, reason));
    }
    used.by_name.iter().find_map(|(name, id)| {
        let pins = pinned_as(name);
        let (pin, other) = pins.iter().next()?;
        (!pins.values().any(|p| p == id)).then(|| {
            let reason = format!(
                "map {other}, but the programs linked here use map {id} as {name}: another's \
                 map, never reused or replaced"
            );
            foreign(pin_path, &pin_path.join(pin), reason)
        })
    })
}

/// Whether anything is at `path`: dangling symbolic links too, since `remove_pins` removes
/// whatever has one of our names.
fn present(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// The error for `pin` under `pin_path`, not ours for `reason`.
fn foreign(pin_path: &Path, pin: &Path, reason: String) -> DataplaneError {
    DataplaneError::ForeignPin { path: pin_path.to_owned(), pin: pin.to_owned(), reason }
}

/// Blocks until this open file description holds the exclusive lock (`flock`) on the
/// directory `dir`; released on drop.
pub(super) fn lock(dir: &Path) -> Result<fs::File> {
    let what = || format!("locking {}", dir.display());
    let file = fs::File::open(dir).map_err(io_err(what()))?;
    file.lock().map_err(io_err(what()))?;
    Ok(file)
}

/// Removes every pin file the data plane makes under `pin_path` (not the directory).
pub(super) fn remove_pins(pin_path: &Path) -> Result<()> {
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

/// Mode of the directories install creates.
const DIR_MODE: u32 = 0o700;
const GROUP_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// Creates the missing directories of `pin_path` with mode 0700, whatever the umask; returns
/// whether it created `pin_path` itself. Creates nothing unless the deepest existing one is
/// on a bpffs and passes [`check_dir`]'s rules for directories above the pin directory.
pub(super) fn create_dir(pin_path: &Path) -> Result<bool> {
    let absolute = std::path::absolute(pin_path)
        .map_err(io_err(format!("resolving {}", pin_path.display())))?;
    let missing: Vec<&Path> = absolute.ancestors().take_while(|dir| !dir.exists()).collect();
    if missing.is_empty() {
        return Ok(false);
    }
    let existing = absolute.ancestors().nth(missing.len()).unwrap_or(Path::new("/"));
    let existing =
        fs::canonicalize(existing).map_err(io_err(format!("resolving {}", existing.display())))?;
    if statfs_type(&existing)? != libc::BPF_FS_MAGIC {
        return Err(DataplaneError::NotBpffs { path: pin_path.to_owned() });
    }
    check_ancestors(pin_path, &existing)?;
    let mut created = false;
    for dir in missing.into_iter().rev() {
        // Created with 0700 (less if the umask says so), never wider, so a concurrent
        // install that finds it half made still accepts it.
        created = match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
            Ok(()) => {
                fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
                    .map_err(io_err(format!("setting the mode of {}", dir.display())))?;
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_err(format!("creating {}", dir.display()))(e)),
        };
    }
    Ok(created)
}

/// Refuses `pin_path` unless it is a bpffs directory that only this process's user can
/// change (see the module docs). Symbolic links are followed: the rules apply to the
/// directories the path really reaches.
pub(super) fn check_dir(pin_path: &Path) -> Result<()> {
    let real =
        fs::canonicalize(pin_path).map_err(io_err(format!("resolving {}", pin_path.display())))?;
    if statfs_type(&real)? != libc::BPF_FS_MAGIC {
        return Err(DataplaneError::NotBpffs { path: pin_path.to_owned() });
    }
    let euid = euid();
    let meta = metadata(&real)?;
    if !meta.is_dir() {
        return Err(DataplaneError::NotADirectory { path: pin_path.to_owned() });
    }
    if meta.uid() != euid {
        return Err(DataplaneError::PinDirOwner {
            path: pin_path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    if meta.mode() & GROUP_OTHER_WRITE != 0 {
        return Err(DataplaneError::PinDirMode {
            path: pin_path.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    match real.parent() {
        Some(parent) => check_ancestors(pin_path, parent),
        None => Ok(()),
    }
}

/// Checks `dir` and the directories above it, up to the bpffs mount point, as directories
/// above the pin directory `pin_path`.
fn check_ancestors(pin_path: &Path, dir: &Path) -> Result<()> {
    let euid = euid();
    for ancestor in dir.ancestors() {
        // The bpffs mount point cannot be renamed (EBUSY), so nothing above it can move the
        // pin directory.
        if statfs_type(ancestor)? != libc::BPF_FS_MAGIC {
            break;
        }
        let meta = metadata(ancestor)?;
        let mode = meta.mode() & 0o7777;
        if mode & GROUP_OTHER_WRITE != 0 && mode & STICKY == 0 {
            return Err(DataplaneError::AncestorMode {
                path: pin_path.to_owned(),
                ancestor: ancestor.to_owned(),
                mode,
            });
        }
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(DataplaneError::AncestorOwner {
                path: pin_path.to_owned(),
                ancestor: ancestor.to_owned(),
                owner: meta.uid(),
            });
        }
    }
    Ok(())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

pub(super) fn metadata(path: &Path) -> Result<fs::Metadata> {
    fs::metadata(path).map_err(io_err(format!("stat {}", path.display())))
}
