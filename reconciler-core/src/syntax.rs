//! YAML syntax errors said for people: the YAML parser names the token where it gave up,
//! often a line after the mistake and in its own terms ("did not find expected key"). For
//! the common mistakes (a key indented like no other, a list and a key at one indentation,
//! an unclosed `[`/`{` or quote, a tab, a second `: `), the place of the mistake and what to
//! do, with the parser's words after them. Quotes and brackets are told apart by a plain
//! scan, not a second parser: good enough for a hint, and the parser's words stay.
/// A place in a text: 1-based line and column (as `load::Position`, which this module's
/// caller is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub line: usize,
    pub column: usize,
}

/// Where the mistake behind the parser's error `info` at `at` in `text` is, and what to say.
pub(crate) fn explained(text: &str, at: Position, info: &str) -> (Position, String) {
    let lines: Vec<&str> = text.lines().collect();
    // Inside a `[...]` or `{...}` left open, whatever the parser says.
    if !info.contains("quoted scalar") {
        if let Some(open) = unclosed(&lines, at) {
            return unclosed_flow(&lines, open, info);
        }
    }
    let hint = if info.contains("did not find expected key") {
        return misindented(&lines, at, info);
    } else if info.contains("did not find expected '-' indicator") {
        return beside_list(&lines, at, info);
    } else if info.contains("expect ':'") {
        return without_colon(&lines, at, info);
    } else if info.contains("tabs disallowed") {
        "a tab: YAML indents with spaces only"
    } else if info.contains("mapping values are not allowed") {
        "a second `: ` on one line: quote a value that holds `: ` ('...'), or break the line \
         after the key"
    } else if info.contains("quoted scalar") {
        "this quote is never closed: end the value with the same quote (' or \")"
    } else {
        return (at, info.to_owned());
    };
    (at, format!("{hint} (YAML: {info})"))
}

/// A block mapping's key the parser did not expect: the line before `at`'s token is
/// indented like no key above it. Points at its first character, and names the keys it
/// could line up with.
fn misindented(lines: &[&str], at: Position, info: &str) -> (Position, String) {
    let Some(line) = lines.get(at.line.wrapping_sub(1)) else {
        return (at, info.to_owned());
    };
    let indent = line.len() - line.trim_start_matches(' ').len();
    // Above it, the nearest key indented less and the nearest indented more: the two
    // mappings it falls between.
    let (mut outer, mut inner) = (None, None);
    for (number, above) in lines[..at.line - 1].iter().enumerate().rev() {
        let Some((column, key)) = key_of(above) else { continue };
        // A key above lines up with it: the mistake is elsewhere on the line (`b: "x" y`).
        if column == indent {
            return (at, info.to_owned());
        }
        if column < indent && outer.is_none() {
            outer = Some((number + 1, column, key));
        } else if column > indent && inner.is_none() && outer.is_none() {
            inner = Some((number + 1, column, key));
        }
        if outer.is_some() {
            break;
        }
    }
    if inner.is_none() && outer.is_none() {
        return (at, info.to_owned());
    }
    let spaces = |n: usize| match n {
        0 => "none".to_owned(),
        1 => "1 space".to_owned(),
        n => format!("{n} spaces"),
    };
    let mut keys: Vec<String> = Vec::new();
    for (number, column, key) in inner.into_iter().chain(outer) {
        keys.push(format!("`{key}:` on line {number} has {}", spaces(column)));
    }
    let near = if keys.is_empty() { String::new() } else { format!(" ({})", keys.join(", ")) };
    let message = format!(
        "this line is indented by {}, like no key above it: a key lines up with the other keys \
         of its mapping{near} (YAML: {info})",
        spaces(indent)
    );
    (Position { line: at.line, column: indent + 1 }, message)
}

/// A key at the indentation of the `- ` of the list above it, which the parser took for
/// the list's next item: names the item's key to line it up with.
fn beside_list(lines: &[&str], at: Position, info: &str) -> (Position, String) {
    let text = lines.get(at.line.wrapping_sub(1)).copied().unwrap_or_default();
    let indent = text.len() - text.trim_start_matches(' ').len();
    let item = (1..at.line).rev().find_map(|n| {
        let above = lines.get(n - 1)?;
        let dash = above.len() - above.trim_start_matches(' ').len();
        (dash == indent && above.trim_start().starts_with("- ")).then(|| (n, key_of(above)))
    });
    let key = match item {
        Some((line, Some((column, key)))) => format!(
            ": line it up with `{key}:` ({column} spaces) to add it to the item of line {line}, \
             or start it with `- ` to make it an item of its own"
        ),
        _ => ": start it with `- ` to make it an item, or indent it under an item's key".into(),
    };
    let message = format!(
        "this line is indented like the `- ` of the list above it, which holds items only{key} \
         (YAML: {info})"
    );
    (Position { line: at.line, column: indent + 1 }, message)
}

/// A line that is neither `key: value` nor an item: the parser says so at the next token,
/// often the next line; the mistake is the last line with text up to there.
fn without_colon(lines: &[&str], at: Position, info: &str) -> (Position, String) {
    let line = (1..=at.line)
        .rev()
        .find(|&n| {
            lines.get(n - 1).is_some_and(|l| !l.trim().is_empty() && (n < at.line || at.column > 1))
        })
        .unwrap_or(at.line);
    let text = lines.get(line - 1).copied().unwrap_or_default();
    let column = text.len() - text.trim_start_matches(' ').len() + 1;
    let message = format!(
        "this line is neither `key: value` nor a list item (`- ...`): a key needs `: ` after \
         it (YAML: {info})"
    );
    (Position { line, column }, message)
}

