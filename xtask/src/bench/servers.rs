//! The real servers of the bench's peer rounds, from Debian packages, each this process's child
//! on a directory of its own: nginx serving documents with `sendfile on` (the tests' static site
//! configuration, `vigie_tests::nginx`), the same over TLS (HTTP/1.1, a throwaway self-signed
//! certificate), and gunicorn running a small WSGI application that reads and writes documents
//! in 8 KiB chunks. The document tree they serve is made here.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{free_port, run_ok, tree_pids};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// nginx, one worker, `sendfile on`, HTTP Basic.
    Nginx,
    /// nginx, one worker, `listen ... ssl` (HTTP/1.1), HTTP Basic.
    NginxTls,
    /// gunicorn (gthread: 2 workers of 4 threads), its WSGI app reading and writing 8 KiB chunks.
    Chunked,
}

/// Documents per user, `doc-0.bin` ...
pub const DOCS: usize = 3;
pub const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// `root/users/<user>/doc-<n>.bin` of `bytes` each, different for every file (so each has its
/// own fingerprint), readable by nginx's workers (`nobody`).
pub fn documents(root: &Path, bytes: usize) -> anyhow::Result<()> {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for user in USERS {
        let d = root.join("users").join(user);
        std::fs::create_dir_all(&d)?;
        for n in 0..DOCS {
            let mut data = Vec::with_capacity(bytes + 8);
            while data.len() < bytes {
                // xorshift64: cheap bytes that do not repeat across files.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                data.extend_from_slice(&seed.to_le_bytes());
            }
            data.truncate(bytes);
            std::fs::write(d.join(format!("doc-{n}.bin")), data)?;
        }
    }
    run_ok(Command::new("chmod").args(["-R", "a+rX"]).arg(root))
}

/// The WSGI application: `GET /docs/<owner>/<name>` by a Basic-authenticated user (the password
/// is not checked: the portal trusts its front) serves the document, read with 8 KiB `read`s
/// and written as 8 KiB chunks (one `send` each). Any logged-in user may read any document:
/// the portal's bug Vigie is there to see.
const WSGI_APP: &str = r#"
import base64, os
ROOT = os.environ["VIGIE_BENCH_DOCS"]
CHUNK = 8192

def app(environ, start_response):
    auth = environ.get("HTTP_AUTHORIZATION", "")
    user = base64.b64decode(auth[6:]).split(b":")[0] if auth.startswith("Basic ") else b""
    parts = environ["PATH_INFO"].split("/")
    if not user or len(parts) != 4 or parts[1] != "docs":
        start_response("401 Unauthorized", [("Content-Length", "0")])
        return [b""]
    f = open(os.path.join(ROOT, parts[2], parts[3]), "rb", buffering=0)
    size = os.fstat(f.fileno()).st_size
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(size))])
    def body():
        with f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    return
                yield chunk
    return body()
"#;

/// A running server; stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Server {
    child: Child,
    dir: PathBuf,
    /// `http://127.0.0.1:port` or `https://...`.
    pub base: String,
}

impl Server {
    /// Starts `kind` serving `root` (see [`documents`]), its files in `dir`; returns once it
    /// answers.
    pub fn start(kind: Kind, dir: &Path, root: &Path) -> anyhow::Result<Server> {
        std::fs::create_dir_all(dir)?;
        // Workers (nobody) read the htpasswd file through this directory.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let port = free_port()?;
        let d = dir.display().to_string();
        let users = root.join("users");
        let (mut command, scheme) = match kind {
            Kind::Nginx | Kind::NginxTls => {
                let bin = vigie_tests::nginx::binary().context("nginx is not installed")?;
                let cert = if kind == Kind::NginxTls {
                    Some(
                        vigie_tests::nginx::self_signed(Path::new("openssl"), dir)
                            .context("making a certificate with the openssl command")?,
                    )
                } else {
                    None
                };
                let tls = cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                let conf = vigie_tests::nginx::static_conf(&d, port, &users, true, tls);
                std::fs::write(dir.join("nginx.conf"), conf)?;
                std::fs::write(dir.join("htpasswd"), vigie_tests::nginx::htpasswd())?;
                let mut c = Command::new(bin);
                c.args(["-p", &format!("{d}/"), "-c", &format!("{d}/nginx.conf")])
                    .args(["-e", &format!("{d}/error.log")]);
                (c, if tls.is_some() { "https" } else { "http" })
            }
            Kind::Chunked => {
                std::fs::write(dir.join("docapp.py"), WSGI_APP)?;
                let mut c = Command::new("gunicorn");
                c.args([
                    "--worker-class",
                    "gthread",
                    "--workers",
                    "2",
                    "--threads",
                    "4",
                ])
                .args(["--bind", &format!("127.0.0.1:{port}")])
                .args(["--log-level", "warning", "--chdir", &d, "docapp:app"])
                .env("VIGIE_BENCH_DOCS", &users);
                (c, "http")
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log"))?)
            .spawn()
            .with_context(|| format!("starting {kind:?} (Debian's nginx, gunicorn)"))?;
        let mut s = Server {
            child,
            dir: dir.to_path_buf(),
            base: format!("{scheme}://127.0.0.1:{port}"),
        };
        let start = Instant::now();
        // Listening, and every worker started (gunicorn forks them after binding).
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            || s.pids().len() < if kind == Kind::Chunked { 3 } else { 2 }
        {
            if let Some(st) = s.child.try_wait()? {
                bail!("{kind:?} exited ({st}): {}", s.log());
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("{kind:?} did not listen in 20 s: {}", s.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    /// The master's pid (Vigie's target: its workers are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        tree_pids(self.pid())
    }

    fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        vigie_tests::process::stop_child(&mut self.child, libc::SIGTERM);
    }
}
