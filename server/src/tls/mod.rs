//! TLS for the gRPC server: the certificate, key and client CA files, loaded into a
//! rustls `ServerConfig` and swapped whole on reload (SIGHUP); the accept loop that turns
//! TCP connections into TLS streams for tonic (`accept`); the mTLS identity hand-off
//! (`peer`).
//!
//! Why our own accept loop instead of tonic's `Server::tls_config`: tonic builds its
//! rustls configuration once, when the server is built, and offers no way to replace
//! it, so a renewed certificate would need a restart (and a restart drops every
//! connection and tail). Here each accepted connection takes the configuration current
//! at that moment ([`ServerTls::acceptor`]); [`ServerTls::reload`] replaces it whole, so
//! new connections use the new certificate, key and client CA bundle together while
//! established connections keep the one they negotiated. A reload that fails (missing
//! file, key not matching the certificate, bad PEM) keeps the previous configuration
//! and says why in the log. tonic's `tls-ring` feature stays enabled for two things
//! only: its `Connected` impl of `tokio_rustls::server::TlsStream`, which exposes the
//! peer certificates to each request (`Request::peer_certs`), and the client's channel.
//!
//! Plaintext remains the default: without `--tls-cert` none of this runs.

pub mod accept;
pub mod peer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;

pub use accept::{incoming, spawn_reload_on_sighup};
pub use peer::{insert_peer_subjects, peer_subjects};

/// Why the TLS files could not be turned into a server configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The configuration names some TLS files but not a usable set.
    #[error("{0}")]
    Incomplete(&'static str),
    /// A file could not be read.
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        /// Which file (certificate, key, client CA bundle).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("the {what} {} is not valid PEM: {source}", path.display())]
    Pem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What the PEM parser said.
        source: rustls::pki_types::pem::Error,
    },
    /// A file holds no certificate.
    #[error("the {what} {} holds no PEM certificate", path.display())]
    NoCertificate {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// rustls refused the certificate, key or CA (e.g. the key does not match).
    #[error("{what}: {source}")]
    Rustls {
        /// What was being set up.
        what: &'static str,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The client CA bundle cannot verify client certificates.
    #[error("the client CA bundle {}: {source}", path.display())]
    ClientCa {
        /// Its path.
        path: PathBuf,
        /// What the verifier builder said.
        source: rustls::server::VerifierBuilderError,
    },
}

/// The files TLS is configured from, read again on every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// PEM private key of the leaf (`--tls-key`): PKCS#8, PKCS#1 or SEC1.
    pub key: PathBuf,
    /// PEM CA bundle client certificates must chain to (`--tls-client-ca`); `None`
    /// means clients are not asked for a certificate.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The TLS files of `config`: `None` for plaintext (no certificate configured), an
    /// error when only part of a set is given.
    pub fn from_config(config: &Config) -> Result<Option<TlsFiles>, TlsError> {
        match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca.clone(),
            })),
            (None, None) if config.tls_client_ca.is_some() => Err(TlsError::Incomplete(
                "--tls-client-ca needs --tls-cert and --tls-key",
            )),
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::Incomplete("--tls-cert needs --tls-key")),
            (None, Some(_)) => Err(TlsError::Incomplete("--tls-key needs --tls-cert")),
        }
    }
}

/// The server's TLS state: its files and the configuration built from them.
///
/// Shared (`Arc`) by the accept loop, which reads the current configuration once per
/// connection, and the reload task, which replaces it.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    /// Swapped whole by [`ServerTls::reload`]; a read lock is held only to clone the Arc.
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads the files and builds the first configuration.
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let config = build(&files)?;
        Ok(ServerTls {
            files,
            current: RwLock::new(config),
        })
    }

    /// Reads the files again and, if they make a valid configuration, uses it for every
    /// connection accepted from now on. On error the previous configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        // A poisoned lock still holds a complete Arc: nothing is half-written.
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }

    /// The files this state is loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// Builds a rustls server configuration (ring provider, TLS 1.2 and 1.3, ALPN `h2`)
/// from the files.
fn build(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certificates("certificate", &files.cert)?;
    let key_pem = read("private key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::Pem {
        what: "private key",
        path: files.key.clone(),
        source,
    })?;

    // Explicit provider: the process-wide default is ambiguous when another crate in
    // the build enables a second one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions",
            source,
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates("client CA bundle", path)? {
                roots.add(cert).map_err(|source| TlsError::Rustls {
                    what: "client CA certificate",
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientCa {
                    path: path.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls {
            what: "certificate and key",
            source,
        })?;
    // gRPC is HTTP/2 only; tonic's client insists on negotiating it.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file; an error if there is none.
fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(cert: Option<&str>, key: Option<&str>, ca: Option<&str>) -> Config {
        let mut config = Config::defaults();
        config.tls_cert = cert.map(PathBuf::from);
        config.tls_key = key.map(PathBuf::from);
        config.tls_client_ca = ca.map(PathBuf::from);
        config
    }

    #[test]
    fn no_certificate_means_plaintext() {
        assert_eq!(TlsFiles::from_config(&Config::defaults()).ok(), Some(None));
    }

    #[test]
    fn a_partial_set_of_files_is_refused() {
        for config in [
            config_with(Some("c"), None, None),
            config_with(None, Some("k"), None),
            config_with(None, None, Some("ca")),
        ] {
            assert!(matches!(
                TlsFiles::from_config(&config),
                Err(TlsError::Incomplete(_))
            ));
        }
    }

    #[test]
    fn missing_files_name_the_file() {
        let files = TlsFiles {
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
            client_ca: None,
        };
        let error = ServerTls::load(files).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/cert.pem"),
            "{error}"
        );
    }
}
