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
    /// The schema as JSON, for "did you mean".
    value: OnceLock<serde_json::Value>,
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
        Schema { name, text, compiled: OnceLock::new(), value: OnceLock::new() }
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
            schema_diagnostics(self, file, document, &error, &mut diagnostics);
        }
        Ok(diagnostics)
    }
}

/// The diagnostics of one schema `error` in `document`: unknown fields at their keys, the
/// common errors said for people, the others as jsonschema says them.
fn schema_diagnostics(
    schema: &Schema,
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
                let object = error.schema_path().as_str();
                let message = match schema.closest_field(object, key) {
                    Some(known) => format!("unknown field `{key}`; did you mean `{known}`?"),
                    None => format!("unknown field `{key}`"),
                };
                out.push(at(file, document.key_position(&field), &field, message));
            }
            return;
        }
        ValidationErrorKind::AnyOf { .. }
            if pointer.ends_with("/vip") || pointer.ends_with("/address") =>
        {
            format!("{} is not an IPv4 or IPv6 address", show(instance))
        }
        // A key of a map refused: at the key.
        ValidationErrorKind::PropertyNames { error: inner } => {
            let key = inner.instance().as_str().unwrap_or_default();
            let field = format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"));
            let message = match (inner.kind(), schema.pattern_words(inner)) {
                (ValidationErrorKind::Pattern { .. }, Some(words)) => {
                    format!("`{key}` is not {words}")
                }
                _ => inner.to_string(),
            };
            out.push(at(file, document.key_position(&field), &field, message));
            return;
        }
        // The schema says in words what its regular expression means.
        ValidationErrorKind::Pattern { pattern } => match schema.pattern_words(error) {
            Some(words) => format!("{} is not {words}", show(instance)),
            None => format!("{} does not match `{pattern}`", show(instance)),
        },
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

impl Schema {
    /// The field of the object whose `additionalProperties` refused `key` (`refused_at`, the
    /// keyword's place in this schema) nearest to it, if `key` looks like a typo of it: at
    /// most two edits (a swap of two letters is one), one for names of up to three letters.
    fn closest_field(&self, refused_at: &str, key: &str) -> Option<&str> {
        let fields = self.object_of(refused_at)?.get("properties")?.as_object()?.keys();
        let bound = if key.chars().count() <= 3 { 1 } else { 2 };
        let nearest = fields.map(|f| (strsim::osa_distance(key, f), f)).min()?;
        (nearest.0 > 0 && nearest.0 <= bound).then_some(nearest.1.as_str())
    }

    /// What the `pattern` that refused a value means, in words: its schema's
    /// `patternErrorMessage` (the name editors' YAML language servers show too).
    fn pattern_words(&self, error: &jsonschema::ValidationError<'_>) -> Option<&str> {
        self.object_of(error.schema_path().as_str())?.get("patternErrorMessage")?.as_str()
    }

    /// The schema object in which the keyword at `keyword_at` (a schema path, through
    /// `$ref`s) stands.
    fn object_of(&self, keyword_at: &str) -> Option<&serde_json::Value> {
        // The schema compiled (`validator`), so it parses.
        let root = self.value.get_or_init(|| serde_json::from_str(self.text).unwrap_or_default());
        let segments: Vec<&str> = keyword_at.split('/').skip(1).collect();
        let mut object = root;
        for segment in &segments[..segments.len().checked_sub(1)?] {
            let segment = segment.replace("~1", "/").replace("~0", "~");
            object = match segment.as_str() {
                "$ref" => root.pointer(object.get("$ref")?.as_str()?.strip_prefix('#')?)?,
                _ => match segment.parse::<usize>() {
                    Ok(index) if object.is_array() => object.get(index)?,
                    _ => object.get(&segment)?,
                },
            };
        }
        Some(object)
    }
}

/// A value as a diagnostic quotes it.
fn show(value: Option<&serde_json::Value>) -> String {
    value.map_or_else(
        || "the value".into(),
        |v| format!("`{}`", v.as_str().map_or(v.to_string(), str::to_owned)),
    )
}
