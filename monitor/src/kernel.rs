//! Facts about the running kernel that decide which probes Vigie can use: its release, whether
//! it has BTF and tracefs, its lockdown mode and its active LSMs. Read once at start; the
//! parsers are pure and unit-tested.
use std::{fmt, path::Path};

const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS_EVENTS: &str = "/sys/kernel/tracing/events";
const SECURITYFS: &str = "/sys/kernel/security";

/// `major.minor.patch` of a kernel release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KernelVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// `6.12.117+deb12-amd64` -> 6.12.117; `6.1.0-56-amd64` -> 6.1.0; `5.4` -> 5.4.0.
    pub fn parse(release: &str) -> Option<Self> {
        let mut nums = release.split('.').map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = nums.next()??;
        let minor = nums.next()??;
        let patch = nums.next().flatten().unwrap_or(0);
        Some(Self::new(major, minor, patch))
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.patch != 0 {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

/// The kernel lockdown mode (`/sys/kernel/security/lockdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lockdown {
    None,
    /// What Secure Boot usually sets: no writes to kernel memory. Vigie's probes only read.
    Integrity,
    /// No reads of kernel memory either: tracefs is closed and `bpf_probe_read_kernel` refused.
    Confidentiality,
}

impl Lockdown {
    /// `none [integrity] confidentiality` -> the bracketed mode.
    pub fn parse(text: &str) -> Option<Self> {
        let active = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))?;
        match active {
            "none" => Some(Self::None),
            "integrity" => Some(Self::Integrity),
            "confidentiality" => Some(Self::Confidentiality),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Integrity => "integrity",
            Self::Confidentiality => "confidentiality",
        }
    }
}

/// What Vigie knows about the running kernel.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelFacts {
    /// `uname -r`.
    pub release: String,
    pub version: Option<KernelVersion>,
    /// `/sys/kernel/btf/vmlinux` exists (struct offsets come from it).
    pub btf: bool,
    /// tracefs has its events (tracepoint ids and layouts come from them); `None` when this user
    /// may not look (tracefs is root's).
    pub tracefs: Option<bool>,
    /// `None` when unknown: securityfs not mounted, or no lockdown LSM in this kernel.
    pub lockdown: Option<Lockdown>,
    /// Active LSMs in order (`/sys/kernel/security/lsm`); `None` when unknown.
    pub lsms: Option<Vec<String>>,
}

impl KernelFacts {
    /// Reads the facts of the running kernel. Mounts securityfs first when it is missing and we
    /// may (as tracefs is mounted for the probes); without it lockdown and LSMs are unknown.
    pub fn read() -> Self {
        mount_if_missing("securityfs", SECURITYFS, "lsm");
        let release = uname_release();
        let security = |name: &str| std::fs::read_to_string(Path::new(SECURITYFS).join(name));
        Self {
            version: KernelVersion::parse(&release),
            release,
            btf: Path::new(BTF_VMLINUX).exists(),
            tracefs: match std::fs::read_dir(TRACEFS_EVENTS) {
                Ok(_) => Some(true),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => None,
                Err(_) => Some(false),
            },
            lockdown: security("lockdown").ok().and_then(|t| Lockdown::parse(&t)),
            lsms: security("lsm").ok().map(|t| parse_lsms(&t)),
        }
    }

    /// Whether BPF LSM programs run: `bpf` is among the active LSMs. An LSM program attaches
    /// without error when it is not, and then never runs. `None` when unknown.
    pub fn bpf_lsm_active(&self) -> Option<bool> {
        self.lsms
            .as_ref()
            .map(|l| l.iter().any(|name| name == "bpf"))
    }
}

impl fmt::Display for KernelFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let tracefs = match self.tracefs {
            Some(b) => yes(b),
            None => "unknown (not readable by this user)",
        };
        write!(
            f,
            "kernel {}, BTF {}, tracefs {}, lockdown {}, LSMs ",
            self.release,
            yes(self.btf),
            tracefs,
            self.lockdown.map_or("unknown", Lockdown::name),
        )?;
        match (&self.lsms, self.bpf_lsm_active()) {
            (Some(lsms), Some(bpf)) => write!(
                f,
                "{} (BPF LSM {})",
                lsms.join(","),
                if bpf { "active" } else { "inactive" }
            ),
            _ => write!(f, "unknown"),
        }
    }
}

