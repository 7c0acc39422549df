//! Indexes of the per-CPU `EVENTS` counters: what the programs did besides choosing a
//! backend, each a reason a syscall was refused or a translation was not made.

/// A connect or sendmsg to a service with no usable backend: refused (ECONNREFUSED).
pub const NO_BACKEND: u32 = 0;
/// A known VIP whose slot was missing from the live set: refused, never sent on.
pub const SLOT_MISS: u32 = 1;
/// A known VIP whose chosen backend was missing from the live set: refused.
pub const BACKEND_MISS: u32 = 2;
/// A reply or `getpeername()` whose `REVERSE` entry named a service or backend that is
/// no longer live: the entry was deleted and the address left as it was.
pub const REVERSE_STALE: u32 = 3;
/// A translation that could not be recorded (the socket's storage could not be
/// allocated, or for a datagram `REVERSE` refused the update too): refused, as its
/// replies and `getpeername()` would show the backend.
pub const REVERSE_FULL: u32 = 4;
/// A known VIP on a port or protocol no service defines: refused, never sent on.
pub const UNKNOWN_PORT: u32 = 5;
/// A new `REVERSE` entry. Entries leave by `REVERSE_STALE`, by an apply
/// (`REVERSE_FORGOTTEN`) or by the LRU's eviction, which is silent: the entries the LRU
/// evicted are the added ones minus those two minus the entries there.
pub const REVERSE_ADDED: u32 = 6;
/// `REVERSE` entries an apply deleted (their backend left); counted by user space.
pub const REVERSE_FORGOTTEN: u32 = 7;
/// Number of counters.
pub const COUNT: u32 = 8;
