//! The transform phases: the compiled `transformations` of the route
//! ([`crate::config::transform`]) applied to the upstream request (path, query, headers) once
//! the edge chain has named the caller, and to the upstream's response head (headers,
//! status). Bodies pass untouched and unbuffered.
//!
//! Templates read the client's request as it arrived (its headers, its query), the route's
//! path parameters and the caller's identity; they are evaluated once, here, for both phases,
//! so a retry or the response needs neither the identity nor the templates again. A variable
//! with no value (an absent header, no JWT) fails its step.

use super::context::Ctx;
use super::route::Routed;
use super::upstream_request::UpstreamRequest;
use crate::base::error::GatewayError;
use crate::config::model::RouteConfig;
use crate::config::transform::{OnError, Op, ReplacementPart, Step, Template, TemplatePart};
use crate::edge::auth::{Identity, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue};

/// One header edit with its value evaluated.
#[derive(Debug, Clone)]
pub enum HeaderOp {
    Add(HeaderName, HeaderValue),
    Set(HeaderName, HeaderValue),
    Remove(HeaderName),
    Rename(HeaderName, HeaderName),
}

impl HeaderOp {
    pub fn apply(&self, headers: &mut HeaderMap) {
        match self {
            HeaderOp::Add(n, v) => {
                headers.append(n.clone(), v.clone());
            }
            HeaderOp::Set(n, v) => {
                headers.insert(n.clone(), v.clone());
            }
            HeaderOp::Remove(n) => {
                headers.remove(n);
            }
            HeaderOp::Rename(from, to) => {
                let values: Vec<HeaderValue> = match headers.entry(from) {
                    http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
                    http::header::Entry::Vacant(_) => return,
                };
                for v in values {
                    headers.append(to.clone(), v);
                }
            }
        }
    }
}

