//! How to reach the server: [`ConnectOptions`] (TLS trust and client identity) and the
//! URL rules shared by [`crate::Client::connect`] and [`crate::Client::connect_with`].
//!
//! The scheme decides the transport: `http://` is plaintext HTTP/2, `https://` is TLS.
//! A bare `host:port` gets `https://` when TLS options are set and `http://` otherwise,
//! so `--ca-cert` alone is enough to switch `provctl` to TLS. TLS options with an
//! explicit `http://` URL are refused rather than silently ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::ClientError;

/// How long a connection attempt waits for the TCP connection before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings for [`crate::Client::connect_with`]; the default is plaintext.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// PEM CA certificate(s) to trust instead of the public web roots.
    ca_cert_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and private key, for mutual TLS.
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl ConnectOptions {
    /// Plaintext, unless the URL says `https://` (then the public web roots are trusted).
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificate(s) in `pem` (and only those) for the server certificate.
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_cert_pem = Some(pem.into());
        self
    }

    /// Presents this certificate chain and key to servers that ask for one (mTLS).
    pub fn client_identity_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity_pem = Some((cert.into(), key.into()));
        self
    }

    /// Options read from PEM files: a CA certificate to trust, and a client certificate
    /// with its key (both or neither).
    #[expect(
        clippy::result_large_err,
        reason = "ClientError is the crate's one error type; this runs once per connection"
    )]
    pub fn from_files(
        ca_cert: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let mut options = Self::new();
        if let Some(path) = ca_cert {
            options = options.ca_cert_pem(read("CA certificate", path)?);
        }
        match (client_cert, client_key) {
            (Some(cert), Some(key)) => {
                options = options.client_identity_pem(
                    read("client certificate", cert)?,
                    read("client key", key)?,
                );
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(ClientError::TlsOptions(
                    "a client certificate needs its key".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ClientError::TlsOptions(
                    "a client key needs its certificate".into(),
                ))
            }
        }
        Ok(options)
    }

    /// Whether any TLS setting is given.
    pub fn has_tls(&self) -> bool {
        self.ca_cert_pem.is_some() || self.identity_pem.is_some()
    }

    /// The endpoint for `url` with these options applied (TLS for `https://`); not yet
    /// connected. Useful to build other clients (health, reflection) the same way.
    #[expect(
        clippy::result_large_err,
        reason = "ClientError is the crate's one error type; this runs once per connection"
    )]
    pub fn endpoint(&self, url: impl Into<String>) -> Result<Endpoint, ClientError> {
        let url = normalize_url(url.into(), self.has_tls());
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|_| ClientError::InvalidUrl(url.clone()))?
            .connect_timeout(CONNECT_TIMEOUT);
        if !url.starts_with("https://") {
            if self.has_tls() {
                return Err(ClientError::TlsOptions(format!(
                    "TLS options were given but `{url}` is plaintext; use https://"
                )));
            }
            return Ok(endpoint);
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_cert_pem {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.identity_pem {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint.tls_config(tls).map_err(ClientError::Tls)
    }
}

#[expect(
    clippy::result_large_err,
    reason = "ClientError is the crate's one error type; this runs once per connection"
)]
fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::ReadFile {
        what,
        path: PathBuf::from(path),
        source,
    })
}

/// Adds a scheme to a bare `host:port`, the form people type: `https://` when TLS
/// options are set, else `http://`.
pub(crate) fn normalize_url(url: String, tls: bool) -> String {
    if url.contains("://") {
        url
    } else if tls {
        format!("https://{url}")
    } else {
        format!("http://{url}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_port_gets_a_scheme_by_tls() {
        assert_eq!(
            normalize_url("localhost:50051".into(), false),
            "http://localhost:50051"
        );
        assert_eq!(
            normalize_url("localhost:50051".into(), true),
            "https://localhost:50051"
        );
        assert_eq!(
            normalize_url("http://10.0.0.1:1".into(), true),
            "http://10.0.0.1:1"
        );
        assert_eq!(
            normalize_url("https://api:443".into(), false),
            "https://api:443"
        );
    }

    #[test]
    fn tls_options_with_a_plaintext_url_are_refused() {
        let options = ConnectOptions::new().ca_cert_pem("x");
        let err = options.endpoint("http://127.0.0.1:1").unwrap_err();
        assert!(matches!(err, ClientError::TlsOptions(_)), "{err:?}");
    }

    #[test]
    fn half_an_identity_is_refused() {
        let err = ConnectOptions::from_files(None, Some(Path::new("c.pem")), None).unwrap_err();
        assert!(matches!(err, ClientError::TlsOptions(_)), "{err:?}");
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let err = ConnectOptions::from_files(Some(Path::new("/nonexistent/ca.pem")), None, None)
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
