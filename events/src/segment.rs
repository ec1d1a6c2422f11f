//! CIDR and segment arithmetic, for IPv4 and IPv6 alike, on `u128`.
//!
//! A network of `2^n` addresses split in segments of `2^h` addresses has `2^(n-h)` aligned
//! segments; segment `i` starts at `base + i·2^h`.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub fn bits(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => 32,
        IpNet::V6(_) => 128,
    }
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

pub fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

/// Number of host bits of a network (`32 - prefix` or `128 - prefix`).
pub fn host_bits(net: &IpNet) -> u8 {
    bits(net) - net.prefix_len()
}

/// Number of addresses; `None` only for `::/0` (2^128 does not fit).
pub fn size(net: &IpNet) -> Option<u128> {
    1u128.checked_shl(host_bits(net) as u32)
}

/// Is the address written in the CIDR its network address?
pub fn aligned(net: &IpNet) -> bool {
    net.addr() == net.network()
}

/// Do two networks share any address?
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

pub fn make(addr: IpAddr, prefix: u8) -> IpNet {
    match addr {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, prefix).expect("prefix checked by caller")),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, prefix).expect("prefix checked by caller")),
    }
}

/// The `k`-th address of a network (`k = 1` is the gateway by convention).
pub fn nth_addr(net: &IpNet, k: u128) -> IpAddr {
    from_u128(to_u128(net.network()) + k, matches!(net, IpNet::V6(_)))
}

/// Number of segments of `2^h` addresses in `net` (`None` when it does not fit in u128).
pub fn segment_count(net: &IpNet, h: u8) -> Option<u128> {
    1u128.checked_shl((host_bits(net) - h) as u32)
}

/// Segment `i` of `2^h` addresses, if it lies inside `net`.
pub fn nth_segment(net: &IpNet, h: u8, i: u128) -> Option<IpNet> {
    if h > host_bits(net) || i >= segment_count(net, h)? {
        return None;
    }
    let start = to_u128(net.network()) + (i << h);
    Some(make(
        from_u128(start, matches!(net, IpNet::V6(_))),
        bits(net) - h,
    ))
}

/// Index of a segment in `net`, if it is one of its aligned `2^h` segments.
pub fn segment_index(net: &IpNet, h: u8, seg: &IpNet) -> Option<u128> {
    if bits(seg) != bits(net) || host_bits(seg) != h || !aligned(seg) || !net.contains(seg) {
        return None;
    }
    Some((to_u128(seg.network()) - to_u128(net.network())) >> h)
}

/// Largest power of two `<= x` (0 for 0).
pub fn floor_pow2(x: u128) -> u128 {
    if x == 0 {
        0
    } else {
        1u128 << (127 - x.leading_zeros())
    }
}

/// The bridge MAC for an IPv4 gateway: `0a:58:` + the four octets (the Kubernetes rule,
/// pinned so the bridge MAC never follows its lowest port and stalls TCP).
pub fn bridge_mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn gold_segments() {
        let n = net("10.11.0.0/16");
        let segs: Vec<String> = (0..3)
            .map(|i| nth_segment(&n, 10, i).unwrap().to_string())
            .collect();
        assert_eq!(segs, ["10.11.0.0/22", "10.11.4.0/22", "10.11.8.0/22"]);
        let n = net("10.123.0.0/16");
        let segs: Vec<String> = (0..3)
            .map(|i| nth_segment(&n, 12, i).unwrap().to_string())
            .collect();
        assert_eq!(segs, ["10.123.0.0/20", "10.123.16.0/20", "10.123.32.0/20"]);
        let n = net("10.11.0.0/24");
        let segs: Vec<String> = (0..3)
            .map(|i| nth_segment(&n, 6, i).unwrap().to_string())
            .collect();
        assert_eq!(segs, ["10.11.0.0/26", "10.11.0.64/26", "10.11.0.128/26"]);
        let n = net("fd00:1::/64");
        let segs: Vec<String> = (0..3)
            .map(|i| nth_segment(&n, 10, i).unwrap().to_string())
            .collect();
        assert_eq!(segs, ["fd00:1::/118", "fd00:1::400/118", "fd00:1::800/118"]);
        let segs: Vec<String> = (0..3)
            .map(|i| nth_segment(&n, 16, i).unwrap().to_string())
            .collect();
        assert_eq!(segs, ["fd00:1::/112", "fd00:1::1:0/112", "fd00:1::2:0/112"]);
        let n = net("172.10.8.0/22");
        let segs: Vec<String> = (0..3)
            .map(|i| nth_segment(&n, 8, i).unwrap().to_string())
            .collect();
        assert_eq!(segs, ["172.10.8.0/24", "172.10.9.0/24", "172.10.10.0/24"]);
        assert_eq!(
            nth_segment(&net("10.11.0.0/16"), 10, 63)
                .unwrap()
                .to_string(),
            "10.11.252.0/22"
        );
        assert_eq!(nth_segment(&net("10.11.0.0/16"), 10, 64), None);
    }

    #[test]
    fn sizes_alignment_overlap() {
        assert_eq!(size(&net("fd00:1::/64")), Some(18446744073709551616));
        assert_eq!(size(&net("127.0.0.1/32")), Some(1));
        assert_eq!(size(&net("::/0")), None);
        assert!(!aligned(&net("10.11.10.0/22")));
        assert_eq!(net("10.11.10.0/22").trunc().to_string(), "10.11.8.0/22");
        assert!(overlaps(&net("10.22.0.0/16"), &net("10.22.3.0/24")));
        assert!(!overlaps(&net("10.22.0.0/16"), &net("10.23.0.0/16")));
        assert_eq!(floor_pow2(85), 64);
        assert_eq!(
            segment_index(&net("10.11.0.0/16"), 10, &net("10.11.8.0/22")),
            Some(2)
        );
        assert_eq!(
            segment_index(&net("10.11.0.0/16"), 10, &net("10.11.9.0/22")),
            None
        );
    }

    #[test]
    fn gateway_and_mac() {
        let seg = net("10.11.4.0/22");
        let gw = nth_addr(&seg, 1);
        assert_eq!(gw.to_string(), "10.11.4.1");
        assert_eq!(
            bridge_mac("10.11.4.1".parse().unwrap()),
            "0a:58:0a:0b:04:01"
        );
        assert_eq!(
            bridge_mac("10.22.0.1".parse().unwrap()),
            "0a:58:0a:16:00:01"
        );
        assert_eq!(bridge_mac("1.2.3.4".parse().unwrap()), "0a:58:01:02:03:04");
    }
}
