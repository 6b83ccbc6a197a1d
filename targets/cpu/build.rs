//! Records the version of the LLVM the wide kernels are generated with (for `kiln --version`),
//! asked from the `llvm-config` that llvm-sys found (its `links` metadata reaches this script as
//! `DEP_LLVM_<major>_CONFIG_PATH`), so no version is written down anywhere.
use std::process::Command;

fn main() {
    let mut version = String::from("unknown");
    for (k, v) in std::env::vars() {
        if k.starts_with("DEP_LLVM_")
            && k.ends_with("_CONFIG_PATH")
            && let Ok(o) = Command::new(&v).arg("--version").output()
            && o.status.success()
        {
            version = String::from_utf8_lossy(&o.stdout).trim().to_string();
        }
    }
    println!("cargo:rustc-env=KILN_LLVM_VERSION={version}");
    println!("cargo:rerun-if-changed=build.rs");
}
