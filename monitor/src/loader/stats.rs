//! What each attached program costs in the kernel: its run count and total run time, from the
//! kernel's BPF run statistics. The kernel only counts while statistics are on
//! (`kernel.bpf_stats_enabled = 1`, or a `BPF_ENABLE_STATS` fd held by someone), and counting
//! itself costs two clock reads per run, so Vigie never turns them on for its run: an operator
//! (or `cargo xtask bench`) does, for as long as they want to see the cost.
use super::Probes;

/// One program's cumulative statistics since it was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramStats {
    pub program: &'static str,
    /// Runs counted (all processes: the target filter runs inside the program).
    pub runs: u64,
    /// Nanoseconds spent in the program over those runs.
    pub run_ns: u64,
}

impl Probes {
    /// Statistics of every attached program (one entry per program, whatever its hooks). Reading
    /// them needs no privilege: the program fds are Vigie's.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let mut names: Vec<&'static str> = self.links.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|program| {
                let info = self.ebpf.program(program)?.info().ok()?;
                Some(ProgramStats {
                    program,
                    runs: info.run_count(),
                    run_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                })
            })
            .collect()
    }
}
