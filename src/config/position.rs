//! Maps JSON paths (`routes[3].upstream`) to their line and column in the config text, so that
//! errors found after parsing can still point into the file. Also finds duplicate keys, which
//! serde_json silently resolves by keeping the last one.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// Positions of every key and value in a JSON document.
#[derive(Debug, Default)]
pub struct PositionIndex {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
    /// Paths of object members that appear more than once, with the later position.
    pub duplicates: Vec<(String, Pos)>,
    /// Every string value: its path and the byte range of its token, quotes included.
    pub strings: Vec<(String, std::ops::Range<usize>)>,
}

impl PositionIndex {
    /// Indexes `text`. Text that is not valid JSON yields a partial index (the parser reports
    /// syntax errors itself).
    pub fn build(text: &str) -> Self {
        Self::scan(text, true)
    }

    /// Only the duplicate keys: what every load needs, at a fraction of the cost of the full
    /// index (which is built only when there is an error to place).
    pub fn duplicates_only(text: &str) -> Self {
        Self::scan(text, false)
    }

    fn scan(text: &str, record: bool) -> Self {
        let mut s = Scanner {
            text,
            b: text.as_bytes(),
            i: 0,
            line: 1,
            col: 1,
            idx: PositionIndex::default(),
            path: String::new(),
            record,
        };
        s.ws();
        s.value();
        s.idx
    }

    /// Position of the value at `path`, or of its closest indexed ancestor.
    pub fn value(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p) {
                return Some(*pos);
            }
            p = parent(p)?;
        }
    }

    /// Position of the key that introduces `path` (falls back to the value's position).
    pub fn key(&self, path: &str) -> Option<Pos> {
        self.keys.get(path).copied().or_else(|| self.value(path))
    }
}

fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

pub fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    line: usize,
    col: usize,
    idx: PositionIndex,
    /// The path of the value being scanned, grown and truncated as the scan descends.
    path: String,
    /// Index every key and value (else only find duplicates).
    record: bool,
}

impl<'a> Scanner<'a> {
    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.col,
        }
    }

    fn bump(&mut self) {
        if let Some(&c) = self.b.get(self.i) {
            self.i += 1;
            if c == b'\n' {
                self.line += 1;
                self.col = 1;
            } else if c & 0xC0 != 0x80 {
                self.col += 1;
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.bump();
        }
    }

    fn value(&mut self) {
        let start = self.pos();
        if self.record && self.peek().is_some() {
            self.idx.values.insert(self.path.clone(), start);
        }
        match self.peek() {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => {
                let from = self.i;
                self.string();
                if self.record {
                    self.idx.strings.push((self.path.clone(), from..self.i));
                }
            }
            Some(_) => {
                while matches!(self.peek(), Some(c) if !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                {
                    self.bump();
                }
            }
            None => {}
        }
    }

    /// Skips a string; its raw text between the quotes.
    fn string(&mut self) -> &'a str {
        let start = self.i + 1;
        self.bump();
        while let Some(c) = self.peek() {
            match c {
                b'\\' => {
                    self.bump();
                    self.bump();
                }
                b'"' => {
                    let raw = self.text.get(start..self.i).unwrap_or("");
                    self.bump();
                    return raw;
                }
                _ => self.bump(),
            }
        }
        ""
    }

    fn object(&mut self) {
        self.bump();
        let mut seen = std::collections::HashSet::new();
        loop {
            self.ws();
            match self.peek() {
                Some(b'"') => {
                    let kpos = self.pos();
                    let raw = self.string();
                    let parent_len = self.path.len();
                    if !self.path.is_empty() {
                        self.path.push('.');
                    }
                    if raw.contains('\\') {
                        // An escaped key: its path uses the decoded name.
                        let decoded = serde_json::from_str::<String>(&format!("\"{raw}\""))
                            .unwrap_or_else(|_| raw.to_string());
                        self.path.push_str(&decoded);
                    } else {
                        self.path.push_str(raw);
                    }
                    if !seen.insert(raw) {
                        self.idx.duplicates.push((self.path.clone(), kpos));
                    }
                    if self.record {
                        self.idx.keys.insert(self.path.clone(), kpos);
                    }
                    self.ws();
                    if self.peek() == Some(b':') {
                        self.bump();
                    }
                    self.ws();
                    self.value();
                    self.path.truncate(parent_len);
                    self.ws();
                    if self.peek() == Some(b',') {
                        self.bump();
                    }
                }
                Some(b'}') => {
                    self.bump();
                    return;
                }
                _ => return,
            }
        }
    }

    fn array(&mut self) {
        use std::fmt::Write;
        self.bump();
        let mut n = 0usize;
        loop {
            self.ws();
            match self.peek() {
                Some(b']') => {
                    self.bump();
                    return;
                }
                None => return,
                Some(_) => {
                    let before = self.i;
                    let parent_len = self.path.len();
                    let _ = write!(self.path, "[{n}]");
                    self.value();
                    self.path.truncate(parent_len);
                    n += 1;
                    self.ws();
                    if self.peek() == Some(b',') {
                        self.bump();
                    }
                    if self.i == before {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_positions_and_duplicates() {
        let text = "{\n  \"routes\": [\n    {\"name\": \"a\", \"upstream\": \"x\"},\n    {\"name\": \"b\", \"name\": \"c\"}\n  ]\n}";
        let idx = PositionIndex::build(text);
        assert_eq!(
            idx.value("routes[0].upstream"),
            Some(Pos {
                line: 3,
                column: 31
            })
        );
        assert_eq!(
            idx.key("routes[0].upstream"),
            Some(Pos {
                line: 3,
                column: 19
            })
        );
        assert_eq!(idx.value("routes[1]"), Some(Pos { line: 4, column: 5 }));
        assert_eq!(
            idx.value("routes[1].missing.deeper"),
            Some(Pos { line: 4, column: 5 })
        );
        assert_eq!(idx.duplicates.len(), 1);
        assert_eq!(idx.duplicates[0].0, "routes[1].name");
        let dups = PositionIndex::duplicates_only(text);
        assert_eq!(dups.duplicates, idx.duplicates);
        assert!(dups.value("routes[0]").is_none(), "nothing else is indexed");
        let escaped = PositionIndex::build(r#"{"a\u0062": {"x": 1, "x": 2}}"#);
        assert_eq!(escaped.duplicates[0].0, "ab.x");
    }
}
