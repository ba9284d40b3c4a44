//! A network namespace's cookie (`struct net.net_cookie`, Linux >= 5.14): a 64-bit id the
//! kernel never reuses, unlike the namespace's inode number (a new namespace often gets the
//! inode of one deleted seconds before). The kernel programs put it in their keys next to
//! the inode; userspace asks for a namespace's cookie with `getsockopt(SO_NETNS_COOKIE)` on a
//! socket made inside it (net/core/sock.c: `sock_gen_cookie`-style `sock_net(sk)->net_cookie`).
//!
//! Hand-written (a socket and one getsockopt): nix 0.32 has no wrapper for this option.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

/// The cookie of the **calling thread's** network namespace (call it inside
/// [`super::netns::run_in_netns`]). `None` before Linux 5.14 (ENOPROTOOPT).
pub fn netns_cookie_here() -> Option<u64> {
    // SAFETY: plain syscalls; the fd is owned right away and closed on return.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for the kernel to write.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<u64>()).then_some(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_has_a_stable_cookie() {
        // This kernel (6.18) has cookies; the same namespace answers the same one.
        let a = netns_cookie_here().expect("SO_NETNS_COOKIE");
        assert_ne!(a, 0);
        assert_eq!(netns_cookie_here(), Some(a));
    }
}
