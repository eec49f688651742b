//! JWT authentication of clients: HS256 with a shared secret, RS256 / ES256
//! with a PEM public key and/or keys from a JWKS selected by `kid` and
//! refreshed in the background ([`jwks`]). Claims: `sub` (required), `exp`
//! (required), `nbf` (checked when present), `iss` and `aud` (required when
//! configured), `tenant`, `products` ("Product Codes"), `features`
//! ("Feature Names").
//! `exp` and `nbf` tolerate [`DEFAULT_LEEWAY_SECS`] of clock skew.
//!
//! Invariant: the algorithm is never taken from the token alone: a token is
//! checked only with a key configured for exactly its `alg` (a JWKS key's
//! algorithm comes from the key), so `alg: none` and
//! HS256-signed-with-the-public-key confusion are refused.

pub mod jwks;

use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use jwks::{Jwks, KeySet};
use serde::Deserialize;
use std::sync::Arc;
use switchyard_channels::Entitlements;
use tokio_util::sync::CancellationToken;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least as
/// long as the hash output (256 bits).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Clock skew tolerated on `exp` and `nbf`, in seconds, unless configured.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// Who a connection is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<str>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    pub entitlements: Entitlements,
    /// Client info for presence: the token's `info` claim as JSON text, at
    /// most [`MAX_INFO_BYTES`].
    pub info: Option<Arc<str>>,
}

/// Largest `info` claim (serialized JSON) a token may carry.
pub const MAX_INFO_BYTES: usize = 1024;

/// Why a token was refused; `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send Authorization: Bearer <jwt> or ?access_token=<jwt>")]
    Missing,
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted by this gateway")]
    Algorithm(String),
    #[error("token names no signing key (kid) this gateway knows; retry shortly if keys were just rotated")]
    UnknownKey,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("token signature is invalid")]
    Signature,
    #[error("token claims are invalid: {0}")]
    Claims(String),
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLong => "too_long",
            AuthError::Malformed(_) => "malformed",
            AuthError::Algorithm(_) => "algorithm",
            AuthError::UnknownKey => "unknown_key",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Signature => "signature",
            AuthError::Claims(_) => "claims",
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    products: Vec<String>,
    #[serde(default)]
    features: Vec<String>,
    /// Client info shown to others in presence (any JSON value).
    #[serde(default)]
    info: Option<serde_json::Value>,
}

/// Verifies tokens against the configured keys.
#[derive(Clone)]
pub struct Authenticator {
    /// Keys from `SWITCHYARD_JWT_HS256_SECRET` / `SWITCHYARD_JWT_PUBLIC_KEY`.
    keys: Arc<Vec<(Algorithm, DecodingKey)>>,
    /// Keys from `SWITCHYARD_JWT_JWKS`, by `kid`.
    jwks: Option<Arc<Jwks>>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    leeway: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<_> = self.keys.iter().map(|k| k.0).collect();
        f.debug_struct("Authenticator")
            .field("algorithms", &algs)
            .field("jwks", &self.jwks)
            .finish()
    }
}

/// The token settings of the gateway's configuration
/// (`SWITCHYARD_JWT_*`), as [`Authenticator::from_config`] takes them.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub hs256_secret: Option<String>,
    pub public_key_pem: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub jwks: Option<jwks::JwksSource>,
    pub jwks_refresh: std::time::Duration,
    pub leeway_secs: u64,
}

