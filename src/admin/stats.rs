//! `GET /_kairos/stats/history`: the last 15 minutes of the once-a-second traffic samples
//! ([`crate::observability::stats`]), for the dashboard's sparklines.

use super::refuse;
use crate::runtime::SharedState;
use actix_web::{web, HttpRequest, HttpResponse};

pub async fn history(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    HttpResponse::Ok().json(state.stats.history())
}
