//! Certificates made at run time with rcgen, never checked in: a test CA, a server
//! certificate for `127.0.0.1` and `localhost`, and a client certificate whose subject
//! CN is [`CLIENT_CN`], all written as PEM files in a temporary directory, plus the
//! [`ConnectOptions`] a client needs to trust (and, for mTLS, present) them.

use std::path::{Path, PathBuf};

use provisioning_client::ConnectOptions;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::temp::TempDir;

/// The subject CN (and DNS SAN) of the client certificate.
pub const CLIENT_CN: &str = "crm-sync.internal";

/// A CA and the certificates it signed, as PEM files; removed on drop.
pub struct TestPki {
    /// The CA certificate (what clients and the server's `--tls-client-ca` trust).
    pub ca_cert: PathBuf,
    /// The server certificate (SANs `127.0.0.1`, `localhost`).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The client certificate (CN and DNS SAN [`CLIENT_CN`]).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// The client certificate, DER.
    pub client_cert_der: Vec<u8>,
    _dir: TempDir,
}

impl TestPki {
    /// A fresh CA named `ca_name` with a server and a client certificate.
    pub fn generate(ca_name: &str) -> TestPki {
        let dir = TempDir::new("provisioning-pki");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("self-signing the CA");

        let server_key = KeyPair::generate().expect("server key");
        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "provisiond test server");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = server_params
            .signed_by(&server_key, &ca)
            .expect("signing the server certificate");

        let client_key = KeyPair::generate().expect("client key");
        let mut client_params =
            CertificateParams::new(vec![CLIENT_CN.to_owned()]).expect("client params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, CLIENT_CN);
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params
            .signed_by(&client_key, &ca)
            .expect("signing the client certificate");

        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            path
        };
        TestPki {
            ca_cert: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server-key.pem", server_key.serialize_pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client-key.pem", client_key.serialize_pem()),
            client_cert_der: client.der().to_vec(),
            _dir: dir,
        }
    }

    /// Trusts this CA; presents no client certificate.
    pub fn client_options(&self) -> ConnectOptions {
        ConnectOptions::from_files(Some(&self.ca_cert), None, None).expect("reading the CA")
    }

    /// Trusts this CA and presents the client certificate (mTLS).
    pub fn mtls_options(&self) -> ConnectOptions {
        ConnectOptions::from_files(
            Some(&self.ca_cert),
            Some(&self.client_cert),
            Some(&self.client_key),
        )
        .expect("reading the CA and the client certificate")
    }

    /// Copies the server certificate and key over `cert` and `key` (as an operator
    /// renewing a certificate in place would).
    pub fn install_server_files(&self, cert: &Path, key: &Path) {
        std::fs::copy(&self.server_cert, cert).expect("copying the server certificate");
        std::fs::copy(&self.server_key, key).expect("copying the server key");
    }
}
