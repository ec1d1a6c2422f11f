//! [`TestBed`]: hosts on underlay subnets joined by a router, each in its own namespace.
//!
//! Every subnet is a bridge inside the router namespace holding the router's address on
//! it; a host is a namespace with a veth `eth0` whose peer is a port of its subnet's
//! bridge, and a default route via the router. Hosts on one subnet share a layer 2
//! segment; hosts on different subnets reach each other only through the router, which
//! has `ip_forward=1`. Hosts forward too (they route for their containers).

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

use super::Netns;

/// A host of the bed.
#[derive(Debug)]
pub struct Host {
    /// Short label (`h1`), for messages.
    pub label: String,
    /// The host's underlay address on `eth0`.
    pub addr: Ipv4Addr,
    /// The subnet of `addr` (the router's address with its prefix).
    pub subnet: Ipv4Net,
    /// The namespace; dropped (deleted) with the bed.
    pub ns: Netns,
}

/// Router plus hosts. Hosts are dropped before the router.
#[derive(Debug)]
pub struct TestBed {
    /// The hosts, in the order they were declared.
    pub hosts: Vec<Host>,
    /// The router namespace (`ip_forward=1`), one bridge per subnet.
    pub router: Netns,
}

/// Declares subnets and hosts, then builds them.
#[derive(Debug, Default)]
pub struct TestBedBuilder {
    /// Router interface addresses with prefix, one per subnet (`192.0.2.1/24`).
    subnets: Vec<Ipv4Net>,
    /// (label, address) per host.
    hosts: Vec<(String, Ipv4Addr)>,
}

impl TestBedBuilder {
    /// Adds an underlay subnet; `router` is the router's address on it with the prefix.
    pub fn subnet(mut self, router: &str) -> Self {
        self.subnets
            .push(router.parse().expect("subnet literal like 192.0.2.1/24"));
        self
    }

    /// Adds a host with this underlay address; it joins the subnet that contains it.
    pub fn host(mut self, label: &str, addr: &str) -> Self {
        self.hosts
            .push((label.into(), addr.parse().expect("address literal")));
        self
    }

    /// Creates the namespaces and links. On error, whatever was created is deleted.
    pub fn build(self) -> Result<TestBed> {
        let router = Netns::new("r")?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        for (i, subnet) in self.subnets.iter().enumerate() {
            let br = format!("br{i}");
            router.ip(&["link", "add", &br, "type", "bridge"])?;
            router.ip(&["addr", "add", &subnet.to_string(), "dev", &br])?;
            router.ip(&["link", "set", &br, "up"])?;
        }
        let mut hosts = Vec::new();
        for (n, (label, addr)) in self.hosts.into_iter().enumerate() {
            let (i, subnet) = self
                .subnets
                .iter()
                .enumerate()
                .find(|(_, s)| s.contains(&addr))
                .with_context(|| format!("no subnet declared for host {label} {addr}"))?;
            let ns = Netns::new(&label)?;
            let port = format!("p{n}");
            // Both ends are created in the host namespace and the peer is moved to the
            // router's: the root namespace never sees either.
            ns.ip(&[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                router.name(),
            ])?;
            router.ip(&["link", "set", &port, "master", &format!("br{i}"), "up"])?;
            let cidr = format!("{addr}/{}", subnet.prefix_len());
            ns.ip(&["addr", "add", &cidr, "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", &subnet.addr().to_string()])?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            hosts.push(Host {
                label,
                addr,
                subnet: *subnet,
                ns,
            });
        }
        if hosts.is_empty() {
            bail!("a test bed needs hosts");
        }
        Ok(TestBed { hosts, router })
    }
}

impl TestBed {
    /// A builder.
    pub fn builder() -> TestBedBuilder {
        TestBedBuilder::default()
    }

    /// The standard bed: router 192.0.2.1/24 and 198.51.100.1/24; h1 192.0.2.11 and h2
    /// 192.0.2.12 on the first subnet, h3 198.51.100.13 on the second.
    pub fn three_hosts() -> Result<TestBed> {
        Self::builder()
            .subnet("192.0.2.1/24")
            .subnet("198.51.100.1/24")
            .host("h1", "192.0.2.11")
            .host("h2", "192.0.2.12")
            .host("h3", "198.51.100.13")
            .build()
    }

    /// The host labelled `label`.
    pub fn host(&self, label: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.label == label)
            .unwrap_or_else(|| panic!("no host {label} in the bed"))
    }
}
