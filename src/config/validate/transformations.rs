//! `transformations` (top level and per route): each step's phase, regex, replacement,
//! templates and header names checked and compiled once ([`crate::config::transform`]).

use super::V;
use crate::config::raw::{RawBodyJson, RawJsonOp};
use crate::config::raw::{
    RawHeaderNames, RawHeaderValues, RawParamNames, RawParamValues, RawPathRewrite, RawStatusMap,
    RawTransform,
};
use crate::config::transform::{
    JsonOp, OnError, Op, PathRewrite, ReplacementPart, Step, Template, TemplatePart, Transforms,
};
use http::{HeaderName, HeaderValue};
use std::sync::Arc;

const VARIABLES: &str = "{request_id}, {client_ip}, {route}, {path.NAME}, {header.NAME}, \
                         {query.NAME}, {jwt.CLAIM}, {api_key} or {tenant}";

/// Headers whose values the gateway itself manages (framing and hop-by-hop): a step may not
/// touch them.
const MANAGED: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Request,
    Response,
}

/// Where API keys come from: the gateway never forwards them, so no template may read them.
#[derive(Clone, Copy, Default)]
pub(super) struct KeySources<'a> {
    pub(super) header: Option<&'a HeaderName>,
    pub(super) query: Option<&'a str>,
}

/// Compiles the steps at `path` (`transformations` or `routes[i].transformations`). `params`
/// are the route's path parameters (`None` at the top level, where any route may apply);
/// `first` is the index of the first step in the route's list.
pub(super) fn steps(
    v: &mut V,
    path: &str,
    raw: &[RawTransform],
    (params, keys): (Option<&[String]>, KeySources<'_>),
    first: usize,
) -> Vec<(bool, Step)> {
    let mut out = Vec::with_capacity(raw.len());
    for (j, r) in raw.iter().enumerate() {
        let p = format!("{path}[{j}]");
        let cx = StepCx {
            p: &p,
            params,
            keys,
        };
        if let Some((response, on_error, op)) = step(v, &cx, r) {
            out.push((
                response,
                Step {
                    index: first + j,
                    source: Arc::from(p.as_str()),
                    on_error,
                    op,
                },
            ));
        }
    }
    out
}

/// A route's steps: the top-level ones (their `{path.NAME}` resolved against `params`, the
/// route's path parameters), then its own, split by phase.
pub(super) fn merge(
    top: &[(bool, Step)],
    own: Vec<(bool, Step)>,
    params: &[String],
) -> Arc<Transforms> {
    // Most routes have no transformation at all: they share one empty list.
    static NONE: std::sync::LazyLock<Arc<Transforms>> = std::sync::LazyLock::new(Arc::default);
    if top.is_empty() && own.is_empty() {
        return NONE.clone();
    }
    let mut t = Transforms::default();
    let top = top.iter().cloned().map(|(response, mut step)| {
        resolve_path_params(&mut step.op, params);
        (response, step)
    });
    for (response, step) in top.chain(own) {
        match response {
            true => t.response.push(step),
            false => t.request.push(step),
        }
    }
    Arc::new(t)
}

fn resolve_path_params(op: &mut Op, params: &[String]) {
    let templates: Vec<&mut Template> = match op {
        Op::HeaderAdd(l) | Op::HeaderSet(l) => l.iter_mut().map(|(_, t)| t).collect(),
        Op::QuerySet(l) => l.iter_mut().map(|(_, t)| t).collect(),
        _ => Vec::new(),
    };
    for t in templates {
        for part in &mut t.parts {
            if let TemplatePart::Path { name, index } = part {
                *index = params.iter().position(|p| p == name);
            }
        }
    }
}

struct StepCx<'a> {
    p: &'a str,
    params: Option<&'a [String]>,
    keys: KeySources<'a>,
}

