//! A jsonwebtoken CryptoProvider backed by ring.
