//! ICMP echo from inside a namespace, without a `ping` binary (the test machines have
//! none): a raw ICMP socket opened on a thread that entered the namespace.

use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::Netns;

static SEQ: AtomicU16 = AtomicU16::new(1);

/// Sends one echo request from `ns` to `dst` (from `src` if given) and waits up to
/// `timeout` for the reply. `Ok(true)` on a reply, `Ok(false)` on timeout.
pub fn ping(ns: &Netns, dst: Ipv4Addr, src: Option<Ipv4Addr>, timeout: Duration) -> Result<bool> {
    ns.run_in(move || echo(dst, src, timeout))?
        .map_err(|e| anyhow::anyhow!("ping {dst} in {}: {e}", ns.name()))
}

/// [`ping`] from the namespace at `path` (see [`super::run_in_path`]).
pub fn ping_at(
    path: &std::path::Path,
    dst: Ipv4Addr,
    src: Option<Ipv4Addr>,
    timeout: Duration,
) -> Result<bool> {
    super::run_in_path(path.to_path_buf(), move || echo(dst, src, timeout))?
        .map_err(|e| anyhow::anyhow!("ping {dst} in {}: {e}", path.display()))
}

/// Pings once per `interval`-bounded attempt until a reply or `deadline` elapses; returns
/// how long it took. The bounded probe the tests use instead of sleeping.
pub fn wait_ping(
    ns: &Netns,
    dst: Ipv4Addr,
    src: Option<Ipv4Addr>,
    deadline: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        if ping(ns, dst, src, Duration::from_millis(300))? {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= deadline {
            bail!(
                "no echo reply from {dst} in netns {} after {attempts} attempts over {:?}",
                ns.name(),
                start.elapsed()
            );
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Owns a file descriptor, closing it on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor was returned by socket(2) and is closed only here.
        unsafe { libc::close(self.0) };
    }
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn echo(dst: Ipv4Addr, src: Option<Ipv4Addr>, timeout: Duration) -> io::Result<bool> {
    // SAFETY: plain socket(2); the result is checked and owned by `Fd`.
    let fd = Fd(check(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)
    })?);
    if let Some(src) = src {
        let sa = sockaddr(src);
        // SAFETY: `sa` is a valid sockaddr_in for the length given.
        check(unsafe {
            libc::bind(
                fd.0,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
    }
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(b"om-node-testbed!");
    let sum = checksum(&pkt);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    let sa = sockaddr(dst);
    // SAFETY: `pkt` and `sa` are valid for the lengths given.
    check(unsafe {
        libc::sendto(
            fd.0,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) as libc::c_int
    })?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut pfd = libc::pollfd {
            fd: fd.0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready =
            check(unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) })?;
        if ready == 0 {
            return Ok(false);
        }
        // SAFETY: `buf` is valid for its length.
        let n = check(unsafe {
            libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) as libc::c_int
        })? as usize;
        // A raw IPv4 socket delivers the IP header first.
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        if n < ihl + 8 {
            continue;
        }
        let from = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        let icmp = &buf[ihl..n];
        let (rid, rseq) = (
            u16::from_be_bytes([icmp[4], icmp[5]]),
            u16::from_be_bytes([icmp[6], icmp[7]]),
        );
        if icmp[0] == 0 && from == dst && rid == id && rseq == seq {
            return Ok(true);
        }
    }
}
