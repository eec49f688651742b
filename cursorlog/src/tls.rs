//! How the log reaches PostgreSQL: `sslmode` in `SWITCHYARD_POSTGRES_URL`,
//! with libpq's meanings, over rustls.
//!
//! | `sslmode` | TLS | the server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers it | not checked |
//! | `require` | always (a server without TLS is refused) | not checked |
//! | `verify-full` | always | chain to `sslrootcert` (a PEM file) or the system's roots, and the host name |
//!
//! Invariant: with `verify-full` no connection is ever made to a server whose
//! certificate does not chain to the configured roots and name the host; a
//! mode this module does not know is a configuration error, never a weaker
//! mode.

use crate::log::LogError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS options read from a PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsOptions {
    /// `disable`, `prefer`, `require` or `verify-full`; `None`: not in a
    /// `postgres://` URL's query (tokio-postgres's own reading applies).
    pub(crate) mode: Option<String>,
    /// `sslrootcert`: PEM file of the roots `verify-full` trusts.
    pub(crate) root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL's query
/// (tokio-postgres knows neither `verify-full` nor `sslrootcert`); other URLs
/// (key=value form) are returned as they are, with tokio-postgres's own
/// `sslmode` handling.
pub(crate) fn split_url(url: &str) -> (String, TlsOptions) {
    let mut opts = TlsOptions {
        mode: None,
        root_cert: None,
    };
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return (url.to_owned(), opts);
    };
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => opts.mode = Some(v.to_owned()),
            Some(("sslrootcert", v)) => opts.root_cert = Some(percent_decode(v)),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, opts)
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The tokio-postgres mode to set (`None`: keep what it parsed) and the
/// connector for `opts`.
pub(crate) fn connector(
    opts: &TlsOptions,
) -> Result<(Option<SslMode>, MakeRustlsConnect), LogError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| LogError::Config(format!("TLS: {e}")))?;
    let (mode, config) = match opts.mode.as_deref().unwrap_or("") {
        m @ ("" | "disable" | "prefer" | "require") => {
            let mode = match m {
                "" => None,
                "disable" => Some(SslMode::Disable),
                "prefer" => Some(SslMode::Prefer),
                _ => Some(SslMode::Require),
            };
            let config = builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
                .with_no_client_auth();
            (mode, config)
        }
        "verify-full" => {
            let mut roots = rustls::RootCertStore::empty();
            match &opts.root_cert {
                Some(path) => {
                    let certs = CertificateDer::pem_file_iter(path)
                        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| {
                            LogError::Config(format!(
                                "sslrootcert={path}: not a readable PEM file of certificates: {e}"
                            ))
                        })?;
                    if certs.is_empty() {
                        return Err(LogError::Config(format!(
                            "sslrootcert={path}: no certificate in the file"
                        )));
                    }
                    for c in certs {
                        roots
                            .add(c)
                            .map_err(|e| LogError::Config(format!("sslrootcert={path}: {e}")))?;
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(found.certs);
                    if roots.is_empty() {
                        return Err(LogError::Config(
                            "sslmode=verify-full: the system has no CA certificates; give sslrootcert=<PEM file>".into(),
                        ));
                    }
                }
            }
            (
                Some(SslMode::Require),
                builder.with_root_certificates(roots).with_no_client_auth(),
            )
        }
        other => {
            return Err(LogError::Config(format!(
                "sslmode={other} is not supported: use disable, prefer, require or verify-full"
            )))
        }
    };
    Ok((mode, MakeRustlsConnect::new(config)))
}

/// `prefer` and `require`: libpq's meaning, encryption without checking who
/// the server is (signatures are still checked, so the session key is the
/// server's). Use `verify-full` to authenticate the server.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_come_out_of_the_url() {
        let (url, o) = split_url("postgres://u@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem");
        assert_eq!(url, "postgres://u@h:5432/db?application_name=x");
        assert_eq!(o.mode.as_deref(), Some("verify-full"));
        assert_eq!(o.root_cert.as_deref(), Some("/etc/ca.pem"));
        let (url, o) = split_url("postgres://u@h/db");
        assert_eq!((url.as_str(), o.mode), ("postgres://u@h/db", None));
        let (url, _) = split_url("postgres://u@h/db?sslmode=disable");
        assert_eq!(url, "postgres://u@h/db");
        // key=value strings are tokio-postgres's to read.
        let (url, o) = split_url("host=h sslmode=require");
        assert_eq!((url.as_str(), o.mode), ("host=h sslmode=require", None));
    }

    #[test]
    fn unknown_modes_and_missing_roots_are_errors() {
        for (mode, root) in [
            ("verify-ca", None),
            ("allow", None),
            ("verify-full", Some("/nonexistent.pem")),
        ] {
            let e = connector(&TlsOptions {
                mode: Some(mode.into()),
                root_cert: root.map(str::to_owned),
            })
            .err()
            .unwrap_or_else(|| panic!("{mode} accepted"));
            assert!(e.to_string().contains("ssl"), "{e}");
        }
        for mode in ["disable", "prefer", "require"] {
            let (m, _) = connector(&TlsOptions {
                mode: Some(mode.into()),
                root_cert: None,
            })
            .unwrap();
            assert_eq!(format!("{:?}", m.unwrap()).to_lowercase(), mode);
        }
    }
}
