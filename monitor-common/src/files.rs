//! Document files: opens under the document roots, reads of those fds, `sendfile`, closes.
use crate::Header;

/// Bytes of the path captured at open. A path of exactly this length was truncated: userspace then
/// resolves it from `/proc/<pid>/fd/<fd>`.
pub const PATH_CAP: usize = 256;

/// `kind::FILE_OPEN`: a successful `openat`/`openat2` of a path under a document root, or of a path
/// the probe cannot rule out (relative, or containing `..`).
///
/// Where the kernel runs BTF programs, `file_open` gives the exact path (`source` is
/// [`path_source::KERNEL`]): absolute, with symlinks and `..` resolved, so nothing is left
/// undecided. Elsewhere it is the `openat` argument as the process wrote it
/// ([`path_source::SYSCALL`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpenEvent {
    pub header: Header,
    /// The fd returned.
    pub fd: i32,
    /// The `dirfd` argument (`AT_FDCWD` is -100).
    pub dirfd: i32,
    /// `open(2)` flags (low 32 bits).
    pub flags: u32,
    /// Bytes of `path` before the NUL; `PATH_CAP` means truncated.
    pub path_len: u32,
    /// One of [`path_source`].
    pub source: u32,
    pub _pad: u32,
    pub path: [u8; PATH_CAP],
}
const _: () = assert!(core::mem::size_of::<OpenEvent>() == 56 + 24 + PATH_CAP);

/// Where [`OpenEvent::path`] comes from.
pub mod path_source {
    /// The `openat` path argument, read from the process's memory at the syscall's exit.
    pub const SYSCALL: u32 = 0;
    /// `bpf_d_path` of the opened file in the `file_open` LSM hook or `security_file_open`.
    pub const KERNEL: u32 = 1;
}

/// Small fd-level records:
/// - `kind::FILE_READ`: `fd` read `ret` bytes (op: read, pread64, readv, preadv), whose first
///   bytes hash to `fp` (see [`fingerprint`]; 0 when there is none);
/// - `kind::FILE_READ_MORE`: `size` more reads of `fd` (`ret` bytes in all, the last one's op
///   and time) by this thread, each made right after the previous one with no record of the
///   thread in between (but its writes inside a response body that do not complete it), the
///   first of them right after its `kind::FILE_READ` of `fd`: counted in
///   the kernel, without fingerprint or size, and sent before the thread's next record, when
///   another thread closes `fd`, or when the count is `READ_BATCH_NS` old;
/// - `kind::SOCK_WRITE_MORE`: `size` more writes of connection `fd` (`ret` bytes in all, the
///   last one's op and time) by this thread, each inside the body span userspace gave for the
///   connection's current response and past the write holding the body's first bytes, the first
///   of them after the thread's last `kind::SOCK_WRITE` of `fd`, with no record of the thread in
///   between but counted document reads: sent before the thread's next record, before another
///   thread's record of `fd`, when the body's last byte went out, or when `READ_BATCH_NS` old;
/// - `kind::FILE_SENDFILE`: `sendfile(out = fd, in = fd2)` moved `ret` bytes;
/// - `kind::FILE_MAP`: `fd` was mapped readable, `ret` bytes long (op: mmap);
/// - `kind::FILE_CLOSE` / `kind::SOCK_CLOSE`: `fd` closed;
/// - `kind::SOCK_ACCEPT`: `fd` is a new connection.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FdEvent {
    pub header: Header,
    pub fd: i32,
    pub fd2: i32,
    pub ret: i64,
    /// One of [`crate::op`].
    pub op: u32,
    /// `kind::FILE_READ` only: the document's size at the read (`inode.i_size`), so that a
    /// response body is matched only to reads of a document of its length; 0 unknown,
    /// `u32::MAX` for 4 GiB or more. `kind::FILE_READ_MORE` / `kind::SOCK_WRITE_MORE`: the reads
    /// or writes counted. Else 0.
    pub size: u32,
    /// `kind::FILE_READ` only: [`fingerprint`] of the bytes read (first iovec), else 0.
    pub fp: u64,
}
const _: () = assert!(core::mem::size_of::<FdEvent>() == 56 + 32);

