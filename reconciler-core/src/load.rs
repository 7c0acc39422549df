//! The load step: reads YAML documents with positions, as JSON values with the line and
//! column of every node, so each error can name the file, line, column and field it is about.
//! (serde_yaml keeps no positions for values, so the events of yaml-rust2's parser are turned
//! into values here.)
//!
//! Scalars follow the YAML 1.2 core schema: plain `null`/`~`/empty, `true`/`false`, integers
//! and floats become JSON null, bools and numbers; everything else, and every quoted scalar,
//! is a string. Integers are decimal only (`0x10`, `010` are strings, which a numeric field
//! refuses at its place); tags (`!!str`) are refused. Duplicate keys are errors.
//!
//! Hostile input is refused before it costs memory or stack: a text over
//! [`limits::MAX_FILE_BYTES`], nesting deeper than [`limits::MAX_DEPTH`], and anchors and
//! aliases outright (service definitions never need them, and an alias bomb of a few hundred
//! bytes expands to gigabytes). Events are pulled from the parser one by one: yaml-rust2's
//! own loader recurses once per nesting level and overflows the stack on deep input.
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
    /// Where every node starts, in the value's own shape: a few words a node, where a map
    /// from JSON pointers cost ten times that (and most of a large file's memory).
    places: Place,
}

/// Where a node starts, and where its children do.
#[derive(Clone, Debug, PartialEq)]
struct Place {
    at: Position,
    children: Children,
}

#[derive(Clone, Debug, PartialEq)]
enum Children {
    None,
    Sequence(Box<[Place]>),
    /// Entries in the file's order: key, where the key is, where the value is.
    Mapping(Box<[(String, Position, Place)]>),
}

impl Document {
    /// The document without its values (`Null`), keeping where every node is: what a
    /// diagnostic needs once the values have been read into a typed model.
    pub fn positions_only(self) -> Document {
        Document { value: Value::Null, places: self.places }
    }

    /// A document of no value whose every node is at 1:1: for a service read back from a
    /// cache, whose positions are not kept.
    pub fn nowhere() -> Document {
        let start = Position { line: 1, column: 1 };
        Document { value: Value::Null, places: Place { at: start, children: Children::None } }
    }

    /// Where the value at `pointer` starts, or its nearest ancestor's if it does not exist.
    pub fn value_position(&self, pointer: &str) -> Position {
        let mut place = &self.places;
        for segment in segments(pointer) {
            match place.child(&segment) {
                Some((_, child)) => place = child,
                None => break,
            }
        }
        place.at
    }

    /// Where the key of the entry at `pointer` is, else where its value is.
    pub fn key_position(&self, pointer: &str) -> Position {
        let mut place = &self.places;
        let mut key_at = None;
        for segment in segments(pointer) {
            match place.child(&segment) {
                Some((key, child)) => (place, key_at) = (child, key),
                None => return place.at,
            }
        }
        key_at.unwrap_or(place.at)
    }
}

impl Place {
    /// The child named `segment`, and where its key is if it is a mapping entry.
    fn child(&self, segment: &str) -> Option<(Option<Position>, &Place)> {
        match &self.children {
            Children::None => None,
            Children::Sequence(items) => {
                segment.parse::<usize>().ok().and_then(|i| items.get(i)).map(|p| (None, p))
            }
            Children::Mapping(entries) => {
                entries.iter().find(|(key, ..)| key == segment).map(|(_, at, p)| (Some(*at), p))
            }
        }
    }
}

/// The unescaped segments of a JSON pointer (`/a~1b/0` -> `a/b`, `0`).
fn segments(pointer: &str) -> impl Iterator<Item = String> + '_ {
    pointer.split('/').skip(1).map(|s| s.replace("~1", "/").replace("~0", "~"))
}

/// A syntax error, at a place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub position: Position,
    pub message: String,
}

/// Every non-empty document in `text`.
pub fn parse(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut budget = limits::MAX_NODES;
    parse_within(text, &mut budget)
}

