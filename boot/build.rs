//! Links aarch64 binaries of this package with the workspace's linker script.

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = std::path::Path::new(&manifest).join("../linker.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("aarch64") {
        println!(
            "cargo:rustc-link-arg-bins=-T{}",
            script.canonicalize().expect("linker.ld exists").display()
        );
    }
}
