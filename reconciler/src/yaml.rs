//! YAML documents as JSON values, with the line and column of every node, so each error can
//! name the file, line, column and field it is about. (serde_yaml keeps no positions for
//! values, so the events of yaml-rust2's parser are turned into values here.)
//!
//! Scalars follow the YAML 1.2 core schema: plain `null`/`~`/empty, `true`/`false`, integers
//! and floats become JSON null, bools and numbers; everything else, and every quoted scalar,
//! is a string. Duplicate keys are errors; anchors and aliases are supported.
use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
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
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, true) {
        return Err(SyntaxError {
            position: Position::of(e.marker()),
            message: e.info().to_owned(),
        });
    }
    if let Some(error) = builder.error {
        return Err(error);
    }
    Ok(builder.documents.into_iter().filter(|d| !d.value.is_null()).collect())
}

/// A node under construction: a mapping waiting for keys and values, or a sequence.
enum Open {
    Mapping { map: Map<String, Value>, pointer: String, pending_key: Option<String>, anchor: usize },
    Sequence { items: Vec<Value>, pointer: String, anchor: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    documents: Vec<Document>,
    values: BTreeMap<String, Position>,
    keys: BTreeMap<String, Position>,
    anchors: BTreeMap<usize, Value>,
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
    fn complete(&mut self, value: Value, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
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

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match event {
            Event::Scalar(text, style, anchor, _tag) => match self.next_pointer() {
                Some(pointer) => {
                    self.values.insert(pointer, Position::of(&mark));
                    self.complete(scalar(text, style), anchor);
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
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                let Some(pointer) = self.next_pointer() else {
                    self.fail(mark, "a mapping key must be a plain string".into());
                    return;
                };
                self.values.insert(pointer.clone(), Position::of(&mark));
                self.stack.push(if matches!(event, Event::MappingStart(..)) {
                    Open::Mapping { map: Map::new(), pointer, pending_key: None, anchor }
                } else {
                    Open::Sequence { items: Vec::new(), pointer, anchor }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let (value, anchor) = match self.stack.pop() {
                    Some(Open::Mapping { map, anchor, .. }) => (Value::Object(map), anchor),
                    Some(Open::Sequence { items, anchor, .. }) => (Value::Array(items), anchor),
                    None => return,
                };
                self.complete(value, anchor);
            }
            Event::Alias(id) => {
                let Some(pointer) = self.next_pointer() else {
                    self.fail(mark, "an alias cannot be a mapping key".into());
                    return;
                };
                let value = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                self.values.insert(pointer, Position::of(&mark));
                self.complete(value, 0);
            }
            Event::DocumentStart => self.anchors.clear(),
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
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
        let docs = parse("---\na: 1\n---\n---\nb: &x [1, 2]\nc: *x\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].value, json!({"b": [1, 2], "c": [1, 2]}));
        assert_eq!(docs[1].value_position("/b"), Position { line: 5, column: 7 });
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
