//! Walks of kernel structures with BTF-derived offsets (no CO-RE in Rust eBPF).
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

use crate::maps::{
    OFF_FDT_FD, OFF_FDT_MAX_FDS, OFF_FILE_INODE, OFF_FILES_FDT, OFF_INODE_MODE, OFF_INODE_SIZE,
    OFF_TASK_FILES, global,
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