/// `lockdown,capability,landlock,bpf` -> the names.
pub fn parse_lsms(text: &str) -> Vec<String> {
    text.trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn uname_release() -> String {
    // SAFETY: uname fills a zeroed struct utsname; `release` is NUL-terminated by the kernel.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return String::from("unknown");
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// Mounts `fstype` at `path` unless `path/probe` already exists. Quietly does nothing when that
/// is not allowed (not root, or a sandbox): the caller reports what it could not read.
pub fn mount_if_missing(fstype: &str, path: &str, probe: &str) -> bool {
    if Path::new(path).join(probe).exists() {
        return true;
    }
    let (Ok(target), Ok(kind)) = (std::ffi::CString::new(path), std::ffi::CString::new(fstype))
    else {
        return false;
    };
    // SAFETY: plain mount(2) with NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            kind.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_releases() {
        let v = |s| KernelVersion::parse(s);
        assert_eq!(
            v("6.12.117+deb12-amd64"),
            Some(KernelVersion::new(6, 12, 117))
        );
        assert_eq!(v("6.1.0-56-amd64"), Some(KernelVersion::new(6, 1, 0)));
        assert_eq!(v("6.18.44-fc-v595"), Some(KernelVersion::new(6, 18, 44)));
        assert_eq!(v("5.4"), Some(KernelVersion::new(5, 4, 0)));
        assert_eq!(v("6.9-rc1"), Some(KernelVersion::new(6, 9, 0)));
        assert_eq!(v("unknown"), None);
        assert_eq!(v(""), None);
        assert!(v("5.10.0").unwrap() < v("6.1.0-56-amd64").unwrap());
        assert_eq!(KernelVersion::new(5, 8, 0).to_string(), "5.8");
        assert_eq!(KernelVersion::new(6, 12, 117).to_string(), "6.12.117");
    }

    #[test]
    fn parses_lockdown_modes() {
        assert_eq!(
            Lockdown::parse("[none] integrity confidentiality\n"),
            Some(Lockdown::None)
        );
        assert_eq!(
            Lockdown::parse("none [integrity] confidentiality"),
            Some(Lockdown::Integrity)
        );
        assert_eq!(
            Lockdown::parse("none integrity [confidentiality]\n"),
            Some(Lockdown::Confidentiality)
        );
        assert_eq!(Lockdown::parse("none integrity confidentiality"), None);
        assert_eq!(Lockdown::parse(""), None);
    }

    #[test]
    fn bpf_lsm_is_active_only_when_listed() {
        let facts = |lsms: Option<&str>| KernelFacts {
            release: "6.12.0".into(),
            version: KernelVersion::parse("6.12.0"),
            btf: true,
            tracefs: Some(true),
            lockdown: Some(Lockdown::None),
            lsms: lsms.map(parse_lsms),
        };
        let on = facts(Some(
            "lockdown,capability,landlock,yama,apparmor,tomoyo,bpf,ipe\n",
        ));
        assert_eq!(on.bpf_lsm_active(), Some(true));
        assert!(on.to_string().ends_with("(BPF LSM active)"), "{on}");
        // A kernel built with the BPF LSM but booted with an `lsm=` list that leaves it out.
        let off = facts(Some("lockdown,capability,landlock,yama,apparmor,tomoyo"));
        assert_eq!(off.bpf_lsm_active(), Some(false));
        assert!(off.to_string().ends_with("(BPF LSM inactive)"), "{off}");
        // "bpfilter" or a prefix must not count.
        assert_eq!(facts(Some("bpfx,capability")).bpf_lsm_active(), Some(false));
        assert_eq!(facts(None).bpf_lsm_active(), None);
        assert!(facts(None).to_string().ends_with("LSMs unknown"));
    }
}
