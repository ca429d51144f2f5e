//! The compiled form of `transformations`: each step's regex, templates and header names
//! parsed once at load, split by phase, top-level steps before the route's. The proxy's
//! transform phases only evaluate these.

use http::HeaderName;
use std::sync::Arc;

/// One route's steps, top-level first, split by phase (each keeps its order).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transforms {
    pub request: Vec<Step>,
    pub response: Vec<Step>,
}

impl Transforms {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// A compiled step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The step's position in the route's list (top-level steps first): the `step` label of
    /// `kairos_transform_errors_total` and the index error messages name.
    pub index: usize,
    /// Where it was written, e.g. `routes[2].transformations[0]`.
    pub source: Arc<str>,
    pub on_error: OnError,
    pub op: Op,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Refuse the message: 400 `transform_failed` for a request step, 502 for a response step.
    Fail,
    /// Pass the message on without this step, and count it.
    Skip,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    HeaderAdd(Vec<(HeaderName, Template)>),
    HeaderSet(Vec<(HeaderName, Template)>),
    HeaderRemove(Vec<HeaderName>),
    HeaderRename(Vec<(HeaderName, HeaderName)>),
    QuerySet(Vec<(String, Template)>),
    QueryRemove(Vec<String>),
    QueryRename(Vec<(String, String)>),
    PathRewrite(PathRewrite),
    StatusMap { from: u16, to: u16 },
    BodyJson(Vec<JsonOp>),
}

impl Op {
    /// The step's `type`, as written in the config: the `type` label of
    /// `kairos_transform_errors_total`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Op::HeaderAdd(_) => "header_add",
            Op::HeaderSet(_) => "header_set",
            Op::HeaderRemove(_) => "header_remove",
            Op::HeaderRename(_) => "header_rename",
            Op::QuerySet(_) => "query_set",
            Op::QueryRemove(_) => "query_remove",
            Op::QueryRename(_) => "query_rename",
            Op::PathRewrite(_) => "path_rewrite",
            Op::StatusMap { .. } => "status_map",
            Op::BodyJson(_) => "body_json",
        }
    }
}

/// A `body_json` operation; pointers are RFC 6901 JSON Pointers, checked at load.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonOp {
    Set(String, serde_json::Value),
    Remove(String),
    Rename(String, String),
    Copy(String, String),
}

/// A `path_rewrite`: the first match of `regex` in the path is replaced.
#[derive(Debug, Clone)]
pub struct PathRewrite {
    pub regex: regex::Regex,
    pub replacement: Vec<ReplacementPart>,
    /// For the most common pattern, `^PREFIX(.*)$` with a PREFIX of plain characters: the
    /// prefix. The rewrite then strips it instead of running the regex (group 1 is the rest
    /// of the path), the same result for a fifth of the instructions.
    pub prefix: Option<String>,
}

impl PathRewrite {
    pub fn new(regex: regex::Regex, replacement: Vec<ReplacementPart>) -> PathRewrite {
        let prefix = regex
            .as_str()
            .strip_prefix('^')
            .and_then(|p| p.strip_suffix("(.*)$"))
            .filter(|p| !p.contains(|c: char| "\\.+*?()|[]{}^$#&-~ \t\n\r".contains(c)))
            .map(str::to_string);
        PathRewrite {
            regex,
            replacement,
            prefix,
        }
    }
}

impl PartialEq for PathRewrite {
    fn eq(&self, other: &Self) -> bool {
        self.regex.as_str() == other.regex.as_str() && self.replacement == other.replacement
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplacementPart {
    Literal(String),
    /// A capture group by number (names are resolved to numbers at load).
    Group(usize),
}

/// A value with variables, parsed into parts once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<TemplatePart>,
    /// A template without variables, as a header value (built once at load: a header step
    /// with a fixed value then costs a reference-count increment per request, not an
    /// allocation). `None` when it has variables or is not a valid header value.
    pub header: Option<http::HeaderValue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    RequestId,
    ClientIp,
    Route,
    /// A route path parameter: its name, and its position among the route's parameters
    /// (`None` when the route has no such parameter: a top-level step on another route).
    Path {
        name: String,
        index: Option<usize>,
    },
    /// A request header (its first value).
    Header(HeaderName),
    /// A query parameter of the client's request (its first value, decoded).
    Query(String),
    /// A claim of the caller's verified JWT.
    Jwt(String),
    /// The name of the caller's API key (never the key).
    ApiKey,
    /// The request's tenant id.
    Tenant,
}

impl Template {
    /// The template is a constant.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [TemplatePart::Literal(s)] => Some(s),
            _ => None,
        }
    }
}
