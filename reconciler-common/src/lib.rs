//! Types shared by the BPF programs (`reconciler-ebpf`) and user space (`reconciler`).
//!
//! Every type here is `#[repr(C)]` with explicit padding, so both sides agree on the layout
//! byte for byte and the kernel never sees uninitialised padding in a hash key. Each field's
//! doc names its byte order.
//!
//! Versioning: every map a connect reads to choose a backend (services, slots, backends)
//! holds two complete copies of the state, told apart by the `set` byte in the key. The one
//! entry of the `ACTIVE_SET` array says which copy is live; user space only ever writes the
//! other one (see `reconciler::dataplane`).
#![no_std]

pub mod flows;
pub mod maglev;

/// Services (VIP, port, protocol) in one map set.
pub const MAX_SERVICES: u32 = 65_536;
/// Backends in one map set.
pub const MAX_BACKENDS: u32 = 262_144;
/// Backend selection slots in one map set, over all services.
pub const MAX_SLOTS: u32 = 1_048_576;
/// Selection slots of one service: the weights of its usable backends (random), or its
/// Maglev table.
pub const MAX_SLOTS_PER_SERVICE: u32 = 65_536;
/// Entries of `REVERSE`, the LRU map of the datagram translations an unconnected socket's
/// record no longer holds (it talked to another VIP since): such a reply falls back to the
/// backend's address once its entry is evicted. Connected sockets never need it: their
/// translation lives in their own storage (`SocketRecord`).
pub const MAX_REVERSE: u32 = 262_144;
/// Entries of `AFFINITY`, the LRU map of (service, client) -> backend for services with
/// session affinity: when it is full, the least recently used client loses its backend.
pub const MAX_AFFINITY: u32 = 262_144;
/// Bytes of `TRACE`, the ring buffer of translations for `reconciler trace` (a power of two,
/// a multiple of the page size): about 23 800 events of 80 bytes (each with the ring's 8-byte
/// header).
pub const TRACE_BYTES: u32 = 2 << 20;
/// Bytes of the applied revision (a git commit id) kept in the metadata map.
pub const REVISION_LEN: usize = 64;
/// Bytes of a service name kept in the name map.
pub const NAME_LEN: usize = 64;

/// Number of map sets; the active one is `ACTIVE_SET[0]`, the other is the standby.
pub const SET_COUNT: u8 = 2;

