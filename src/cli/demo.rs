//! A small echo upstream: answers every request with a JSON description of what it received.
//! The embedded demo config routes to it, so `kairos-rs` with no arguments shows a working
//! proxy; `kairos-rs echo` runs it alone (handy as a benchmark or test peer).

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;

/// Address the demo config's upstream points at.
pub const DEMO_ECHO_ADDR: &str = "127.0.0.1:9901";

async fn echo(req: HttpRequest, mut body: web::Payload) -> HttpResponse {
    let mut len = 0usize;
    while let Some(Ok(chunk)) = body.next().await {
        len += chunk.len();
    }
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({
        "service": "kairos-echo",
        "method": req.method().as_str(),
        "path": req.path(),
        "query": req.query_string(),
        "headers": headers,
        "body_bytes": len,
    }))
}

/// Starts the echo server on `addr` with one worker; returns the running server.
pub fn start(addr: &str) -> std::io::Result<actix_web::dev::Server> {
    Ok(
        HttpServer::new(|| App::new().default_service(web::to(echo)))
            .workers(1)
            .disable_signals()
            .bind(addr)?
            .run(),
    )
}
