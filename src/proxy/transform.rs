//! The transform phases: the compiled `transformations` of the route
//! ([`crate::config::transform`]) applied to the upstream request (path, query, headers) once
//! the edge chain has named the caller, and to the upstream's response head (headers,
//! status). Bodies pass untouched and unbuffered, except through a `body_json` step: a
//! request body the body phase read whole, or a response body buffered up to
//! `server.max_transform_body` ([`response_body`]). Only JSON bodies (`application/json`,
//! `*+json`) are edited; other bodies pass untouched. A body in a content coding (gzip,
//! deflate, br) is decoded, edited and encoded again ([`super::coding`]); an edited response
//! body gets its Content-Length fixed and its strong ETag made weak. A streamed request body,
//! a body in another coding or one over the limit (compressed or decoded) fails the step
//! (and, with `skip`, passes unchanged).
//!
//! Templates read the client's request as it arrived (its headers, its query), the route's
//! path parameters and the caller's identity; they are evaluated once, here, for both phases,
//! so a retry or the response needs neither the identity nor the templates again. A variable
//! with no value (an absent header, no JWT) fails its step.

use super::context::Ctx;
use super::forward::Answer;
use super::route::Routed;
use super::upstream_request::UpstreamRequest;
use crate::base::error::GatewayError;
use crate::config::model::{RouteConfig, ServerConfig};
use crate::config::transform::{
    JsonOp, OnError, Op, ReplacementPart, Step, Template, TemplatePart,
};
use crate::edge::auth::{Identity, Scheme};
use crate::upstream::body::ProxyBody;
use actix_web::HttpRequest;
use bytes::Bytes;
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

/// The route's response steps, in order, their values evaluated (or the reason they could
/// not be).
#[derive(Default)]
pub struct ResponseSteps(Vec<Result<Resolved, &'static str>>);

/// A response step ready to apply.
pub enum Resolved {
    Headers(Vec<HeaderOp>),
    Status {
        from: u16,
        to: u16,
    },
    /// A `body_json` step, left to [`response_body`].
    Body,
}

/// The response steps that edit the body (their positions among the route's response steps),
/// for [`response_body`].
pub struct BodySteps(Vec<usize>);

/// What [`response_body`] read of the upstream's body.
pub enum Buffered {
    /// The whole body, rewritten.
    Whole(Bytes),
    /// The start of a body too large to edit: the rest follows from the upstream.
    Prefix(Bytes),
}

/// What templates read: the client's request as it arrived, the route and its path
/// parameters, and the caller.
pub struct Vars<'r> {
    pub req: &'r HttpRequest,
    pub request_id: &'r str,
    /// For `{client_ip}` (the client's address behind trusted proxies).
    pub server: &'r ServerConfig,
    /// The route's name.
    pub route: &'r str,
    pub params: &'r matchit::Params<'r, 'r>,
    pub identity: Option<&'r Identity>,
    /// The request's tenant id.
    pub tenant: Option<&'r str>,
}

/// The request steps' edits of the upstream request.
#[derive(Debug, Default)]
pub struct RequestEdits {
    /// The new path and query, when a step changed them.
    pub target: Option<http::uri::PathAndQuery>,
    /// Header edits, in order, applied after the edge chain's.
    pub headers: Vec<HeaderOp>,
}

/// The request-transform phase: the route's request steps applied to `up` (its path, query,
/// header edits and a body read whole), its response steps evaluated for [`response`].
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
        req: ctx.req,
        request_id: ctx.rid_str(),
        server: &ctx.rt.config.server,
        route: &routed.route.name,
        params: &routed.params,
        identity,
        tenant: ctx.tenant_id(),
    };
    if !t.request.is_empty() {
        let pq = up.path_and_query.clone();
        let edits = request_edits(
            &t.request,
            &vars,
            &pq,
            &mut |ops| request_body(ctx, up, ops),
            &mut |step, reason| failed(ctx, routed.route, step, reason, false),
        )?;
        if let Some(pq) = edits.target {
            up.path_and_query = pq;
        }
        up.transformed = edits.headers;
    }
    let steps = t
        .response
        .iter()
        .map(|s| match &s.op {
            Op::StatusMap { from, to } => Ok(Resolved::Status {
                from: *from,
                to: *to,
            }),
            Op::BodyJson(_) => Ok(Resolved::Body),
            op => headers(op, &vars).map(Resolved::Headers),
        })
        .collect();
    Ok(ResponseSteps(steps))
}

