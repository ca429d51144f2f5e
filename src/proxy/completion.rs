//! The end of a request: when its response is complete (or dropped because the client went
//! away), its metrics are recorded and its spans ended. A proxied response carries its
//! `Completion` inside the response body; a response the gateway made itself drops it at once.

use super::body::Progress;
use crate::observability::metrics::RequestSeries;
use crate::observability::trace::RequestTrace;
use std::rc::Rc;
use std::time::Instant;

pub struct Completion {
    /// Known once the response status is.
    series: Option<Rc<RequestSeries>>,
    start: Instant,
    status: u16,
    request_bytes: u64,
    /// The pump of a streamed request body counts what it received.
    streamed: Option<Progress>,
    pub response_bytes: u64,
    inflight: prometheus::IntGauge,
    pub trace: Option<RequestTrace>,
    /// A gRPC call: counted by its status (and its access-log line written) when it ends.
    pub grpc: Option<Rc<super::grpc::Call>>,
}

impl Completion {
    /// A request arrived: it counts as in flight until this is dropped.
    pub fn begin(
        start: Instant,
        inflight: &prometheus::IntGauge,
        trace: Option<RequestTrace>,
    ) -> Self {
        inflight.inc();
        Completion {
            series: None,
            start,
            status: 0,
            request_bytes: 0,
            streamed: None,
            response_bytes: 0,
            inflight: inflight.clone(),
            trace,
            grpc: None,
        }
    }

    /// The response is decided: what to record when it is over.
    pub fn set_outcome(
        &mut self,
        series: Rc<RequestSeries>,
        status: u16,
        request_bytes: u64,
        streamed: Option<Progress>,
    ) {
        self.series = Some(series);
        self.status = status;
        self.request_bytes = request_bytes;
        self.streamed = streamed;
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let request_bytes = match &self.streamed {
            Some(p) => p.bytes.get(),
            None => self.request_bytes,
        };
        if let Some(series) = &self.series {
            series.record(
                self.start.elapsed().as_secs_f64(),
                request_bytes,
                self.response_bytes,
            );
        }
        self.inflight.dec();
        if let Some(call) = self.grpc.take() {
            call.finish();
        }
        if let Some(t) = &mut self.trace {
            // A request dropped before a response was decided: the client went away.
            let status = if self.status == 0 { 499 } else { self.status };
            t.finish(status);
        }
    }
}