impl Authenticator {
    /// Builds from the configured secret and/or PEM public key (no JWKS).
    pub fn new(
        hs256_secret: Option<&str>,
        public_key_pem: Option<&str>,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Self, String> {
        let keys = static_keys(hs256_secret, public_key_pem)?;
        Self::build(keys, None, issuer, audience)
    }

    /// Builds from the gateway's configuration: the static keys, the JWKS
    /// (read once here, so an unreadable one fails start-up naming
    /// `SWITCHYARD_JWT_JWKS`) and the leeway. Spawn [`Self::run_refresh`]
    /// to keep the JWKS fresh.
    pub async fn from_config(cfg: &AuthConfig) -> Result<Self, String> {
        let keys = static_keys(cfg.hs256_secret.as_deref(), cfg.public_key_pem.as_deref())?;
        let jwks = match &cfg.jwks {
            None => None,
            Some(source) => Some(
                Jwks::load(source.clone(), cfg.jwks_refresh)
                    .await
                    .map_err(|e| format!("SWITCHYARD_JWT_JWKS: {e}"))?,
            ),
        };
        let auth = Self::build(keys, jwks, cfg.issuer.clone(), cfg.audience.clone())?;
        Ok(auth.with_leeway(cfg.leeway_secs))
    }

    fn build(
        keys: Vec<(Algorithm, DecodingKey)>,
        jwks: Option<Arc<Jwks>>,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Self, String> {
        if keys.is_empty() && jwks.is_none() {
            return Err("no JWT key configured".into());
        }
        Ok(Authenticator {
            keys: Arc::new(keys),
            jwks,
            issuer,
            audience,
            leeway: DEFAULT_LEEWAY_SECS,
        })
    }

    /// Tolerates `secs` seconds of clock skew on `exp` and `nbf` instead of
    /// [`DEFAULT_LEEWAY_SECS`].
    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.leeway = secs;
        self
    }

    /// Keeps the JWKS fresh until `cancel`: re-reads it every
    /// `SWITCHYARD_JWT_JWKS_REFRESH_SECONDS`, sooner after a failure, and
    /// early (rate-limited) when a token names an unknown `kid`. Spawn it on
    /// the node's task tracker; it returns at once when no JWKS is
    /// configured.
    pub async fn run_refresh(self, cancel: CancellationToken) {
        if let Some(jwks) = self.jwks {
            jwks.run(cancel).await;
        }
    }

    /// The key that may verify a token with this header, never chosen by
    /// `alg` alone: a JWKS key named by `kid` must be of the token's `alg`;
    /// otherwise the static key for `alg`; otherwise, for a token without
    /// `kid`, the JWKS's only key for `alg`.
    fn select_key<'a>(
        &'a self,
        header: &Header,
        jwks: Option<&'a KeySet>,
    ) -> Result<&'a DecodingKey, AuthError> {
        let alg_error = || AuthError::Algorithm(format!("{:?}", header.alg));
        let jwks_alg = matches!(header.alg, Algorithm::RS256 | Algorithm::ES256);
        if let (Some(kid), Some(set)) = (&header.kid, jwks) {
            match set.get(kid) {
                Some(k) if k.alg == header.alg => return Ok(&k.key),
                Some(_) => return Err(alg_error()),
                None if jwks_alg => {
                    // Perhaps the issuer has rotated: look again soon
                    // (rate-limited), and meanwhile try the static key.
                    if let Some(j) = &self.jwks {
                        j.request_early_refresh();
                    }
                }
                None => {}
            }
        }
        if let Some((_, key)) = self.keys.iter().find(|(a, _)| *a == header.alg) {
            return Ok(key);
        }
        match (jwks, &header.kid) {
            (Some(_), Some(_)) if jwks_alg => Err(AuthError::UnknownKey),
            (Some(set), None) => match set.only_key_for(header.alg) {
                Some(key) => Ok(key),
                // Several keys for `alg`: only a `kid` can say which.
                None if set.has_alg(header.alg) => Err(AuthError::UnknownKey),
                None => Err(alg_error()),
            },
            _ => Err(alg_error()),
        }
    }

    /// Verifies `token` and returns the identity it carries.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            // `alg: none` (and any algorithm jsonwebtoken does not know)
            // fails here, before any key is consulted.
            AuthError::Malformed(e.to_string())
        })?;
        let jwks = self.jwks.as_ref().map(|j| j.current());
        let key = self.select_key(&header, jwks.as_deref())?;
        let mut v = Validation::new(header.alg);
        // jsonwebtoken checks `iss`/`aud` only when the token carries them;
        // a configured issuer or audience must be present, so it is required.
        let mut required = vec!["exp", "sub"];
        match &self.issuer {
            Some(i) => {
                v.set_issuer(&[i]);
                required.push("iss");
            }
            None => v.iss = None,
        }
        match &self.audience {
            Some(a) => {
                v.set_audience(&[a]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v.validate_nbf = true;
        v.leeway = self.leeway;
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidSignature => AuthError::Signature,
                K::InvalidIssuer | K::InvalidAudience | K::MissingRequiredClaim(_) | K::Json(_) => {
                    AuthError::Claims(e.to_string())
                }
                _ => AuthError::Malformed(e.to_string()),
            }
        })?;
        let c = data.claims;
        if c.sub.is_empty() || c.sub.len() > 256 {
            return Err(AuthError::Claims("sub must be 1..=256 bytes".into()));
        }
        if c.products.len() > 1000 || c.features.len() > 1000 {
            return Err(AuthError::Claims(
                "at most 1000 products and features".into(),
            ));
        }
        let info = match c.info {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let text = v.to_string();
                if text.len() > MAX_INFO_BYTES {
                    return Err(AuthError::Claims(format!(
                        "info must be at most {MAX_INFO_BYTES} bytes of JSON"
                    )));
                }
                Some(Arc::from(text))
            }
        };
        Ok(Identity {
            info,
            user: c.sub.into(),
            exp: c.exp,
            entitlements: Entitlements {
                tenant: c.tenant.filter(|t| !t.is_empty()),
                products: c.products,
                features: c.features,
            },
        })
    }
}

