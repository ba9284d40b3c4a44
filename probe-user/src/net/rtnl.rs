//! A minimal synchronous rtnetlink client over `netlink-sys` + `netlink-packet-route`.
//!
//! A netlink socket belongs to the network namespace of the thread that *created* it, for its
//! whole life: create it inside [`super::netns::run_in_netns`] and every request it makes
//! (dumps, route lookups) and every multicast notification it receives concern that
//! namespace, whichever thread uses it later. That is what lets [`subscribe_links`] hand its
//! socket back to the tokio runtime.

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::NetError;

/// `RTNLGRP_LINK` from `<linux/rtnetlink.h>`: RTM_NEWLINK / RTM_DELLINK notifications
/// (creation, deletion, MTU / flag / name changes, moves between namespaces).
pub const RTNLGRP_LINK: u32 = 1;

/// How often a dump interrupted by a concurrent change (`NLM_F_DUMP_INTR`) is retried.
const DUMP_RETRIES: usize = 3;

/// Upper bound on one wait for a reply.
const RECV_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn set_recv_timeout(sock: &Socket, d: std::time::Duration) -> Result<(), NetError> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: valid socket fd, option buffer of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(NetError::Netlink {
            op: "set receive timeout",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A request/response rtnetlink socket in the creating thread's namespace.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

fn nl_err(op: &'static str) -> impl FnOnce(io::Error) -> NetError {
    move |source| NetError::Netlink { op, source }
}

impl Rtnl {
    pub fn new() -> Result<Self, NetError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(nl_err("socket"))?;
        sock.bind_auto().map_err(nl_err("bind"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(nl_err("connect"))?;
        // The kernel always answers a request, but a worker thread stuck in recv would stall
        // the whole topology refresh: bound the wait.
        set_recv_timeout(&sock, RECV_TIMEOUT)?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Sends `msg` as a dump request and collects every reply until `NLMSG_DONE`. Retried
    /// when the kernel flags the dump as interrupted by a concurrent change.
    pub fn dump(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        for _ in 0..DUMP_RETRIES {
            let (out, interrupted) = self.exchange(op, msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            if !interrupted {
                return Ok(out);
            }
            tracing::debug!(
                op,
                "netlink dump interrupted by a concurrent change, retrying"
            );
        }
        let (out, _) = self.exchange(op, msg, NLM_F_REQUEST | NLM_F_DUMP)?;
        Ok(out)
    }

    /// Sends a single (non-dump) request and returns its replies (normally one).
    pub fn request(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        self.exchange(op, msg, NLM_F_REQUEST).map(|(v, _)| v)
    }

    fn exchange(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool), NetError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = flags;
        packet.header.sequence_number = seq;
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(nl_err(op))?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(nl_err(op))?;
            let mut off = 0;
            while off < data.len() {
                let m: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&data[off..]).map_err(|e| {
                        NetError::NetlinkDecode {
                            op,
                            detail: e.to_string(),
                        }
                    })?;
                let len = m.header.length as usize;
                if len == 0 {
                    break;
                }
                off += len.next_multiple_of(4);
                if m.header.sequence_number != seq {
                    continue; // a late reply to an earlier request
                }
                if m.header.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok((out, interrupted)),
                    NetlinkPayload::Error(e) => match e.code {
                        Some(code) => {
                            return Err(NetError::Netlink {
                                op,
                                source: io::Error::from_raw_os_error(-code.get()),
                            });
                        }
                        None => return Ok((out, interrupted)), // ACK
                    },
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if !dump {
                            return Ok((out, interrupted));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A non-blocking socket subscribed to `RTNLGRP_LINK` in the calling thread's namespace.
/// Its receive buffer is enlarged so that bursts (a pod with a dozen links starting) rarely
/// overflow; an overflow shows up as `ENOBUFS` on read and only means "dump again".
pub fn subscribe_links() -> Result<Socket, NetError> {
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(nl_err("socket"))?;
    sock.bind_auto().map_err(nl_err("bind"))?;
    sock.add_membership(RTNLGRP_LINK)
        .map_err(nl_err("join RTNLGRP_LINK"))?;
    let _ = sock.set_rx_buf_sz(256 * 1024);
    sock.set_non_blocking(true)
        .map_err(nl_err("set non-blocking"))?;
    Ok(sock)
}