/// `IPPROTO_TCP`, as in `struct bpf_sock_addr::protocol`.
pub const PROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`, as in `struct bpf_sock_addr::protocol`.
pub const PROTO_UDP: u8 = 17;

/// `ServiceValue::algorithm`: a uniformly random slot per connect (per socket for
/// `sendto()` on an unconnected socket).
pub const ALGORITHM_RANDOM: u8 = 0;
/// `ServiceValue::algorithm`: the client's slot of the service's Maglev table (`maglev`).
pub const ALGORITHM_MAGLEV: u8 = 1;

/// `ServiceValue::maglev_client`/`affinity_client`: the client is the cgroup v2 ID of the
/// process that connects (one container, one systemd service).
pub const CLIENT_CGROUP: u8 = 0;
/// ... the socket's network namespace cookie (one pod).
pub const CLIENT_NETNS: u8 = 1;

/// `Backend::state`: takes new clients.
pub const BACKEND_ACTIVE: u8 = 0;
/// `Backend::state`: keeps the clients it has (affinity, open connections); takes new ones
/// only while its service has no active backend (the compiler fills the slots so).
pub const BACKEND_DRAINING: u8 = 1;
/// `Backend::state`: takes nothing: no slots, its affinity entries are dropped, and its
/// connected UDP sockets are destroyed. It stays in `BACKENDS` so that replies and
/// `getpeername()` of its TCP connections still show the VIP.
pub const BACKEND_MAINTENANCE: u8 = 2;
/// `Backend::state`: failing its health check; taken out like `BACKEND_MAINTENANCE` (every
/// state from `BACKEND_MAINTENANCE` on takes nothing), by the daemon rather than by git.
pub const BACKEND_UNHEALTHY: u8 = 3;

/// Version of the map layout below. Stored in the metadata map at install, so a binary
/// never reads maps that an incompatible build created. 2 added `REVERSE` and `EVENTS` (and
/// the sendmsg, recvmsg and getpeername hooks); the maps of 1 are unchanged in 2. 3 added
/// `AFFINITY`, `AFFINITY_EVENTS`, `BACKEND_COUNTS`, `SERVICE_COUNTS` and the trace maps
/// (`TRACE`, `TRACE_ON`, `TRACE_DROPS`) and `HEALTH_EXCLUDED`, retired
/// `BACKEND_STATS` (connects only, never reset), and gave meaning to bytes that were padding
/// (`ServiceValue::maglev_client`/`affinity_client`, `Backend::state`), which 2 wrote as 0:
/// what 2's maps hold means the same in 3. (3 grew over several commits before any of them
/// was released; every released build has 1, 2 or 3 as it stands here.) 4 added `EXCLUDED`
/// (cgroup subtrees never translated); the maps of 3 are unchanged in 4. 5 added `SOCKETS`
/// (each translated socket's record, in its socket-local storage) and `VIPS` (every VIP
/// address, so a port or protocol no service defines is refused), and grew `EVENTS` from 5
/// to [`EVENT_SLOTS`] entries (an upgrade copies the counts over, see
/// `reconciler::dataplane::upgrade`). 6 replaced the per-CPU `BACKEND_COUNTS` and
/// `SERVICE_COUNTS` (a value per CPU for every ID: 1.8 GiB on 256 CPUs) with
/// `BACKEND_TOTALS` and `SERVICE_TOTALS`, one value per ID added to atomically; an
/// upgrade copies the old sums over. 7 added the `flows` sock_ops program and its maps
/// (`BACKEND_FLOWS`, `HANDSHAKES`); the maps of 6 are unchanged in 7.
pub const LAYOUT_VERSION: u32 = 7;

/// Entries of `EXCLUDED`: cgroup subtrees whose processes are never translated.
pub const MAX_EXCLUDED: u32 = 16;

/// Entries of the per-CPU `EVENTS` array: more than `event::COUNT`, so a new reason needs
/// no change of the map's shape.
pub const EVENT_SLOTS: u32 = 16;

pub mod event;

pub mod affinity;
pub mod exclusion;

/// An IPv4 or IPv6 address as four 32-bit words, each in network byte order (the layout of
/// `struct bpf_sock_addr::user_ip6`). IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so a
/// dual-stack socket connecting to a mapped address finds the same service as an IPv4 one.
pub type Addr = [u32; 4];

/// The IPv4-mapped form of `ip4`, given in network byte order (as `user_ip4` holds it).
#[inline(always)]
pub const fn ipv4_mapped(ip4: u32) -> Addr {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), ip4]
}

/// `Some(ip4)` in network byte order if `addr` is IPv4-mapped.
#[inline(always)]
pub const fn ipv4_of_mapped(addr: &Addr) -> Option<u32> {
    if addr[0] == 0 && addr[1] == 0 && addr[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
        Some(addr[3])
    } else {
        None
    }
}

/// Key of `SERVICES`: the frontend a client connects to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The VIP; see [`Addr`] (network byte order).
    pub addr: Addr,
    /// The VIP port, network byte order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub protocol: u8,
    /// Map set, 0 or 1.
    pub set: u8,
}

/// Value of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Stable service ID (host byte order), kept across applies; keys `SLOTS`.
    pub service_id: u32,
    /// Number of selection slots (host byte order); 0 means no usable backend, and a
    /// connect fails with `ECONNREFUSED`.
    pub slot_count: u32,
    /// `ALGORITHM_*`.
    pub algorithm: u8,
    /// `CLIENT_*`: what a Maglev service hashes.
    pub maglev_client: u8,
    /// `CLIENT_*`: what an affinity entry is keyed by.
    pub affinity_client: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// Session affinity timeout in seconds (host byte order); 0 is off.
    pub affinity_timeout_secs: u32,
}

/// Key of `SLOTS`: one selection slot of a service. With `ALGORITHM_RANDOM` a backend of
/// weight `w` fills `w` slots; with `ALGORITHM_MAGLEV` the slots are the Maglev table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    /// `ServiceValue::service_id` (host byte order).
    pub service_id: u32,
    /// Slot index in `0..slot_count` (host byte order).
    pub slot: u32,
    /// Map set, 0 or 1.
    pub set: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
}

/// Key of `BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// Stable backend ID (host byte order), kept across applies; indexes `BACKEND_TOTALS`.
    pub backend_id: u32,
    /// Map set, 0 or 1.
    pub set: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
}

