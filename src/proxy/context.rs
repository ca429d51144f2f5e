//! The request context: what every phase reads (the request, the runtime it runs on, its id)
//! and what the phases learn on the way, for the response, the access log, the metrics and
//! the trace.

use super::body::Progress;
use super::completion::Completion;
use crate::edge::Admission;
use crate::observability::metrics::Metrics;
use crate::observability::request_id;
use crate::observability::trace::RequestTrace;
use crate::runtime::Runtime;
use actix_web::http::header::HeaderValue;
use actix_web::HttpRequest;
use std::sync::Arc;
use std::time::Instant;

pub struct Ctx<'a> {
    pub req: &'a HttpRequest,
    pub rt: &'a Runtime,
    pub metrics: &'a Metrics,
    /// The same runtime and metrics, for work that outlives the request (the cache's
    /// background refresh).
    pub shared: (&'a Arc<Runtime>, &'a Arc<Metrics>),
    pub start: Instant,
    /// The request's id: the client's `X-Request-Id` when valid, else a new one.
    pub rid: HeaderValue,
    /// The matched route: its index and name.
    pub route: Option<(usize, &'a str)>,
    /// The server of the last attempt: its set and index.
    pub upstream: Option<(crate::upstream::set::SetRef<'a>, usize)>,
    /// What the edge chain owes the response: where the rate limits stand.
    pub admission: Admission,
    /// The authenticated caller's name, for the access log (only when it is on).
    pub identity: Option<String>,
    /// The request's tenant (index into the tenancy's tenants), once recognised.
    pub tenant: Option<usize>,
    pub request_bytes: u64,
    /// The request body was read whole, or there was none: an answer now leaves the
    /// connection reusable.
    pub body_read: bool,
    pub streamed: Option<Progress>,
    /// Taken by whoever builds the response: into a proxied body, or dropped at once.
    pub done: Option<Completion>,
    /// The `X-Trace-Id` response header, when the request is traced.
    pub trace_header: Option<HeaderValue>,
    /// The trace and span ids, hex-encoded, for the access log (only when it is on).
    pub log_ids: Option<crate::observability::trace::LogIds>,
    /// A gRPC call on a `grpc` route: its deadline and status.
    pub grpc: Option<std::rc::Rc<super::grpc::Call>>,
}

impl<'a> Ctx<'a> {
    /// A request arrives: its id, its trace, and its count among the requests in flight.
    #[inline(always)]
    pub fn new(req: &'a HttpRequest, rt: &'a Arc<Runtime>, metrics: &'a Arc<Metrics>) -> Self {
        let start = Instant::now();
        let rid = request_id::for_request(req.headers());
        let trace = rt
            .tracing
            .as_ref()
            .map(|t| t.start(req, &rid, |ip| rt.config.server.is_trusted(ip)));
        Ctx {
            req,
            shared: (rt, metrics),
            rt,
            metrics,
            start,
            trace_header: trace.as_ref().map(RequestTrace::trace_id_header),
            log_ids: match rt.config.logging.access_log {
                true => trace.as_ref().map(RequestTrace::ids_hex),
                false => None,
            },
            rid,
            route: None,
            upstream: None,
            admission: Admission::default(),
            identity: None,
            tenant: None,
            request_bytes: 0,
            body_read: false,
            streamed: None,
            done: Some(Completion::begin(start, &metrics.inflight, trace)),
            grpc: None,
        }
    }

    /// A context for work done on a request's behalf after its response (no trace, no
    /// completion: it is not counted as a request of its own).
    pub fn detached(
        req: &'a HttpRequest,
        rt: &'a Arc<Runtime>,
        metrics: &'a Arc<Metrics>,
        rid: HeaderValue,
        route: Option<(usize, &'a str)>,
        tenant: Option<usize>,
    ) -> Self {
        Ctx {
            req,
            shared: (rt, metrics),
            rt,
            metrics,
            start: Instant::now(),
            rid,
            route,
            upstream: None,
            admission: Admission::default(),
            identity: None,
            tenant,
            request_bytes: 0,
            body_read: true,
            streamed: None,
            done: None,
            trace_header: None,
            log_ids: None,
            grpc: None,
        }
    }

    /// The request id as text (validated lazily: most requests never need it).
    pub fn rid_str(&self) -> &str {
        self.rid.to_str().unwrap_or_default()
    }

    /// The id of the request's tenant, if it has one.
    pub fn tenant_id(&self) -> Option<&'a str> {
        let tenancy = self.rt.edge.tenancy.as_ref()?;
        tenancy.ids.get(self.tenant?).map(String::as_str)
    }

    pub fn trace(&mut self) -> Option<&mut RequestTrace> {
        self.done.as_mut().and_then(|d| d.trace.as_mut())
    }

    pub fn trace_ref(&self) -> Option<&RequestTrace> {
        self.done.as_ref().and_then(|d| d.trace.as_ref())
    }

    /// The completion, with what it needs to record a response of this status.
    pub fn complete(&mut self, status: u16) -> Option<Completion> {
        let mut done = self.done.take()?;
        done.set_outcome(
            self.metrics.series(
                self.rt.generation,
                self.route,
                self.req.method().as_str(),
                status,
            ),
            status,
            self.request_bytes,
            self.streamed.take(),
        );
        done.grpc.clone_from(&self.grpc);
        Some(done)
    }
}
