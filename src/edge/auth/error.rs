//! Why the edge security of a config could not be built.

use super::jwt::JwtError;
use crate::config::cors::CorsError;

/// Why [`super::Auth::build`] failed: a CORS policy that does not compile, or a JWT
/// validator that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum AuthBuildError {
    #[error("cors: {0:?}")]
    Cors(Vec<CorsError>),
    #[error(transparent)]
    Jwt(#[from] JwtError),
}