/// Value of `BACKENDS`: where a connect is sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Backend address; see [`Addr`] (network byte order).
    pub addr: Addr,
    /// Backend port, network byte order.
    pub port: u16,
    /// `BACKEND_*`.
    pub state: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// The service this backend belongs to (host byte order): reverse and affinity entries
    /// hold only while their backend still belongs to their service.
    pub service_id: u32,
}

/// Key of `VIPS`: an address that is the VIP of at least one service, in one map set. A
/// connect or datagram to it that matches no service is refused (`event::UNKNOWN_PORT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    /// The VIP; see [`Addr`] (network byte order).
    pub addr: Addr,
    /// Map set, 0 or 1.
    pub set: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
}

/// `SocketRecord::kind`: no record (a zeroed value).
pub const RECORD_NONE: u8 = 0;
/// `SocketRecord::kind`: the socket's `connect()` to a VIP; it holds for the socket's life
/// (until it connects again).
pub const RECORD_CONNECTED: u8 = 1;
/// `SocketRecord::kind`: the last datagram an unconnected socket sent to a VIP; its next one
/// to that service goes to the same backend while the backend stays usable.
pub const RECORD_DATAGRAM: u8 = 2;

/// Value of `SOCKETS`, socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`) that the kernel frees
/// with its socket: what a socket the data plane translated asked for and got. Replies and
/// `getpeername()` from `backend` show `vip` again, and an apply finds the connected UDP
/// sockets of a removed backend through it (the `udp_records` socket iterator).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketRecord {
    /// The VIP; see [`Addr`] (network byte order).
    pub vip: Addr,
    /// The backend; see [`Addr`] (network byte order).
    pub backend: Addr,
    /// The VIP's port, network byte order.
    pub vip_port: u16,
    /// The backend's port, network byte order.
    pub backend_port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub protocol: u8,
    /// `RECORD_*`.
    pub kind: u8,
    /// Explicit padding; always zero.
    pub _pad: u16,
    /// Stable service ID (host byte order).
    pub service_id: u32,
    /// Stable backend ID (host byte order).
    pub backend_id: u32,
}

/// What the `udp_records` socket iterator writes for each connected UDP socket of its
/// network namespace that has a `RECORD_CONNECTED` record: the sockets an apply may have to
/// destroy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectedUdp {
    /// The socket's cookie (host byte order).
    pub cookie: u64,
    /// `SocketRecord::backend`; see [`Addr`] (network byte order).
    pub backend: Addr,
    /// `SocketRecord::backend_port`, network byte order.
    pub backend_port: u16,
    /// Explicit padding; always zero.
    pub _pad: u16,
    /// `SocketRecord::backend_id` (host byte order).
    pub backend_id: u32,
}

/// Key of `REVERSE`: a socket (by its cookie) and the backend the data plane sent it to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReverseKey {
    /// `bpf_get_socket_cookie()` of the socket (host byte order).
    pub cookie: u64,
    /// The backend's address; see [`Addr`] (network byte order).
    pub addr: Addr,
    /// The backend's port, network byte order.
    pub port: u16,
    /// Explicit padding; always zero.
    pub _pad: [u8; 6],
}

/// Value of `REVERSE`: what the socket asked for, and which service and backend it got.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReverseValue {
    /// The VIP; see [`Addr`] (network byte order).
    pub vip: Addr,
    /// The VIP's port, network byte order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub protocol: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// Stable service ID (host byte order): the entry holds while the live set still has it.
    pub service_id: u32,
    /// Stable backend ID (host byte order): the entry holds while the live set still has it
    /// as a backend of `service_id` at `ReverseKey::addr`/`port`.
    pub backend_id: u32,
}