fn step(v: &mut V, cx: &StepCx<'_>, r: &RawTransform) -> Option<(bool, OnError, Op)> {
    let (phase, on_error, op) = match r {
        RawTransform::HeaderAdd(h) => header_values(v, cx, h, Op::HeaderAdd),
        RawTransform::HeaderSet(h) => header_values(v, cx, h, Op::HeaderSet),
        RawTransform::HeaderRemove(h) => header_remove(v, cx, h),
        RawTransform::HeaderRename(h) => header_rename(v, cx, h),
        RawTransform::QuerySet(q) => query_values(v, cx, q, true),
        RawTransform::QueryRename(q) => query_values(v, cx, q, false),
        RawTransform::QueryRemove(q) => query_remove(v, cx, q),
        RawTransform::PathRewrite(pr) => path_rewrite(v, cx, pr),
        RawTransform::StatusMap(s) => status_map(v, cx, s),
        RawTransform::BodyJson(b) => body_json(v, cx, b),
    };
    Some((phase? == Phase::Response, on_error?, op?))
}

type Parsed = (Option<Phase>, Option<OnError>, Option<Op>);

fn phase(v: &mut V, p: &str, value: Option<&str>, default: Phase) -> Option<Phase> {
    match value {
        None => Some(default),
        Some("request") => Some(Phase::Request),
        Some("response") => Some(Phase::Response),
        Some(other) => {
            v.err_hint(
                format!("{p}.phase"),
                format!("unknown phase `{other}`"),
                "use \"request\" or \"response\"",
            );
            None
        }
    }
}

/// A phase for a step that only applies to requests (the query, the path).
fn request_only(v: &mut V, p: &str, value: Option<&str>, what: &str) -> Option<Phase> {
    let ph = phase(v, p, value, Phase::Request)?;
    if ph == Phase::Response {
        v.err_hint(
            format!("{p}.phase"),
            format!("a response has no {what}; this step applies to requests only"),
            "remove `phase` or set it to \"request\"",
        );
        return None;
    }
    Some(ph)
}

fn on_error(v: &mut V, p: &str, value: Option<&str>) -> Option<OnError> {
    match value {
        None | Some("fail") => Some(OnError::Fail),
        Some("skip") => Some(OnError::Skip),
        Some(other) => {
            v.err_hint(
                format!("{p}.on_error"),
                format!("unknown on_error `{other}`"),
                "use \"fail\" or \"skip\"",
            );
            None
        }
    }
}

fn header_name(v: &mut V, p: &str, name: &str) -> Option<HeaderName> {
    let Ok(h) = HeaderName::from_bytes(name.as_bytes()) else {
        v.err(p, format!("`{name}` is not a valid header name"));
        return None;
    };
    if MANAGED.contains(&h.as_str()) {
        v.err_hint(
            p,
            format!("`{name}` is managed by the gateway (message framing and connection)"),
            "transformations may not set, remove or rename it",
        );
        return None;
    }
    Some(h)
}

fn header_values(
    v: &mut V,
    cx: &StepCx<'_>,
    h: &RawHeaderValues,
    make: fn(Vec<(HeaderName, Template)>) -> Op,
) -> Parsed {
    let p = cx.p;
    let phase = phase(v, p, h.phase.as_deref(), Phase::Request);
    let on_error = on_error(v, p, h.on_error.as_deref());
    let mut list = Vec::new();
    let mut ok = true;
    for (name, value) in &h.headers {
        let hp = format!("{p}.headers.{name}");
        let n = header_name(v, &hp, name);
        let t = template(v, &hp, value, cx);
        if let Some(t) = &t {
            for part in &t.parts {
                if let TemplatePart::Literal(s) = part {
                    if HeaderValue::from_str(s).is_err() {
                        v.err(&hp, "the value holds characters a header may not carry");
                        ok = false;
                    }
                }
            }
        }
        match (n, t) {
            (Some(n), Some(t)) => list.push((n, t)),
            _ => ok = false,
        }
    }
    (phase, on_error, ok.then(|| make(list)))
}

