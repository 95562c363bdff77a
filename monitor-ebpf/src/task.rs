//! Walks of kernel structures with BTF-derived offsets (no CO-RE in Rust eBPF).
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

use monitor_common::sockets::family;

use crate::maps::{
    OFF_FDT_FD, OFF_FDT_MAX_FDS, OFF_FILE_INODE, OFF_FILE_PRIVATE, OFF_FILES_FDT, OFF_INODE_MODE,
    OFF_INODE_SIZE, OFF_SKC_DADDR, OFF_SKC_DPORT, OFF_SKC_FAMILY, OFF_SKC_V6_DADDR,
    OFF_SOCK_COMMON, OFF_SOCKET_SK, OFF_TASK_FILES, global,
};

pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;

/// The `struct file *` behind `fd` in the current task: task->files->fdt->fd[fd]. `None` when any
/// step is unreadable or the fd is not open.
#[inline(always)]
pub fn fd_file(fd: i32) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let files: u64 = read(task, global(&OFF_TASK_FILES))?;
        let fdt: u64 = read(files as *const u8, global(&OFF_FILES_FDT))?;
        let max_fds: u32 = read(fdt as *const u8, global(&OFF_FDT_MAX_FDS))?;
        if fd as u32 >= max_fds {
            return None;
        }
        let fd_array: u64 = read(fdt as *const u8, global(&OFF_FDT_FD))?;
        let file: u64 = read(fd_array as *const u8, (fd as u64) * 8)?;
        (file != 0).then_some(file)
    }
}

/// `i_mode` of the file behind `fd` in the current task: `fd_file(fd)->f_inode->i_mode`.
#[inline(always)]
pub fn fd_mode(fd: i32) -> Option<u32> {
    let file = fd_file(fd)?;
    unsafe {
        let inode: u64 = read(file as *const u8, global(&OFF_FILE_INODE))?;
        let mode: u16 = read(inode as *const u8, global(&OFF_INODE_MODE))?;
        Some(mode as u32)
    }
}

/// The peer of the connected socket behind `fd` in the current task: (family, port in host
/// order, address), from `fd_file(fd)->private_data` (`struct socket`) `->sk->__sk_common`.
/// `None` when a step is unreadable (the fd is not a socket of a family Vigie names: the
/// caller reports the family unknown).
#[inline(always)]
pub fn fd_peer(fd: i32) -> Option<(u16, u16, [u8; 16])> {
    let file = fd_file(fd)?;
    unsafe {
        let socket: u64 = read(file as *const u8, global(&OFF_FILE_PRIVATE))?;
        let sk: u64 = read(socket as *const u8, global(&OFF_SOCKET_SK))?;
        let common = (sk as *const u8).wrapping_add(global(&OFF_SOCK_COMMON) as usize);
        let fam: u16 = read(common, global(&OFF_SKC_FAMILY))?;
        let mut addr = [0u8; 16];
        let mut port = 0u16;
        match fam {
            family::INET => {
                let v4: [u8; 4] = read(common, global(&OFF_SKC_DADDR))?;
                addr[..4].copy_from_slice(&v4);
                port = u16::from_be(read::<u16>(common, global(&OFF_SKC_DPORT))?);
            }
            family::INET6 => {
                addr = read(common, global(&OFF_SKC_V6_DADDR))?;
                port = u16::from_be(read::<u16>(common, global(&OFF_SKC_DPORT))?);
            }
            // A unix socket's peer has no address worth naming (clients rarely bind one).
            family::UNIX => {}
            _ => return None,
        }
        Some((fam, port, addr))
    }
}

/// Size of the file behind `fd` in the current task: `fd_file(fd)->f_inode->i_size`.
#[inline(always)]
pub fn fd_size(fd: i32) -> Option<u64> {
    let file = fd_file(fd)?;
    unsafe {
        let inode: u64 = read(file as *const u8, global(&OFF_FILE_INODE))?;
        let size: i64 = read(inode as *const u8, global(&OFF_INODE_SIZE))?;
        u64::try_from(size).ok()
    }
}

/// Reads a `T` at `base + off` in kernel memory; null pointers read as `None`.
#[inline(always)]
pub unsafe fn read<T>(base: *const u8, off: u64) -> Option<T> {
    if base.is_null() {
        return None;
    }
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T).ok() }
}
