//! The Node.js Express demo portal (`tests/node-portal/portal.js`): Debian's nodejs, Express
//! from npm, both installed by `cargo xtask setup`.
use std::path::{Path, PathBuf};

use std::time::Duration;

use super::{PortalGuard, TempDir, require_tool};

/// How long the portal may take to listen (times the test time scale).
const STARTUP: Duration = Duration::from_secs(30);

/// A running Node.js portal over generated documents.
pub struct NodePortal {
    pub guard: PortalGuard,
    /// `ROOT/users`, where the documents are.
    pub users: PathBuf,
    _dir: TempDir,
}

impl NodePortal {
    /// Starts the portal serving `serve` (`read-file` or `stream`), with `cluster` workers if
    /// given; `None` (after a loud skip) when node is not installed.
    pub fn start(test: &str, serve: &str, cluster: Option<&str>) -> Option<Self> {
        let node = require_tool(test, "node")?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("node-portal/portal.js");
        assert!(
            script.with_file_name("node_modules/express").is_dir(),
            "Express is not installed in tests/node-portal (run `cargo xtask setup`)"
        );
        let dir = TempDir::new(&format!("{test}-node"));
        let root = dir.path().join("portal");
        vigie_tests::portal::generate(&root).expect("generating documents");
        let mut args = vec![
            script.to_str().expect("utf-8 path"),
            "--root",
            root.to_str().expect("utf-8 temp dir"),
            "--serve",
            serve,
        ];
        if let Some(n) = cluster {
            args.extend(["--cluster", n]);
        }
        // V8 starts in a fraction of a second natively, but a cluster's three processes under
        // software emulation (the kernel matrix) take tens of seconds.
        let guard = vigie_tests::process::spawn_portal_within(&node, &args, STARTUP)
            .expect("starting the Node.js portal");
        Some(Self {
            guard,
            users: root.join("users"),
            _dir: dir,
        })
    }

    /// Config for Vigie watching this portal (and its cluster workers). Under software
    /// emulation V8 may take seconds between a pool thread's read and the reply that carries
    /// it: reads wait that long for their fingerprint (natively, the default 500 ms).
    pub fn config(&self) -> String {
        let u = self.users.display();
        let scale = vigie_tests::time_scale();
        let wait = if scale > 1.0 {
            format!(
                "[correlation]\nidle_flush_ms = {}\n",
                (2000.0 * scale) as u64
            )
        } else {
            String::new()
        };
        format!(
            "[targets]\npids = [{}]\n[documents]\nroots = [\"{u}\"]\nowner_templates = [\"{u}/{{owner}}/**\"]\n{wait}",
            self.guard.pid()
        )
    }
}
