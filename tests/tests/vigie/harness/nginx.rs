//! A real nginx (Debian's package) in front of the FastCGI demo application, as a portal would
//! run behind it: `fastcgi_pass` to a unix socket or TCP, `fastcgi_keep_conn on` with an upstream
//! keepalive pool (connections reused by requests of different users), `REMOTE_USER` set from
//! `$remote_user`, and HTTP Basic checked by nginx itself under `/secure/` (`auth_basic`).
//!
//! nginx is started by root on a temporary prefix of its own (config, pid, logs, temp paths)
//! with `daemon off`, so it is this process's child; its workers run as `nobody`. Dropping the
//! guard stops it (SIGTERM, then SIGKILL) and reaps it.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{TempDir, free_port, require_tool};

/// Users nginx knows under `/secure/` (and the static site under `/docs/`), and the start of
/// every configuration: written once in the library, which the bench uses too.
pub use vigie_tests::nginx::{PASSWORDS, conf_prologue as nginx_conf_prologue};

pub struct Nginx {
    child: Child,
    dir: TempDir,
    /// `127.0.0.1:port` it listens on.
    pub addr: String,
}

impl Nginx {
    /// Starts nginx in front of `upstream` (`unix:/path` or `127.0.0.1:port`); `None` after a
    /// loud SKIPPED line when nginx is not installed (`cargo xtask setup` installs it).
    pub fn start(test: &str, upstream: &str) -> Option<Nginx> {
        let bin = require_tool(test, "nginx").or_else(|| {
            Path::new("/usr/sbin/nginx")
                .exists()
                .then(|| PathBuf::from("/usr/sbin/nginx"))
        })?;
        let dir = TempDir::new(&format!("{test}-nginx"));
        let d = dir.path().display().to_string();
        let port = free_port();
        let fcgi = String::from(
            "fastcgi_pass app;\nfastcgi_keep_conn on;\n\
             fastcgi_param QUERY_STRING $query_string;\n\
             fastcgi_param REQUEST_METHOD $request_method;\n\
             fastcgi_param CONTENT_TYPE $content_type;\n\
             fastcgi_param CONTENT_LENGTH $content_length;\n\
             fastcgi_param SCRIPT_NAME $fastcgi_script_name;\n\
             fastcgi_param REQUEST_URI $request_uri;\n\
             fastcgi_param DOCUMENT_URI $document_uri;\n\
             fastcgi_param SERVER_PROTOCOL $server_protocol;\n\
             fastcgi_param GATEWAY_INTERFACE CGI/1.1;\n\
             fastcgi_param SERVER_SOFTWARE nginx/$nginx_version;\n\
             fastcgi_param REMOTE_ADDR $remote_addr;\n\
             fastcgi_param REMOTE_PORT $remote_port;\n\
             fastcgi_param SERVER_ADDR $server_addr;\n\
             fastcgi_param SERVER_PORT $server_port;\n\
             fastcgi_param SERVER_NAME $server_name;\n\
             fastcgi_param REMOTE_USER $remote_user;\n",
        );
        let prologue = nginx_conf_prologue(&d, 2, 512);
        let conf = format!(
            "{prologue}\
               upstream app {{ server {upstream}; keepalive 8; }}\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 location / {{ include {d}/fcgi.conf; }}\n\
                 location /secure/ {{\n\
                   auth_basic \"portal\";\n\
                   auth_basic_user_file {d}/htpasswd;\n\
                   include {d}/fcgi.conf;\n\
                 }}\n\
               }}\n\
             }}\n"
        );
        Some(Self::launch(
            &bin,
            dir,
            port,
            [("nginx.conf", conf), ("fcgi.conf", fcgi)],
        ))
    }

    /// Starts nginx as a static document portal, itself the target Vigie watches: `root` under
    /// `/docs/` behind HTTP Basic ([`PASSWORDS`]) and under `/open/`, `sendfile` on or off (the
    /// configuration of [`vigie_tests::nginx::static_conf`], which the bench runs too). Its
    /// access log ([`Nginx::access_log`]) has one line per request: `user status bytes filename`.
    pub fn start_static(test: &str, root: &Path, sendfile: bool) -> Option<Nginx> {
        // Debian's path first: the kernel matrix's initramfs holds it there, off `PATH`.
        let debian = Path::new("/usr/sbin/nginx");
        let bin = if debian.exists() {
            debian.to_path_buf()
        } else {
            require_tool(test, "nginx")?
        };
        let dir = TempDir::new(&format!("{test}-nginx"));
        let d = dir.path().display().to_string();
        let port = free_port();
        let conf = vigie_tests::nginx::static_conf(&d, port, root, sendfile, None);
        Some(Self::launch(&bin, dir, port, [("nginx.conf", conf)]))
    }

    /// Starts nginx as a reverse proxy (`proxy_pass`) in front of the HTTP portal at `upstream`
    /// (`127.0.0.1:port`), connecting to it from `source` (`proxy_bind`, a loopback address of
    /// its own, so that the portal can tell the proxy from direct clients). It passes the client
    /// as `X-Forwarded-For` (appended to what the client sent) and `X-Real-IP`.
    pub fn reverse_proxy(test: &str, upstream: &str, source: &str) -> Option<Nginx> {
        let bin = require_tool(test, "nginx").or_else(|| {
            Path::new("/usr/sbin/nginx")
                .exists()
                .then(|| PathBuf::from("/usr/sbin/nginx"))
        })?;
        let dir = TempDir::new(&format!("{test}-nginx"));
        let d = dir.path().display().to_string();
        let port = free_port();
        let prologue = nginx_conf_prologue(&d, 1, 128);
        let conf = format!(
            "{prologue}\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 location / {{\n\
                   proxy_pass http://{upstream};\n\
                   proxy_bind {source};\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                   proxy_set_header X-Real-IP $remote_addr;\n\
                 }}\n\
               }}\n\
             }}\n"
        );
        Some(Self::launch(&bin, dir, port, [("nginx.conf", conf)]))
    }

    /// Writes the config files (and the htpasswd file) to `dir`, starts nginx on them and
    /// waits until it listens on `port`.
    fn launch<const N: usize>(
        bin: &Path,
        dir: TempDir,
        port: u16,
        files: [(&str, String); N],
    ) -> Nginx {
        let d = dir.path().display().to_string();
        std::fs::write(dir.path().join("htpasswd"), vigie_tests::nginx::htpasswd())
            .expect("writing htpasswd");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("writing nginx files");
        }
        // Workers (nobody) read the htpasswd file through this directory.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod nginx dir");
        let child = Command::new(bin)
            .args(["-p", &format!("{d}/"), "-c", &format!("{d}/nginx.conf")])
            .args(["-e", &format!("{d}/error.log")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let mut nginx = Nginx {
            child,
            dir,
            addr: format!("127.0.0.1:{port}"),
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(&nginx.addr).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", nginx.error_log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nginx did not listen in 10 s:\n{}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// The access log's lines (see [`Nginx::start_static`] for their format).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Its worker processes (children of the master), ascending.
    pub fn workers(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids: Vec<u32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    // `pid (comm) state ppid ...`: comm may hold spaces, so split after `)`.
                    stat.rsplit_once(") ")
                        .and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<u32>().ok())
                        == Some(master)
                })
            })
            .collect();
        pids.sort_unstable();
        pids
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        vigie_tests::process::stop_child(&mut self.child, libc::SIGTERM);
    }
}
