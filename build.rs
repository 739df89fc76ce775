//! Generates the Rust code of the Provisioning API from `proto/` with protox (a pure-Rust
//! protobuf compiler, so no system `protoc` is needed) and writes the file-descriptor set
//! that the server's reflection service publishes.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/provisioning/v1/common.proto",
    "proto/provisioning/v1/handlers.proto",
    "proto/provisioning/v1/events.proto",
    "proto/provisioning/v1/logs.proto",
];

fn main() -> anyhow::Result<()> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(
        out_dir.join("provisioning_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
