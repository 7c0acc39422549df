//! `HEALTH_EXCLUDED` (user space only): the backends the daemon took out of a service, and
//! why. Not versioned; the programs never read it (the exclusion is in the backends' state).
use crate::Addr;

/// Value: the service's health check took the backend out (layouts up to 7 wrote only this).
pub const HEALTH: u32 = 1;
/// Value: outlier detection ejected the backend, its clients' connects having failed in a
/// row (whether its health check fails too, `/status` says).
pub const EJECTED: u32 = 2;

/// Key of `HEALTH_EXCLUDED`: a backend address the daemon took out of a service; the value
/// says why (`HEALTH`, `EJECTED`). (Layouts up to 6 wrote `service_id` 0, then padding: the address was out of every service listing it, as a reader still takes
/// such an entry. The key's size never changed.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HealthKey {
    /// See [`Addr`] (network byte order).
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
    /// The service (stable ID) the backend was taken out of; 0: every service listing it.
    pub service_id: u32,
}
