//! Link step of the extension, as the root build.rs does for the binaries:
//! run paths to libtorch (relative to the installed module first, so a wheel
//! finds the `torch` package beside it in site-packages, then the libtorch the
//! build used), and libtorch_cuda linked with `--no-as-needed` so the same
//! build sees GPUs wherever there are any.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        println!("cargo:warning=torch-sys did not report a libtorch directory; no rpath set");
        return;
    };
    if std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default() != "linux" {
        return;
    }
    // site-packages/fedhex/_native.abi3.so -> site-packages/torch/lib
    println!("cargo:rustc-cdylib-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-cdylib-link-arg=-Wl,--no-as-needed");
    for name in ["torch_cuda", "c10_cuda"] {
        if lib.join(format!("lib{name}.so")).exists() {
            println!("cargo:rustc-cdylib-link-arg=-l{name}");
        }
    }
    println!("cargo:rustc-cdylib-link-arg=-ltorch");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--as-needed");
}
