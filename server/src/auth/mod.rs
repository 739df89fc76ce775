//! Who is calling: the identities the edge layers establish before a request reaches a
//! gRPC method.

/// The names a verified TLS client certificate vouches for: its subject common name
/// and its DNS subject alternative names, in certificate order. Inserted into the
/// request extensions by the TLS layer for every request over a connection whose client
/// certificate the server verified (`--tls-client-ca`); absent otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSubjects(pub Vec<String>);
