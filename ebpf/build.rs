//! Rebuild the eBPF object when the linker changes (a new bpf-linker means new codegen).
fn main() {
    if let Ok(bpf_linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