/// What a `TraceEvent` reports.
pub mod trace {
    /// `connect()` to a VIP, translated.
    pub const CONNECT: u8 = 0;
    /// `sendto()`/`sendmsg()` to a VIP on an unconnected UDP socket, translated.
    pub const SENDMSG: u8 = 1;
    /// A reply's source translated back to the VIP (`recvfrom()`/`recvmsg()`); `reconciler
    /// trace` calls it `reverse`.
    pub const RECVMSG: u8 = 2;
    /// `getpeername()` translated back to the VIP.
    pub const GETPEERNAME: u8 = 3;
    /// A connect or datagram to a VIP refused; `TraceEvent::reason` says why (`event::*`).
    pub const REFUSED: u8 = 4;
    /// A translated TCP connection established (seen by the `flows` sock_ops program, in
    /// softirq: no process, cgroup or command).
    pub const ESTABLISHED: u8 = 5;
    /// A translated TCP connection that failed before it was established (reset, timed out).
    pub const FAILED: u8 = 6;
}

/// One event of the `TRACE` ring buffer, written only while a tracer runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`), host byte order.
    pub time_ns: u64,
    /// The cgroup v2 ID of the process (host byte order).
    pub cgroup_id: u64,
    /// The process (thread group) ID (host byte order).
    pub pid: u32,
    /// Stable service ID (host byte order).
    pub service_id: u32,
    /// The VIP; see [`Addr`] (network byte order).
    pub vip: Addr,
    /// The backend; see [`Addr`] (network byte order); zero for `REFUSED`.
    pub backend: Addr,
    /// The VIP's port, network byte order.
    pub vip_port: u16,
    /// The backend's port, network byte order.
    pub backend_port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub protocol: u8,
    /// `trace::*`.
    pub kind: u8,
    /// For `REFUSED`: the `event::*` reason.
    pub reason: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// The process's command name, NUL-padded.
    pub comm: [u8; 16],
}

/// Key of `AFFINITY`: a client of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    /// Stable service ID (host byte order): affinity is per frontend.
    pub service_id: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
    /// The client: a cgroup ID or a network namespace cookie, as `affinity_client` says
    /// (host byte order).
    pub client: u64,
}

/// Value of `AFFINITY`: the client's backend, and when the client last connected.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) of the client's last connect through this
    /// entry (host byte order); the entry holds for `affinity_timeout_secs` after it.
    pub last_used_ns: u64,
    /// Stable backend ID (host byte order).
    pub backend_id: u32,
    /// [`backend_fingerprint`] of the backend's address and port (host byte order): the
    /// entry holds only for that backend, not for a later one that takes its freed ID. 0 in
    /// an entry of an older build, which holds by the ID alone.
    pub backend_fingerprint: u32,
}

/// A 32-bit hash of a backend's address and port (as `Backend` holds them), never 0 (see
/// [`AffinityValue::backend_fingerprint`]).
#[inline(always)]
pub const fn backend_fingerprint(addr: &Addr, port: u16) -> u32 {
    let high = ((addr[0] as u64) << 32) | addr[1] as u64;
    let low = ((addr[2] as u64) << 32) | addr[3] as u64;
    let hash = fmix64(high ^ fmix64(low ^ port as u64)) as u32;
    if hash == 0 {
        1
    } else {
        hash
    }
}

/// The murmur3 64-bit finaliser: every input bit affects every output bit, so consecutive
/// numbers (socket cookies, cgroup IDs) land far apart.
#[inline(always)]
pub const fn fmix64(value: u64) -> u64 {
    let mut h = value;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// A 32-bit hash of a 64-bit identity (a socket cookie, a client): the low half of
/// [`fmix64`]. It picks one backend per unconnected socket (so a client's request and its
/// retries reach one backend) and a client's Maglev slot.
#[inline(always)]
pub const fn hash64(value: u64) -> u32 {
    fmix64(value) as u32
}

/// Value of the `BACKEND_TOTALS` array, indexed by backend ID: one value for all CPUs,
/// which the programs add to atomically. Not versioned: IDs are stable, so a counter follows
/// its backend across applies; user space zeroes an ID's counters before a new backend takes
/// it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendCounters {
    /// Connects (TCP; UDP `connect()`) and translated datagrams (UDP `sendmsg`) sent to this
    /// backend (host byte order).
    pub translations: u64,
    /// Replies (`recvmsg`) and `getpeername()` results translated back to the VIP (host
    /// byte order).
    pub reverse: u64,
}

