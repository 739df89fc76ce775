//! Generated code of the Provisioning API (`provisioning.v1`): message types, server
//! traits and client stubs, plus the encoded file-descriptor set for gRPC reflection.
//! Nothing here is written by hand; see `build.rs` and `proto/`.

/// Package `provisioning.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("provisioning.v1");
}

/// Encoded `FileDescriptorSet` of every `.proto` file (including the well-known types
/// they import), for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/provisioning_descriptor.bin"));