/// Request steps evaluated against `pq`, the path and query the upstream would get: the
/// edits to make. `body` runs a `body_json` step; `fail` decides what a failed step does (an
/// error stops here).
pub fn request_edits<E>(
    steps: &[Step],
    vars: &Vars<'_>,
    pq: &http::uri::PathAndQuery,
    body: &mut dyn FnMut(&[JsonOp]) -> Result<(), &'static str>,
    fail: &mut dyn FnMut(&Step, &'static str) -> Result<(), E>,
) -> Result<RequestEdits, E> {
    let mut out = RequestEdits::default();
    let mut path: Option<String> = None;
    let mut query: Option<Option<String>> = None;
    for step in steps {
        let done = match &step.op {
            Op::PathRewrite(rw) => {
                rewrite_path(path.as_deref().unwrap_or(pq.path()), rw).map(|p| {
                    if p.is_some() {
                        path = p;
                    }
                })
            }
            Op::QuerySet(_) | Op::QueryRemove(_) | Op::QueryRename(_) => {
                let current = match &query {
                    Some(q) => q.as_deref(),
                    None => pq.query(),
                };
                edit_query(current.unwrap_or(""), &step.op, vars).map(|q| {
                    query = Some((!q.is_empty()).then_some(q));
                })
            }
            Op::BodyJson(ops) => body(ops),
            _ => push_headers(&step.op, vars, &mut out.headers),
        };
        if let Err(reason) = done {
            fail(step, reason)?;
        }
    }
    if path.is_none() && query.is_none() {
        return Ok(out);
    }
    let path = path.as_deref().unwrap_or(pq.path());
    let target = match query.unwrap_or_else(|| pq.query().map(str::to_string)) {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    match http::uri::PathAndQuery::try_from(target) {
        Ok(new) if new.path().starts_with('/') => out.target = Some(new),
        _ => {
            // No one step is to blame alone: the last path or query step takes it.
            let last = steps.iter().rev().find(|s| {
                matches!(
                    s.op,
                    Op::PathRewrite(_) | Op::QuerySet(_) | Op::QueryRemove(_) | Op::QueryRename(_)
                )
            });
            if let Some(step) = last {
                fail(step, "not a valid request target")?;
            }
        }
    }
    Ok(out)
}

/// The response-transform phase: the response steps applied to the upstream's response head;
/// the steps that edit the body are left to [`response_body`].
#[inline(always)]
pub fn response(
    ctx: &Ctx<'_>,
    route: &RouteConfig,
    steps: ResponseSteps,
    head: &mut http::response::Parts,
) -> Result<BodySteps, GatewayError> {
    let mut body = Vec::new();
    for (k, r) in steps.0.iter().enumerate() {
        match r {
            Ok(Resolved::Body) => body.push(k),
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
    Ok(BodySteps(body))
}

/// The response-transform phase's `body_json` steps: the upstream's JSON body read whole (up
/// to `server.max_transform_body`, within the route's timeout), edited, and its
/// Content-Length set. `None` when there is nothing to edit: the body streams as it comes.
pub async fn response_body(
    ctx: &Ctx<'_>,
    route: &RouteConfig,
    steps: BodySteps,
    answer: &mut Answer,
) -> Result<Option<Buffered>, GatewayError> {
    if steps.0.is_empty() {
        return Ok(None);
    }
    let status = answer.parts.status.as_u16();
    let bodiless = status < 200 || status == 204 || status == 304;
    if bodiless
        || ctx.req.method() == actix_web::http::Method::HEAD
        || !is_json(&answer.parts.headers)
    {
        return Ok(None);
    }
    let all = |reason: &'static str| -> Result<(), GatewayError> {
        for &k in &steps.0 {
            failed(ctx, route, &route.transforms.response[k], reason, true)?;
        }
        Ok(())
    };
    if status == 206 {
        all("the body is part of a larger one (206 Partial Content)")?;
        return Ok(None);
    }
    let coding = match super::coding::coding(&answer.parts.headers) {
        Ok(c) => c,
        Err(reason) => {
            all(reason)?;
            return Ok(None);
        }
    };
    let limit = ctx.rt.config.server.max_transform_body;
    if super::headers::content_length(&answer.parts.headers).is_some_and(|n| n > limit) {
        all("the body is larger than server.max_transform_body")?;
        return Ok(None);
    }
    let mut buf = bytes::BytesMut::new();
    let read = async {
        use hyper::body::Body;
        loop {
            let frame =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut answer.body).poll_frame(cx))
                    .await;
            match frame {
                None => return Ok(true),
                Some(Err(_)) => return Err(GatewayError::UpstreamProtocol),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                        if buf.len() as u64 > limit {
                            return Ok(false);
                        }
                    }
                }
            }
        }
    };
    let whole = tokio::time::timeout(route.timeout, read)
        .await
        .map_err(|_| GatewayError::UpstreamTimeout)??;
    if !whole {
        all("the body is larger than server.max_transform_body")?;
        return Ok(Some(Buffered::Prefix(buf.freeze())));
    }
    let received = buf.freeze();
    let mut body = match super::coding::decode(coding, received.clone(), limit) {
        Ok(b) => b,
        Err(reason) => {
            all(reason)?;
            return Ok(Some(Buffered::Whole(received)));
        }
    };
    let mut edited = false;
    for &k in &steps.0 {
        let step = &route.transforms.response[k];
        let Op::BodyJson(ops) = &step.op else {
            continue;
        };
        match super::body_json::apply(&body, ops) {
            Ok(b) => {
                body = b;
                edited = true;
            }
            Err(reason) => failed(ctx, route, step, reason, true)?,
        }
    }
    if !edited {
        return Ok(Some(Buffered::Whole(received)));
    }
    let body = super::coding::encode(coding, body);
    let headers = &mut answer.parts.headers;
    headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(body.len() as u64),
    );
    weaken_etag(headers);
    Ok(Some(Buffered::Whole(body)))
}

