//! `body_json` steps: JSON Pointer (RFC 6901) operations on a body held whole. `set` creates
//! the objects missing on its way; `remove`, `rename` and `copy` of a missing pointer do
//! nothing. Errors name what failed, never the body.

use crate::config::transform::JsonOp;
use bytes::Bytes;
use serde_json::Value;

/// The body after `ops`, serialised again.
pub fn apply(body: &[u8], ops: &[JsonOp]) -> Result<Bytes, &'static str> {
    let mut doc: Value = serde_json::from_slice(body).map_err(|_| "the body is not JSON")?;
    for op in ops {
        match op {
            JsonOp::Set(path, v) => set(&mut doc, path, v.clone())?,
            JsonOp::Remove(path) => {
                take(&mut doc, path);
            }
            JsonOp::Rename(from, to) => {
                if let Some(v) = take(&mut doc, from) {
                    set(&mut doc, to, v)?;
                }
            }
            JsonOp::Copy(from, to) => {
                if let Some(v) = doc.pointer(from).cloned() {
                    set(&mut doc, to, v)?;
                }
            }
        }
    }
    serde_json::to_vec(&doc)
        .map(Bytes::from)
        .map_err(|_| "the body could not be written")
}

fn tokens(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
}

/// Splits a pointer into its parent and its last token (unescaped).
fn parent(path: &str) -> (&str, String) {
    let i = path.rfind('/').unwrap_or(0);
    let last = path[i + 1..].replace("~1", "/").replace("~0", "~");
    (&path[..i], last)
}

/// Removes and returns the value at `path`.
fn take(doc: &mut Value, path: &str) -> Option<Value> {
    let (up, last) = parent(path);
    match doc.pointer_mut(up)? {
        Value::Object(m) => m.remove(&last),
        Value::Array(a) => {
            let i: usize = last.parse().ok()?;
            (i < a.len()).then(|| a.remove(i))
        }
        _ => None,
    }
}

/// Sets the value at `path`, creating missing object members on the way. In an array, an
/// index replaces, and `-` or the length appends.
fn set(doc: &mut Value, path: &str, v: Value) -> Result<(), &'static str> {
    let mut cur = doc;
    let mut toks = tokens(path).peekable();
    while let Some(t) = toks.next() {
        let last = toks.peek().is_none();
        cur = match cur {
            Value::Object(m) => {
                if last {
                    m.insert(t, v);
                    return Ok(());
                }
                m.entry(t)
                    .or_insert_with(|| Value::Object(Default::default()))
            }
            Value::Array(a) => {
                let i = match t.as_str() {
                    "-" => a.len(),
                    n => n
                        .parse()
                        .map_err(|_| "a pointer indexes an array with a name")?,
                };
                if i > a.len() {
                    return Err("a pointer indexes past the end of an array");
                }
                if i == a.len() {
                    a.push(Value::Object(Default::default()));
                }
                if last {
                    a[i] = v;
                    return Ok(());
                }
                &mut a[i]
            }
            _ => return Err("a pointer goes through a value that is not an object or array"),
        };
    }
    // The empty pointer: the whole document.
    *cur = v;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(doc: Value, ops: Vec<JsonOp>) -> Result<Value, &'static str> {
        let out = apply(&serde_json::to_vec(&doc).unwrap(), &ops)?;
        Ok(serde_json::from_slice(&out).unwrap())
    }

    #[test]
    fn set_remove_rename_copy() {
        let out = run(
            json!({"internal": 1, "user_name": "a", "list": [1, 2], "a~b": {"c/d": 5}}),
            vec![
                JsonOp::Remove("/internal".into()),
                JsonOp::Rename("/user_name".into(), "/userName".into()),
                JsonOp::Set("/meta/gateway".into(), json!("kairos")),
                JsonOp::Copy("/list/1".into(), "/list/-".into()),
                JsonOp::Copy("/a~0b/c~1d".into(), "/five".into()),
                JsonOp::Remove("/missing/deep".into()),
                JsonOp::Rename("/missing".into(), "/never".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"userName": "a", "list": [1, 2, 2], "a~b": {"c/d": 5},
                   "meta": {"gateway": "kairos"}, "five": 5})
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            run(json!({"a": 1}), vec![JsonOp::Set("/a/b".into(), json!(2))]),
            Err("a pointer goes through a value that is not an object or array")
        );
        assert_eq!(
            run(json!([1]), vec![JsonOp::Set("/5".into(), json!(2))]),
            Err("a pointer indexes past the end of an array")
        );
        assert_eq!(apply(b"not json", &[]), Err("the body is not JSON"));
    }
}
