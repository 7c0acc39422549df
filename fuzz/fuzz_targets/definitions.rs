//! Service definitions: any UTF-8 text as one definition file, through the YAML loader alone
//! and through the whole validation (schema, model, rules across documents). Nothing may
//! panic; every problem is a diagnostic at a 1-based line and column.
#![no_main]

use libfuzzer_sys::{fuzz_target, Corpus};
use reconciler_core::{
    load,
    source::{Snapshot, SourceFile},
    validate::{validate, Diagnostic, Policy},
};

fuzz_target!(|data: &[u8]| -> Corpus {
    let Ok(text) = std::str::from_utf8(data) else {
        return Corpus::Reject;
    };
    match load::parse(text) {
        Ok(documents) => {
            for document in &documents {
                let _ = document.value_position("/spec/backends/0/address");
                let _ = document.key_position("/metadata/name");
            }
        }
        Err(error) => {
            assert!(error.position.line >= 1 && error.position.column >= 1, "{error:?}");
        }
    }
    let snapshot =
        Snapshot { files: vec![SourceFile::new("fuzz.yaml", text)], ..Default::default() };
    check(validate(&snapshot, &Policy::default()));
    // The rules a policy adds: allowed VIP ranges and the node's own addresses.
    let policy = Policy {
        allowed_vips: Some(vec!["10.96.0.0/12".parse().unwrap(), "fd00:96::/64".parse().unwrap()]),
        local_addresses: vec![reconciler_core::node::LocalAddress {
            address: "10.96.0.1".parse().unwrap(),
            interface: "eth0".into(),
        }],
    };
    check(validate(&snapshot, &policy));
    Corpus::Keep
});

fn check<T>(result: Result<T, Vec<Diagnostic>>) {
    if let Err(diagnostics) = result {
        assert!(!diagnostics.is_empty(), "an error without a diagnostic");
        for diagnostic in &diagnostics {
            assert!(diagnostic.line >= 1 && diagnostic.column >= 1, "{diagnostic:?}");
            let _ = diagnostic.to_string();
        }
    }
}
