//! Waiting for the programs that may still read the set an apply flipped away from.
//!
//! cgroup `sock_addr` programs run inside `rcu_read_lock()` (`bpf_prog_run_array_cg`), and a
//! program reads `ACTIVE_SET` once and uses that set until it returns; so once an RCU grace
//! period has passed after the flip, no program can still be reading the old set.
//!
//! The wait is the BPF syscall's own: an update of a map-in-map element
//! (`BPF_MAP_TYPE_ARRAY_OF_MAPS`) from user space returns only after `synchronize_rcu()`
//! (the kernel's `maybe_wait_bpf_programs`, there so that user space knows every running
//! program sees the new inner map; Linux 4.20 and later). So a throwaway outer map of one
//! element, updated once, is the wait. It holds wherever BPF runs: `synchronize_rcu()`
//! waits for every read-side section on every CPU, on `nohz_full` CPUs and on one-CPU
//! preemptible kernels too, where `membarrier(MEMBARRIER_CMD_GLOBAL)` (the mechanism before)
//! fails with `EINVAL` or returns at once.
use std::{
    io, mem,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_map_type};

use super::{
    error::{DataplaneError, Result},
    sys,
};

/// Returns after an RCU grace period: every BPF program run that started before this call
/// has ended.
pub fn wait_for_readers() -> Result<()> {
    let step = |what: &'static str| move |error| DataplaneError::GracePeriod { what, error };
    let inner = create(bpf_map_type::BPF_MAP_TYPE_ARRAY, None).map_err(step("creating a map"))?;
    let outer = create(bpf_map_type::BPF_MAP_TYPE_ARRAY_OF_MAPS, Some(&inner))
        .map_err(step("creating a map of maps"))?;
    set_first(&outer, &inner).map_err(step("updating the map of maps"))
}

/// A map of one element with a 4-byte key and value, of `map_type`; for a map of maps, of
/// maps like `inner`.
fn create(map_type: bpf_map_type, inner: Option<&OwnedFd>) -> io::Result<OwnedFd> {
    // SAFETY: bpf_attr is plain data; zero is "no flags, no options" for every command.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.__bindgen_anon_1.map_type = map_type as u32;
    attr.__bindgen_anon_1.key_size = 4;
    attr.__bindgen_anon_1.value_size = 4;
    attr.__bindgen_anon_1.max_entries = 1;
    attr.__bindgen_anon_1.inner_map_fd = inner.map_or(0, |fd| fd.as_raw_fd() as u32);
    let fd = sys::bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets element 0 of the map of maps `outer` to `inner`: the kernel waits for a grace
/// period before it returns.
fn set_first(outer: &OwnedFd, inner: &OwnedFd) -> io::Result<()> {
    let key: u32 = 0;
    let value: u32 = inner.as_raw_fd() as u32;
    // SAFETY: as in `create`.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.__bindgen_anon_2.map_fd = outer.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = &key as *const u32 as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = &value as *const u32 as u64;
    sys::bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}
