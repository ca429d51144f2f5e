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
}

impl PositionIndex {
    /// Indexes `text`. Text that is not valid JSON yields a partial index (the parser reports
    /// syntax errors itself).
    pub fn build(text: &str) -> Self {
        let mut s = Scanner {
            b: text.as_bytes(),
            i: 0,
            line: 1,
            col: 1,
            idx: PositionIndex::default(),
        };
        s.ws();
        s.value(String::new());
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
    b: &'a [u8],
    i: usize,
    line: usize,
    col: usize,
    idx: PositionIndex,
}

impl Scanner<'_> {
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

    fn value(&mut self, path: String) {
        let start = self.pos();
        match self.peek() {
            Some(b'{') => {
                self.idx.values.insert(path.clone(), start);
                self.object(&path);
            }
            Some(b'[') => {
                self.idx.values.insert(path.clone(), start);
                self.array(&path);
            }
            Some(b'"') => {
                self.idx.values.insert(path, start);
                self.string();
            }
            Some(_) => {
                self.idx.values.insert(path, start);
                while matches!(self.peek(), Some(c) if !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                {
                    self.bump();
                }
            }
            None => {}
        }
    }

    fn string(&mut self) -> String {
        let start = self.i + 1;
        self.bump();
        while let Some(c) = self.peek() {
            match c {
                b'\\' => {
                    self.bump();
                    self.bump();
                }
                b'"' => {
                    let raw = &self.b[start..self.i];
                    self.bump();
                    return serde_json::from_slice::<String>(&[b"\"", raw, b"\""].concat())
                        .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned());
                }
                _ => self.bump(),
            }
        }
        String::new()
    }

    fn object(&mut self, path: &str) {
        self.bump();
        let mut seen = std::collections::HashSet::new();
        loop {
            self.ws();
            match self.peek() {
                Some(b'"') => {
                    let kpos = self.pos();
                    let key = self.string();
                    let child = join_key(path, &key);
                    if !seen.insert(key) {
                        self.idx.duplicates.push((child.clone(), kpos));
                    }
                    self.idx.keys.insert(child.clone(), kpos);
                    self.ws();
                    if self.peek() == Some(b':') {
                        self.bump();
                    }
                    self.ws();
                    self.value(child);
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

    fn array(&mut self, path: &str) {
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
                    self.value(format!("{path}[{n}]"));
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
    }
}
