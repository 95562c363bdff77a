//! The Go `net/http` portal of `tests/go/portal` (standard library only): where its binary is,
//! building it with Debian's `go` when nobody built it for us. `cargo xtask` builds it before
//! the tests and names it in `VIGIE_GO_PORTAL` (the kernel matrix's initramfs carries that
//! binary, and no Go toolchain).
use std::path::{Path, PathBuf};
use std::process::Command;

/// The portal's sources.
#[must_use]
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("go/portal")
}

/// Builds the portal into `out` with `go` (found in `PATH`): static (`CGO_ENABLED=0`, as Go
/// programs are usually deployed), with its DWARF, and a build cache under `out`'s directory.
///
/// # Errors
/// When `go` cannot be run or the build fails (its output is in the error).
pub fn build(go: &Path, out: &Path) -> std::io::Result<PathBuf> {
    let cache = out.parent().unwrap_or(Path::new(".")).join("go-cache");
    let output = Command::new(go)
        .args(["build", "-trimpath", "-o"])
        .arg(out)
        .arg(".")
        .current_dir(source_dir())
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", &cache)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "go build failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(out.to_path_buf())
}
