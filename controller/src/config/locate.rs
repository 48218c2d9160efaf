//! Finds where a field is written in a RON text, for the line numbers of semantic
//! errors (`ron` reports positions only for syntax errors).
//!
//! Owns: a small RON walker that follows a field path such as `nodes[1].addrs[0]` or
//! `vip.prefix` through structs (named or not), `Some(…)` wrappers, enum struct
//! variants (`Restart(times: 3)`) and lists, skipping strings, chars and comments. It
//! never fails loudly: a path it cannot follow gives `None` and the message names the
//! file alone.

use std::path::Path;

use super::error::Place;

/// The 1-based `(line, col)` (col in bytes, as `ron` counts) of the field at `path`
/// in `src`, or of the nearest enclosing field that is written there (a defaulted
/// field is absent from the text). `None` if not even the first segment is found.
pub(crate) fn locate(src: &str, path: &str) -> Option<(usize, usize)> {
    let segments = parse_path(path)?;
    let mut scanner = Scanner {
        src: src.as_bytes(),
        pos: 0,
    };
    scanner.skip_attributes();
    let mut found = None;
    let mut value = scanner.pos;
    for segment in &segments {
        let (at, inner) = match segment {
            Segment::Field(name) => scanner.find_field(value, name),
            Segment::Index(index) => scanner.find_index(value, *index).map(|p| (p, p)),
        }
        .map_or((None, None), |(a, v)| (Some(a), Some(v)));
        match (at, inner) {
            (Some(at), Some(inner)) => {
                found = Some(at);
                value = inner;
            }
            _ => break,
        }
    }
    found.map(|offset| line_col(src, offset))
}

/// A configuration file's name and text: turns a field path into a [`Place`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Src<'a> {
    /// The file (absolute).
    pub(crate) file: &'a Path,
    /// Its text.
    pub(crate) text: &'a str,
}

impl Src<'_> {
    /// Where `field` (a path such as `nodes[1].addrs[0]`) is written, or the
    /// nearest enclosing field, or the file alone.
    pub(crate) fn at(&self, field: &str) -> Place {
        Place {
            file: self.file.to_path_buf(),
            line_col: locate(self.text, field),
        }
    }
}

/// One step of a field path.
#[derive(Debug, PartialEq, Eq)]
enum Segment<'a> {
    /// A struct field (or enum struct-variant field) by name.
    Field(&'a str),
    /// A list element by index.
    Index(usize),
}

/// Splits `a.b[2].c` into segments; `None` if malformed.
fn parse_path(path: &str) -> Option<Vec<Segment<'_>>> {
    let mut segments = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if name.is_empty() {
            return None;
        }
        segments.push(Segment::Field(name));
        while let Some(after) = rest.strip_prefix('[') {
            let close = after.find(']')?;
            segments.push(Segment::Index(after[..close].parse().ok()?));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(segments)
}

/// 1-based line and byte column of `offset` in `src`.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    (line, offset - line_start + 1)
}