impl core::ops::Add for BackendCounters {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        BackendCounters {
            translations: self.translations + other.translations,
            reverse: self.reverse + other.reverse,
        }
    }
}

/// Value of the `SERVICE_TOTALS` array, indexed by service ID: refusals by reason (host
/// byte order), added to atomically. Zeroed, like the backends', before a new service takes
/// an ID.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    /// Connects and datagrams refused because the service had no usable backend.
    pub no_backend: u64,
    /// Refused because the live set was inconsistent (a slot or a backend missing).
    pub inconsistent_set: u64,
    /// Reverse entries found stale (the service or the backend gone) and deleted.
    pub stale_reverse_entry: u64,
}

impl core::ops::Add for ServiceCounters {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        ServiceCounters {
            no_backend: self.no_backend + other.no_backend,
            inconsistent_set: self.inconsistent_set + other.inconsistent_set,
            stale_reverse_entry: self.stale_reverse_entry + other.stale_reverse_entry,
        }
    }
}

/// The one entry of `METADATA`: what user space needs to know about the maps that the BPF
/// programs do not read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// [`LAYOUT_VERSION`] of the build that created the maps (host byte order).
    pub layout_version: u32,
    /// 1 while the standby set may differ from the active one (an apply is between its
    /// first standby write and the final sync); a reader that finds 1 repairs it.
    pub standby_dirty: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
    /// Incremented by every apply that changes anything (host byte order).
    pub generation: u64,
    /// Cgroup ID (the cgroup directory's inode) the programs are attached to (host order).
    pub cgroup_id: u64,
    /// Unix time of the last completed apply, seconds (host byte order).
    pub applied_at_unix: u64,
    /// The applied revision, ASCII, `revision_len` bytes used.
    pub revision: [u8; REVISION_LEN],
    /// Bytes used in `revision`.
    pub revision_len: u8,
    /// Explicit padding; always zero.
    pub _pad2: [u8; 7],
}

/// An entry of the `EXCLUDED` array: a cgroup subtree whose processes' connects and
/// datagrams to a VIP go on untouched (a service-mesh sidecar, a VM runtime). Entries are
/// filled from index 0; the first whose `cgroup_id` is 0 ends the list.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExcludedCgroup {
    /// The subtree's root: its cgroup ID, the directory's inode (host byte order).
    pub cgroup_id: u64,
    /// Its depth below the cgroup2 root (0 is the root), as `bpf_get_current_ancestor_cgroup_id`
    /// counts (host byte order).
    pub level: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}

/// Value of `SERVICE_NAMES`, keyed by service ID: the name people gave the service. Only
/// user space reads it, to show plans by name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    /// UTF-8, `len` bytes used.
    pub name: [u8; NAME_LEN],
    /// Bytes used in `name`.
    pub len: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 7],
}

