//! JWTs for the test gateways: HS256, signed with [`SECRET`], which every
//! gateway a [`crate::Stack`] starts trusts.
//!
//! Invariant: `exp` is always set from the caller's time-to-live, so a test
//! never mints a token that silently never expires.

use serde_json::{json, Value};

/// The HS256 secret every test gateway trusts.
pub const SECRET: &str = "switchyard-test-secret-0123456789";

/// An HS256 token for the test secret.
pub fn token(sub: &str, products: &[&str], features: &[&str], ttl_secs: i64) -> String {
    token_with(
        json!({"sub": sub, "products": products, "features": features}),
        ttl_secs,
    )
}

/// A token with arbitrary claims; `exp` is set from `ttl_secs`.
pub fn token_with(mut claims: Value, ttl_secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    claims["exp"] = json!(now + ttl_secs);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode token")
}
