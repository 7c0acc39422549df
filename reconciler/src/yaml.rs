//! YAML documents as JSON values, with the line and column of every node, so each error can
//! name the file, line, column and field it is about. (serde_yaml keeps no positions for
//! values, so the events of yaml-rust2's parser are turned into values here.)
//!
//! Scalars follow the YAML 1.2 core schema: plain `null`/`~`/empty, `true`/`false`, integers
//! and floats become JSON null, bools and numbers; everything else, and every quoted scalar,
//! is a string. Duplicate keys are errors.
//!
//! Hostile input is refused before it costs memory or stack: a text over
//! [`limits::MAX_FILE_BYTES`], nesting deeper than [`limits::MAX_DEPTH`], and anchors and
//! aliases outright (service definitions never need them, and an alias bomb of a few hundred
//! bytes expands to gigabytes). Events are pulled from the parser one by one: its own
//! `load` recurses once per nesting level and overflows the stack on deep input.
use std::collections::BTreeMap;

use crate::limits;

use serde_json::{Map, Number, Value};
use yaml_rust2::{
    parser::{Event, Parser},
    scanner::{Marker, TScalarStyle},
};

/// A place in a file: 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    fn of(mark: &Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Position { line: mark.line(), column: mark.col() + 1 }
    }
}

/// One YAML document of a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub value: Value,
    /// JSON pointer (`/spec/ports/0/port`) -> where its value starts.
    values: BTreeMap<String, Position>,
    /// JSON pointer of a mapping entry -> where its key starts.
    keys: BTreeMap<String, Position>,
}

impl Document {
    /// Where the value at `pointer` starts, or its nearest ancestor's if it does not exist.
    pub fn value_position(&self, pointer: &str) -> Position {
        nearest(&self.values, pointer)
    }

    /// Where the key of the entry at `pointer` is, else where its value is.
    pub fn key_position(&self, pointer: &str) -> Position {
        self.keys.get(pointer).copied().unwrap_or_else(|| self.value_position(pointer))
    }
}

fn nearest(positions: &BTreeMap<String, Position>, pointer: &str) -> Position {
    let mut pointer = pointer;
    loop {
        if let Some(position) = positions.get(pointer) {
            return *position;
        }
        match pointer.rfind('/') {
            Some(cut) => pointer = &pointer[..cut],
            None => return Position { line: 1, column: 1 },
        }
    }
}

/// A syntax error, at a place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub position: Position,
    pub message: String,
}

/// Every non-empty document in `text`.
pub fn parse(text: &str) -> Result<Vec<Document>, SyntaxError> {
    if text.len() > limits::MAX_FILE_BYTES {
        return Err(SyntaxError {
            position: Position { line: 1, column: 1 },
            message: limits::too_large(text.len() as u64),
        });
    }
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = parser.next_token().map_err(|e| SyntaxError {
            position: Position::of(e.marker()),
            message: match e.info() {
                // The scanner's own bound on flow collections (`[[[[...`), said our way.
                "recursion limit exceeded" => nested_too_deep(),
                info => info.to_owned(),
            },
        })?;
        if event == Event::StreamEnd {
            break;
        }
        builder.on_event(event, mark);
        if let Some(error) = builder.error.take() {
            return Err(error);
        }
    }
    Ok(builder.documents.into_iter().filter(|d| !d.value.is_null()).collect())
}

/// A node under construction: a mapping waiting for keys and values, or a sequence.
enum Open {
    Mapping { map: Map<String, Value>, pointer: String, pending_key: Option<String> },
    Sequence { items: Vec<Value>, pointer: String },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    documents: Vec<Document>,
    values: BTreeMap<String, Position>,
    keys: BTreeMap<String, Position>,
    error: Option<SyntaxError>,
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

impl Builder {
    /// The pointer the next value gets, or `None` when the next scalar is a mapping key.
    fn next_pointer(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Open::Mapping { pending_key: None, .. }) => None,
            Some(Open::Mapping { pending_key: Some(key), pointer, .. }) => {
                Some(format!("{pointer}/{}", escape(key)))
            }
            Some(Open::Sequence { items, pointer, .. }) => {
                Some(format!("{pointer}/{}", items.len()))
            }
        }
    }

    fn fail(&mut self, mark: Marker, message: String) {
        if self.error.is_none() {
            self.error = Some(SyntaxError { position: Position::of(&mark), message });
        }
    }

    /// Places a finished value into its parent (or ends the document).
    fn complete(&mut self, value: Value) {
        match self.stack.last_mut() {
            None => self.documents.push(Document {
                value,
                values: std::mem::take(&mut self.values),
                keys: std::mem::take(&mut self.keys),
            }),
            Some(Open::Mapping { map, pending_key, .. }) => {
                if let Some(key) = pending_key.take() {
                    map.insert(key, value);
                }
            }
            Some(Open::Sequence { items, .. }) => items.push(value),
        }
    }
}

const NO_ANCHORS: &str = "YAML anchors (`&name`) and aliases (`*name`) are not supported in \
                          reconciler files; write the value out";

