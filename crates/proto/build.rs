//! Compiles `proto/client.proto` into Rust types with a pure-Rust schema compiler
//! (`protox`), so a build needs nothing but Cargo: no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/client.proto");
    let files = protox::compile(["client.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(files)?;
    Ok(())
}
