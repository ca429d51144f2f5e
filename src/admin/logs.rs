//! `GET /_kairos/logs`: the recent log lines of the in-memory ring
//! ([`crate::observability::log_ring`]), filtered by route, status, client and request id,
//! newest last.

use super::{api_error, refuse};
use crate::observability::log_ring::{self, Filter, RING_LINES};
use crate::runtime::SharedState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

/// Lines answered when the request gives no `limit`.
pub const DEFAULT_LIMIT: usize = 200;

#[derive(serde::Deserialize)]
pub struct Query {
    route: Option<String>,
    status: Option<String>,
    client: Option<String>,
    request_id: Option<String>,
    limit: Option<String>,
}

pub async fn logs(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    let bad =
        |message: &str| api_error(&req, StatusCode::BAD_REQUEST, "bad_request", message, None);
    let Ok(q) = web::Query::<Query>::from_query(req.query_string()) else {
        return bad("the query string could not be read");
    };
    let q = q.into_inner();
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=RING_LINES).contains(&n) => n,
        Some(_) => return bad(&format!("limit must be a number from 1 to {RING_LINES}")),
    };
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let status = nonempty(q.status);
    if let Some(s) = &status {
        if !log_ring::valid_status_filter(s) {
            return bad("status must be a status code (404) or a class (5xx)");
        }
    }
    let filter = Filter {
        route: nonempty(q.route),
        status,
        client: nonempty(q.client),
        request_id: nonempty(q.request_id),
    };
    let lines = log_ring::ring().query(&filter, limit);
    HttpResponse::Ok().json(serde_json::json!({ "lines": lines }))
}