/// The slot a connect uses, for a 32-bit random number: `random * slot_count / 2^32`.
/// Multiply-shift instead of `%` keeps every slot equally likely up to one part in 2^32 / n
/// and needs no division in the BPF program.
#[inline(always)]
pub const fn random_slot(random: u32, slot_count: u32) -> u32 {
    ((random as u64 * slot_count as u64) >> 32) as u32
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, made only of integers and integer arrays, and
    // have no implicit padding (their padding is explicit, zeroed fields).
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for BackendCounters {}
    unsafe impl aya::Pod for super::flows::BackendFlows {}
    unsafe impl aya::Pod for ServiceCounters {}
    unsafe impl aya::Pod for Metadata {}
    unsafe impl aya::Pod for ServiceName {}
    unsafe impl aya::Pod for ReverseKey {}
    unsafe impl aya::Pod for ReverseValue {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for TraceEvent {}
    unsafe impl aya::Pod for super::exclusion::HealthKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for ExcludedCgroup {}
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for SocketRecord {}
    unsafe impl aya::Pod for ConnectedUdp {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 16 + 2 + 1 + 1);
        assert_eq!(size_of::<ServiceValue>(), 4 + 4 + 1 + 1 + 1 + 1 + 4);
        assert_eq!(size_of::<SlotKey>(), 4 + 4 + 1 + 3);
        assert_eq!(size_of::<BackendKey>(), 4 + 1 + 3);
        assert_eq!(size_of::<Backend>(), 16 + 2 + 1 + 1 + 4);
        assert_eq!(size_of::<AffinityKey>(), 4 + 4 + 8);
        assert_eq!(size_of::<TraceEvent>(), 8 + 8 + 4 + 4 + 16 + 16 + 2 + 2 + 4 + 16);
        assert_eq!(size_of::<AffinityValue>(), 8 + 4 + 4);
        assert_eq!(size_of::<BackendCounters>(), 16);
        assert_eq!(size_of::<ServiceCounters>(), 24);
        assert_eq!(size_of::<Metadata>(), 4 + 1 + 3 + 8 * 3 + REVISION_LEN + 1 + 7);
        assert_eq!(size_of::<ServiceName>(), NAME_LEN + 1 + 7);
        assert_eq!(size_of::<ReverseKey>(), 8 + 16 + 2 + 6);
        assert_eq!(size_of::<ReverseValue>(), 16 + 2 + 1 + 1 + 4 + 4);
        assert_eq!(size_of::<VipKey>(), 16 + 1 + 3);
        assert_eq!(size_of::<ConnectedUdp>(), 8 + 16 + 2 + 2 + 4);
        assert_eq!(size_of::<SocketRecord>(), 16 + 16 + 2 + 2 + 1 + 1 + 2 + 4 + 4);
        assert!(align_of::<Metadata>() <= 8);
    }

    #[test]
    fn backend_fingerprints_tell_backends_apart_and_are_never_zero() {
        let a = ipv4_mapped(0x0a01_0001);
        let b = ipv4_mapped(0x0a01_0002);
        assert_ne!(backend_fingerprint(&a, 8080), backend_fingerprint(&b, 8080));
        assert_ne!(backend_fingerprint(&a, 8080), backend_fingerprint(&a, 8081));
        assert!((0..10_000u32).all(|i| backend_fingerprint(&ipv4_mapped(i), 80) != 0));
    }

    #[test]
    fn ipv4_mapped_round_trips_and_matches_the_ipv6_text_form() {
        let ip4 = u32::from_ne_bytes([10, 96, 0, 10]);
        let mapped = ipv4_mapped(ip4);
        assert_eq!(ipv4_of_mapped(&mapped), Some(ip4));
        let mut bytes = [0u8; 16];
        for (chunk, word) in bytes.chunks_mut(4).zip(mapped) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        // ::ffff:10.96.0.10
        assert_eq!(bytes, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 10]);
        assert_eq!(ipv4_of_mapped(&[0, 0, 0, 1]), None);
    }

    #[test]
    fn random_slot_stays_in_range_and_covers_the_ends() {
        for count in [1u32, 2, 3, 7, 1000, MAX_SLOTS_PER_SERVICE] {
            assert_eq!(random_slot(0, count), 0);
            assert_eq!(random_slot(u32::MAX, count), count - 1);
            assert!(random_slot(0x8000_0000, count) < count);
        }
    }

    #[test]
    fn consecutive_cookies_spread_over_the_slots() {
        // Cookies are handed out in sequence; their slots must not be.
        let mut seen = [0u32; 4];
        for cookie in 1000..1400u64 {
            seen[random_slot(hash64(cookie), 4) as usize] += 1;
        }
        assert!(seen.iter().all(|n| (70..=130).contains(n)), "{seen:?}");
        assert_eq!(hash64(42), hash64(42));
    }

    #[test]
    fn random_slot_splits_the_random_range_evenly() {
        // With 3 slots, each slot owns a third of the 2^32 random values, within one value.
        let count = 3u32;
        let mut owned = [0u64; 3];
        let step = 1u32 << 12;
        let mut r = 0u32;
        loop {
            owned[random_slot(r, count) as usize] += 1;
            match r.checked_add(step) {
                Some(next) => r = next,
                None => break,
            }
        }
        let total: u64 = owned.iter().sum();
        for n in owned {
            assert!(n * 3 >= total - 3 && n * 3 <= total + 3, "{owned:?}");
        }
    }
}
