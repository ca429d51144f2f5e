//! Edge security: who gets in. CORS (answered before anything else, since a browser's
//! preflight carries no credentials), then authentication by JWT or API key, then the
//! route's permissions.

pub mod cors;
pub mod crypto;
