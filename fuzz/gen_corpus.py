#!/usr/bin/env python3
"""Writes the checked-in seed corpora under corpus/<target>/ (run from anywhere; idempotent).

Raw records follow the #[repr(C)] layouts of monitor-common (sizes asserted there): Header is 40
bytes, OpenEvent 320, FdEvent 64, ProcEvent 48, DataEvent 64 + captured bytes. The HS256 secret
of the signed tokens is the fuzz targets' `fuzz-secret`.
"""
import base64, hashlib, hmac, json, os, struct, sys

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = b"fuzz-secret"


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, alg="HS256", key=SECRET, sig=None):
    head = b64u(json.dumps({"alg": alg, "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64u(json.dumps(claims, separators=(",", ":")).encode())
    msg = f"{head}.{body}"
    if sig is None:
        sig = b64u(hmac.new(key, msg.encode(), hashlib.sha256).digest()) if alg == "HS256" else ""
    return f"{msg}.{sig}"


def basic(user, pw):
    return base64.b64encode(f"{user}:{pw}".encode()).decode()


def head(lines, method="GET", target="/docs/bob/health-record.pdf", version="1.1"):
    return (f"{method} {target} HTTP/{version}\r\n" + "".join(l + "\r\n" for l in lines) + "\r\n").encode()


SIGNED = jwt({"sub": "alice", "exp": 4102444800})
POINTER = jwt({"user": {"login": "carol"}, "roles": ["agent", "admin"], "exp": 4102444800})
HEADS = {
    "plain": head(["Host: portal", "Connection: close"]),
    "trusted": head(["Host: 127.0.0.1:42855", "Connection: close", "X-Remote-User: alice"]),
    "trusted-twice": head(["X-Remote-User: alice", "X-Remote-User: bob"]),
    "basic": head(["Host: portal", f"Authorization: Basic {basic('alice', 'secret')}"]),
    "basic-unpadded": head([f"Authorization: Basic {basic('bob', 'pw1').rstrip('=')}"]),
    "basic-lower": head([f"authorization: basic {basic('carol', 'x:y:z')}"]),
    "basic-two-spaces": head([f"Authorization: Basic  {basic('alice', 'secret')}"]),
    "basic-cr-before-name": b"GET / HTTP/1.1\r\nHost: x\n\rAuthorization: Basic "
    + basic("alice", "secret").encode() + b"\r\n\r\n",
    "basic-space-before-colon": head([f"Authorization : Basic {basic('alice', 'secret')}"]),
    "basic-no-colon": head([f"Authorization: Basic {base64.b64encode(b'alice').decode()}"]),
    "bearer-signed": head([f"Authorization: Bearer {SIGNED}"]),
    "bearer-pointer": head([f"Authorization: Bearer {POINTER}"]),
    "bearer-none": head([f"Authorization: Bearer {jwt({'sub': 'bob'}, alg='none')}"]),
    "bearer-forged": head([f"Authorization: Bearer {jwt({'sub': 'bob'}, key=b'wrong')}"]),
    "bearer-marked": head(["Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.V***"]),
    "cookie": head(["Cookie: session=abc123; theme=dark", "X-Remote-User: bob"]),
    "post-body": head(["Content-Length: 11", "X-Remote-User: alice"], method="POST", target="/upload")
    + b"hello world",
    "chunked": head(["Transfer-Encoding: gzip, chunked"], method="POST", target="/u"),
    "cl-conflict": head(["Content-Length: 5", "Content-Length: 6"], method="POST", target="/u"),
    "http10": head(["Connection: keep-alive"], version="1.0"),
    "pipelined": head(["X-Remote-User: a"]) + head(["X-Remote-User: b"], target="/docs/a/x"),
    "leading-crlf": b"\r\n\n" + head(["Host: x"]),
    "bare-lf": b"GET / HTTP/1.1\nHost: x\nX-Remote-User: alice\n\n",
    "partial": b"GET /docs/bob/health-record.pdf HTTP/1.1\r\nX-Remote-",
    "response": b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=deadbeef; Path=/; HttpOnly\r\nContent-Length: 9500\r\n\r\n",
    "response-403": b"HTTP/1.0 403 Forbidden\r\n\r\n",
    "webdav": head(["Depth: 1"], method="PROPFIND", target="/dav/"),
}


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def header(kind, tgid=4242, tid=4243, ts=1_011_504_041_551, comm=b"portal-conn"):
    return struct.pack("<IIIIQ16s", kind, tgid, tid, 0, ts, comm)


def open_ev(path, fd=7, dirfd=-100, flags=0, path_len=None, source=0):
    p = path.encode()
    n = len(p) + 1 if path_len is None else path_len
    return header(100) + struct.pack("<iiIIII256s", fd, dirfd, flags, n, source, 0, p)


def fd_ev(kind, fd, fd2=0, ret=0, op=0):
    return header(kind) + struct.pack("<iiqII", fd, fd2, ret, op, 0)


def data_ev(kind, fd, data, ret=None, op=1, captured=None):
    cap = len(data) if captured is None else captured
    return header(kind) + struct.pack("<iIqII", fd, op, len(data) if ret is None else ret, cap, 0) + data


RECORDS = {
    "exec": header(1),
    "fork": header(2) + struct.pack("<II", 5000, 5000),
    "exit": header(3),
    "open": open_ev("/srv/portal/users/bob/health-record.pdf"),
    "open-relative": open_ev("bob/x.pdf", dirfd=9),
    "open-exact": open_ev("/data/portal/users/bob/health-record.pdf", source=1),
    "open-truncated": open_ev("/srv/portal/users/" + "a" * 300, path_len=256),
    "open-invalid-utf8": header(100) + struct.pack("<iiIIII256s", 7, -100, 0, 8, 0, 0, b"/srv/\xff\\x"),
    "read": fd_ev(101, 7, ret=9500, op=1),
    "read-error": fd_ev(101, 7, ret=-14, op=1),
    "close": fd_ev(102, 7, op=15),
    "sendfile": fd_ev(103, 5, 7, ret=9500, op=10),
    "accept": fd_ev(200, 5, ret=5, op=14),
    "sock-close": fd_ev(203, 5, op=15),
    "sock-read": data_ev(201, 5, HEADS["trusted"]),
    "sock-read-basic": data_ev(201, 5, HEADS["basic"], op=4),
    "sock-write": data_ev(202, 5, HEADS["response"], ret=9622, op=6),
    "sock-read-bad-capture": data_ev(201, 5, b"", captured=5000),
    "sock-read-short": data_ev(201, 5, b"GET", captured=100),
    "unknown-kind": header(999) + bytes(24),
    "short": header(100)[:20],
}


def event(kind, ts=1_011_504_041_551, pid=4242, tid=4243, comm="portal-conn"):
    return json.dumps({"ts_ns": ts, "pid": pid, "tid": tid, "comm": comm, "kind": kind}, separators=(",", ":"))


def payload(b):
    """As `vigie::events::Payload` serializes: a string when UTF-8, else {"b64": ...}."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(b).decode()}


EVENTS = [
    event("process_exec"),
    event({"process_fork": {"child_pid": 5000}}),
    event({"fd_found": {"fd": 3, "found": "socket"}}),
    event({"fd_found": {"fd": 8, "found": {"document": {"path": "/srv/portal/users/bob/a.pdf"}}}}),
    event({"sock_accept": {"fd": 5}}),
    event({"sock_read": {"fd": 5, "bytes": 108, "data": payload(HEADS["trusted"])}}),
    event({"file_open": {"fd": 7, "path": "/srv/portal/users/bob/health-record.pdf", "dirfd": -100, "flags": 0}}),
    event({"file_open": {"fd": 9, "path": "x.pdf", "dirfd": -100, "base": "/srv/portal/users/bob", "flags": 0}}),
    event({"file_open": {"fd": 9, "path": "/srv/p", "dirfd": -100, "truncated": True,
                         "full_path": "/srv/portal/users/bob/long.pdf", "flags": 0}}),
    event({"file_read": {"fd": 7, "bytes": 9500}}),
    event({"send_file": {"out_fd": 5, "in_fd": 7, "bytes": 9500}}),
    event({"file_close": {"fd": 7}}),
    event({"sock_read": {"fd": 6, "bytes": 7, "data": payload(b"\x16\x03\x01\xff\xfe\r\n")}}),
    event({"sock_write": {"fd": 5, "bytes": 9622, "data": payload(HEADS["response"])}}),
    event({"sock_close": {"fd": 5}}),
    event({"lost": {"reason": "ringbuf_full", "count": 3}}),
    event("tick"),
    event("process_exit"),
    event({"ownership_fact": {"backend": "sqlite", "document": "/srv/portal/docs/2002.pdf",
                              "owner": "bob", "shared_with": ["alice"]}}, pid=0, tid=0, comm=""),
    event({"ownership_fact": {"backend": "postgres", "document": "/srv/portal/docs/3001.pdf",
                              "error": "timeout"}}, pid=0, tid=0, comm=""),
]


def fcgi_record(kind, rid, content=b"", padding=0):
    return struct.pack(">BBHHBB", 1, kind, rid, len(content), padding, 0) + content + bytes(padding)


def fcgi_pair(name, value):
    out = b""
    for n in (len(name), len(value)):
        out += bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)
    return out + name + value


def fcgi_request(rid, params, split=65535, padding=0):
    out = fcgi_record(1, rid, b"\x00\x01\x01\x00\x00\x00\x00\x00")
    stream = b"".join(fcgi_pair(n.encode(), v.encode()) for n, v in params)
    for i in range(0, len(stream), split):
        out += fcgi_record(4, rid, stream[i:i + split], padding)
    return out + fcgi_record(4, rid) + fcgi_record(5, rid)


def fcgi_response(rid, body):
    return fcgi_record(6, rid, body) + fcgi_record(6, rid) + fcgi_record(3, rid, bytes(8))


NGINX_PARAMS = [
    ("QUERY_STRING", ""), ("REQUEST_METHOD", "GET"), ("CONTENT_TYPE", ""), ("CONTENT_LENGTH", ""),
    ("SCRIPT_NAME", "/docs/bob/health-record.pdf"), ("REQUEST_URI", "/docs/bob/health-record.pdf"),
    ("SERVER_PROTOCOL", "HTTP/1.1"), ("REMOTE_ADDR", "127.0.0.1"), ("REMOTE_USER", "alice"),
    ("HTTP_HOST", "127.0.0.1:8080"),
]
FCGI = {
    "basic": fcgi_request(1, NGINX_PARAMS + [("HTTP_AUTHORIZATION", "Basic " + basic("alice", "secret"))])
    + fcgi_response(1, b"Content-Type: application/pdf\r\n\r\n%PDF"),
    "bearer-cookie": fcgi_request(1, NGINX_PARAMS + [("HTTP_AUTHORIZATION", "Bearer " + SIGNED),
                                                     ("HTTP_COOKIE", "session=abcdef0123456789; theme=dark")], split=40)
    + fcgi_response(1, b"Status: 403 Forbidden\r\nSet-Cookie: session=abcdef0123456789; Path=/\r\n\r\nno"),
    "login": fcgi_request(1, [("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/login"), ("CONTENT_LENGTH", "27")])[:-8]
    + fcgi_record(5, 1, b"user=alice&password=secret1") + fcgi_record(5, 1)
    + fcgi_response(1, b"Status: 303 See Other\r\nSet-Cookie: session=0123456789abcdef; HttpOnly\r\nLocation: /\r\n\r\n"),
    "multiplexed": fcgi_request(1, NGINX_PARAMS, split=9) + fcgi_request(2, [("REMOTE_USER", "bob"), ("PHP_AUTH_PW", "pw")])
    + fcgi_response(2, b"\r\n") + fcgi_response(1, b"Location: https://idp/\r\n\r\n"),
    "padding": fcgi_request(3, NGINX_PARAMS, split=7, padding=255) + fcgi_response(3, b"\r\nx"),
    "long-cookie": fcgi_request(1, [("HTTP_COOKIE", "session=" + "x" * 300)]) + fcgi_response(1, b"\r\n"),
    "management": fcgi_record(9, 0, fcgi_pair(b"FCGI_MAX_CONNS", b"")) + fcgi_record(10, 0, fcgi_pair(b"FCGI_MAX_CONNS", b"8")),
    "bogus-length": fcgi_request(1, [])[:16] + fcgi_record(4, 1, b"\xff\xff\xff\xff\x01HTTP_COOKIEx") + bytes([1, 4, 0, 1, 0xff, 0xff]),
}


def main():
    for name, data in HEADS.items():
        write("http_head", name, data)
        write("identity", name, b"\x01" + data)
        write("redact", name, b"\x00" + data)
    write("redact", "basic-split", b"\x19" + HEADS["basic"])
    write("redact", "bearer-split", b"\x30" + HEADS["bearer-signed"])
    write("identity", "signed-no-clock", b"\x00" + HEADS["bearer-signed"])
    # Request streams (seed for the cut points, then the bytes): pipelined, bodies, chunked.
    pipelined = b"".join(HEADS[k] for k in ("basic", "trusted", "plain"))
    body = head(["Host: portal"]).replace(b"GET", b"POST", 1)
    STREAMS = {
        "pipelined": pipelined,
        "body-with-request": body[:-2] + b"Content-Length: %d\r\n\r\n" % len(HEADS["basic"])
        + HEADS["basic"] + HEADS["trusted"],
        "chunked": body[:-2] + b"Transfer-Encoding: chunked\r\n\r\n5;x=y\r\nGET /\r\n1a\r\n"
        + HEADS["plain"][:26] + b"\r\n0\r\nTrailer: t\r\n\r\n" + HEADS["trusted"],
        "close-mid-pipeline": HEADS["plain"] + HEADS["basic"],
        "leading-empty-lines": b"\r\n\n\r\n" + HEADS["basic"],
    }
    for name, data in STREAMS.items():
        for i, seed in enumerate((1, 7, 300)):
            write("http_stream", f"{name}-{i}", struct.pack("<H", seed) + data)
    for name, data in FCGI.items():
        # Seed, split point (the response starts where the requests end), then the stream.
        split = data.find(b"\x01\x06") if b"\x01\x06" in data else len(data)
        for i, seed in enumerate((1, 7, 300)):
            write("fastcgi", f"{name}-{i}", struct.pack("<HH", seed, split) + data)
    for name, data in RECORDS.items():
        write("decode", name, data)
    for i, line in enumerate(EVENTS):
        write("trace_line", f"event-{i:02}", line.encode())
    write("trace_line", "session", "".join(l + "\n" for l in EVENTS).encode())
    write("trace_line", "truncated-last", ("\n".join(EVENTS[:5]) + "\n" + EVENTS[5][:40]).encode())
    write("trace_line", "corrupt-middle", (EVENTS[0] + "\n{not json\n" + EVENTS[1] + "\n").encode())
    # The correlator target reads `arbitrary` structures: seeds are byte strings that decode to
    # event sequences of various lengths (libFuzzer finds the structure from there).
    for i in range(8):
        seed = hashlib.sha256(f"correlator-{i}".encode()).digest() * (1 + 4 * i)
        write("correlator", f"seed-{i}", seed)
    print("SIGNED", SIGNED, file=sys.stderr)


if __name__ == "__main__":
    main()