fn header_remove(v: &mut V, cx: &StepCx<'_>, h: &RawHeaderNames) -> Parsed {
    let p = cx.p;
    let phase = phase(v, p, h.phase.as_deref(), Phase::Request);
    let on_error = on_error(v, p, h.on_error.as_deref());
    let names: Vec<Option<HeaderName>> = h
        .headers
        .iter()
        .enumerate()
        .map(|(k, n)| header_name(v, &format!("{p}.headers[{k}]"), n))
        .collect();
    let op = names
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .map(Op::HeaderRemove);
    (phase, on_error, op)
}

fn header_rename(v: &mut V, cx: &StepCx<'_>, h: &RawHeaderValues) -> Parsed {
    let p = cx.p;
    let phase = phase(v, p, h.phase.as_deref(), Phase::Request);
    let on_error = on_error(v, p, h.on_error.as_deref());
    let mut list = Vec::new();
    let mut ok = true;
    for (from, to) in &h.headers {
        let hp = format!("{p}.headers.{from}");
        match (header_name(v, &hp, from), header_name(v, &hp, to)) {
            (Some(a), Some(b)) => list.push((a, b)),
            _ => ok = false,
        }
    }
    (phase, on_error, ok.then_some(Op::HeaderRename(list)))
}

/// `query_set` (values are templates) or `query_rename` (values are new names).
fn query_values(v: &mut V, cx: &StepCx<'_>, q: &RawParamValues, set: bool) -> Parsed {
    let p = cx.p;
    let phase = request_only(v, p, q.phase.as_deref(), "query");
    let on_error = on_error(v, p, q.on_error.as_deref());
    let mut ok = true;
    let mut sets = Vec::new();
    let mut renames = Vec::new();
    for (name, value) in &q.params {
        let pp = format!("{p}.params.{name}");
        if name.is_empty() || (!set && value.is_empty()) {
            v.err(&pp, "a query parameter name may not be empty");
            ok = false;
            continue;
        }
        if set {
            match template(v, &pp, value, cx) {
                Some(t) => sets.push((name.clone(), t)),
                None => ok = false,
            }
        } else {
            renames.push((name.clone(), value.clone()));
        }
    }
    let op = match set {
        true => Op::QuerySet(sets),
        false => Op::QueryRename(renames),
    };
    (phase, on_error, ok.then_some(op))
}

fn query_remove(v: &mut V, cx: &StepCx<'_>, q: &RawParamNames) -> Parsed {
    let p = cx.p;
    let phase = request_only(v, p, q.phase.as_deref(), "query");
    let on_error = on_error(v, p, q.on_error.as_deref());
    let mut ok = true;
    for (k, name) in q.params.iter().enumerate() {
        if name.is_empty() {
            v.err(
                format!("{p}.params[{k}]"),
                "a query parameter name may not be empty",
            );
            ok = false;
        }
    }
    (
        phase,
        on_error,
        ok.then(|| Op::QueryRemove(q.params.clone())),
    )
}

fn path_rewrite(v: &mut V, cx: &StepCx<'_>, pr: &RawPathRewrite) -> Parsed {
    let p = cx.p;
    let phase = request_only(v, p, pr.phase.as_deref(), "path");
    let on_error = on_error(v, p, pr.on_error.as_deref());
    let regex = match regex::Regex::new(&pr.pattern) {
        Ok(r) => Some(r),
        Err(e) => {
            let msg = e.to_string();
            let last = msg.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            v.err_hint(
                format!("{p}.pattern"),
                format!(
                    "invalid regular expression: {}",
                    last.trim().trim_start_matches("error: ")
                ),
                "the pattern uses Rust regex syntax (no look-around or back-references)",
            );
            None
        }
    };
    if pr.replacement.contains(['?', '#']) {
        v.err_hint(
            format!("{p}.replacement"),
            "a path replacement may not contain `?` or `#`",
            "the query goes along unchanged; edit it with query_set, query_remove or query_rename",
        );
        return (phase, on_error, None);
    }
    let op = regex.and_then(|regex| match replacement(&pr.replacement, &regex) {
        Ok(replacement) => Some(Op::PathRewrite(PathRewrite::new(regex, replacement))),
        Err((msg, hint)) => {
            v.err_hint(format!("{p}.replacement"), msg, hint);
            None
        }
    });
    (phase, on_error, op)
}

