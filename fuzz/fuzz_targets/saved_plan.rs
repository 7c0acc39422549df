//! Saved plans (`plan --out FILE`, read by `apply FILE`): any UTF-8 text through
//! `plan::from_saved`; a plan it accepts must render, save again, and read back equal
//! (`from_saved(to_saved(p)) == p`).
//!
//! A mutated file almost never carries the right checksum, which would stop every input at
//! the checksum check; so each JSON object is also tried re-signed (its `checksum` replaced
//! by the SHA-256 of the rest, as `to_saved` writes it), which lets the fuzzer reach the
//! format-version check and the fields.
#![no_main]

use libfuzzer_sys::{fuzz_target, Corpus};
use reconciler_core::plan::{self, Plan, SavedPlanError};
use serde_json::Value;
use sha2::Digest as _;

fuzz_target!(|data: &[u8]| -> Corpus {
    let Ok(text) = std::str::from_utf8(data) else {
        return Corpus::Reject;
    };
    let _ = check(text);
    if let Some(resigned) = resign(text) {
        let result = check(&resigned);
        assert!(
            !matches!(result, Err(SavedPlanError::Mismatch)),
            "the harness's checksum differs from plan::to_saved's; update resign()"
        );
    }
    Corpus::Keep
});

/// `from_saved(text)`, and for a plan it reads: rendering and the round trip.
fn check(text: &str) -> Result<Plan, SavedPlanError> {
    let result = plan::from_saved(text);
    match &result {
        Ok(plan) => {
            let _ = plan::render_text(plan);
            let _ = (plan.has_changes(), plan.destroys_everything(), plan.is_drift());
            let saved = plan::to_saved(plan).expect("a plan that was read saves again");
            let again = plan::from_saved(&saved)
                .unwrap_or_else(|e| panic!("from_saved refuses what to_saved wrote: {e}"));
            assert_eq!(&again, plan, "from_saved(to_saved(plan)) != plan");
            assert_eq!(plan::to_saved(&again).unwrap(), saved, "saving again changes the file");
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
    result
}

/// `text` with the checksum `to_saved` would give it, if it is a JSON object.
fn resign(text: &str) -> Option<String> {
    let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    object.remove("checksum");
    let mut value = Value::Object(object);
    let digest = sha2::Sha256::digest(serde_json::to_string(&value).ok()?.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    value.as_object_mut()?.insert("checksum".into(), format!("sha256:{hex}").into());
    serde_json::to_string(&value).ok()
}
