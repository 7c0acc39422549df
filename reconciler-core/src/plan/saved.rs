//! The file `plan --out` writes and `apply PLANFILE` reads: the plan's JSON with a checksum.
use super::make::{Plan, FORMAT_VERSION};

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
    #[error("the saved plan has format version {found}; this reconciler reads {FORMAT_VERSION}")]
    Format { found: u64 },
    #[error("not a saved plan: {0}")]
    Fields(serde_json::Error),
}

/// The file `plan --out` writes: the plan's JSON with a `checksum` (SHA-256) of everything
/// else, so a plan edited by hand or cut short is refused instead of applied as written.
pub fn to_saved(plan: &Plan) -> Result<String, serde_json::Error> {
    if plan.touched.is_some() {
        return Err(serde::ser::Error::custom(
            "an incremental plan is not saved (its desired state is partial); plan with --refresh",
        ));
    }
    let mut value = serde_json::to_value(plan)?;
    let checksum = checksum_of(&value)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("checksum".into(), checksum.into());
    }
    serde_json::to_string(&value)
}

/// Reads a file [`to_saved`] wrote, checking its checksum first.
pub fn from_saved(text: &str) -> Result<Plan, SavedPlanError> {
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(SavedPlanError::NotJson)?;
    let found = value
        .as_object_mut()
        .and_then(|object| object.remove("checksum"))
        .ok_or(SavedPlanError::NoChecksum)?;
    let expected = checksum_of(&value).map_err(SavedPlanError::NotJson)?;
    if found.as_str() != Some(expected.as_str()) {
        return Err(SavedPlanError::Mismatch);
    }
    let version = value.get("format_version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(SavedPlanError::Format { found: version.unwrap_or(0) });
    }
    serde_json::from_value(value).map_err(SavedPlanError::Fields)
}

fn checksum_of(value: &serde_json::Value) -> Result<String, serde_json::Error> {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(serde_json::to_string(value)?.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("sha256:{hex}"))
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
            revision: Some("abc".into()),
            source: "test".into(),
            pin_path: "/sys/fs/bpf/x".into(),
            install: true,
            generation: 0,
            live_revision: None,
            against: false,
        };
        make_plan(context, &MapState::default(), MapState::default())
    }

    #[test]
    fn a_saved_plan_round_trips_and_any_edit_is_refused() {
        let saved = to_saved(&plan()).unwrap();
        assert_eq!(from_saved(&saved).unwrap(), plan());
        let edited = saved.replace("/sys/fs/bpf/x", "/sys/fs/bpf/y");
        assert!(matches!(from_saved(&edited), Err(SavedPlanError::Mismatch)));
        let unsigned = serde_json::to_string(&plan()).unwrap();
        assert!(matches!(from_saved(&unsigned), Err(SavedPlanError::NoChecksum)));
        assert!(matches!(from_saved(&saved[..saved.len() / 2]), Err(SavedPlanError::NotJson(_))));
        assert!(matches!(from_saved("[1]"), Err(SavedPlanError::NoChecksum)));
    }
}
