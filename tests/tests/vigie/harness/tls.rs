//! HTTPS portals that terminate TLS themselves, for the TLS tests: Debian's nginx with `ssl`
//! and `http2` serving documents directly behind HTTP Basic, and a small Python application
//! server (Debian's `python3`, its `ssl` module: OpenSSL 3) with a login form and session
//! cookies. Certificates are made by the test with the `openssl` command. Clients: `curl`.
//!
//! Each server is this process's child, on a temporary directory of its own; dropping the guard
//! stops it (SIGTERM, then SIGKILL) and reaps it.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{TempDir, free_port, nginx::nginx_conf_prologue, require_tool, scaled};

/// Users nginx knows (`user:{PLAIN}password` in its htpasswd file); the Python portal takes
/// `<user>-pw` as every user's password.
pub const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// What every document says (plus its owner and name): never to be found in a trace.
pub const SECRET: &str = "confidential document of";

/// A self-signed certificate and its key for `localhost`, made in `dir`.
pub fn certificate(test: &str, dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let openssl = require_tool(test, "openssl")?;
    let made = vigie_tests::nginx::self_signed(&openssl, dir);
    Some(made.unwrap_or_else(|e| panic!("making a certificate: {e}")))
}

/// A certificate authority made for a test, with a server certificate for `localhost` and
/// 127.0.0.1 and a client certificate, all signed by it (PEM files, keys mode 0600).
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Makes a [`Pki`] in `dir` with the `openssl` command (P-256 keys, one day).
pub fn pki(test: &str, dir: &Path) -> Option<Pki> {
    let openssl = require_tool(test, "openssl")?;
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(&openssl)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |name: &str| dir.join(name);
    let (ca_key, ca_pem) = (p("ca.key"), p("ca.pem"));
    let ec = "ec_paramgen_curve:P-256";
    let o = std::ffi::OsStr::new;
    run(&[
        o("req"),
        o("-x509"),
        o("-newkey"),
        o("ec"),
        o("-pkeyopt"),
        o(ec),
        o("-nodes"),
        o("-days"),
        o("1"),
        o("-subj"),
        o("/CN=Vigie test CA"),
        o("-addext"),
        o("basicConstraints=critical,CA:TRUE"),
        o("-addext"),
        o("keyUsage=critical,keyCertSign,cRLSign"),
        o("-keyout"),
        ca_key.as_os_str(),
        o("-out"),
        ca_pem.as_os_str(),
    ]);
    for (who, subject, ext) in [
        (
            "server",
            "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        ),
        (
            "client",
            "/CN=vigie-client",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        ),
    ] {
        let (key, csr, cert, extfile) = (
            p(&format!("{who}.key")),
            p(&format!("{who}.csr")),
            p(&format!("{who}.pem")),
            p(&format!("{who}.ext")),
        );
        std::fs::write(&extfile, ext).expect("writing the extensions");
        run(&[
            o("req"),
            o("-new"),
            o("-newkey"),
            o("ec"),
            o("-pkeyopt"),
            o(ec),
            o("-nodes"),
            o("-subj"),
            o(subject),
            o("-keyout"),
            key.as_os_str(),
            o("-out"),
            csr.as_os_str(),
        ]);
        run(&[
            o("x509"),
            o("-req"),
            o("-days"),
            o("1"),
            o("-in"),
            csr.as_os_str(),
            o("-CA"),
            ca_pem.as_os_str(),
            o("-CAkey"),
            ca_key.as_os_str(),
            o("-CAcreateserial"),
            o("-extfile"),
            extfile.as_os_str(),
            o("-out"),
            cert.as_os_str(),
        ]);
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod the key");
    }
    Some(Pki {
        ca: ca_pem,
        server_cert: p("server.pem"),
        server_key: p("server.key"),
        client_cert: p("client.pem"),
        client_key: p("client.key"),
    })
}

/// `users/<user>/notes.txt` for each of [`USERS`] under `dir`, readable by nginx's workers.
pub fn documents(dir: &Path) -> PathBuf {
    let users = dir.join("users");
    for user in USERS {
        let d = users.join(user);
        std::fs::create_dir_all(&d).expect("creating documents");
        // Long enough for a content fingerprint, and different for each owner.
        let text = format!("{SECRET} {user}: {}\n", format!("{user} ").repeat(40));
        std::fs::write(d.join("notes.txt"), text).expect("writing a document");
    }
    let _ = Command::new("chmod").args(["-R", "a+rX"]).arg(dir).status();
    users
}

/// A child process stopped on drop.
pub struct Server {
    /// `None` until started (see [`nginx_setup`]).
    child: Option<Child>,
    /// How to start it, for a server set up before it runs.
    command: Option<Command>,
    pub dir: TempDir,
    /// `127.0.0.1:port`.
    pub addr: String,
    log: PathBuf,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server started").id()
    }

    /// Starts a server that was only set up; returns once it accepts connections.
    pub fn start(&mut self, what: &str) {
        let mut command = self.command.take().expect("a server set up, not started");
        self.child = Some(command.spawn().expect("starting the server"));
        self.wait_listening(what);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the server accepts connections.
    fn wait_listening(&mut self, what: &str) {
        let start = Instant::now();
        while std::net::TcpStream::connect(&self.addr).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("{what} exited ({status}):\n{}", self.log());
            }
            assert!(
                start.elapsed() < scaled(Duration::from_secs(10)),
                "{what} did not listen in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The documents' directory of the server's tree.
    pub fn users(&self) -> PathBuf {
        self.dir.path().join("users")
    }

    pub fn doc(&self, owner: &str) -> String {
        self.users()
            .join(owner)
            .join("notes.txt")
            .display()
            .to_string()
    }

    /// Vigie's config for this server's process with sessions learnt from its logins (cookie
    /// `session`, the form's `user` field posted to `/login`).
    pub fn session_config(&self) -> String {
        let session = "[identity.session]\ncookie = \"session\"\nlogin_path = \"/login\"\nuser_field = \"user\"\n";
        self.config(&format!("pids = [{}]", self.pid()), "\"session\"", session)
    }

    /// Vigie's config for this tree: `targets` is a TOML `[targets]` body; `extra` follows.
    pub fn config(&self, targets: &str, sources: &str, extra: &str) -> String {
        let u = self.users().display().to_string();
        format!(
            "[targets]\n{targets}\n[documents]\nroots = [\"{u}\"]\nowner_templates = [\"{u}/{{owner}}/**\"]\n[identity]\nsources = [{sources}]\n{extra}"
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            vigie_tests::process::stop_child(child, libc::SIGTERM);
        }
    }
}

/// nginx with `listen ... ssl http2` (nginx 1.22's form of `http2 on`), one worker, documents
/// under `/users/` behind `auth_basic`, running. `None` after a loud SKIPPED line without nginx.
pub fn nginx(test: &str) -> Option<Server> {
    let mut server = nginx_setup(test)?;
    server.start("nginx");
    Some(server)
}

/// [`nginx`], set up (tree, certificate, config) but not started.
pub fn nginx_setup(test: &str) -> Option<Server> {
    let bin = require_tool(test, "nginx").or_else(|| {
        Path::new("/usr/sbin/nginx")
            .exists()
            .then(|| PathBuf::from("/usr/sbin/nginx"))
    })?;
    let dir = TempDir::new(&format!("{test}-nginx"));
    let (cert, key) = certificate(test, dir.path())?;
    documents(dir.path());
    let d = dir.path().display().to_string();
    let port = free_port();
    let prologue = nginx_conf_prologue(&d, 1, 256);
    let conf = format!(
        "{prologue}\
           server {{\n\
             listen 127.0.0.1:{port} ssl http2;\n\
             ssl_certificate {};\n\
             ssl_certificate_key {};\n\
             root {d};\n\
             location /users/ {{\n\
               auth_basic \"portal\";\n\
               auth_basic_user_file {d}/htpasswd;\n\
             }}\n\
           }}\n\
         }}\n",
        cert.display(),
        key.display()
    );
    let htpasswd: String = USERS
        .iter()
        .map(|u| format!("{u}:{{PLAIN}}{u}-pw\n"))
        .collect();
    std::fs::write(dir.path().join("nginx.conf"), conf).expect("writing nginx.conf");
    std::fs::write(dir.path().join("htpasswd"), htpasswd).expect("writing htpasswd");
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status();
    let log = dir.path().join("error.log");
    let mut command = Command::new(&bin);
    command
        .args(["-p", &format!("{d}/"), "-c", &format!("{d}/nginx.conf")])
        .args(["-e", &format!("{d}/error.log")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Some(Server {
        child: None,
        command: Some(command),
        dir,
        addr: format!("127.0.0.1:{port}"),
        log,
    })
}

/// The Python portal: `POST /login` (form `user`, `password` = `<user>-pw`) sets a `session`
/// cookie; `GET /docs/<owner>/notes.txt` serves the document to any logged-in user (the
/// portal's bug Vigie is there to see). One thread per connection. It loads `ssl` (and so
/// OpenSSL) only once `gate` exists, so a test can make it load libssl after Vigie started.
const PY_PORTAL: &str = r#"
import os, secrets, socketserver, sys, threading, time
port, root, cert, key, gate = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
while not os.path.exists(gate):
    time.sleep(0.02)
import ssl
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
sessions = {}
lock = threading.Lock()

class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            line = self.rfile.readline(8192)
            if not line:
                return
            method, target, _ = line.decode().split(" ", 2)
            headers = {}
            while True:
                h = self.rfile.readline(8192).decode()
                if h in ("\r\n", "\n", ""):
                    break
                k, v = h.split(":", 1)
                headers[k.strip().lower()] = v.strip()
            body = self.rfile.read(int(headers.get("content-length", "0")))
            if method == "POST" and target == "/login":
                form = dict(p.split("=", 1) for p in body.decode().split("&") if "=" in p)
                user = form.get("user", "")
                if form.get("password") != user + "-pw":
                    self.reply(403, b"no\n")
                    continue
                sid = secrets.token_hex(16)
                with lock:
                    sessions[sid] = user
                self.reply(303, b"", [("Set-Cookie", "session=%s; HttpOnly" % sid), ("Location", "/")])
                continue
            cookies = dict(c.strip().split("=", 1) for c in headers.get("cookie", "").split(";") if "=" in c)
            with lock:
                user = sessions.get(cookies.get("session", ""))
            parts = target.split("/")
            if user is None or len(parts) != 4 or parts[1] != "docs":
                self.reply(401 if user is None else 404, b"no\n")
                continue
            with open(os.path.join(root, parts[2], parts[3]), "rb") as f:
                data = f.read()
            self.reply(200, data)

    def reply(self, status, data, extra=()):
        head = "HTTP/1.1 %d X\r\nContent-Length: %d\r\n" % (status, len(data))
        head += "".join("%s: %s\r\n" % kv for kv in extra)
        self.wfile.write(head.encode() + b"\r\n" + data)
        self.wfile.flush()

class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    def get_request(self):
        conn, addr = self.socket.accept()
        return ctx.wrap_socket(conn, server_side=True), addr

print("listening", flush=True)
Server(("127.0.0.1", port), Handler).serve_forever()
"#;

/// The Python portal (Debian's `/usr/bin/python3`), waiting for its gate file before it loads
/// `ssl` and listens: call [`open_gate`] to let it. `None` after a loud SKIPPED line without
/// python3 or openssl.
pub fn python_portal(test: &str) -> Option<(Server, PathBuf)> {
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        require_tool(test, "python3-from-debian")?;
    }
    let dir = TempDir::new(&format!("{test}-py"));
    let (cert, key) = certificate(test, dir.path())?;
    let users = documents(dir.path());
    let script = dir.path().join("portal.py");
    std::fs::write(&script, PY_PORTAL).expect("writing the portal");
    let gate = dir.path().join("gate");
    let log = dir.path().join("portal.log");
    let port = free_port();
    let child = Command::new(python)
        .arg(&script)
        .arg(port.to_string())
        .arg(&users)
        .arg(&cert)
        .arg(&key)
        .arg(&gate)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("portal log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the Python portal");
    Some((
        Server {
            child: Some(child),
            command: None,
            dir,
            addr: format!("127.0.0.1:{port}"),
            log,
        },
        gate,
    ))
}

/// Lets the Python portal load `ssl` and listen; returns once it accepts connections.
pub fn open_gate(server: &mut Server, gate: &Path) {
    std::fs::write(gate, "").expect("opening the gate");
    server.wait_listening("the Python portal");
}

/// The Python portal of [`PY_PORTAL`], speaking HTTP/2 with the `h2` library: over the `ssl`
/// module (ALPN `h2` only), or in clear (`cert` is `clear`: HTTP/1.1, one request a
/// connection, or HTTP/2 after `Upgrade: h2c`). `POST /login` sets a `session` cookie,
/// `GET /docs/<owner>/notes.txt` serves any logged-in user. One thread per connection, each
/// stream answered once its request ended (the login once its form is read).
const PY_H2_PORTAL: &str = r#"
import os, secrets, socket, ssl, sys, threading
import h2.config, h2.connection, h2.events
port, root, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
if cert != "clear":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
sessions = {}
lock = threading.Lock()

def answer(headers, body):
    method, path = headers.get(":method"), headers.get(":path", "")
    if method == "POST" and path == "/login":
        form = dict(p.split("=", 1) for p in body.decode().split("&") if "=" in p)
        user = form.get("user", "")
        if form.get("password") != user + "-pw":
            return 403, b"no\n", []
        sid = secrets.token_hex(16)
        with lock:
            sessions[sid] = user
        return 303, b"", [("set-cookie", "session=%s; HttpOnly" % sid), ("location", "/")]
    cookies = dict(c.strip().split("=", 1) for c in headers.get("cookie", "").split(";") if "=" in c)
    with lock:
        user = sessions.get(cookies.get("session", ""))
    parts = path.split("/")
    if user is None or len(parts) != 4 or parts[1] != "docs":
        return (401 if user is None else 404), b"no\n", []
    with open(os.path.join(root, parts[2], parts[3]), "rb") as f:
        return 200, f.read(), []

def serve(sock, conn=None):
    if conn is None:
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
    streams = {}
    while True:
        data = sock.recv(65535)
        if not data:
            return
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                streams[ev.stream_id] = (dict((k.decode(), v.decode()) for k, v in ev.headers), bytearray())
            elif isinstance(ev, h2.events.DataReceived):
                streams[ev.stream_id][1].extend(ev.data)
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                headers, body = streams.pop(ev.stream_id)
                status, out, extra = answer(headers, bytes(body))
                conn.send_headers(ev.stream_id, [(":status", str(status)), ("content-length", str(len(out)))] + extra, end_stream=not out)
                if out:
                    conn.send_data(ev.stream_id, out, end_stream=True)
        sock.sendall(conn.data_to_send())

def serve_clear(sock):
    # HTTP/1.1, one request a connection, unless it asks to switch to h2c (curl --http2 on
    # http://): then `101`, stream 1 is that request, and HTTP/2 from there on.
    f = sock.makefile("rb", buffering=0)
    method, target, _ = f.readline(8192).decode().split(" ", 2)
    headers = {}
    while True:
        h = f.readline(8192).decode()
        if h in ("\r\n", "\n", ""):
            break
        k, v = h.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", "0")))
    fields = {":method": method, ":path": target, "cookie": headers.get("cookie", "")}
    if headers.get("upgrade", "").lower() != "h2c":
        status, out, extra = answer(fields, body)
        head = "HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n" % (status, len(out))
        head += "".join("%s: %s\r\n" % kv for kv in extra)
        sock.sendall(head.encode() + b"\r\n" + out)
        return
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_upgrade_connection(headers["http2-settings"])
    status, out, extra = answer(fields, body)
    conn.send_headers(1, [(":status", str(status)), ("content-length", str(len(out)))] + extra, end_stream=not out)
    if out:
        conn.send_data(1, out, end_stream=True)
    sock.sendall(conn.data_to_send())
    serve(sock, conn)

def run(raw):
    try:
        if cert == "clear":
            with raw:
                serve_clear(raw)
            return
        with ctx.wrap_socket(raw, server_side=True) as sock:
            serve(sock)
    except (OSError, ssl.SSLError):
        pass

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(16)
print("listening", flush=True)
while True:
    raw, _ = listener.accept()
    threading.Thread(target=run, args=(raw,), daemon=True).start()
"#;

/// The HTTP/2 Python portal ([`PY_H2_PORTAL`]), listening: over TLS, or in clear (`tls`
/// false: HTTP/1.1, and HTTP/2 after `Upgrade: h2c`). `None` after a loud SKIPPED line without
/// python3, its `h2` module (Debian's `python3-h2`) or openssl.
pub fn python_h2_portal(test: &str, tls: bool) -> Option<Server> {
    let python = python_with_h2(test)?;
    let dir = TempDir::new(&format!("{test}-py-h2"));
    let (cert, key) = certificate(test, dir.path())?;
    let users = documents(dir.path());
    let script = dir.path().join("portal.py");
    std::fs::write(&script, PY_H2_PORTAL).expect("writing the portal");
    let log = dir.path().join("portal.log");
    let port = free_port();
    let mut command = Command::new(python);
    command.arg(&script).arg(port.to_string()).arg(&users);
    if tls {
        command.arg(&cert).arg(&key);
    } else {
        command.args(["clear", "-"]);
    }
    command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("portal log"))
        .stderr(std::fs::File::create(dir.path().join("portal.err")).expect("portal log"));
    let mut server = Server {
        child: None,
        command: Some(command),
        dir,
        addr: format!("127.0.0.1:{port}"),
        log,
    };
    server.start("the Python HTTP/2 portal");
    Some(server)
}

/// An HTTP/2 client (the `h2` library over `ssl`, ALPN `h2`) that keeps one connection: it
/// GETs its first paths, prints `waiting`, and GETs the rest on the same connection once the
/// gate file exists; each response's status is printed (`<path> <status>`), then `done`.
const PY_H2_CLIENT: &str = r#"
import os, socket, ssl, sys, time
import h2.connection, h2.events
host, port, auth, gate = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
before, after = sys.argv[5].split(","), sys.argv[6].split(",")
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
s = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname="localhost")
assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
c = h2.connection.H2Connection()
c.initiate_connection()
s.sendall(c.data_to_send())

def get(path):
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"),
                         (":path", path), ("authorization", auth)], end_stream=True)
    s.sendall(c.data_to_send())
    status = None
    while True:
        data = s.recv(65535)
        if not data:
            sys.exit("connection closed")
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                status = dict(ev.headers)[b":status"].decode()
            if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                out = c.data_to_send()
                if out:
                    s.sendall(out)
                print(path, status, flush=True)
                return
        out = c.data_to_send()
        if out:
            s.sendall(out)

