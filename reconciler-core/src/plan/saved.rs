//! The file `plan --out` writes and `apply PLANFILE` reads: the plan's JSON with a checksum,
//! against accidents, and a signature, against tampering.
//!
//! The signature is an HMAC-SHA256 under the node's key (the key that also authenticates the
//! memo: 32 random bytes, readable by root alone), so only a process that can read that key
//! makes a plan `apply` accepts. A checksum alone stops a plan edited by hand, not one edited
//! with its checksum recomputed; binding the plan to the live state (which `apply` also does:
//! a stale plan is refused) stops neither, as the edit is in what the plan would write. A plan
//! saved elsewhere (in CI, for review) is signed with that machine's key, reads the same, and
//! is refused by `apply` on a node, saying so.
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::make::{Plan, FORMAT_VERSION};

/// The key a saved plan is signed with: the node's.
pub type NodeKey = [u8; 32];

/// Why a saved plan file is refused.
#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    #[error("not a saved plan: {0}")]
    NotJson(serde_json::Error),
    #[error("the saved plan has no checksum; save it again with `reconciler plan --out FILE`")]
    NoChecksum,
    #[error(
        "the saved plan's checksum does not match its contents: it was edited or damaged \
         after `reconciler plan --out` wrote it; make the plan again"
    )]
    Mismatch,
    #[error(
        "the saved plan is not signed (`plan --out` could not read or make this node's key); \
         make it again on this node, or apply from the source: `reconciler apply --repo ...` \
         plans again and applies that"
    )]
    NotSigned,
    #[error(
        "the saved plan's signature is not this node's: it was made on another machine (in CI, \
         say) or with another --cache-dir, or edited since; it can be read for review, but to \
         apply it, make it again on this node (`reconciler plan --out FILE`), or apply from the \
         source: `reconciler apply --repo ...` plans again and applies that"
    )]
    OtherKey,
    #[error("the saved plan has format version {found}; this reconciler reads {FORMAT_VERSION}")]
    Format { found: u64 },
    #[error("not a saved plan: {0}")]
    Fields(serde_json::Error),
}

/// The file `plan --out` writes: the plan's JSON with a `checksum` (SHA-256) of everything
/// else, so a plan edited by hand or cut short is refused instead of applied as written, and
/// a `signature` (HMAC-SHA256 under `key`) of the same, if there is a key.
pub fn to_saved(plan: &Plan, key: Option<&NodeKey>) -> Result<String, serde_json::Error> {
    if plan.touched.is_some() {
        return Err(serde::ser::Error::custom(
            "an incremental plan is not saved (its desired state is partial); plan with --refresh",
        ));
    }
    let mut value = serde_json::to_value(plan)?;
    let canonical = serde_json::to_string(&value)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("checksum".into(), checksum_of(&canonical).into());
        if let Some(key) = key {
            object.insert("signature".into(), signature_of(key, &canonical).into());
        }
    }
    serde_json::to_string(&value)
}

/// Reads a file [`to_saved`] wrote, checking its checksum, then its signature under `key`
/// (None: this node has no key, so nothing was signed with it).
pub fn from_saved(text: &str, key: Option<&NodeKey>) -> Result<Plan, SavedPlanError> {
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(SavedPlanError::NotJson)?;
    let object = value.as_object_mut().ok_or(SavedPlanError::NoChecksum)?;
    let found = object.remove("checksum").ok_or(SavedPlanError::NoChecksum)?;
    let signature = object.remove("signature");
    let canonical = serde_json::to_string(&value).map_err(SavedPlanError::NotJson)?;
    if found.as_str() != Some(checksum_of(&canonical).as_str()) {
        return Err(SavedPlanError::Mismatch);
    }
    let signature = signature.ok_or(SavedPlanError::NotSigned)?;
    let tag = signature.as_str().and_then(|s| s.strip_prefix(SIGNATURE_PREFIX));
    let tag = tag.and_then(|hex| hex::decode(hex).ok()).ok_or(SavedPlanError::OtherKey)?;
    let key = key.ok_or(SavedPlanError::OtherKey)?;
    authenticator(key, &canonical).verify_slice(&tag).map_err(|_| SavedPlanError::OtherKey)?;
    let version = value.get("format_version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(SavedPlanError::Format { found: version.unwrap_or(0) });
    }
    serde_json::from_value(value).map_err(SavedPlanError::Fields)
}

const SIGNATURE_PREFIX: &str = "hmac-sha256:";

fn checksum_of(canonical: &str) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(Sha256::digest(canonical.as_bytes())))
}

fn signature_of(key: &NodeKey, canonical: &str) -> String {
    let tag = authenticator(key, canonical).finalize().into_bytes();
    format!("{SIGNATURE_PREFIX}{}", hex::encode(tag))
}

/// The HMAC-SHA256 of `canonical` under `key`, to finish or verify.
fn authenticator(key: &NodeKey, canonical: &str) -> Hmac<Sha256> {
    // HMAC takes a key of any length: a 32-byte one is never refused.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(canonical.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        plan::make::{make_plan, PlanContext},
        state::MapState,
    };

    fn plan() -> Plan {
        let context = PlanContext {
            health_changed: false,
            failover_held_back: Vec::new(),
            rollouts: Vec::new(),
            not_on_node: Vec::new(),
            revision: Some("abc".into()),
            source: "test".into(),
            pin_path: "/sys/fs/bpf/x".into(),
            install: true,
            generation: 0,
            live_revision: None,
            against: None,
        };
        make_plan(context, &MapState::default(), MapState::default())
    }

    #[test]
    fn a_saved_plan_round_trips_and_any_edit_is_refused() {
        let key = [7; 32];
        let saved = to_saved(&plan(), Some(&key)).unwrap();
        assert_eq!(from_saved(&saved, Some(&key)).unwrap(), plan());
        let edited = saved.replace("/sys/fs/bpf/x", "/sys/fs/bpf/y");
        assert!(matches!(from_saved(&edited, Some(&key)), Err(SavedPlanError::Mismatch)));
        let no_checksum = serde_json::to_string(&plan()).unwrap();
        assert!(matches!(from_saved(&no_checksum, Some(&key)), Err(SavedPlanError::NoChecksum)));
        let half = &saved[..saved.len() / 2];
        assert!(matches!(from_saved(half, Some(&key)), Err(SavedPlanError::NotJson(_))));
        assert!(matches!(from_saved("[1]", Some(&key)), Err(SavedPlanError::NoChecksum)));
    }

    #[test]
    fn a_plan_edited_with_its_checksum_recomputed_or_signed_elsewhere_is_refused() {
        let key = [7; 32];
        // Edited, and saved again as `to_saved` would without the node's key.
        let mut edited = plan();
        edited.context.pin_path = "/sys/fs/bpf/y".into();
        let resigned = to_saved(&edited, Some(&[8; 32])).unwrap();
        assert!(matches!(from_saved(&resigned, Some(&key)), Err(SavedPlanError::OtherKey)));
        let unsigned = to_saved(&edited, None).unwrap();
        assert!(matches!(from_saved(&unsigned, Some(&key)), Err(SavedPlanError::NotSigned)));
        let signed = to_saved(&plan(), Some(&key)).unwrap();
        assert!(matches!(from_saved(&signed, None), Err(SavedPlanError::OtherKey)));
    }
}