/// Bytes a content fingerprint covers: the first bytes of a document read, matched against the
/// first bytes of a response body (DESIGN.md §4, attribution by content).
pub const FP_BYTES: usize = 64;
/// Fewer bytes than this make no fingerprint: too little to tell documents apart.
pub const FP_MIN: usize = 16;

/// [`FP_BYTES`] as 64-bit words.
pub const FP_WORDS: usize = FP_BYTES / 8;

/// Hash of the first `len` bytes of `buf` (at most [`FP_BYTES`]), mixed with that length, so
/// that a document shorter than [`FP_BYTES`] only matches a body of the same length. 0 means
/// "no fingerprint" (fewer than [`FP_MIN`] bytes); a real hash of 0 becomes 1.
///
/// Computed in the kernel on document reads (the bytes never leave it) and in userspace on
/// response bodies. Not a cryptographic hash: it only has to tell apart documents served at the
/// same time; what it reveals of 64 bytes of a document is no more than its file name does.
#[inline(always)]
pub fn fingerprint(buf: &[u8; FP_BYTES], len: usize) -> u64 {
    let mut words = [0u64; FP_WORDS];
    let mut k = 0;
    while k < FP_WORDS {
        let b = |i: usize| buf[k * 8 + i];
        words[k] = u64::from_le_bytes([b(0), b(1), b(2), b(3), b(4), b(5), b(6), b(7)]);
        k += 1;
    }
    fingerprint_words(&words, len)
}

/// [`fingerprint`] of the bytes `words` hold in memory on a little-endian machine (word `k` is
/// bytes `8k..8k + 8`, the first in its low bits), as the probe reads them into a word array.
///
/// A word at a time, with no loop the compiler cannot unroll: the byte-wise FNV-1a it replaces
/// was ~280 ns of every document read in the probe (64 rounds of a data-dependent loop), this
/// is a few dozen instructions. Bytes past `len` are masked off, whatever they hold.
#[inline(always)]
pub fn fingerprint_words(words: &[u64; FP_WORDS], len: usize) -> u64 {
    if len < FP_MIN {
        return 0;
    }
    let n = if len > FP_BYTES { FP_BYTES } else { len };
    let mut h: u64 = 0x243f_6a88_85a3_08d3 ^ n as u64;
    macro_rules! rounds {
        ($($k:literal)*) => {$({
            // Bytes of this word that are part of the document: 0 to 8.
            let valid = n.saturating_sub($k * 8);
            let mask = if valid >= 8 { u64::MAX } else { (1u64 << (valid * 8)) - 1 };
            let w = u64::from_le(words[$k]) & mask;
            h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^= h >> 29;
        })*};
    }
    rounds!(0 1 2 3 4 5 6 7);
    const _: () = assert!(FP_WORDS == 8);
    // Murmur3's finaliser: every input bit reaches every output bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    if h == 0 { 1 } else { h }
}

/// Bytes of a path the probes compare against the document roots (and scan for `..`).
pub const ROOT_KEY_LEN: usize = 128;

