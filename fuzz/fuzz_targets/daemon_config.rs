//! The daemon's configuration file: any UTF-8 text through `daemon::config::parse`. Nothing
//! may panic; a configuration it accepts keeps the documented bounds.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::{fuzz_target, Corpus};
use reconciler::daemon::config;

fuzz_target!(|data: &[u8]| -> Corpus {
    let Ok(text) = std::str::from_utf8(data) else {
        return Corpus::Reject;
    };
    match config::parse("node.yaml", text) {
        Ok(config) => {
            assert!(config.interval >= Duration::from_millis(100), "{config:?}");
            assert!(!config.source.url.is_empty(), "{config:?}");
            let _ = config.source_spec();
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "an error without a diagnostic");
            for diagnostic in &diagnostics {
                assert!(diagnostic.line >= 1 && diagnostic.column >= 1, "{diagnostic:?}");
                let _ = diagnostic.to_string();
            }
        }
    }
    Corpus::Keep
});