/// An edited body is no longer byte for byte the one a strong validator names: its `ETag`
/// becomes weak (`W/"…"`), as NGINX does when it compresses a response, so a client's
/// If-None-Match still works and a Range request is never served against it.
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(tag) = headers.get(http::header::ETAG) else {
        return;
    };
    if tag.as_bytes().starts_with(b"W/") {
        return;
    }
    let mut weak = Vec::with_capacity(tag.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(tag.as_bytes());
    match HeaderValue::from_bytes(&weak) {
        Ok(v) => {
            headers.insert(http::header::ETAG, v);
        }
        Err(_) => {
            headers.remove(http::header::ETAG);
        }
    }
}

/// A `body_json` step on the request: the body the body phase read whole, edited.
fn request_body(
    ctx: &Ctx<'_>,
    up: &mut UpstreamRequest<'_>,
    ops: &[JsonOp],
) -> Result<(), &'static str> {
    let headers = ctx.req.headers();
    let json = headers
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(json_type);
    if !json {
        return Ok(());
    }
    let coding = super::coding::coding_of(
        headers
            .get_all(actix_web::http::header::CONTENT_ENCODING)
            .map(|v| v.as_bytes()),
    )?;
    match &up.first {
        Some(ProxyBody::Full(Some(b))) => {
            let limit = ctx.rt.config.server.max_body_size;
            let decoded = super::coding::decode(coding, b.clone(), limit)?;
            let edited = super::coding::encode(coding, super::body_json::apply(&decoded, ops)?);
            up.body_len = Some(edited.len() as u64);
            up.replayable = Some(Some(edited.clone()));
            up.first = Some(ProxyBody::Full(Some(edited)));
            Ok(())
        }
        Some(ProxyBody::Stream { .. }) => {
            Err("the body is streamed (larger than the gateway reads whole)")
        }
        Some(ProxyBody::Empty) | Some(ProxyBody::Full(None)) | None => Ok(()),
    }
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(json_type)
}