for p in before:
    get(p)
print("waiting", flush=True)
while not os.path.exists(gate):
    time.sleep(0.02)
for p in after:
    get(p)
print("done", flush=True)
"#;

/// A running [`PY_H2_CLIENT`]: its output lines, as they come.
pub struct H2Client {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    pub gate: PathBuf,
    _dir: TempDir,
}

impl H2Client {
    /// Connects to `addr` as `user` (Basic), GETs `before`, and waits for [`H2Client::go`].
    /// `None` after a loud SKIPPED line without python3's `h2` module.
    pub fn start(
        test: &str,
        addr: &str,
        user: &str,
        before: &[&str],
        after: &[&str],
    ) -> Option<Self> {
        use base64::Engine as _;
        let python = python_with_h2(test)?;
        let dir = TempDir::new(&format!("{test}-h2-client"));
        let script = dir.path().join("client.py");
        std::fs::write(&script, PY_H2_CLIENT).expect("writing the client");
        let gate = dir.path().join("gate");
        let (host, port) = addr.split_once(':').expect("host:port");
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{user}-pw"));
        let mut child = Command::new(python)
            .arg(&script)
            .args([host, port, &format!("Basic {creds}")])
            .arg(&gate)
            .args([before.join(","), after.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the HTTP/2 client");
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut client = Self {
            child,
            lines,
            gate,
            _dir: dir,
        };
        client.expect_until("waiting", before.len());
        Some(client)
    }

    /// Lets it GET the rest on its connection; returns their statuses once done.
    pub fn go(mut self, after: usize) -> Vec<u16> {
        std::fs::write(&self.gate, "").expect("opening the gate");
        self.expect_until("done", after)
    }

    /// Reads lines until `last`: the statuses of the responses before it (`expected` of them).
    fn expect_until(&mut self, last: &str, expected: usize) -> Vec<u16> {
        let mut statuses = Vec::new();
        for line in self.lines.by_ref() {
            let line = line.expect("the client's output");
            if line == last {
                break;
            }
            statuses.push(
                line.rsplit(' ')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            );
        }
        assert_eq!(statuses.len(), expected, "the HTTP/2 client stopped early");
        statuses
    }
}

impl Drop for H2Client {
    fn drop(&mut self) {
        vigie_tests::process::stop_child(&mut self.child, libc::SIGTERM);
    }
}

/// Debian's python3 when it has the `h2` module (`python3-h2`); `None` after a loud SKIPPED
/// line.
fn python_with_h2(test: &str) -> Option<&'static Path> {
    let python = Path::new("/usr/bin/python3");
    let has_h2 = Command::new(python)
        .args(["-c", "import h2"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_h2 {
        require_tool(test, "python3-h2-from-debian")?;
    }
    Some(python)
}

/// Runs curl (`-sk`, options `opts`) on `urls`; the URLs of one call share a connection
/// (HTTP/1.1 keep-alive, or HTTP/2 streams). Returns each URL's status.
pub fn curl(test: &str, opts: &[&str], urls: &[String]) -> Option<Vec<u16>> {
    let bin = require_tool(test, "curl")?;
    let mut command = Command::new(bin);
    command.args(["-sk", "-w", "%{http_code}\\n"]).args(opts);
    for url in urls {
        command.args(["-o", "/dev/null", url]);
    }
    let out = command.stdin(Stdio::null()).output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .map(|l| l.trim().parse().unwrap_or(0))
            .collect(),
    )
}

/// The `session=...` cookie the Python portal set at a login of `user` over TLS.
pub fn login(test: &str, addr: &str, user: &str) -> Option<String> {
    login_with(test, addr, user, "--http1.1")
}

/// [`login`], curl speaking `http` (`--http1.1`, `--http2`).
pub fn login_with(test: &str, addr: &str, user: &str, http: &str) -> Option<String> {
    let bin = require_tool(test, "curl")?;
    let out = Command::new(bin)
        .args(["-sk", http, "-o", "/dev/null", "-D", "-", "--data"])
        .arg(format!("user={user}&password={user}-pw"))
        .arg(format!("https://{addr}/login"))
        .stdin(Stdio::null())
        .output()
        .expect("running curl");
    let head = String::from_utf8_lossy(&out.stdout);
    let cookie = BufReader::new(head.as_bytes())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            // HTTP/2 field names are lower case.
            l.strip_prefix("Set-Cookie: ")
                .or_else(|| l.strip_prefix("set-cookie: "))
                .and_then(|c| c.split(';').next().map(str::to_owned))
        });
    Some(cookie.unwrap_or_else(|| panic!("no session cookie in {head}")))
}
