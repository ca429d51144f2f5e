//! CORS policy (see the module docs once implemented).
