//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates
//! prost messages plus tonic clients and servers from the descriptor set.
//! The encoded descriptor set is kept in OUT_DIR for server reflection.

use std::{env, error::Error, fs, path::PathBuf};

const PROTO_FILES: &[&str] = &[
    "heft/common/v1/weight.proto",
    "heft/users/v1/users.proto",
    "heft/entries/v1/entries.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let descriptors = protox::compile(PROTO_FILES, [&proto_root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("heft_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost behind limits counted on the wire (src/codec.rs).
        .codec_path("crate::codec::BoundedCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
