//! Reads of kernel memory at offsets computed from BTF at load time.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};

/// Reads a `T` at `base + off`. Fails on NULL bases and unreadable memory.
#[inline(always)]
pub unsafe fn read<T>(base: *const u8, off: u32) -> Result<T, i64> {
    if base.is_null() {
        return Err(-1);
    }
    unsafe {
        bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T).map_err(|e| e as i64)
    }
}

/// Reads a member of a kernel struct whose type the verifier knows from BTF: a tracepoint
/// argument (`struct sk_buff *`) or a struct pointer read from one such member. A plain
/// load, which the verifier checks against the kernel's BTF (the offset is a known constant:
/// the offsets live in frozen `.rodata`) and the JIT turns into a fault-safe load that yields
/// 0 instead of faulting — as cheap as reading memory, unlike a `bpf_probe_read_kernel` call.
/// Pointers read this way can be passed to `field` again; raw byte pointers (`skb->head`)
/// cannot and go through [`read`].
#[inline(always)]
pub unsafe fn field<T: Copy>(base: *const u8, off: u32) -> T {
    unsafe { core::ptr::read_volatile(base.wrapping_add(off as usize) as *const T) }
}

/// [`field`] for a pointer member.
#[inline(always)]
pub unsafe fn field_ptr(base: *const u8, off: u32) -> *const u8 {
    unsafe { field::<u64>(base, off) as *const u8 }
}

/// Reads a pointer at `base + off`.
#[inline(always)]
pub unsafe fn read_ptr(base: *const u8, off: u32) -> Result<*const u8, i64> {
    unsafe { read::<u64>(base, off).map(|p| p as *const u8) }
}

/// Copies the NUL-terminated kernel string at `src` into `dst` (always NUL-terminated, empty
/// on failure).
#[inline(always)]
pub unsafe fn read_str(src: *const u8, dst: *mut u8, len: usize) {
    let n = unsafe { generated::bpf_probe_read_kernel_str(dst.cast(), len as u32, src.cast()) };
    if n <= 0 {
        unsafe { *dst = 0 };
    }
}
