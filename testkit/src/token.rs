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
pub fn token_with(claims: Value, ttl_secs: i64) -> String {
    mint_hs256(claims, ttl_secs, SECRET).expect("encode token")
}

/// An HS256 token signed with `secret`, with `exp` set `ttl_secs` from now
/// (negative: already expired). The one JWT minting path of the tests, the
/// demo and the developers' token tool (`switchyard-demo token`).
pub fn mint_hs256(mut claims: Value, ttl_secs: i64, secret: &str) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    claims["exp"] = json!(now + ttl_secs);
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}
