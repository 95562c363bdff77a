//! The live side of TLS (the pure side is `monitor_core::tls`): finding the TLS libraries targets map (`/proc/<pid>/maps`), hooking
//! each OpenSSL `libssl` once per inode, whichever target maps it first (running at start-up,
//! started later, or loading it with `dlopen` later), and saying which targets use a TLS stack
//! Vigie cannot read.
use std::{collections::HashSet, path::PathBuf};

use crate::loader::Probes;
use monitor_core::tls::{Stack, classify, executable_mappings};

#[derive(Default)]
pub struct TlsHooks {
    /// Library files hooked, or found unreadable, or executables checked: (device, inode).
    seen: HashSet<(String, u64)>,
    /// Processes whose maps are read again at the next tick: an executable mapping is reported
    /// at the `mmap` entry, before the mapping exists.
    rescan: HashSet<u32>,
    /// OpenSSL libraries hooked.
    pub hooked: u64,
    /// Files of TLS stacks Vigie cannot read, mapped by targets.
    pub unreadable: u64,
}

impl TlsHooks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks for TLS libraries in the memory map of target `pid`; hooks OpenSSL, reports the
    /// others. Each file is handled once for all processes.
    pub fn scan(&mut self, probes: &mut Probes, pid: u32) {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        for (i, m) in executable_mappings(&maps).into_iter().enumerate() {
            let key = (m.dev.clone(), m.inode);
            if self.seen.contains(&key) {
                continue;
            }
            let stack = match classify(&m.path) {
                Some(stack) => Some(stack),
                // The first mapping is the executable: a Go program terminates TLS itself.
                None if i == 0 && is_go(pid, &m.path) => Some(Stack::Unreadable("Go crypto/tls")),
                None if i == 0 => None,
                None => continue,
            };
            self.seen.insert(key);
            match stack {
                Some(Stack::OpenSsl) if m.path.ends_with(" (deleted)") => {
                    tracing::warn!(
                        pid,
                        library = %m.path,
                        "target maps a TLS library that was deleted (upgraded?): not hooked, its HTTPS is not readable until it restarts"
                    );
                    self.unreadable += 1;
                }
                Some(Stack::OpenSsl) => {
                    let path = target_path(pid, &m.path);
                    let attached = probes.attach_tls(&path, &m.path, m.inode);
                    if attached == 0 {
                        tracing::warn!(pid, library = %m.path, "TLS library could not be hooked: its HTTPS is not readable");
                        self.unreadable += 1;
                    } else {
                        tracing::info!(pid, library = %m.path, hooks = attached, "TLS library hooked: HTTPS of the targets that map it is read in plaintext");
                        self.hooked += 1;
                    }
                }
                Some(Stack::Unreadable(name)) => {
                    tracing::warn!(
                        pid,
                        file = %m.path,
                        "target uses {name} for TLS, which Vigie cannot read: its HTTPS connections are counted (vigie_tls_unreadable_connections_total), not judged"
                    );
                    self.unreadable += 1;
                }
                None => {}
            }
        }
    }

    /// With classic uprobes (no `uprobe.multi` in the kernel), which cannot be attached after
    /// the capability drop: hooks the system's `libssl` now, so that targets started later
    /// with it are read too (a uprobe is on the file, whichever process maps it later).
    pub fn attach_system(&mut self, probes: &mut Probes) {
        use std::os::unix::fs::MetadataExt as _;
        let Some(lib) = system_libssl() else {
            return;
        };
        let Ok(meta) = std::fs::metadata(&lib) else {
            return;
        };
        let dev = meta.dev();
        // As `/proc/<pid>/maps` writes it.
        let key = (
            format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev)),
            meta.ino(),
        );
        if !self.seen.insert(key) {
            return;
        }
        let shown = lib.display().to_string();
        let attached = probes.attach_tls(&lib, &shown, meta.ino());
        if attached == 0 {
            tracing::warn!(library = %shown, "the system's TLS library could not be hooked: HTTPS of targets started later is not readable");
            self.unreadable += 1;
        } else {
            tracing::info!(library = %shown, hooks = attached, "TLS library hooked: HTTPS of the targets that map it is read in plaintext");
            self.hooked += 1;
        }
    }

    /// A target mapped code: read its map now and once more at the next tick.
    pub fn code_mapped(&mut self, probes: &mut Probes, pid: u32) {
        self.scan(probes, pid);
        self.rescan.insert(pid);
    }

    /// The tick: processes that mapped code since the last one are read again.
    pub fn tick(&mut self, probes: &mut Probes) {
        for pid in std::mem::take(&mut self.rescan) {
            self.scan(probes, pid);
        }
    }
}

fn is_go(pid: u32, path: &str) -> bool {
    crate::golang::is_go_file(std::path::Path::new(&format!("/proc/{pid}/root{path}")))
        .unwrap_or(false)
}

/// The system's OpenSSL 3 `libssl`, where distributions put it (for `vigie probes`).
pub fn system_libssl() -> Option<PathBuf> {
    let arch = std::env::consts::ARCH;
    [
        format!("/usr/lib/{arch}-linux-gnu/libssl.so.3"),
        format!("/lib/{arch}-linux-gnu/libssl.so.3"),
        "/usr/lib64/libssl.so.3".to_string(),
        "/usr/lib/libssl.so.3".to_string(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// A path of a file as target `pid` sees it, for Vigie to open: the path itself when the target
/// shares Vigie's mount namespace, else through the target's root (`/proc/<pid>/root`: a
/// container's own libraries).
fn target_path(pid: u32, path: &str) -> PathBuf {
    let ns = |p: &str| std::fs::read_link(p).ok();
    let own = ns("/proc/self/ns/mnt");
    if own.is_some() && own == ns(&format!("/proc/{pid}/ns/mnt")) {
        PathBuf::from(path)
    } else {
        PathBuf::from(format!("/proc/{pid}/root{path}"))
    }
}
