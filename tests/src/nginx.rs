//! Debian's nginx as the end-to-end tests (`tests/tests/vigie/harness`) and the bench
//! (`cargo xtask bench`) configure it: the start of every configuration, the static document site
//! (over HTTP, or HTTPS with a certificate), the users it knows, and a throwaway self-signed
//! certificate made with the `openssl` command.
use std::{
    io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Users the static site knows under `/docs/` (`user:{PLAIN}password` in its htpasswd file).
pub const PASSWORDS: [(&str, &str); 4] = [
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("carol", "carol-pw"),
    ("agent", "agent-pw"),
];

/// The start of an nginx configuration every server shares: run in the foreground as
/// `nobody` with `workers` workers of `connections` connections, its pid file, logs and
/// temporary files in `d`, and the `http` block opened (the caller writes its servers and closes
/// it).
pub fn conf_prologue(d: &str, workers: u32, connections: u32) -> String {
    format!(
        "user nobody nogroup;\nworker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections {connections}; }}\n\
         http {{\n\
           access_log {d}/access.log;\n\
           client_body_temp_path {d}/tmp-body;\n\
           fastcgi_temp_path {d}/tmp-fastcgi;\n\
           proxy_temp_path {d}/tmp-proxy;\n\
           uwsgi_temp_path {d}/tmp-uwsgi;\n\
           scgi_temp_path {d}/tmp-scgi;\n"
    )
}

/// nginx as a static document portal, itself the process Vigie watches: `root` is served under
/// `/docs/` to users it authenticates (HTTP Basic, [`PASSWORDS`], from `d/htpasswd`: see
/// [`htpasswd`]), and the same files under `/open/` to anyone. `sendfile` on or off; over TLS
/// (HTTP/1.1) with `tls = Some((certificate, key))`. Heads up to 16 KiB a line and 128 KiB in
/// all (`large_client_header_buffers 8 16k`), one worker. Its access log (`d/access.log`) has one
/// line per request: `user status bytes filename`.
pub fn static_conf(
    d: &str,
    port: u16,
    root: &Path,
    sendfile: bool,
    tls: Option<(&Path, &Path)>,
) -> String {
    let r = root.display();
    let sendfile = if sendfile { "on" } else { "off" };
    let (ssl, certificate) = match tls {
        Some((cert, key)) => (
            " ssl",
            format!(
                "ssl_certificate {};\nssl_certificate_key {};\n",
                cert.display(),
                key.display()
            ),
        ),
        None => ("", String::new()),
    };
    format!(
        "user nobody nogroup;\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n\
           log_format who '$remote_user $status $body_bytes_sent $request_filename';\n\
           access_log {d}/access.log who;\n\
           sendfile {sendfile};\n\
           large_client_header_buffers 8 16k;\n\
           keepalive_requests 10000;\n\
           client_body_temp_path {d}/tmp-body;\n\
           proxy_temp_path {d}/tmp-proxy;\n\
           fastcgi_temp_path {d}/tmp-fastcgi;\n\
           uwsgi_temp_path {d}/tmp-uwsgi;\n\
           scgi_temp_path {d}/tmp-scgi;\n\
           server {{\n\
             listen 127.0.0.1:{port}{ssl};\n\
             {certificate}\
             location /docs/ {{\n\
               alias {r}/;\n\
               auth_basic \"portal\";\n\
               auth_basic_user_file {d}/htpasswd;\n\
             }}\n\
             location /open/ {{ alias {r}/; }}\n\
           }}\n\
         }}\n"
    )
}

/// The htpasswd file of [`PASSWORDS`].
pub fn htpasswd() -> String {
    PASSWORDS
        .iter()
        .map(|(u, p)| format!("{u}:{{PLAIN}}{p}\n"))
        .collect()
}

/// Debian's nginx (`/usr/sbin/nginx`, off a user's `PATH`), else the first `nginx` on `PATH`.
pub fn binary() -> Option<PathBuf> {
    let debian = Path::new("/usr/sbin/nginx");
    if debian.is_file() {
        return Some(debian.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

/// A self-signed certificate and its key (P-256) for `localhost`, valid one day, made in `dir`
/// (`cert.pem`, `key.pem`) by the `openssl` command at `openssl`.
pub fn self_signed(openssl: &Path, dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok((cert, key))
}
