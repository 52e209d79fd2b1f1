//! Build steps: the control-plane protobuf, and the link step for libtorch: an rpath to the libtorch found by `torch-sys`
//! (so binaries run without LD_LIBRARY_PATH), and libtorch_cuda linked with
//! `--no-as-needed` so the same build sees GPUs wherever there are any.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    compile_proto();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        println!("cargo:warning=torch-sys did not report a libtorch directory; no rpath set");
        return;
    };
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os != "linux" {
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    for name in ["torch_cuda", "c10_cuda"] {
        if lib.join(format!("lib{name}.so")).exists() {
            println!("cargo:rustc-link-arg=-l{name}");
        }
    }
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    println!("cargo:rustc-env=FEDHEX_LIBTORCH_LIB={}", lib.display());
    // torch/lib/../version.py holds `__version__ = '2.11.0+cu130'` in a Python install.
    let version_py = lib.join("..").join("version.py");
    println!("cargo:rerun-if-changed={}", version_py.display());
    if let Ok(text) = std::fs::read_to_string(&version_py) {
        if let Some(v) = text.lines().find(|l| l.starts_with("__version__")).and_then(|l| l.split(['\'', '"']).nth(1)) {
            println!("cargo:rustc-env=FEDHEX_LIBTORCH_VERSION={v}");
        }
    }
}

/// Compiles `proto/fedhex.proto` (the control-plane contract) with a file
/// descriptor set for server reflection.
fn compile_proto() {
    println!("cargo:rerun-if-changed=proto/fedhex.proto");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    // JSON of every message (`fedhex-ctl --json`) comes from the messages
    // themselves, so it cannot drift from the contract; run states print by name.
    let state = "#[serde(serialize_with = \"crate::control::serialize_run_state\")]";
    if let Err(e) = tonic_prost_build::configure()
        .type_attribute(".fedhex.v1", "#[derive(serde::Serialize)]")
        .type_attribute(".fedhex.v1.Event.kind", "#[serde(rename_all = \"snake_case\")]")
        .field_attribute(".fedhex.v1.StatusReply.state", state)
        .field_attribute(".fedhex.v1.Event.kind.state", state)
        .file_descriptor_set_path(out.join("fedhex_descriptor.bin"))
        .compile_protos(&["proto/fedhex.proto"], &["proto"])
    {
        panic!("compiling proto/fedhex.proto failed (is protoc installed? `make setup` installs it): {e}");
    }
}
