//! Saved plans (`plan --out FILE`, read by `apply FILE`): any UTF-8 text through
//! `plan::from_saved`; a plan it accepts must render, save again, and read back equal
//! (`from_saved(to_saved(p)) == p`).
//!
//! A mutated file almost never carries the right checksum and signature, which would stop
//! every input at those checks; so each JSON object is also tried re-signed (its `checksum`
//! and `signature` replaced by the SHA-256 and the HMAC under the harness's key of the rest,
//! as `to_saved` writes them), which lets the fuzzer reach the format-version check and the
//! fields.
#![no_main]

use libfuzzer_sys::{fuzz_target, Corpus};
use hmac::Mac as _;
use reconciler_core::plan::{self, NodeKey, Plan, SavedPlanError};
use serde_json::Value;
use sha2::Digest as _;

/// The node key the harness signs and reads with.
const KEY: NodeKey = [7; 32];

fuzz_target!(|data: &[u8]| -> Corpus {
    let Ok(text) = std::str::from_utf8(data) else {
        return Corpus::Reject;
    };
    let _ = check(text);
    if let Some(resigned) = resign(text) {
        let result = check(&resigned);
        assert!(
            !matches!(result, Err(SavedPlanError::Mismatch | SavedPlanError::OtherKey)),
            "the harness's checksum or signature differs from plan::to_saved's; update resign()"
        );
    }
    Corpus::Keep
});

/// `from_saved(text)`, and for a plan it reads: rendering and the round trip.
fn check(text: &str) -> Result<Plan, SavedPlanError> {
    let result = plan::from_saved(text, Some(&KEY));
    match &result {
        Ok(plan) => {
            let _ = plan::render_text(plan);
            let _ = (plan.has_changes(), plan.destroys_everything(), plan.is_drift());
            let saved = plan::to_saved(plan, Some(&KEY)).expect("a plan that was read saves again");
            let again = plan::from_saved(&saved, Some(&KEY))
                .unwrap_or_else(|e| panic!("from_saved refuses what to_saved wrote: {e}"));
            assert_eq!(&again, plan, "from_saved(to_saved(plan)) != plan");
            let resaved = plan::to_saved(&again, Some(&KEY)).unwrap();
            assert_eq!(resaved, saved, "saving again changes the file");
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
    result
}

/// `text` with the checksum and signature `to_saved` would give it, if it is a JSON object.
fn resign(text: &str) -> Option<String> {
    let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    object.remove("checksum");
    object.remove("signature");
    let mut value = Value::Object(object);
    let canonical = serde_json::to_string(&value).ok()?;
    let checksum = hex::encode(sha2::Sha256::digest(canonical.as_bytes()));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&KEY).ok()?;
    mac.update(canonical.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let object = value.as_object_mut()?;
    object.insert("checksum".into(), format!("sha256:{checksum}").into());
    object.insert("signature".into(), format!("hmac-sha256:{signature}").into());
    serde_json::to_string(&value).ok()
}
