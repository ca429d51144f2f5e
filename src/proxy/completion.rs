//! The end of a request: when its response is complete (or dropped because the client went
//! away), its metrics are recorded and its spans ended. A proxied response carries its
//! `Completion` inside the response body; a response the gateway made itself drops it at once.

use super::body::Progress;
use crate::observability::metrics::RequestSeries;
use crate::observability::trace::RequestTrace;
use std::rc::Rc;
use std::time::Instant;

pub struct Completion {
    series: Rc<RequestSeries>,
    start: Instant,
    status: u16,
    request_bytes: u64,
    /// The pump of a streamed request body counts what it received.
    streamed: Option<Progress>,
    pub response_bytes: u64,
    inflight: prometheus::IntGauge,
    trace: Option<RequestTrace>,
}

impl Completion {
    /// `inflight` was incremented when the request arrived; it is decremented here.
    pub fn new(
        series: Rc<RequestSeries>,
        start: Instant,
        status: u16,
        request_bytes: u64,
        streamed: Option<Progress>,
        inflight: prometheus::IntGauge,
        trace: Option<RequestTrace>,
    ) -> Self {
        Completion {
            series,
            start,
            status,
            request_bytes,
            streamed,
            response_bytes: 0,
            inflight,
            trace,
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let request_bytes = match &self.streamed {
            Some(p) => p.bytes.get(),
            None => self.request_bytes,
        };
        self.series.record(
            self.start.elapsed().as_secs_f64(),
            request_bytes,
            self.response_bytes,
        );
        self.inflight.dec();
        if let Some(t) = &mut self.trace {
            t.finish(self.status);
        }
    }
}
