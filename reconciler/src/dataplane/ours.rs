//! Telling this project's programs from others'. The kernel knows a program by its ID, its
//! name and the maps it uses, not by where anything is pinned; the map names are the most
//! telling of these.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io, mem,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapInfo},
    programs::loaded_programs,
};
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd};

use super::error::{io_err, map_err, DataplaneError, Result};

/// One data plane per cgroup. Two on one cgroup both run on every connect, in the order they
/// were attached: the older rewrites the VIP to one of its backends, and the newer then sees
/// a backend's address, no VIP; so for every service the older knows, nothing applied to the
/// newer takes effect. Refuses if `cgroup` has programs of a data plane other than the one
/// whose `ACTIVE_SET` map is `own` (`None`: none yet), naming where that one is pinned if it
/// is beside `pin_path`.
///
/// Only programs attached to `cgroup` itself count. A data plane on an ancestor cgroup runs
/// for this cgroup's connects too, but after this cgroup's own programs (the kernel runs a
/// cgroup's programs before its ancestors'), so one here overrides it for this subtree, as
/// someone may well want.
pub(super) fn check_cgroup(
    cgroup_dir: &fs::File,
    cgroup: &Path,
    pin_path: &Path,
    own: Option<u32>,
) -> Result<()> {
    let mut attached = BTreeSet::new();
    // Every hook a data plane attaches (a partial one still takes connects).
    for attach_type in [
        bpf_attach_type::BPF_CGROUP_INET4_CONNECT,
        bpf_attach_type::BPF_CGROUP_INET6_CONNECT,
        bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG,
        bpf_attach_type::BPF_CGROUP_UDP6_SENDMSG,
        bpf_attach_type::BPF_CGROUP_UDP4_RECVMSG,
        bpf_attach_type::BPF_CGROUP_UDP6_RECVMSG,
        bpf_attach_type::BPF_CGROUP_INET4_GETPEERNAME,
        bpf_attach_type::BPF_CGROUP_INET6_GETPEERNAME,
        bpf_attach_type::BPF_CGROUP_SOCK_OPS,
    ] {
        attached.extend(
            attached_programs(cgroup_dir, attach_type).map_err(io_err(format!(
                "listing the programs attached to {}",
                cgroup.display()
            )))?,
        );
    }
    let others: BTreeMap<u32, u32> = programs(&attached)?
        .into_iter()
        .map(|(id, maps)| (id, maps.active_set))
        .filter(|(_, set)| Some(*set) != own)
        .collect();
    let Some(&active_set) = others.values().next() else {
        return Ok(());
    };
    Err(DataplaneError::CgroupTaken {
        cgroup: cgroup.to_owned(),
        path: pin_path.to_owned(),
        programs: others.into_keys().collect(),
        other: pinned_beside(pin_path, active_set),
    })
}

/// IDs of the programs attached to the cgroup `cgroup_dir` itself for `attach_type`, by
/// BPF_PROG_QUERY (aya 0.14 keeps its own wrapper private).
fn attached_programs(cgroup_dir: &fs::File, attach_type: bpf_attach_type) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 8];
    loop {
        // SAFETY: bpf_attr is plain data; all zeroes is a valid value (no flags, no options).
        let mut attr: bpf_attr = unsafe { mem::zeroed() };
        attr.query.__bindgen_anon_1.target_fd = cgroup_dir.as_raw_fd() as u32;
        attr.query.attach_type = attach_type as u32;
        attr.query.prog_ids = ids.as_mut_ptr() as u64;
        attr.query.__bindgen_anon_2.prog_cnt = ids.len() as u32;
        // SAFETY: attr is a BPF_PROG_QUERY bpf_attr whose prog_ids points at prog_cnt u32s
        // that outlive the call; the kernel writes only into those and into attr.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_PROG_QUERY as libc::c_long,
                &mut attr as *mut bpf_attr,
                mem::size_of::<bpf_attr>(),
            )
        };
        let error = io::Error::last_os_error();
        // SAFETY: a u32 of the query member, which the kernel sets to the number attached.
        let count = unsafe { attr.query.__bindgen_anon_2.prog_cnt } as usize;
        if rc == 0 {
            ids.truncate(count);
            return Ok(ids);
        }
        // More programs than room for their IDs: ask again with room for all.
        if error.raw_os_error() != Some(libc::ENOSPC) || count <= ids.len() {
            return Err(error);
        }
        ids.resize(count, 0);
    }
}