/// The keys configured directly: an HS256 secret and/or a PEM public key.
fn static_keys(
    hs256_secret: Option<&str>,
    public_key_pem: Option<&str>,
) -> Result<Vec<(Algorithm, DecodingKey)>, String> {
    let mut keys = Vec::new();
    if let Some(s) = hs256_secret {
        if s.len() < MIN_HS256_SECRET_BYTES {
            return Err(format!(
                "SWITCHYARD_JWT_HS256_SECRET must be at least {MIN_HS256_SECRET_BYTES} bytes"
            ));
        }
        keys.push((Algorithm::HS256, DecodingKey::from_secret(s.as_bytes())));
    }
    if let Some(pem) = public_key_pem {
        if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
            keys.push((Algorithm::RS256, k));
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
            keys.push((Algorithm::ES256, k));
        } else {
            return Err(
                "SWITCHYARD_JWT_PUBLIC_KEY is neither an RSA nor an EC (P-256) PEM public key"
                    .into(),
            );
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn auth() -> Authenticator {
        Authenticator::new(Some(SECRET), None, None, None).unwrap()
    }

    #[test]
    fn accepts_a_good_token() {
        let t = token(
            serde_json::json!({"sub":"u-1","exp":now()+60,"products":["CHLT"],"tenant":"acme"}),
            SECRET,
        );
        let id = auth().verify(&t).unwrap();
        assert_eq!(&*id.user, "u-1");
        assert_eq!(id.entitlements.products, vec!["CHLT"]);
        assert_eq!(id.entitlements.tenant.as_deref(), Some("acme"));
    }

    #[test]
    fn client_info_is_taken_bounded() {
        let t = token(
            serde_json::json!({"sub":"u","exp":now()+60,"info":{"name":"Ann"}}),
            SECRET,
        );
        assert_eq!(
            auth().verify(&t).unwrap().info.as_deref(),
            Some(r#"{"name":"Ann"}"#)
        );
        let t = token(serde_json::json!({"sub":"u","exp":now()+60}), SECRET);
        assert_eq!(auth().verify(&t).unwrap().info, None);
        let t = token(
            serde_json::json!({"sub":"u","exp":now()+60,"info":"x".repeat(MAX_INFO_BYTES)}),
            SECRET,
        );
        assert!(matches!(auth().verify(&t), Err(AuthError::Claims(m)) if m.contains("info")));
    }

    #[test]
    fn refuses_bad_tokens() {
        let a = auth();
        let expired = token(serde_json::json!({"sub":"u","exp":now()-120}), SECRET);
        assert!(matches!(a.verify(&expired), Err(AuthError::Expired)));
        let forged = token(
            serde_json::json!({"sub":"u","exp":now()+60}),
            "another-secret-of-enough-length",
        );
        assert!(matches!(a.verify(&forged), Err(AuthError::Signature)));
        let no_sub = token(serde_json::json!({"exp":now()+60}), SECRET);
        assert!(matches!(a.verify(&no_sub), Err(AuthError::Claims(_))));
        let no_exp = token(serde_json::json!({"sub":"u"}), SECRET);
        assert!(matches!(a.verify(&no_exp), Err(AuthError::Claims(_))));
        assert!(matches!(a.verify("garbage"), Err(AuthError::Malformed(_))));
        assert!(matches!(a.verify(""), Err(AuthError::Missing)));
        // alg: none
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"sub":"u","exp":{}}}"#, now() + 60))
        );
        assert!(a.verify(&none).is_err());
        // An algorithm with no configured key.
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &serde_json::json!({"sub":"u","exp":now()+60}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(matches!(a.verify(&hs384), Err(AuthError::Algorithm(_))));
    }

    #[test]
    fn issuer_and_audience_are_required_when_configured() {
        let a =
            Authenticator::new(Some(SECRET), None, Some("iss".into()), Some("aud".into())).unwrap();
        let no_iss = token(
            serde_json::json!({"sub":"u","exp":now()+60,"aud":"aud"}),
            SECRET,
        );
        assert!(
            matches!(a.verify(&no_iss), Err(AuthError::Claims(_))),
            "a token without iss passes a gateway with SWITCHYARD_JWT_ISSUER"
        );
        let no_aud = token(
            serde_json::json!({"sub":"u","exp":now()+60,"iss":"iss"}),
            SECRET,
        );
        assert!(
            matches!(a.verify(&no_aud), Err(AuthError::Claims(_))),
            "a token without aud passes a gateway with SWITCHYARD_JWT_AUDIENCE"
        );
        // Without configuration neither claim is needed, and any value passes.
        let open = auth();
        let bare = token(serde_json::json!({"sub":"u","exp":now()+60}), SECRET);
        assert!(open.verify(&bare).is_ok());
        let other = token(
            serde_json::json!({"sub":"u","exp":now()+60,"iss":"x","aud":"y"}),
            SECRET,
        );
        assert!(open.verify(&other).is_ok());
    }

    #[test]
    fn not_before_is_checked_with_the_leeway() {
        let a = auth();
        let later = token(
            serde_json::json!({"sub":"u","exp":now()+600,"nbf":now()+120}),
            SECRET,
        );
        assert!(
            matches!(a.verify(&later), Err(AuthError::NotYetValid)),
            "{:?}",
            a.verify(&later)
        );
        // A clock a little behind the issuer's is tolerated.
        let skewed = token(
            serde_json::json!({"sub":"u","exp":now()+600,"nbf":now()+DEFAULT_LEEWAY_SECS/2}),
            SECRET,
        );
        assert!(a.verify(&skewed).is_ok());
        let past = token(
            serde_json::json!({"sub":"u","exp":now()+600,"nbf":now()-10}),
            SECRET,
        );
        assert!(a.verify(&past).is_ok());
    }

    const RS256_A_KEY: &str = include_str!("../tests/fixtures/jwt/rs256-a.key.pem");
    const RS256_A_PUB: &str = include_str!("../tests/fixtures/jwt/rs256-a.pub.pem");
    const RS256_B_KEY: &str = include_str!("../tests/fixtures/jwt/rs256-b.key.pem");
    const ES256_C_KEY: &str = include_str!("../tests/fixtures/jwt/es256-c.key.pem");
    const ES256_C_PUB: &str = include_str!("../tests/fixtures/jwt/es256-c.pub.pem");

    fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        encode(&h, &serde_json::json!({"sub":"u-pk","exp":now()+60}), key).unwrap()
    }

    fn rsa(pem: &str) -> EncodingKey {
        EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
    }

    fn ec(pem: &str) -> EncodingKey {
        EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()
    }

    #[test]
    fn rs256_with_a_pem_public_key() {
        let a = Authenticator::new(None, Some(RS256_A_PUB), None, None).unwrap();
        let good = signed(Algorithm::RS256, None, &rsa(RS256_A_KEY));
        assert_eq!(&*a.verify(&good).unwrap().user, "u-pk");
        let other_key = signed(Algorithm::RS256, None, &rsa(RS256_B_KEY));
        assert!(matches!(a.verify(&other_key), Err(AuthError::Signature)));
        let es = signed(Algorithm::ES256, None, &ec(ES256_C_KEY));
        assert!(matches!(a.verify(&es), Err(AuthError::Algorithm(_))));
        // The public key used as an HS256 secret (algorithm confusion).
        let confused = token(serde_json::json!({"sub":"u","exp":now()+60}), RS256_A_PUB);
        assert!(matches!(a.verify(&confused), Err(AuthError::Algorithm(_))));
    }

    #[test]
    fn es256_with_a_pem_public_key() {
        let a = Authenticator::new(None, Some(ES256_C_PUB), None, None).unwrap();
        let good = signed(Algorithm::ES256, None, &ec(ES256_C_KEY));
        assert_eq!(&*a.verify(&good).unwrap().user, "u-pk");
        let rs = signed(Algorithm::RS256, None, &rsa(RS256_A_KEY));
        assert!(matches!(a.verify(&rs), Err(AuthError::Algorithm(_))));
        // A tampered signature is refused.
        let mut forged = good.clone();
        let sig_start = forged.rfind('.').unwrap() + 1;
        let flipped = if forged.as_bytes()[sig_start] == b'A' {
            "B"
        } else {
            "A"
        };
        forged.replace_range(sig_start..sig_start + 1, flipped);
        assert!(a.verify(&forged).is_err());
    }

    #[test]
    fn short_hs256_secrets_are_refused() {
        let e = Authenticator::new(Some(&SECRET[..31]), None, None, None).unwrap_err();
        assert!(e.contains("SWITCHYARD_JWT_HS256_SECRET"), "{e}");
        assert!(Authenticator::new(Some(SECRET), None, None, None).is_ok());
    }

    use super::jwks::tests::{jwks_of, TempJwks, JWK_ES256_C, JWK_RS256_A, JWK_RS256_B};
    use crate::config::GatewayConfig;
    use std::time::Duration;

    /// An authenticator configured the way the gateway does it.
    async fn from_env(vars: &[(&str, &str)]) -> Result<Authenticator, String> {
        let mut v = vec![
            ("SWITCHYARD_POSTGRES_URL", "postgres://x"),
            ("SWITCHYARD_REDIS_URL", "redis://x"),
            ("SWITCHYARD_TOPOLOGY", "/t.json"),
        ];
        v.extend_from_slice(vars);
        let cfg = GatewayConfig::from_source(&switchyard_ops::config::Source::from_map(v))
            .map_err(|e| e.to_string())?;
        Authenticator::from_config(&cfg.auth()).await
    }

    #[tokio::test]
    async fn jwks_keys_are_selected_by_kid() {
        let file = TempJwks::new("kid", &jwks_of(&[JWK_RS256_A, JWK_ES256_C]));
        let path = file.path.to_str().unwrap();
        let a = from_env(&[("SWITCHYARD_JWT_JWKS", path)]).await.unwrap();
        let rs_a = rsa(RS256_A_KEY);
        let ok = signed(Algorithm::RS256, Some("rs256-a"), &rs_a);
        assert_eq!(&*a.verify(&ok).unwrap().user, "u-pk");
        let ok = signed(Algorithm::ES256, Some("es256-c"), &ec(ES256_C_KEY));
        assert!(a.verify(&ok).is_ok());
        // The key named by kid decides the algorithm, not the token.
        let wrong_alg = signed(Algorithm::RS256, Some("es256-c"), &rs_a);
        assert!(matches!(a.verify(&wrong_alg), Err(AuthError::Algorithm(_))));
        let forged = signed(Algorithm::RS256, Some("rs256-a"), &rsa(RS256_B_KEY));
        assert!(matches!(a.verify(&forged), Err(AuthError::Signature)));
        let unknown = signed(Algorithm::RS256, Some("rs256-b"), &rsa(RS256_B_KEY));
        assert!(matches!(a.verify(&unknown), Err(AuthError::UnknownKey)));
        // No kid: the only key of the token's algorithm.
        let no_kid = signed(Algorithm::RS256, None, &rs_a);
        assert!(a.verify(&no_kid).is_ok());
        // No HS256 key anywhere.
        let hs = token(serde_json::json!({"sub":"u","exp":now()+60}), SECRET);
        assert!(matches!(a.verify(&hs), Err(AuthError::Algorithm(_))));

        // Two RS256 keys: a token without kid is ambiguous.
        let two = TempJwks::new("two", &jwks_of(&[JWK_RS256_A, JWK_RS256_B]));
        let a = from_env(&[("SWITCHYARD_JWT_JWKS", two.path.to_str().unwrap())])
            .await
            .unwrap();
        assert!(matches!(a.verify(&no_kid), Err(AuthError::UnknownKey)));
        let ok = signed(Algorithm::RS256, Some("rs256-b"), &rsa(RS256_B_KEY));
        assert!(a.verify(&ok).is_ok());
    }

    #[tokio::test]
    async fn jwks_works_beside_a_static_secret_and_honours_the_leeway() {
        let file = TempJwks::new("mixed", &jwks_of(&[JWK_RS256_A]));
        let a = from_env(&[
            ("SWITCHYARD_JWT_JWKS", file.path.to_str().unwrap()),
            ("SWITCHYARD_JWT_HS256_SECRET", SECRET),
            ("SWITCHYARD_JWT_LEEWAY_SECONDS", "0"),
        ])
        .await
        .unwrap();
        let hs = token(serde_json::json!({"sub":"u","exp":now()+60}), SECRET);
        assert!(a.verify(&hs).is_ok());
        let rs = signed(Algorithm::RS256, Some("rs256-a"), &rsa(RS256_A_KEY));
        assert!(a.verify(&rs).is_ok());
        // With no leeway, a token valid from 10 s from now is refused; the
        // default leeway (30 s) would have let it through.
        let soon = token(
            serde_json::json!({"sub":"u","exp":now()+60,"nbf":now()+10}),
            SECRET,
        );
        assert!(matches!(a.verify(&soon), Err(AuthError::NotYetValid)));
        assert!(auth().verify(&soon).is_ok());
    }

    #[tokio::test]
    async fn an_unreadable_jwks_fails_start_up_naming_the_variable() {
        let e = from_env(&[("SWITCHYARD_JWT_JWKS", "/nonexistent/jwks.json")])
            .await
            .unwrap_err();
        assert!(e.contains("SWITCHYARD_JWT_JWKS"), "{e}");
    }

    #[tokio::test]
    async fn an_unknown_kid_triggers_one_early_refresh() {
        let file = TempJwks::new("early", &jwks_of(&[JWK_RS256_A]));
        // A refresh period far beyond the test: only an early refresh can
        // bring the rotated key in.
        let a = from_env(&[
            ("SWITCHYARD_JWT_JWKS", file.path.to_str().unwrap()),
            ("SWITCHYARD_JWT_JWKS_REFRESH_SECONDS", "86400"),
        ])
        .await
        .unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(a.clone().run_refresh(cancel.clone()));

        // The issuer rotates to key b.
        file.write(&jwks_of(&[JWK_RS256_A, JWK_RS256_B]));
        let b = signed(Algorithm::RS256, Some("rs256-b"), &rsa(RS256_B_KEY));
        assert!(matches!(a.verify(&b), Err(AuthError::UnknownKey)));
        let picked_up = async {
            while a.verify(&b).is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), picked_up)
            .await
            .expect("the unknown kid brings the new key in before the next period");

        // Another rotation right after: within the rate limit, unknown kids
        // do not refresh again, however many tokens name them.
        file.write(&jwks_of(&[JWK_RS256_A, JWK_RS256_B, JWK_ES256_C]));
        let c = signed(Algorithm::ES256, Some("es256-c"), &ec(ES256_C_KEY));
        for _ in 0..20 {
            assert!(matches!(a.verify(&c), Err(AuthError::UnknownKey)));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("run_refresh ends on cancel")
            .unwrap();
    }

    #[tokio::test]
    async fn run_refresh_without_jwks_returns_at_once() {
        let cancel = CancellationToken::new();
        tokio::time::timeout(Duration::from_secs(1), auth().run_refresh(cancel))
            .await
            .expect("nothing to refresh");
    }

    #[test]
    fn issuer_and_audience_are_checked_when_set() {
        let a =
            Authenticator::new(Some(SECRET), None, Some("iss".into()), Some("aud".into())).unwrap();
        let good = token(
            serde_json::json!({"sub":"u","exp":now()+60,"iss":"iss","aud":"aud"}),
            SECRET,
        );
        assert!(a.verify(&good).is_ok());
        let bad = token(
            serde_json::json!({"sub":"u","exp":now()+60,"iss":"other","aud":"aud"}),
            SECRET,
        );
        assert!(matches!(a.verify(&bad), Err(AuthError::Claims(_))));
    }
}