/// A cursor over RON bytes.
struct Scanner<'a> {
    src: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn starts_with(&self, s: &[u8]) -> bool {
        self.src[self.pos.min(self.src.len())..].starts_with(s)
    }

    /// Skips whitespace, `// line` and (nested) `/* block */` comments.
    fn skip_ws(&mut self) {
        loop {
            match self.peek() {
                Some(b) if b.is_ascii_whitespace() => self.pos += 1,
                Some(b'/') if self.starts_with(b"//") => {
                    while let Some(b) = self.peek() {
                        self.pos += 1;
                        if b == b'\n' {
                            break;
                        }
                    }
                }
                Some(b'/') if self.starts_with(b"/*") => {
                    self.pos += 2;
                    let mut depth = 1;
                    while depth > 0 && self.pos < self.src.len() {
                        if self.starts_with(b"/*") {
                            depth += 1;
                            self.pos += 2;
                        } else if self.starts_with(b"*/") {
                            depth -= 1;
                            self.pos += 2;
                        } else {
                            self.pos += 1;
                        }
                    }
                }
                _ => return,
            }
        }
    }

    /// Skips leading `#![enable(...)]` attributes.
    fn skip_attributes(&mut self) {
        loop {
            self.skip_ws();
            if !self.starts_with(b"#!") {
                return;
            }
            while let Some(b) = self.peek() {
                self.pos += 1;
                if b == b']' {
                    break;
                }
            }
        }
    }

    /// Reads an identifier (incl. `r#raw`) at the cursor, if any.
    fn ident(&mut self) -> Option<&str> {
        let start = self.pos;
        if self.starts_with(b"r#") {
            self.pos += 2;
        }
        let first = self.pos;
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || b == b'_' {
                self.pos += 1;
            } else {
                break;
            }
        }
        if self.pos == first || self.src[first].is_ascii_digit() {
            self.pos = start;
            return None;
        }
        std::str::from_utf8(&self.src[first..self.pos]).ok()
    }

    /// Skips a string (`"…"`, `r#"…"#`) or char (`'…'`) literal at the cursor.
    /// Returns false if there is none.
    fn skip_literal(&mut self) -> bool {
        match self.peek() {
            Some(quote @ (b'"' | b'\'')) => {
                self.pos += 1;
                while let Some(b) = self.peek() {
                    self.pos += 1;
                    if b == b'\\' {
                        self.pos += 1;
                    } else if b == quote {
                        break;
                    }
                }
                true
            }
            Some(b'r') => {
                let mut p = self.pos + 1;
                let mut hashes = 0;
                while self.src.get(p) == Some(&b'#') {
                    hashes += 1;
                    p += 1;
                }
                if self.src.get(p) != Some(&b'"') {
                    return false;
                }
                let mut end = Vec::with_capacity(hashes + 1);
                end.push(b'"');
                end.extend(std::iter::repeat_n(b'#', hashes));
                self.pos = p + 1;
                while self.pos < self.src.len() && !self.starts_with(&end) {
                    self.pos += 1;
                }
                self.pos = (self.pos + end.len()).min(self.src.len());
                true
            }
            _ => false,
        }
    }

    /// Skips one value: up to the `,` or closing bracket that ends it at depth 0.
    fn skip_value(&mut self) {
        let mut depth = 0usize;
        loop {
            self.skip_ws();
            if self.skip_literal() {
                continue;
            }
            match self.peek() {
                None => return,
                Some(b'(' | b'[' | b'{') => depth += 1,
                Some(b')' | b']' | b'}') => {
                    if depth == 0 {
                        return;
                    }
                    depth -= 1;
                }
                Some(b',') if depth == 0 => return,
                Some(_) => {}
            }
            self.pos += 1;
        }
    }

    /// Enters the value at `at`: skips `Some(` wrappers and a struct or variant
    /// name, and consumes the opening `open`. False if the value does not start so.
    fn enter(&mut self, at: usize, open: u8) -> bool {
        self.pos = at;
        loop {
            self.skip_ws();
            if self.peek() == Some(open) {
                self.pos += 1;
                return true;
            }
            let Some(name) = self.ident() else {
                return false;
            };
            let is_some = name == "Some";
            self.skip_ws();
            if !is_some {
                // A struct or enum-variant name: its `(` must follow.
                if open == b'(' && self.peek() == Some(b'(') {
                    self.pos += 1;
                    return true;
                }
                return false;
            }
            if self.peek() != Some(b'(') {
                return false;
            }
            self.pos += 1;
        }
    }

    /// In the struct at `value`, the offsets of field `name` and of its value.
    fn find_field(&mut self, value: usize, name: &str) -> Option<(usize, usize)> {
        if !self.enter(value, b'(') {
            return None;
        }
        loop {
            self.skip_ws();
            let field_at = self.pos;
            let field = self.ident()?;
            let is_match = field == name;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return None;
            }
            self.pos += 1;
            self.skip_ws();
            if is_match {
                return Some((field_at, self.pos));
            }
            self.skip_value();
            if self.peek() != Some(b',') {
                return None;
            }
            self.pos += 1;
        }
    }

    /// In the list at `value`, the offset of element `index`.
    fn find_index(&mut self, value: usize, index: usize) -> Option<usize> {
        if !self.enter(value, b'[') {
            return None;
        }
        for i in 0.. {
            self.skip_ws();
            if matches!(self.peek(), Some(b']') | None) {
                return None;
            }
            if i == index {
                return Some(self.pos);
            }
            self.skip_value();
            if self.peek() != Some(b',') {
                return None;
            }
            self.pos += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r##"// comment with nodes: inside
#![enable(implicit_some)]
(
    kind: Mirror, /* block /* nested */ dirs: */
    nodes: [
        (name: "a,b)", cert: r#"x"]"#, addrs: ["10.0.0.1"]),
        (name: "n2", cert: "c", addrs: ["10.0.0.2", "10.1.0.2"]),
    ],
    vip: Some((addr: "10.0.0.9", prefix: 24, interface: "eth0")),
    checkers: [(name: "h", check: Http(url: "http://x/"), on_failure: Restart(times: 0))],
    timing: (
        heartbeat_interval_ms: 200,
    ),
)
"##;

    #[test]
    fn finds_fields_through_lists_options_variants_and_literals() {
        let cases = [
            ("kind", Some((4, 5))),
            ("nodes", Some((5, 5))),
            ("nodes[0]", Some((6, 9))),
            ("nodes[1].name", Some((7, 10))),
            ("nodes[1].addrs[1]", Some((7, 53))),
            ("nodes[0].addrs", Some((6, 40))),
            ("vip.prefix", Some((9, 34))),
            ("checkers[0].check.url", Some((10, 40))),
            ("checkers[0].on_failure.times", Some((10, 79))),
            ("timing.heartbeat_interval_ms", Some((12, 9))),
            // Absent fields fall back to the nearest enclosing one.
            ("timing.lease_ms", Some((11, 5))),
            ("nodes[5].cert", Some((5, 5))),
            ("dirs", None),
            ("witness.cert", None),
        ];
        for (path, expected) in cases {
            assert_eq!(locate(SRC, path), expected, "{path}");
        }
    }

    #[test]
    fn malformed_paths_are_not_located() {
        assert_eq!(locate(SRC, ""), None);
        assert_eq!(locate(SRC, "nodes[x]"), None);
        assert_eq!(locate(SRC, "nodes[0]x"), None);
        assert_eq!(locate("", "kind"), None);
        assert_eq!(locate("(kind: ", "kind"), Some((1, 2)));
    }
}
