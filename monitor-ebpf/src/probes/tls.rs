//! Plaintext from the target's own TLS library (OpenSSL 3), with uprobes at the entry of
//! `SSL_read`, `SSL_read_ex`, `SSL_write`, `SSL_write_ex` and `SSL_do_handshake` and one
//! uretprobe on all five.
//!
//! The entry probe remembers the call (its `SSL *`, buffer and length) for the thread. A socket
//! syscall the thread makes before the call returns is the call's own I/O on its socket
//! (`io::sys_enter_io` fills in the fd and marks the socket `fd_kind::TLS`, so that its
//! ciphertext is never captured). The return probe sends the plaintext, bounded like a socket
//! capture, as a `SOCK_READ`/`SOCK_WRITE` record on that socket. A call that needed no syscall
//! (the record was already read into the library's buffer) uses the socket last seen for its
//! `SSL *`; the handshake always reads the socket, so each connection's is known before its
//! first `SSL_read`. No key material is read: only the buffers the application passes.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use monitor_common::{
    loss, op,
    tls::{SslKey, TlsCall},
};

use super::sockets;
use crate::maps::{SSL_FDS, Stash, TLS_CALLS, count_loss, is_target};

/// Each program comes twice: as a `uprobe.multi` link (Linux 6.6+), which Vigie can attach
/// after it dropped `CAP_SYS_ADMIN` (a target that loads its TLS library later), and as a
/// classic perf-event uprobe for older kernels, attached only while Vigie still has it.
macro_rules! entry {
    ($(#[$doc:meta])* $single:ident, $multi:ident, $op:expr, $ex:expr) => {
        $(#[$doc])*
        #[uprobe]
        pub fn $single(ctx: ProbeContext) -> u32 {
            enter(&ctx, $op, $ex);
            0
        }
        $(#[$doc])*
        #[uprobe(multi)]
        pub fn $multi(ctx: ProbeContext) -> u32 {
            enter(&ctx, $op, $ex);
            0
        }
    };
}

entry!(
    /// `int SSL_read(SSL *ssl, void *buf, int num)`
    ssl_read, ssl_read_multi, op::SSL_READ, false
);
entry!(
    /// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`
    ssl_read_ex, ssl_read_ex_multi, op::SSL_READ, true
);
entry!(
    /// `int SSL_write(SSL *ssl, const void *buf, int num)`
    ssl_write, ssl_write_multi, op::SSL_WRITE, false
);
entry!(
    /// `int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)`
    ssl_write_ex, ssl_write_ex_multi, op::SSL_WRITE, true
);
entry!(
    /// `int SSL_do_handshake(SSL *ssl)`: no plaintext; its reads and writes teach the socket.
    ssl_handshake, ssl_handshake_multi, op::SSL_HANDSHAKE, false
);

/// Return of any of the five.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    leave(&ctx);
    0
}

/// Return of any of the five (`uprobe.multi`).
#[uretprobe(multi)]
pub fn ssl_return_multi(ctx: RetProbeContext) -> u32 {
    leave(&ctx);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, op: u32, ex: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return;
    }
    let call = TlsCall {
        op,
        fd: -1,
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        // `int num` for the plain calls: only its low 32 bits are the argument.
        len: if ex {
            ctx.arg::<u64>(2).unwrap_or(0)
        } else {
            ctx.arg::<u64>(2).unwrap_or(0) as u32 as i32 as i64 as u64
        },
        count_ptr: if ex {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
    };
    // Rewritten in place, as the syscall stash is (see `maps::stash_put`).
    if let Some(slot) = TLS_CALLS.get_ptr_mut(&pid_tgid) {
        unsafe { *slot = call };
    } else if TLS_CALLS.insert(&pid_tgid, &call, 0).is_err() {
        count_loss(loss::STASH_FULL);
    }
}

#[inline(always)]
fn leave(ctx: &RetProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(slot) = TLS_CALLS.get_ptr_mut(&pid_tgid) else {
        return;
    };
    let call = unsafe { *slot };
    if call.op == op::NONE {
        return;
    }
    unsafe { (*slot).op = op::NONE };
    let key = SslKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        ssl: call.ssl,
    };
    let fd = if call.fd >= 0 {
        if unsafe { SSL_FDS.get(&key) }.copied() != Some(call.fd) {
            let _ = SSL_FDS.insert(&key, &call.fd, 0);
        }
        call.fd
    } else {
        unsafe { SSL_FDS.get(&key) }.copied().unwrap_or(-1)
    };
    if call.op == op::SSL_HANDSHAKE {
        return;
    }
    let ret = ctx.ret::<i32>() as i64;
    let bytes = if call.count_ptr != 0 {
        if ret != 1 {
            return;
        }
        let mut n: u64 = 0;
        // Zero-initialised stack target with the raw helper, as in `sockets::user_buffer`.
        let r = unsafe {
            generated::bpf_probe_read_user(
                (&mut n as *mut u64).cast(),
                8,
                call.count_ptr as *const _,
            )
        };
        if r != 0 {
            return;
        }
        n as i64
    } else {
        ret
    };
    if bytes <= 0 {
        return;
    }
    if fd < 0 {
        count_loss(loss::TLS_NO_FD);
        return;
    }
    let stash = Stash {
        op: call.op,
        kind: 0,
        fd,
        fd2: -1,
        ptr: call.buf,
        arg: call.len,
    };
    sockets::emit_data(&stash, bytes);
}
