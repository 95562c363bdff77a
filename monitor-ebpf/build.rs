use which::which;

/// Rebuild the probes when the `bpf-linker` binary changes (it is an undeclared dependency:
/// cargo artifact dependencies are not usable yet).
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
