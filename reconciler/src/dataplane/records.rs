//! The `udp_records` socket iterator (`iter/udp` in `reconciler-ebpf`): which UDP sockets of
//! a network namespace the data plane connected, and to which backend, read from each
//! socket's own record (`SOCKETS`), however many translations happened since.
use std::{
    fs,
    io::{self, Read as _},
    mem,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use aya::{programs::Iter, Btf};
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd};
use reconciler_common::ConnectedUdp;

use super::{
    error::{io_err, DataplaneError, Result},
    programs::load_against_pins,
    sys,
};

const PROGRAM: &str = "udp_records";

/// The iterator, loaded against the pinned maps and linked; read per network namespace.
pub(super) struct UdpRecords {
    /// Holds the program and the maps the link uses.
    _ebpf: aya::Ebpf,
    link: OwnedFd,
}

impl UdpRecords {
    /// Loads the iterator (Linux 5.9+, with BTF) against the maps pinned at `pin_path`.
    pub(super) fn load(pin_path: &Path) -> Result<Self> {
        let mut ebpf = load_against_pins(pin_path)?;
        let btf = Btf::from_sys_fs().map_err(DataplaneError::Btf)?;
        let program: &mut Iter = ebpf
            .program_mut(PROGRAM)
            .ok_or(DataplaneError::MissingProgram { name: PROGRAM })?
            .try_into()
            .map_err(|error| DataplaneError::Program { program: PROGRAM, error })?;
        program
            .load("udp", &btf)
            .map_err(|error| DataplaneError::Program { program: PROGRAM, error })?;
        let program_fd = program
            .fd()
            .map_err(|error| DataplaneError::Program { program: PROGRAM, error })?
            .as_fd()
            .as_raw_fd();
        let link = link(program_fd).map_err(io_err("linking the udp_records iterator"))?;
        Ok(UdpRecords { _ebpf: ebpf, link })
    }

    /// The link, for threads that read in their own network namespace.
    pub(super) fn link(&self) -> BorrowedFd<'_> {
        self.link.as_fd()
    }
}

/// The connected UDP sockets with a record in the calling thread's network namespace
/// (a new iterator over `link` sees the namespace of the thread that makes it).
pub(super) fn read(link: BorrowedFd<'_>) -> io::Result<Vec<ConnectedUdp>> {
    // SAFETY: bpf_attr is plain data; zero is "no flags" for every command.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.iter_create.link_fd = link.as_raw_fd() as u32;
    let iterator = sys::bpf(bpf_cmd::BPF_ITER_CREATE, &mut attr)?;
    // SAFETY: BPF_ITER_CREATE returned a new file descriptor that nothing else owns.
    let mut iterator = fs::File::from(unsafe { OwnedFd::from_raw_fd(iterator) });
    let mut bytes = Vec::new();
    iterator.read_to_end(&mut bytes)?;
    Ok(bytes.chunks_exact(size_of::<ConnectedUdp>()).map(connected_udp).collect())
}

fn connected_udp(bytes: &[u8]) -> ConnectedUdp {
    // SAFETY: `ConnectedUdp` is plain integers, so any bytes are a value; `chunks_exact`
    // hands exactly its size, read unaligned.
    unsafe { bytes.as_ptr().cast::<ConnectedUdp>().read_unaligned() }
}

/// `BPF_LINK_CREATE` of an iterator link for `program` (aya 0.14 hands its link's file
/// descriptor out only by consuming it into one iterator; each namespace needs its own).
fn link(program: i32) -> io::Result<OwnedFd> {
    // SAFETY: as in `read`.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.link_create.__bindgen_anon_1.prog_fd = program as u32;
    attr.link_create.attach_type = bpf_attach_type::BPF_TRACE_ITER as u32;
    let link = sys::bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(link) })
}
