//! Generates the gRPC code from `proto/emoe.proto` with `protox` (a pure-Rust protobuf compiler),
//! so building needs no system `protoc`. Messages also derive `serde::Serialize` so the CLI can
//! print them as JSON.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/emoe.proto");
    let fds = protox::compile(["emoe.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
