//! Batched hash map access (`BPF_MAP_{LOOKUP,UPDATE,DELETE}_BATCH`, Linux 5.6+): one syscall
//! per few thousand entries instead of two per entry. Reading 10 000 services with 10
//! backends each one entry at a time takes seconds; batched it takes milliseconds. aya 0.14
//! has no batch API, so these call bpf(2) directly.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{maps::MapData, Pod};
use aya_obj::generated::bpf_cmd;

use super::sys;

/// Entries per syscall.
const CHUNK: usize = 8192;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The element member of `union bpf_attr` (map_fd, then 8-aligned key, value, flags).
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<Attr>(command: bpf_cmd, attr: &mut Attr) -> io::Result<()> {
    sys::bpf(command, attr).map(|_| ())
}

fn map_fd(map: &MapData) -> u32 {
    map.fd().as_fd().as_raw_fd() as u32
}

/// The value of each of `keys` in hash map `map` (`None`: no such entry), one syscall each:
/// for a few keys, where reading the whole map would cost more. (aya's typed `HashMap::get`
/// needs the map wrapped as an aya `Map` it owns; these are kept as bare `MapData` for the
/// batch calls.)
pub(crate) fn lookup_each<K: Pod, V: Pod>(
    map: &MapData,
    keys: impl IntoIterator<Item = K>,
) -> io::Result<Vec<(K, Option<V>)>> {
    let mut found = Vec::new();
    for key in keys {
        let mut value = std::mem::MaybeUninit::<V>::zeroed();
        let mut attr = ElemAttr {
            map_fd: map_fd(map),
            key: &key as *const K as u64,
            value: value.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        match bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr) {
            // SAFETY: V is Pod, so any bytes (zeroes, or what the kernel wrote) are a V.
            Ok(()) => found.push((key, Some(unsafe { value.assume_init() }))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => found.push((key, None)),
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

/// Every entry of hash map `map`.
pub(crate) fn lookup_all<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    let mut entries = Vec::new();
    lookup_chunks(map, |keys: &mut Vec<K>, values: &mut Vec<V>| {
        entries.extend(keys.drain(..).zip(values.drain(..)));
    })?;
    Ok(entries)
}

/// How many entries hash map `map` holds, read in batches without keeping them.
pub(crate) fn count<K: Pod, V: Pod>(map: &MapData) -> io::Result<usize> {
    let mut count = 0;
    lookup_chunks(map, |keys: &mut Vec<K>, _: &mut Vec<V>| count += keys.len())?;
    Ok(count)
}

/// Reads hash map `map` in batches of up to `CHUNK` entries, handing each batch to `take`.
fn lookup_chunks<K: Pod, V: Pod>(
    map: &MapData,
    mut take: impl FnMut(&mut Vec<K>, &mut Vec<V>),
) -> io::Result<()> {
    let mut keys: Vec<K> = Vec::with_capacity(CHUNK);
    let mut values: Vec<V> = Vec::with_capacity(CHUNK);
    // For hash maps the batch token is a bucket index (u32).
    let (mut token_in, mut token_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &token_in as *const u32 as u64 },
            out_batch: &mut token_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map_fd(map),
            ..BatchAttr::default()
        };
        let result = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        let filled = (attr.count as usize).min(CHUNK);
        // SAFETY: the kernel wrote `filled` keys and values into the buffers.
        unsafe {
            keys.set_len(filled);
            values.set_len(filled);
        }
        take(&mut keys, &mut values);
        match result {
            Ok(()) => {}
            // ENOENT: the last buckets were read.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
        token_in = token_out;
        first = false;
    }
}

/// Writes every `(key, value)` into `map`, a hash map (creating or replacing) or an array.
pub(crate) fn update_all<K: Pod, V: Pod>(map: &MapData, entries: &[(K, V)]) -> io::Result<()> {
    for chunk in entries.chunks(CHUNK) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: map_fd(map),
            ..BatchAttr::default()
        };
        bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr)?;
    }
    Ok(())
}

/// Deletes every key of `keys` from hash map `map`; keys that are not there are fine.
pub(crate) fn delete_all<K: Pod>(map: &MapData, keys: &[K]) -> io::Result<()> {
    let mut rest = keys;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(CHUNK)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: map_fd(map),
            ..BatchAttr::default()
        };
        match bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => rest = &rest[chunk.len()..],
            // A missing key stops the batch at that key: skip it and go on.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                rest = &rest[(attr.count as usize + 1).min(rest.len())..];
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
