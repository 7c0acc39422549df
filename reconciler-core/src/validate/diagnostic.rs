//! Diagnostics: one problem at one place (file, line, column, field), and a service with
//! where it was defined, so that every rule can point at the field it is about.
use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    load::{Document, Position},
    model::Service,
};

/// One problem, at one place.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The field, as `spec.backends[1].weight`; empty for the whole document.
    pub field: String,
    pub message: String,
    /// A conflict between two places: the other one (`file:line`), which gets a diagnostic
    /// of its own, so that each file shows the conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub also: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// A valid service and where it was defined.
#[derive(Clone, Debug)]
pub struct Located {
    pub service: Arc<Service>,
    pub file: String,
    pub(super) document: Document,
}

impl Located {
    pub(super) fn diagnostic(&self, pointer: &str, message: impl Into<String>) -> Diagnostic {
        at(&self.file, self.document.value_position(pointer), pointer, message.into())
    }

    /// [`diagnostic`](Self::diagnostic) of a conflict with `other`, which is told apart.
    pub(super) fn conflict(&self, pointer: &str, message: String, other: &Located) -> Diagnostic {
        Diagnostic { also: Some(other.origin()), ..self.diagnostic(pointer, message) }
    }

    /// `file:line` of the service's name, for messages that point at another definition.
    pub(super) fn origin(&self) -> String {
        format!("{}:{}", self.file, self.document.value_position("/metadata/name").line)
    }
}

/// A diagnostic of `file` at `position`, about the field at `pointer` (a JSON pointer).
pub fn at(file: &str, position: Position, pointer: &str, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_owned(),
        line: position.line,
        column: position.column,
        field: field_name(pointer),
        message,
        also: None,
    }
}

/// `/spec/backends/1/weight` -> `spec.backends[1].weight`.
fn field_name(pointer: &str) -> String {
    let mut field = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.chars().all(|c| c.is_ascii_digit()) && !segment.is_empty() {
            field.push_str(&format!("[{segment}]"));
        } else {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(&segment);
        }
    }
    field
}

/// A diagnostic for each field of `section` that is `given` although it applies to `only`.
pub(super) fn fields_only_for(
    located: &Located,
    section: &str,
    given: &[(&str, bool)],
    only: &str,
    out: &mut Vec<Diagnostic>,
) {
    for (field, _) in given.iter().filter(|(_, given)| *given) {
        out.push(
            located.diagnostic(&format!("{section}/{field}"), format!("{field} applies to {only}")),
        );
    }
}