/// Every non-empty document in `text`, making at most `budget` nodes (scalars, mappings,
/// sequences), and taking the nodes made from it: one budget serves all files of a revision.
pub fn parse_within(text: &str, budget: &mut usize) -> Result<Vec<Document>, SyntaxError> {
    // The byte-order mark Notepad writes at the start of a UTF-8 file: no part of the text.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.len() > limits::MAX_FILE_BYTES {
        return Err(SyntaxError {
            position: Position { line: 1, column: 1 },
            message: limits::too_large(text.len() as u64),
        });
    }
    let mut builder =
        Builder { stack: Vec::new(), documents: Vec::new(), budget: *budget, error: None };
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = parser.next_token().map_err(|e| {
            let (position, message) = match e.info() {
                // The scanner's own bound on flow collections (`[[[[...`), said our way.
                "recursion limit exceeded" => (Position::of(e.marker()), nested_too_deep()),
                info => {
                    let at = Position::of(e.marker());
                    let at = crate::syntax::Position { line: at.line, column: at.column };
                    let (at, message) = crate::syntax::explained(text, at, info);
                    (Position { line: at.line, column: at.column }, message)
                }
            };
            SyntaxError { position, message }
        })?;
        if event == Event::StreamEnd {
            break;
        }
        builder.on_event(event, mark);
        if let Some(error) = builder.error.take() {
            *budget = builder.budget;
            return Err(error);
        }
    }
    *budget = builder.budget;
    Ok(builder.documents.into_iter().filter(|d| !d.value.is_null()).collect())
}

/// A node under construction: a mapping waiting for keys and values, or a sequence.
enum Open {
    Mapping {
        map: Map<String, Value>,
        at: Position,
        places: Vec<(String, Position, Place)>,
        /// The key whose value comes next, and where it is.
        pending_key: Option<(String, Position)>,
    },
    Sequence {
        items: Vec<Value>,
        at: Position,
        places: Vec<Place>,
    },
}

struct Builder {
    stack: Vec<Open>,
    documents: Vec<Document>,
    /// Nodes that may still be made, over every document of the text (and of the texts
    /// before it, for a caller that shares one budget).
    budget: usize,
    error: Option<SyntaxError>,
}

impl Builder {
    fn fail(&mut self, mark: Marker, message: String) {
        if self.error.is_none() {
            self.error = Some(SyntaxError { position: Position::of(&mark), message });
        }
    }

    /// Whether the next scalar is a mapping key.
    fn expects_key(&self) -> bool {
        matches!(self.stack.last(), Some(Open::Mapping { pending_key: None, .. }))
    }

    /// Places a finished value into its parent (or ends the document).
    fn complete(&mut self, value: Value, place: Place) {
        match self.stack.last_mut() {
            None => self.documents.push(Document { value, places: place }),
            Some(Open::Mapping { map, places, pending_key, .. }) => {
                if let Some((key, key_at)) = pending_key.take() {
                    map.insert(key.clone(), value);
                    places.push((key, key_at, place));
                }
            }
            Some(Open::Sequence { items, places, .. }) => {
                items.push(value);
                places.push(place);
            }
        }
    }

    fn on_event(&mut self, event: Event, mark: Marker) {
        let makes_node =
            matches!(event, Event::Scalar(..) | Event::MappingStart(..) | Event::SequenceStart(..));
        if makes_node && !self.take_node(mark) {
            return;
        }
        let at = Position::of(&mark);
        match event {
            Event::Scalar(_, _, anchor, _)
            | Event::MappingStart(anchor, _)
            | Event::SequenceStart(anchor, _)
                if anchor > 0 =>
            {
                self.fail(mark, NO_ANCHORS.into())
            }
            Event::Alias(_) => self.fail(mark, NO_ANCHORS.into()),
            Event::Scalar(_, _, _, Some(_))
            | Event::MappingStart(_, Some(_))
            | Event::SequenceStart(_, Some(_)) => self.fail(mark, NO_TAGS.into()),
            Event::Scalar(text, style, _, None) if !self.expects_key() => {
                self.complete(scalar(text, style), Place { at, children: Children::None });
            }
            Event::Scalar(text, ..) => self.key(text, at, mark),
            Event::MappingStart(..) => self.open(true, at, mark),
            Event::SequenceStart(..) => self.open(false, at, mark),
            Event::MappingEnd | Event::SequenceEnd => self.close(),
            Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd
            | Event::Nothing => {}
        }
    }

    /// Takes one node from the budget; `false` (and the error) when none is left.
    fn take_node(&mut self, mark: Marker) -> bool {
        if self.budget == 0 {
            let message = format!(
                "more than {} YAML nodes in the definitions; the data plane's capacity \
                 needs far fewer",
                limits::MAX_NODES
            );
            self.fail(mark, message);
            return false;
        }
        self.budget -= 1;
        true
    }

    /// A key of the innermost mapping, at `at`: its value comes next.
    fn key(&mut self, text: String, at: Position, mark: Marker) {
        let Some(Open::Mapping { map, at: start, pending_key, .. }) = self.stack.last_mut() else {
            return;
        };
        if map.contains_key(&text) {
            let message = format!("duplicate key `{text}`");
            self.fail(mark, message);
            return;
        }
        // A block mapping's start mark can lie past its first key: the mapping
        // starts where its first key does.
        *start = (*start).min(at);
        *pending_key = Some((text, at));
    }