/// `application/json`, or any `+json` type, parameters aside.
fn json_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
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
        .with_label_values(&[
            route.name.as_str(),
            &step.index.to_string(),
            step.op.type_name(),
        ])
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
fn headers(op: &Op, vars: &Vars<'_>) -> Result<Vec<HeaderOp>, &'static str> {
    let mut out = Vec::new();
    push_headers(op, vars, &mut out)?;
    Ok(out)
}

/// A header step's edits, its values evaluated, pushed onto `out`; nothing is pushed when a
/// value fails.
fn push_headers(op: &Op, vars: &Vars<'_>, out: &mut Vec<HeaderOp>) -> Result<(), &'static str> {
    let value = |t: &Template| match &t.header {
        Some(v) => Ok(v.clone()),
        None => HeaderValue::try_from(render(t, vars)?)
            .map_err(|_| "a value holds characters a header may not carry"),
    };
    let start = out.len();
    let done = (|| {
        match op {
            Op::HeaderAdd(l) => {
                for (n, t) in l {
                    out.push(HeaderOp::Add(n.clone(), value(t)?));
                }
            }
            Op::HeaderSet(l) => {
                for (n, t) in l {
                    out.push(HeaderOp::Set(n.clone(), value(t)?));
                }
            }
            Op::HeaderRemove(l) => out.extend(l.iter().map(|n| HeaderOp::Remove(n.clone()))),
            Op::HeaderRename(l) => out.extend(
                l.iter()
                    .map(|(a, b)| HeaderOp::Rename(a.clone(), b.clone())),
            ),
            Op::QuerySet(_)
            | Op::QueryRemove(_)
            | Op::QueryRename(_)
            | Op::PathRewrite(_)
            | Op::StatusMap { .. }
            | Op::BodyJson(_) => {}
        }
        Ok(())
    })();
    if done.is_err() {
        out.truncate(start);
    }
    done
}

/// A template's value; an error when a variable has none.
fn render(t: &Template, vars: &Vars<'_>) -> Result<String, &'static str> {
    if let Some(s) = t.literal() {
        return Ok(s.to_string());
    }
    let req = vars.req;
    let mut out = String::new();
    for part in &t.parts {
        match part {
            TemplatePart::Literal(s) => out.push_str(s),
            TemplatePart::RequestId => out.push_str(vars.request_id),
            TemplatePart::ClientIp => {
                let ip = super::client_ip(req, vars.server).ok_or("{client_ip} has no value")?;
                out.push_str(&ip.to_string());
            }
            TemplatePart::Route => out.push_str(vars.route),
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
            TemplatePart::Tenant => {
                out.push_str(
                    vars.tenant
                        .ok_or("{tenant} has no value (the request has no tenant)")?,
                );
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
    let mut out = String::with_capacity(path.len() + 16);
    if let Some(prefix) = &rw.prefix {
        // `^PREFIX(.*)$`: the whole path is the match, group 1 what follows the prefix.
        let Some(rest) = path.strip_prefix(prefix.as_str()) else {
            return Ok(None);
        };
        for part in &rw.replacement {
            match part {
                ReplacementPart::Literal(s) => out.push_str(s),
                ReplacementPart::Group(0) => out.push_str(path),
                ReplacementPart::Group(_) => out.push_str(rest),
            }
        }
    } else {
        let Some(caps) = rw.regex.captures(path) else {
            return Ok(None);
        };
        let whole = caps.get(0).ok_or("no match")?;
        out.push_str(&path[..whole.start()]);
        for part in &rw.replacement {
            match part {
                ReplacementPart::Literal(s) => out.push_str(s),
                ReplacementPart::Group(g) => out.push_str(caps.get(*g).map_or("", |m| m.as_str())),
            }
        }
        out.push_str(&path[whole.end()..]);
    }
    if !out.starts_with('/') {
        return Err("the rewritten path does not start with `/`");
    }
    Ok(Some(out))
}

/// The query after a `query_*` step. Untouched parameters keep their bytes as sent.
fn edit_query(query: &str, op: &Op, vars: &Vars<'_>) -> Result<String, &'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::transform::PathRewrite;
    use proptest::prelude::*;

    fn rewrite(pattern: &str, replacement: Vec<ReplacementPart>) -> PathRewrite {
        PathRewrite::new(regex::Regex::new(pattern).unwrap(), replacement)
    }

    #[test]
    fn only_a_plain_prefix_pattern_takes_the_fast_path() {
        let fast = |p: &str| rewrite(p, vec![]).prefix;
        assert_eq!(fast("^/api/v1/(.*)$").as_deref(), Some("/api/v1/"));
        assert_eq!(fast("^(.*)$").as_deref(), Some(""));
        for slow in [
            "/api/(.*)$",
            "^/api/(.*)",
            "^/a.i/(.*)$",
            "^/api/(.+)$",
            "^/api/(?<rest>.*)$",
            "(?i)^/api/(.*)$",
            "^/a[p]i/(.*)$",
            "^/api\\/(.*)$",
        ] {
            assert_eq!(fast(slow), None, "{slow}");
        }
    }

    proptest! {
        /// The prefix fast path rewrites every path exactly as the regex does.
        #[test]
        fn the_prefix_fast_path_agrees_with_the_regex(
            prefix in "/[a-z0-9_/]{0,12}",
            path in "/[a-z0-9_/%.]{0,24}",
            lit in "/[a-z]{0,6}",
        ) {
            let parts = vec![
                ReplacementPart::Literal(lit.clone()),
                ReplacementPart::Group(1),
                ReplacementPart::Literal("/".into()),
                ReplacementPart::Group(0),
            ];
            let pattern = format!("^{prefix}(.*)$");
            let fast = rewrite(&pattern, parts.clone());
            prop_assert!(fast.prefix.is_some());
            let mut slow = fast.clone();
            slow.prefix = None;
            for p in [path.clone(), format!("{prefix}{path}")] {
                prop_assert_eq!(rewrite_path(&p, &fast), rewrite_path(&p, &slow));
            }
        }
    }
}
