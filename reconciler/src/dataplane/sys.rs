//! bpf(2) itself, for the calls aya 0.14 does not make (batches, map-in-map waits) or keeps
//! private (`BPF_LINK_UPDATE`): one wrapper, the commands named by aya-obj's bindings.
use std::io;

use aya_obj::generated::bpf_cmd;

/// `bpf(command, attr, size_of(attr))`: the call's non-negative result (a new file
/// descriptor for the commands that make one).
///
/// `Attr` is `bpf_attr`, or a `#[repr(C)]` prefix of it laid out for `command`; every
/// pointer in it references a live buffer of the size it says, which the kernel reads or
/// writes only within that size.
pub(super) fn bpf<Attr>(command: bpf_cmd, attr: &mut Attr) -> io::Result<i32> {
    // SAFETY: as the doc says of `attr`; the kernel reads at most size_of::<Attr>() bytes
    // of it, and writes only through its pointers and into its output fields.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, command as libc::c_long, attr as *mut Attr, size_of::<Attr>())
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as i32)
}