impl Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(_, _, anchor, _)
            | Event::MappingStart(anchor, _)
            | Event::SequenceStart(anchor, _)
                if anchor > 0 =>
            {
                self.fail(mark, NO_ANCHORS.into())
            }
            Event::Alias(_) => self.fail(mark, NO_ANCHORS.into()),
            Event::Scalar(text, style, _, _tag) => match self.next_pointer() {
                Some(pointer) => {
                    self.values.insert(pointer, Position::of(&mark));
                    self.complete(scalar(text, style));
                }
                None => {
                    let Some(Open::Mapping { map, pointer, pending_key, .. }) =
                        self.stack.last_mut()
                    else {
                        return;
                    };
                    if map.contains_key(&text) {
                        let message = format!("duplicate key `{text}`");
                        self.fail(mark, message);
                        return;
                    }
                    let entry = format!("{pointer}/{}", escape(&text));
                    let pointer = pointer.clone();
                    *pending_key = Some(text);
                    self.keys.insert(entry, Position::of(&mark));
                    // A block mapping's start mark can lie past its first key: the mapping
                    // starts where its first key does.
                    if let Some(start) = self.values.get_mut(&pointer) {
                        *start = (*start).min(Position::of(&mark));
                    }
                }
            },
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let Some(pointer) = self.next_pointer() else {
                    self.fail(mark, "a mapping key must be a plain string".into());
                    return;
                };
                if self.stack.len() >= limits::MAX_DEPTH {
                    self.fail(mark, nested_too_deep());
                    return;
                }
                self.values.insert(pointer.clone(), Position::of(&mark));
                self.stack.push(if matches!(event, Event::MappingStart(..)) {
                    Open::Mapping { map: Map::new(), pointer, pending_key: None }
                } else {
                    Open::Sequence { items: Vec::new(), pointer }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let value = match self.stack.pop() {
                    Some(Open::Mapping { map, .. }) => Value::Object(map),
                    Some(Open::Sequence { items, .. }) => Value::Array(items),
                    None => return,
                };
                self.complete(value);
            }
            Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd
            | Event::Nothing => {}
        }
    }
}

fn nested_too_deep() -> String {
    format!(
        "nested more than {} levels deep; service definitions need a handful",
        limits::MAX_DEPTH
    )
}

fn scalar(text: String, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::String(text);
    }
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(number) = integer(&text) {
        return Value::Number(number);
    }
    if text.chars().next().is_some_and(|c| c.is_ascii_digit() || "+-.".contains(c)) {
        if let Some(number) = text.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(number);
        }
    }
    Value::String(text)
}

fn integer(text: &str) -> Option<Number> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = digits.strip_prefix("0x") {
        (16, hex)
    } else if let Some(octal) = digits.strip_prefix("0o") {
        (8, octal)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    let value = if negative { -magnitude } else { magnitude };
    if let Ok(v) = u64::try_from(value) {
        Some(Number::from(v))
    } else {
        i64::try_from(value).ok().map(Number::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_follow_the_core_schema() {
        let docs =
            parse("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: 10.96.0.10\ng: 0x1f\nh: -3\n").unwrap();
        assert_eq!(
            docs[0].value,
            json!({"a": 1, "b": "1", "c": true, "d": null, "e": 1.5, "f": "10.96.0.10", "g": 31, "h": -3})
        );
    }

    #[test]
    fn every_node_has_its_position() {
        let text = "spec:\n  ports:\n    - {port: 80}\n    - port: 81\n      name: x\n";
        let doc = &parse(text).unwrap()[0];
        assert_eq!(doc.value_position("/spec/ports/0/port"), Position { line: 3, column: 14 });
        assert_eq!(doc.key_position("/spec/ports/1/name"), Position { line: 5, column: 7 });
        assert_eq!(doc.value_position("/spec/ports/1/name"), Position { line: 5, column: 13 });
        // A missing field points at its nearest existing ancestor.
        assert_eq!(doc.value_position("/spec/ports/1/missing"), Position { line: 4, column: 7 });
    }

    #[test]
    fn documents_are_split_and_empty_ones_dropped() {
        let docs = parse("---\na: 1\n---\n---\nb: [1, 2]\nc: x\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].value, json!({"b": [1, 2], "c": "x"}));
        assert_eq!(docs[1].value_position("/b"), Position { line: 5, column: 4 });
    }

    #[test]
    fn anchors_and_aliases_are_refused_where_they_stand() {
        // The first lines of a billion-laughs bomb: refused before anything expands.
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a]\n";
        let err = parse(bomb).unwrap_err();
        assert_eq!(err.position, Position { line: 1, column: 7 });
        assert!(err.message.contains("anchors"), "{err:?}");
        let err = parse("a: [1]\nb: *a\n").unwrap_err();
        assert!(err.position.line == 2 || err.message.contains("anchor"), "{err:?}");
    }

    #[test]
    fn deep_nesting_is_refused_without_deep_recursion() {
        // Far deeper than any stack would take if parsing recursed per level.
        let text = format!("{}x\n", "- ".repeat(100_000));
        let err = parse(&text).unwrap_err();
        assert_eq!(err.position.line, 1);
        assert!(err.message.contains("nested more than"), "{err:?}");
        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("nested more than"), "{err:?}");
        let ok = format!("{}x\n", "- ".repeat(limits::MAX_DEPTH));
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn an_oversized_text_is_refused_before_parsing() {
        let text = "#".repeat(limits::MAX_FILE_BYTES + 1);
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("at most"), "{err:?}");
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_have_a_place() {
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.position, Position { line: 2, column: 1 });
        assert!(err.message.contains("duplicate key `a`"), "{err:?}");
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.position.line >= 2, "{err:?}");
    }
}
