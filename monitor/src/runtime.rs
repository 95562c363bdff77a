//! Recognising, at exec (or adoption), programs built on runtimes that multiplex requests over
//! OS threads, whose threads must never stand for their requests (DESIGN.md §4, see
//! [`crate::correlate::trust`]). Reads the executable (`/proc/<pid>/exe`): the result becomes a
//! [`EventKind::RuntimeFound`] event, recorded, so replay needs no executable.
use std::{fs::File, path::Path};

use object::{Object as _, ReadCache};

use monitor_core::events::{Event, EventKind, Runtime};

/// The runtime of process `pid`'s program, if it is one Vigie recognises. `None` too when the
/// executable cannot be read (the process is gone): such a process keeps thread scope until it
/// shows M:N scheduling.
pub fn of_process(pid: u32) -> Option<Runtime> {
    of_executable(Path::new(&format!("/proc/{pid}/exe")))
}

/// The runtime of the program at `exe`.
pub fn of_executable(exe: &Path) -> Option<Runtime> {
    // Node.js by name: the `node` binary (Debian also installs it as `nodejs`).
    let target = std::fs::read_link(exe).unwrap_or_else(|_| exe.to_path_buf());
    let name = target.file_name()?.to_string_lossy().into_owned();
    if matches!(name.as_str(), "node" | "nodejs") {
        return Some(Runtime::Node);
    }
    // Go by its build info section, which every Go linker output has, stripped or not. Only the
    // section headers are read, not the (often large) executable.
    let file = File::open(exe).ok()?;
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    elf.section_by_name(".go.buildinfo").map(|_| Runtime::Go)
}

/// The [`EventKind::RuntimeFound`] event for process `pid` as of `at` (its exec), if any.
pub fn found(at: &Event) -> Option<Event> {
    let runtime = of_process(at.pid)?;
    Some(Event {
        ts_ns: at.ts_ns,
        pid: at.pid,
        tid: at.tid,
        comm: at.comm.clone(),
        goid: None,
        kind: EventKind::RuntimeFound { runtime },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_programs_are_not_a_runtime_and_missing_ones_are_none() {
        let me = std::env::current_exe().expect("current exe");
        assert_eq!(of_executable(&me), None);
        assert_eq!(of_executable(Path::new("/nonexistent/prog")), None);
    }

    #[test]
    fn go_programs_are_recognised_by_their_build_info() {
        // The Go toolchain's own `go` command is a Go program.
        let Some(go) = ["/usr/bin/go", "/usr/local/go/bin/go"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            eprintln!("SKIPPED go_programs_are_recognised_by_their_build_info: no go installed");
            return;
        };
        assert_eq!(of_executable(go), Some(Runtime::Go));
    }

    #[test]
    fn node_is_recognised_by_name() {
        let Some(node) = ["/usr/bin/node", "/usr/bin/nodejs"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            eprintln!("SKIPPED node_is_recognised_by_name: no node installed");
            return;
        };
        assert_eq!(of_executable(node), Some(Runtime::Node));
    }
}