/// The column (0-based) and name of the key a line starts with (after a `- `), if any.
fn key_of(line: &str) -> Option<(usize, &str)> {
    let content = line.trim_start_matches(' ');
    let mut column = line.len() - content.len();
    let mut rest = content;
    while let Some(item) = rest.strip_prefix("- ") {
        let trimmed = item.trim_start_matches(' ');
        column += rest.len() - trimmed.len();
        rest = trimmed;
    }
    if rest.starts_with('#') {
        return None;
    }
    let (key, _) = rest.split_once(':')?;
    let plain = !key.is_empty() && !key.contains(['{', '[', ' ', '"', '\'']);
    plain.then_some((column, key))
}

/// The innermost `[` or `{` still open at `at` (outside quotes and comments), if any.
fn unclosed(lines: &[&str], at: Position) -> Option<(Position, char)> {
    let mut open: Vec<(Position, char)> = Vec::new();
    for (index, line) in lines.iter().enumerate().take(at.line) {
        let (mut quote, mut before, mut escaped) = (None, ' ', false);
        for (column, c) in line.chars().enumerate() {
            if index + 1 == at.line && column + 1 >= at.column {
                break;
            }
            match (quote, c) {
                // `\"` inside double quotes is no end.
                (Some('"'), _) if escaped => escaped = false,
                (Some('"'), '\\') => escaped = true,
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                // A quote starts a value only where one starts: `it's` is a plain word.
                (None, '"' | '\'') if matches!(before, ' ' | '[' | '{' | ',' | ':') => {
                    quote = Some(c)
                }
                (None, '#') if before == ' ' => break,
                (None, '[' | '{') => {
                    open.push((Position { line: index + 1, column: column + 1 }, c))
                }
                (None, ']' | '}') => {
                    open.pop();
                }
                _ => {}
            }
            before = c;
        }
    }
    open.pop()
}

/// A `[` or `{` at `open` left open: the parser gives up somewhere after it; the closing
/// bracket belongs at the end of its line.
fn unclosed_flow(lines: &[&str], open: (Position, char), info: &str) -> (Position, String) {
    let (at, bracket) = open;
    let close = if bracket == '[' { ']' } else { '}' };
    let end =
        lines.get(at.line.wrapping_sub(1)).map_or(at.column, |l| l.trim_end().chars().count() + 1);
    let message = format!(
        "the `{bracket}` at column {} is not closed: end it with `{close}` (or separate its \
         entries with `,`) (YAML: {info})",
        at.column
    );
    (Position { line: at.line, column: end }, message)
}

#[cfg(test)]
mod tests {
    fn explain(text: &str) -> String {
        let error = crate::load::parse(text).unwrap_err();
        format!("{}:{}: {}", error.position.line, error.position.column, error.message)
    }

    #[test]
    fn common_mistakes_are_explained_where_they_are() {
        let under_name = explain("metadata:\n  name: web\n labels: {}\n");
        assert!(
            under_name.starts_with(
                "3:2: this line is indented by 1 space, like no key above it: a key lines up \
                 with the other keys of its mapping (`name:` on line 2 has 2 spaces, \
                 `metadata:` on line 1 has none)"
            ),
            "{under_name}"
        );
        let in_list = explain("spec:\n  backends:\n  - address: 1\n   weight: 2\n");
        assert!(in_list.starts_with("4:4: this line is indented by 3 spaces"), "{in_list}");
        assert!(
            in_list.contains(
                "(`address:` on line 3 has 4 spaces, `backends:` on line 2 has 2 spaces)"
            ),
            "{in_list}"
        );
        let unclosed = explain("spec:\n  ports: [{name: http, port: 80}\n\nkind: Service\n");
        assert!(
            unclosed.starts_with("2:33: the `[` at column 10 is not closed: end it"),
            "{unclosed}"
        );
        assert!(explain("a:\n\tb: 1\n").starts_with("2:2: a tab: YAML indents with spaces only"));
        assert!(explain("a: b: c\n").contains("a second `: ` on one line"));
        assert!(explain("key: 'open\n").starts_with("1:6: this quote is never closed"));
        assert!(explain("a: 1\nb\n").starts_with("2:1: this line is neither `key: value`"));
        // A key lined up with the others: the mistake is elsewhere, the parser says where.
        assert!(!explain("a: 1\nb: \"x\" y\n").contains("indented"));
        // An apostrophe in a word opens no quote: the bracket is closed.
        assert!(!explain("a: [it's, b]\nb: c: d\n").contains("not closed"));
        // A comment, after text that is not ASCII, holds no bracket.
        assert!(explain("a: [1, \"é\" # ]\nb: 2\n").contains("the `[` at column 4"));
        let beside = explain("a:\n  - b: 1\n  c: d\n");
        assert!(
            beside.contains("line it up with `b:` (4 spaces) to add it to the item of line 2"),
            "{beside}"
        );
    }
}