    /// A mapping (else a sequence) that starts at `at`.
    fn open(&mut self, mapping: bool, at: Position, mark: Marker) {
        if self.expects_key() {
            self.fail(mark, "a mapping key must be a plain string".into());
            return;
        }
        if self.stack.len() >= limits::MAX_DEPTH {
            self.fail(mark, nested_too_deep());
            return;
        }
        self.stack.push(if mapping {
            Open::Mapping { map: Map::new(), at, places: Vec::new(), pending_key: None }
        } else {
            Open::Sequence { items: Vec::new(), at, places: Vec::new() }
        });
    }

    /// The innermost mapping or sequence ends: a value of its parent.
    fn close(&mut self) {
        let (value, place) = match self.stack.pop() {
            Some(Open::Mapping { map, at, places, .. }) => {
                let children = Children::Mapping(places.into_boxed_slice());
                (Value::Object(map), Place { at, children })
            }
            Some(Open::Sequence { items, at, places }) => {
                let children = Children::Sequence(places.into_boxed_slice());
                (Value::Array(items), Place { at, children })
            }
            None => return,
        };
        self.complete(value, place);
    }
}

const NO_ANCHORS: &str = "YAML anchors (`&name`) and aliases (`*name`) are not supported in \
                          reconciler files; write the value out";

const NO_TAGS: &str = "YAML tags (`!!str`, `!!int`, `!name`) are not supported in reconciler \
                       files: a value's type is its field's (quote a number to make it a string)";

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
    // Digits that are no decimal integer (`010`) are no float either.
    if text.trim_start_matches(['-', '+']).bytes().all(|b| b.is_ascii_digit()) {
        return Value::String(text);
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
    // Decimal only, without leading zeros: `0x10`, `0o10` and `010` (octal in YAML 1.1, the
    // 1.2 core schema's decimal) are strings, so a field that wants a number says so at its
    // place rather than reading what the writer may not have meant.
    if digits.is_empty()
        || !digits.chars().all(|c| c.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    let magnitude: i128 = digits.parse().ok()?;
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
            parse("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: 10.96.0.10\ng: 0x1f\nh: -3\ni: 010\n")
                .unwrap();
        assert_eq!(
            docs[0].value,
            json!({"a": 1, "b": "1", "c": true, "d": null, "e": 1.5, "f": "10.96.0.10",
                   "g": "0x1f", "h": -3, "i": "010"})
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
    fn tags_are_refused_where_they_stand() {
        for text in ["a: !!str 80\n", "a: !!int '80'\n", "a: !!map {b: 1}\n", "a: !x [1]\n"] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.position.line, 1, "{text}");
            assert!(err.message.contains("YAML tags"), "{err:?}");
        }
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
    fn one_node_budget_serves_several_texts() {
        let mut budget = 7;
        // A mapping, two keys, a value, a sequence and its item: six nodes.
        assert!(parse_within("a: 1\nb: [x]\n", &mut budget).is_ok());
        assert_eq!(budget, 1);
        // The mapping takes the last node; its key is one too many.
        let err = parse_within("c: 1\n", &mut budget).unwrap_err();
        assert_eq!(err.position, Position { line: 1, column: 1 });
        let refusal = format!("more than {} YAML nodes", limits::MAX_NODES);
        assert!(err.message.starts_with(&refusal), "{err:?}");
        assert_eq!(budget, 0);
    }

    #[test]
    fn an_oversized_text_is_refused_before_parsing() {
        let text = "#".repeat(limits::MAX_FILE_BYTES + 1);
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("at most"), "{err:?}");
    }

    #[test]
    fn a_byte_order_mark_is_no_part_of_the_text() {
        let docs = parse("\u{feff}apiVersion: v1\nkind: Service\n").unwrap();
        assert_eq!(docs[0].value, json!({"apiVersion": "v1", "kind": "Service"}));
        assert_eq!(docs[0].key_position("/apiVersion"), Position { line: 1, column: 1 });
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_have_a_place() {
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.position, Position { line: 2, column: 1 });
        assert!(err.message.contains("duplicate key `a`"), "{err:?}");
        // The parser gives up on line 2; the `]` is missing at the end of line 1.
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(err.position, Position { line: 1, column: 9 }, "{err:?}");
        assert!(err.message.starts_with("the `[` at column 4 is not closed"), "{err:?}");
    }
}