/// Best effort: a directory beside `pin_path` whose pinned `ACTIVE_SET` is map `active_set`.
fn pinned_beside(pin_path: &Path, active_set: u32) -> Option<PathBuf> {
    let beside = fs::read_dir(pin_path.parent()?).ok()?;
    beside.filter_map(|entry| Some(entry.ok()?.path())).find(|dir| {
        MapData::from_pin(dir.join("ACTIVE_SET"))
            .and_then(|map| map.info())
            .is_ok_and(|info| info.id() == active_set)
    })
}

/// The maps a data plane's program uses: the ID of its `ACTIVE_SET` (which tells one data
/// plane from another) and the IDs of all its maps, by the kernel's name of each.
#[derive(Debug)]
pub(super) struct ProgramMaps {
    pub active_set: u32,
    pub by_name: BTreeMap<String, u32>,
}

/// Of the programs `ids`, those of a reconciler data plane, each with its maps. A program is
/// ours if it uses maps named `ACTIVE_SET` and `SERVICES` (`METADATA` would be more telling,
/// but only user space uses it, so the programs do not reference it). Programs unloaded
/// meanwhile are left out.
pub(super) fn programs(ids: &BTreeSet<u32>) -> Result<BTreeMap<u32, ProgramMaps>> {
    let mut ours = BTreeMap::new();
    let mut seen = 0;
    let mut failure = None;
    for info in loaded_programs() {
        let info = match info {
            Ok(info) => info,
            // Most likely a program unloaded after it was listed; it matters only if it may
            // have been one of `ids` (below).
            Err(e) => {
                failure.get_or_insert(e);
                continue;
            }
        };
        if !ids.contains(&info.id()) {
            continue;
        }
        seen += 1;
        let by_name = maps_of(&info)?;
        if let (Some(&active_set), true) =
            (by_name.get("ACTIVE_SET"), by_name.contains_key("SERVICES"))
        {
            ours.insert(info.id(), ProgramMaps { active_set, by_name });
        }
    }
    match failure {
        Some(source) if seen < ids.len() => Err(DataplaneError::ProgramList(source)),
        _ => Ok(ours),
    }
}

/// Waits until none of the programs `ids` is loaded any more, for at most `limit` (one that
/// someone else holds open stays loaded, detached: not worth waiting for longer).
pub(super) fn wait_unloaded(ids: &BTreeSet<u32>, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        let loaded = loaded_programs().filter_map(|info| info.ok()).any(|i| ids.contains(&i.id()));
        if !loaded {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The maps program `info` uses, by name.
fn maps_of(info: &aya::programs::ProgramInfo) -> Result<BTreeMap<String, u32>> {
    let map_ids = info
        .map_ids()
        .map_err(|error| DataplaneError::ProgramMaps { id: info.id(), error })?
        .unwrap_or_default();
    let mut by_name = BTreeMap::new();
    for map_id in map_ids {
        let map = MapInfo::from_id(map_id)
            .map_err(map_err(format!("reading map {map_id} of program {}", info.id())))?;
        by_name.insert(String::from_utf8_lossy(map.name()).into_owned(), map_id);
    }
    Ok(by_name)
}

/// A loaded program other than `linked` that uses one of the maps `pinned` (IDs), with that
/// map's ID: the maps of an install that stopped early are used by its linked programs alone
/// (the others went with the process that loaded them), so such a map is someone else's.
pub(super) fn used_elsewhere(pinned: &BTreeSet<u32>, linked: &BTreeSet<u32>) -> Option<(u32, u32)> {
    for info in loaded_programs() {
        // A program unloaded since it was listed uses nothing.
        let Ok(info) = info else { continue };
        if linked.contains(&info.id()) {
            continue;
        }
        let Ok(Some(map_ids)) = info.map_ids() else { continue };
        if let Some(map) = map_ids.into_iter().find(|id| pinned.contains(id)) {
            return Some((info.id(), map));
        }
    }
    None
}