/// Whether `path` holds `..` anywhere (bytes after its NUL must be zero). The probes' open filter
/// calls it on every open of a target, so it has neither a loop nor a branch: 8 bytes at a
/// time, a dot is a zero byte of `word ^ 0x2e..2e`, found exactly (no carry crosses a byte) by
/// the classic zero-byte mask. A byte loop is what LLVM made of it before, and Linux 6.1's
/// verifier refused that loop ("back-edge from insn 90 to 91": a loop closed by a fall-through
/// edge); 6.12's accepted it.
#[inline(always)]
pub fn has_dotdot(path: &[u8; ROOT_KEY_LEN]) -> bool {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const DOTS: u64 = 0x2e2e_2e2e_2e2e_2e2e;
    let mut found = 0u64;
    // 0x80 when the previous word ended with a dot.
    let mut carry = 0u64;
    macro_rules! words {
        ($($k:literal)*) => {$({
            let b = |i: usize| path[$k * 8 + i];
            let w = u64::from_le_bytes([b(0), b(1), b(2), b(3), b(4), b(5), b(6), b(7)]);
            let d = w ^ DOTS;
            // 0x80 in each byte of `w` that is a dot, 0 in the others.
            let dots = !(((d & LOW7) + LOW7) | d | LOW7);
            found |= (dots & (dots >> 8)) | (carry & dots);
            carry = dots >> 56;
        })*};
    }
    words!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    const _: () = assert!(ROOT_KEY_LEN == 16 * 8);
    let _ = carry;
    found != 0
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn naive(path: &[u8]) -> bool {
        path.windows(2).any(|w| w == b"..")
    }

    fn key(s: &[u8]) -> [u8; ROOT_KEY_LEN] {
        let mut k = [0u8; ROOT_KEY_LEN];
        k[..s.len()].copy_from_slice(s);
        k
    }

    #[test]
    fn finds_dotdot_anywhere_including_across_words() {
        for s in [
            &b"/docs/alice/../bob/x.pdf"[..],
            b"..",
            b"/a/.",
            b"/srv/x.pdf",
            b"/srv/.hidden/x",
            b"/srv/a.b.c",
            b"abcdefg.",
            b"abcdefg..",
            b"abcdefg.x.",
            &[b'.'; ROOT_KEY_LEN][..],
            &[0xae; ROOT_KEY_LEN][..],
            b"\xae\xae.\xae.",
        ] {
            assert_eq!(
                has_dotdot(&key(s)),
                naive(s),
                "{:?}",
                std::string::String::from_utf8_lossy(s)
            );
        }
        // `..` at every position, and lone dots at every position (never a match).
        for i in 0..ROOT_KEY_LEN - 1 {
            let mut k = [b'a'; ROOT_KEY_LEN];
            k[i] = b'.';
            k[i + 1] = b'.';
            assert!(has_dotdot(&k), "at {i}");
            let mut k = [b'a'; ROOT_KEY_LEN];
            k[i] = b'.';
            assert!(!has_dotdot(&k), "lone dot at {i}");
        }
    }

    #[test]
    fn fingerprint_ignores_bytes_past_len_and_sees_every_byte_before() {
        let doc: [u8; FP_BYTES] = core::array::from_fn(|i| (i * 7 + 3) as u8);
        assert_eq!(fingerprint(&doc, FP_MIN - 1), 0);
        for len in FP_MIN..=FP_BYTES {
            let mut padded = [0xffu8; FP_BYTES];
            padded[..len].copy_from_slice(&doc[..len]);
            let fp = fingerprint(&doc, len);
            assert_ne!(fp, 0);
            assert_eq!(fingerprint(&padded, len), fp, "len {len}");
            // Each byte, each bit of it, changes the fingerprint.
            for i in 0..len {
                for bit in 0..8 {
                    let mut other = doc;
                    other[i] ^= 1 << bit;
                    assert_ne!(fingerprint(&other, len), fp, "len {len} byte {i} bit {bit}");
                }
            }
        }
        // The length counts, past FP_BYTES it is capped.
        assert_ne!(fingerprint(&doc, 20), fingerprint(&doc, 21));
        assert_eq!(fingerprint(&doc, FP_BYTES), fingerprint(&doc, 9500));
    }

    #[test]
    fn words_are_the_bytes_in_little_endian_order() {
        let doc: [u8; FP_BYTES] = core::array::from_fn(|i| (i * 13 + 1) as u8);
        let words: [u64; FP_WORDS] =
            core::array::from_fn(|k| u64::from_le_bytes(doc[k * 8..k * 8 + 8].try_into().unwrap()));
        assert_eq!(fingerprint_words(&words, 40), fingerprint(&doc, 40));
    }

    #[test]
    fn agrees_with_a_byte_scan_on_every_byte_pair() {
        // Every pair of byte values at a word boundary and inside a word: no carry or borrow
        // between bytes can fake or hide a dot.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for at in [6, 7] {
                    let mut k = [b'x'; ROOT_KEY_LEN];
                    k[at] = a;
                    k[at + 1] = b;
                    assert_eq!(has_dotdot(&k), naive(&k), "{a:#x} {b:#x} at {at}");
                }
            }
        }
    }
}