fn status_map(v: &mut V, cx: &StepCx<'_>, s: &RawStatusMap) -> Parsed {
    let p = cx.p;
    let phase = phase(v, p, s.phase.as_deref(), Phase::Response);
    let phase = match phase {
        Some(Phase::Request) => {
            v.err_hint(
                format!("{p}.phase"),
                "status_map applies to responses only",
                "remove `phase` or set it to \"response\"",
            );
            None
        }
        other => other,
    };
    let on_error = on_error(v, p, s.on_error.as_deref());
    let mut ok = true;
    for (field, code) in [("from", s.from), ("to", s.to)] {
        if !(200..=599).contains(&code) || code == 204 || code == 304 {
            v.err_hint(
                format!("{p}.{field}"),
                format!("{code} cannot be mapped"),
                "use a status from 200 to 599 other than 204 and 304 (those never carry a body)",
            );
            ok = false;
        }
    }
    let op = ok.then_some(Op::StatusMap {
        from: s.from,
        to: s.to,
    });
    (phase, on_error, op)
}

fn body_json(v: &mut V, cx: &StepCx<'_>, b: &RawBodyJson) -> Parsed {
    let p = cx.p;
    let phase = phase(v, p, b.phase.as_deref(), Phase::Request);
    let on_error = on_error(v, p, b.on_error.as_deref());
    let mut ok = true;
    let mut pointer = |v: &mut V, field: String, ptr: &str| {
        if !ptr.starts_with('/') {
            v.err_hint(
                field,
                format!("`{ptr}` is not a JSON Pointer below the document"),
                "a pointer starts with `/`, such as \"/user/name\" (`~1` for `/`, `~0` for `~` in a key)",
            );
            ok = false;
        }
        ptr.to_string()
    };
    let mut ops = Vec::with_capacity(b.ops.len());
    for (k, op) in b.ops.iter().enumerate() {
        let q = format!("{p}.ops[{k}]");
        ops.push(match op {
            RawJsonOp::Set { path, value } => {
                JsonOp::Set(pointer(v, format!("{q}.path"), path), value.clone())
            }
            RawJsonOp::Remove { path } => JsonOp::Remove(pointer(v, format!("{q}.path"), path)),
            RawJsonOp::Rename { from, to } => JsonOp::Rename(
                pointer(v, format!("{q}.from"), from),
                pointer(v, format!("{q}.to"), to),
            ),
            RawJsonOp::Copy { from, to } => JsonOp::Copy(
                pointer(v, format!("{q}.from"), from),
                pointer(v, format!("{q}.to"), to),
            ),
        });
    }
    (phase, on_error, ok.then_some(Op::BodyJson(ops)))
}

/// Parses a `path_rewrite` replacement: `$1`, `$name` (letters, digits, `_`, not starting
/// with a digit), `$$` for `$`. Every capture it names must exist in `regex`.
pub fn replacement(
    s: &str,
    regex: &regex::Regex,
) -> Result<Vec<ReplacementPart>, (String, String)> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        lit.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let word = rest
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let group = if rest.starts_with('$') {
            lit.push('$');
            rest = &rest[1..];
            continue;
        } else if digits > 0 {
            let n: usize = rest[..digits].parse().unwrap_or(usize::MAX);
            rest = &rest[digits..];
            if n >= regex.captures_len() {
                return Err((
                    format!("`${n}` names a capture the pattern lacks"),
                    format!(
                        "the pattern has {} capture group(s); `$0` is the whole match",
                        regex.captures_len() - 1
                    ),
                ));
            }
            n
        } else if word > 0 {
            let name = &rest[..word];
            rest = &rest[word..];
            match regex.capture_names().position(|n| n == Some(name)) {
                Some(n) => n,
                None => {
                    return Err((
                        format!("`${name}` names a capture the pattern lacks"),
                        format!("name it in the pattern with `(?<{name}>...)`, or write `$$` for a literal `$`"),
                    ))
                }
            }
        } else {
            return Err((
                "`$` must be followed by a capture number or name".into(),
                "write `$$` for a literal `$`".into(),
            ));
        };
        if !lit.is_empty() {
            parts.push(ReplacementPart::Literal(std::mem::take(&mut lit)));
        }
        parts.push(ReplacementPart::Group(group));
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(ReplacementPart::Literal(lit));
    }
    Ok(parts)
}