/// The route's response steps, their values evaluated (or the reason they could not be).
#[derive(Default)]
pub struct ResponseSteps(Vec<(usize, OnError, Result<Resolved, &'static str>)>);

pub enum Resolved {
    Headers(Vec<HeaderOp>),
    Status { from: u16, to: u16 },
}

/// What templates read.
struct Vars<'r, 'a> {
    ctx: &'r Ctx<'a>,
    route: &'r RouteConfig,
    params: &'r matchit::Params<'r, 'r>,
    identity: Option<&'r Identity>,
}

/// The request-transform phase: the route's request steps applied to `up` (its path, query
/// and header edits), its response steps evaluated for [`response`].
#[inline(always)]
pub fn request(
    ctx: &Ctx<'_>,
    routed: &Routed<'_, '_>,
    identity: Option<&Identity>,
    up: &mut UpstreamRequest<'_>,
) -> Result<ResponseSteps, GatewayError> {
    let t = &*routed.route.transforms;
    if t.is_empty() {
        return Ok(ResponseSteps::default());
    }
    let vars = Vars {
        ctx,
        route: routed.route,
        params: &routed.params,
        identity,
    };
    let pq = up.path_and_query.clone();
    let mut path = pq.path().to_string();
    let mut query = pq.query().map(str::to_string);
    let mut edited = false;
    for step in &t.request {
        let done = match &step.op {
            Op::PathRewrite(rw) => rewrite_path(&path, rw).map(|p| {
                if let Some(p) = p {
                    path = p;
                    edited = true;
                }
            }),
            Op::QuerySet(_) | Op::QueryRemove(_) | Op::QueryRename(_) => {
                edit_query(query.as_deref().unwrap_or(""), &step.op, &vars).map(|q| {
                    query = (!q.is_empty()).then_some(q);
                    edited = true;
                })
            }
            _ => headers(&step.op, &vars).map(|ops| up.transformed.extend(ops)),
        };
        if let Err(reason) = done {
            failed(ctx, routed.route, step, reason, false)?;
        }
    }
    if edited {
        let target = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        up.path_and_query = match http::uri::PathAndQuery::try_from(target) {
            Ok(pq) if pq.path().starts_with('/') => pq,
            _ => {
                // No one step is to blame alone: the last path or query step takes it.
                let last = t.request.iter().rev().find(|s| {
                    matches!(
                        s.op,
                        Op::PathRewrite(_)
                            | Op::QuerySet(_)
                            | Op::QueryRemove(_)
                            | Op::QueryRename(_)
                    )
                });
                if let Some(step) = last {
                    failed(ctx, routed.route, step, "not a valid request target", false)?;
                }
                pq
            }
        };
    }
    let steps = t
        .response
        .iter()
        .map(|s| {
            let r = match &s.op {
                Op::StatusMap { from, to } => Ok(Resolved::Status {
                    from: *from,
                    to: *to,
                }),
                op => headers(op, &vars).map(Resolved::Headers),
            };
            (s.index, s.on_error, r)
        })
        .collect();
    Ok(ResponseSteps(steps))
}

/// The response-transform phase: the response steps applied to the upstream's response head.
#[inline(always)]
pub fn response(
    ctx: &Ctx<'_>,
    route: &RouteConfig,
    steps: ResponseSteps,
    head: &mut http::response::Parts,
) -> Result<(), GatewayError> {
    for (k, (_, _, r)) in steps.0.iter().enumerate() {
        match r {
            Ok(Resolved::Headers(ops)) => ops.iter().for_each(|op| op.apply(&mut head.headers)),
            Ok(Resolved::Status { from, to }) => {
                if head.status.as_u16() == *from {
                    if let Ok(s) = http::StatusCode::from_u16(*to) {
                        head.status = s;
                    }
                }
            }
            Err(reason) => failed(ctx, route, &route.transforms.response[k], reason, true)?,
        }
    }
    Ok(())
}

/// A step failed: counted and logged; an error when its `on_error` is `fail`.
fn failed(
    ctx: &Ctx<'_>,
    route: &RouteConfig,
    step: &Step,
    reason: &str,
    response: bool,
) -> Result<(), GatewayError> {
    ctx.metrics
        .transform_errors
        .with_label_values(&[route.name.as_str(), &step.index.to_string()])
        .inc();
    tracing::debug!(
        request_id = ctx.rid_str(),
        route = route.name.as_str(),
        step = step.index,
        source = &*step.source,
        reason,
        "transformation step failed"
    );
    match step.on_error {
        OnError::Skip => Ok(()),
        OnError::Fail => Err(GatewayError::TransformFailed {
            route: route.name.clone(),
            step: step.index,
            response,
        }),
    }
}

/// A header step's edits, values evaluated.
fn headers(op: &Op, vars: &Vars<'_, '_>) -> Result<Vec<HeaderOp>, &'static str> {
    let value = |t: &Template| {
        let s = render(t, vars)?;
        HeaderValue::try_from(s).map_err(|_| "a value holds characters a header may not carry")
    };
    Ok(match op {
        Op::HeaderAdd(l) => l
            .iter()
            .map(|(n, t)| Ok(HeaderOp::Add(n.clone(), value(t)?)))
            .collect::<Result<_, &'static str>>()?,
        Op::HeaderSet(l) => l
            .iter()
            .map(|(n, t)| Ok(HeaderOp::Set(n.clone(), value(t)?)))
            .collect::<Result<_, &'static str>>()?,
        Op::HeaderRemove(l) => l.iter().map(|n| HeaderOp::Remove(n.clone())).collect(),
        Op::HeaderRename(l) => l
            .iter()
            .map(|(a, b)| HeaderOp::Rename(a.clone(), b.clone()))
            .collect(),
        Op::QuerySet(_)
        | Op::QueryRemove(_)
        | Op::QueryRename(_)
        | Op::PathRewrite(_)
        | Op::StatusMap { .. } => Vec::new(),
    })
}

/// A template's value; an error when a variable has none.
fn render(t: &Template, vars: &Vars<'_, '_>) -> Result<String, &'static str> {
    if let Some(s) = t.literal() {
        return Ok(s.to_string());
    }
    let req = vars.ctx.req;
    let mut out = String::new();
    for part in &t.parts {
        match part {
            TemplatePart::Literal(s) => out.push_str(s),
            TemplatePart::RequestId => out.push_str(vars.ctx.rid_str()),
            TemplatePart::ClientIp => {
                let ip = super::client_ip(req, &vars.ctx.rt.config.server)
                    .ok_or("{client_ip} has no value")?;
                out.push_str(&ip.to_string());
            }
            TemplatePart::Route => out.push_str(&vars.route.name),
            TemplatePart::Path { index, .. } => {
                let (_, v) = index
                    .and_then(|i| vars.params.iter().nth(i))
                    .ok_or("a {path.NAME} variable has no value on this route")?;
                out.push_str(v);
            }
            TemplatePart::Header(name) => {
                let v = req
                    .headers()
                    .get(name.as_str())
                    .ok_or("a {header.NAME} variable names a header the request lacks")?;
                out.push_str(v.to_str().map_err(|_| "a header is not visible ASCII")?);
            }
            TemplatePart::Query(name) => {
                let (_, v) = form_urlencoded::parse(req.query_string().as_bytes())
                    .find(|(k, _)| k == name)
                    .ok_or("a {query.NAME} variable names a parameter the request lacks")?;
                out.push_str(&v);
            }
            TemplatePart::Jwt(claim) => {
                let v = vars
                    .identity
                    .and_then(|i| i.token.as_ref())
                    .and_then(|t| t.claims.get(claim))
                    .ok_or("a {jwt.CLAIM} variable has no value (no token, or no such claim)")?;
                match v {
                    serde_json::Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                }
            }
            TemplatePart::ApiKey => {
                let id = vars
                    .identity
                    .filter(|i| i.scheme == Scheme::ApiKey)
                    .ok_or("{api_key} has no value (the caller did not use an API key)")?;
                out.push_str(&id.name);
            }
        }
    }
    Ok(out)
}

