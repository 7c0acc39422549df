//! `HEALTH_EXCLUDED` (user space only): the backends the daemon took out of a service, and
//! why. Not versioned; the programs never read it (the exclusion is in the backends' state).
use crate::Addr;

/// Value: the service's health check took the backend out (layouts up to 7 wrote only this).
pub const HEALTH: u32 = 1;
/// Value: outlier detection ejected the backend, its clients' connects having failed in a
/// row (whether its health check fails too, `/status` says).
pub const EJECTED: u32 = 2;

/// Value (low byte): the backend is not out but ramping up after it joined (slow start); bits
/// 8-23 hold its share of its weight in thousandths ([`ramp`]).
pub const RAMP: u32 = 3;

/// The value of a backend ramping at `permille` of its weight.
pub const fn ramp(permille: u16) -> u32 {
    RAMP | (permille as u32) << 8
}

/// What a value says: `HEALTH`, `EJECTED` or `RAMP`, and for `RAMP` the share in thousandths.
pub const fn kind(value: u32) -> (u32, u16) {
    (value & 0xff, (value >> 8) as u16)
}

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
    /// `KEY_OVERLAY` or `KEY_PREVIOUS` (zero in every layout before 8: an overlay entry).
    pub kind: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// The service (stable ID) the backend was taken out of; 0: every service listing it.
    pub service_id: u32,
}

/// Key kind: an exclusion or a ramp of the backend (the values above).
pub const KEY_OVERLAY: u8 = 0;
/// Key kind: a backend of the revision before, while the daemon rolls out a change of the
/// service's backends; the value is [`previous`].
pub const KEY_PREVIOUS: u8 = 1;

/// The value of a previous backend of `weight` while `percent` of new connections go to the
/// new ones.
pub const fn previous(weight: u32, percent: u8) -> u32 {
    (weight & 0x1_ffff) | (percent as u32) << 24
}

/// A previous backend's (weight, percent).
pub const fn previous_of(value: u32) -> (u32, u8) {
    (value & 0x1_ffff, (value >> 24) as u8)
}