fn template(v: &mut V, p: &str, s: &str, cx: &StepCx<'_>) -> Option<Template> {
    match parse_template(s, cx.params) {
        Ok(t) => {
            for part in &t.parts {
                let key = match part {
                    TemplatePart::Header(h) => cx.keys.header == Some(h),
                    TemplatePart::Query(q) => cx.keys.query == Some(q.as_str()),
                    _ => false,
                };
                if key {
                    v.err_hint(
                        p,
                        "a template may not read the API key: the gateway never forwards it",
                        "use {api_key} for the name of the caller's key",
                    );
                    return None;
                }
            }
            Some(t)
        }
        Err((msg, hint)) => {
            v.err_hint(p, msg, hint);
            None
        }
    }
}

/// Parses a value template into parts. `params`, when given, are the only `{path.NAME}`
/// names allowed.
pub fn parse_template(s: &str, params: Option<&[String]>) -> Result<Template, (String, String)> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        lit.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('{') {
            lit.push('{');
            rest = r;
            continue;
        }
        let Some(end) = rest.find('}') else {
            return Err((
                "`{` opens a variable that is never closed".into(),
                "write `{{` for a literal `{`".into(),
            ));
        };
        let var = &rest[..end];
        rest = &rest[end + 1..];
        let part = variable(var, params)?;
        if !lit.is_empty() {
            parts.push(TemplatePart::Literal(std::mem::take(&mut lit)));
        }
        parts.push(part);
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(TemplatePart::Literal(lit));
    }
    let header = match parts.as_slice() {
        [] => Some(http::HeaderValue::from_static("")),
        [TemplatePart::Literal(s)] => http::HeaderValue::from_str(s).ok(),
        _ => None,
    };
    Ok(Template { parts, header })
}

fn variable(var: &str, params: Option<&[String]>) -> Result<TemplatePart, (String, String)> {
    let unknown = || {
        (
            format!("unknown template variable `{{{var}}}`"),
            format!("use {VARIABLES}; write `{{{{` for a literal `{{`"),
        )
    };
    let (kind, name) = match var.split_once('.') {
        Some((k, n)) => (k, Some(n)),
        None => (var, None),
    };
    let part = match (kind, name) {
        ("request_id", None) => TemplatePart::RequestId,
        ("client_ip", None) => TemplatePart::ClientIp,
        ("route", None) => TemplatePart::Route,
        ("api_key", None) => TemplatePart::ApiKey,
        ("tenant", None) => TemplatePart::Tenant,
        (_, Some("")) => return Err(unknown()),
        ("path", Some(n)) => {
            let index = params.and_then(|ps| ps.iter().position(|p| p == n));
            if let Some(ps) = params {
                if index.is_none() {
                    let known = match ps.is_empty() {
                        true => "the route's path has no parameters".to_string(),
                        false => format!("the route's path parameters are: {}", ps.join(", ")),
                    };
                    return Err((
                        format!("`{{path.{n}}}` is not a parameter of the route's path"),
                        known,
                    ));
                }
            }
            TemplatePart::Path {
                name: n.to_string(),
                index,
            }
        }
        ("header", Some(n)) => match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) => TemplatePart::Header(h),
            Err(_) => return Err(unknown()),
        },
        ("query", Some(n)) => TemplatePart::Query(n.to_string()),
        ("jwt", Some(n)) => TemplatePart::Jwt(n.to_string()),
        _ => return Err(unknown()),
    };
    Ok(part)
}
