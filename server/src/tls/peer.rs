//! The mTLS identity hand-off: the names a verified client certificate vouches for,
//! put into each request's extensions as [`PeerSubjects`] for the authentication layer.
//!
//! rustls reports peer certificates only once it has verified them against the client
//! CA bundle (`--tls-client-ca`), and tonic exposes them per request
//! (`Request::peer_certs`); so the presence of [`PeerSubjects`] means "verified".
//! Plaintext connections and TLS connections without client authentication get none.

use x509_parser::extensions::GeneralName;

use crate::auth::PeerSubjects;

/// The subject common name(s) and DNS subject alternative names of a DER certificate,
/// in certificate order, without duplicates. A certificate that does not parse (which
/// rustls would not have verified anyway) yields no names.
pub fn peer_subjects(cert_der: &[u8]) -> Vec<String> {
    let Ok((_rest, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    let mut push = |name: &str| {
        if !name.is_empty() && !names.iter().any(|known| known == name) {
            names.push(name.to_owned());
        }
    };
    for common_name in cert.subject().iter_common_name() {
        if let Ok(name) = common_name.as_str() {
            push(name);
        }
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general_name in &san.value.general_names {
            if let GeneralName::DNSName(name) = general_name {
                push(name);
            }
        }
    }
    names
}

/// Interceptor (wired once in `lib.rs`, outside any layer that reads identities):
/// inserts [`PeerSubjects`] for requests over a connection with a verified client
/// certificate. It never refuses a request; deciding what the names may do is the
/// authentication layer's job.
#[expect(
    clippy::result_large_err,
    reason = "the signature of tonic's Interceptor; this one never fails"
)]
pub fn insert_peer_subjects(
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    let subjects = request
        .peer_certs()
        .and_then(|certs| certs.first().map(|leaf| peer_subjects(leaf)));
    if let Some(subjects) = subjects {
        request.extensions_mut().insert(PeerSubjects(subjects));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_has_no_subjects() {
        assert!(peer_subjects(b"not a certificate").is_empty());
        assert!(peer_subjects(&[]).is_empty());
    }

    #[test]
    fn plaintext_requests_get_no_peer_subjects() {
        let request = insert_peer_subjects(tonic::Request::new(())).unwrap();
        assert!(request.extensions().get::<PeerSubjects>().is_none());
    }
}
