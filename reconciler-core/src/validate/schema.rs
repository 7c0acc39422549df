//! The JSON Schema check: an embedded schema, compiled on first use, and its errors said as
//! diagnostics at the place of the value (or key) they are about.
use std::sync::OnceLock;

use jsonschema::{error::ValidationErrorKind, Validator};

use super::diagnostic::{at, Diagnostic};
use crate::load::{Document, Position};

/// The schema every service document must satisfy.
pub const SCHEMA: &str = include_str!("../../../schema/service.schema.json");

/// An embedded JSON Schema, compiled on first use.
pub struct Schema {
    name: &'static str,
    text: &'static str,
    compiled: OnceLock<Result<Validator, SchemaError>>,
}

/// Why an embedded schema does not compile: a bug of this build, shown as a diagnostic of
/// the schema's file.
#[derive(Debug, thiserror::Error)]
enum SchemaError {
    #[error("embedded schema: {0}")]
    Json(serde_json::Error),
    #[error("embedded schema: {0}")]
    Schema(Box<jsonschema::ValidationError<'static>>),
}

pub(super) static SERVICE_SCHEMA: Schema = Schema::new("schema/service.schema.json", SCHEMA);

impl Schema {
    pub const fn new(name: &'static str, text: &'static str) -> Self {
        Schema { name, text, compiled: OnceLock::new() }
    }

    fn validator(&self) -> Result<&Validator, Diagnostic> {
        let compiled = self.compiled.get_or_init(|| {
            let schema: serde_json::Value =
                serde_json::from_str(self.text).map_err(SchemaError::Json)?;
            jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .map_err(|e| SchemaError::Schema(Box::new(e)))
        });
        compiled
            .as_ref()
            .map_err(|error| at(self.name, Position { line: 1, column: 1 }, "", error.to_string()))
    }

    /// Every way `document` (of `file`) breaks the schema.
    pub fn check(&self, file: &str, document: &Document) -> Result<Vec<Diagnostic>, Diagnostic> {
        let mut diagnostics = Vec::new();
        for error in self.validator()?.iter_errors(&document.value) {
            schema_diagnostics(file, document, &error, &mut diagnostics);
        }
        Ok(diagnostics)
    }
}

/// The diagnostics of one schema `error` in `document`: unknown fields at their keys, the
/// common errors said for people, the others as jsonschema says them.
fn schema_diagnostics(
    file: &str,
    document: &Document,
    error: &jsonschema::ValidationError<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let pointer = error.instance_path().as_str();
    let instance = document.value.pointer(pointer);
    let message = match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            for key in unexpected {
                let field = format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"));
                out.push(at(
                    file,
                    document.key_position(&field),
                    &field,
                    format!("unknown field `{key}`"),
                ));
            }
            return;
        }
        ValidationErrorKind::AnyOf { .. }
            if pointer.ends_with("/vip") || pointer.ends_with("/address") =>
        {
            format!("{} is not an IPv4 or IPv6 address", show(instance))
        }
        ValidationErrorKind::Pattern { .. }
            if pointer == "/metadata/name" || pointer.ends_with("/name") =>
        {
            format!(
                "{} is not a DNS label (lowercase letters, digits and `-`, starting and ending \
                 with a letter or digit)",
                show(instance)
            )
        }
        ValidationErrorKind::Constant { expected_value } => {
            format!(
                "expected `{}`, found {}",
                expected_value.as_str().unwrap_or_default(),
                show(instance)
            )
        }
        ValidationErrorKind::Type { .. } if pointer.is_empty() => {
            "a service definition must be a mapping with apiVersion, kind, metadata and spec"
                .to_owned()
        }
        _ => error.to_string(),
    };
    out.push(at(file, document.value_position(pointer), pointer, message));
}

/// A value as a diagnostic quotes it.
fn show(value: Option<&serde_json::Value>) -> String {
    value.map_or_else(
        || "the value".into(),
        |v| format!("`{}`", v.as_str().map_or(v.to_string(), str::to_owned)),
    )
}
