//! CORS policy. Placeholder until the policy lands: every `cors` section is refused.

/// The validated `cors` config (top level or per route).
#[derive(Debug, Clone, PartialEq)]
pub struct CorsConfig {
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age: Option<u64>,
}

pub struct CorsPolicy;

impl CorsPolicy {
    pub fn compile(_cfg: &CorsConfig) -> Result<CorsPolicy, Vec<(String, String, Option<String>)>> {
        Err(vec![(
            String::new(),
            "`cors` is not supported by this version of kairos-rs yet".into(),
            None,
        )])
    }
}

impl CorsPolicy {
    pub fn is_preflight(
        method: &actix_web::http::Method,
        headers: &actix_web::http::header::HeaderMap,
    ) -> bool {
        method == actix_web::http::Method::OPTIONS
            && headers.contains_key("origin")
            && headers.contains_key("access-control-request-method")
    }

    pub fn preflight(
        &self,
        _headers: &actix_web::http::header::HeaderMap,
    ) -> Result<actix_web::http::header::HeaderMap, &'static str> {
        Err("not supported")
    }

    pub fn apply(
        &self,
        _request: &actix_web::http::header::HeaderMap,
        _response: &mut actix_web::http::header::HeaderMap,
    ) {
    }
}