/// The path after a `path_rewrite`: `None` when the pattern does not match.
fn rewrite_path(
    path: &str,
    rw: &crate::config::transform::PathRewrite,
) -> Result<Option<String>, &'static str> {
    let Some(caps) = rw.regex.captures(path) else {
        return Ok(None);
    };
    let whole = caps.get(0).ok_or("no match")?;
    let mut out = String::with_capacity(path.len() + 16);
    out.push_str(&path[..whole.start()]);
    for part in &rw.replacement {
        match part {
            ReplacementPart::Literal(s) => out.push_str(s),
            ReplacementPart::Group(g) => out.push_str(caps.get(*g).map_or("", |m| m.as_str())),
        }
    }
    out.push_str(&path[whole.end()..]);
    if !out.starts_with('/') {
        return Err("the rewritten path does not start with `/`");
    }
    Ok(Some(out))
}

/// The query after a `query_*` step. Untouched parameters keep their bytes as sent.
fn edit_query(query: &str, op: &Op, vars: &Vars<'_, '_>) -> Result<String, &'static str> {
    let key_of = |pair: &str| -> String {
        form_urlencoded::parse(pair.as_bytes())
            .next()
            .map(|(k, _)| k.into_owned())
            .unwrap_or_default()
    };
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    match op {
        Op::QuerySet(list) => {
            for (name, t) in list {
                let pair = format!("{}={}", enc(name), enc(&render(t, vars)?));
                match pairs.iter().position(|p| key_of(p) == *name) {
                    Some(i) => {
                        pairs[i] = pair;
                        let mut k = 0;
                        pairs.retain(|p| {
                            k += 1;
                            k - 1 <= i || key_of(p) != *name
                        });
                    }
                    None => pairs.push(pair),
                }
            }
        }
        Op::QueryRemove(names) => pairs.retain(|p| !names.contains(&key_of(p))),
        Op::QueryRename(list) => {
            for p in &mut pairs {
                if let Some((_, to)) = list.iter().find(|(from, _)| *from == key_of(p)) {
                    *p = match p.split_once('=') {
                        Some((_, v)) => format!("{}={v}", enc(to)),
                        None => enc(to),
                    };
                }
            }
        }
        _ => {}
    }
    Ok(pairs.join("&"))
}
