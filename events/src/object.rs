//! Service objects and their `ip#N` resources of type `cni`: paths, keywords, `expose`
//! values, and the decisions of `om <path> set|unset|start|stop`. Pure.
//!
//! An object's configuration is a layer of `ip#N.option` keys; its target (`started` on a
//! node, or `stopped`) is an event of its own, which the node daemon carries out and answers
//! with an `instance.status` event.

use crate::config::{words, Layer};
use crate::decide::Rejected;
use crate::event::{Change, ObjectChanged, ObjectTarget, Origin, Target, Up};
use crate::keyword::OpKind;
use crate::network::{self, NetType};
use crate::state::State;
use std::fmt;

/// Checks an object path, `name` (root namespace) or `namespace/svc/name`, and returns it
/// in its canonical form (`name` for the root namespace's `root/svc/name`).
pub fn parse_path(path: &str) -> Result<String, String> {
    let expected = "expected <name> or <namespace>/svc/<name>, names of lowercase letters, digits and '-' (e.g. testbackend/svc/s1)";
    let parts: Vec<&str> = path.split('/').collect();
    let (ns, kind, name) = match parts.as_slice() {
        [name] => ("root", "svc", *name),
        [ns, kind, name] => (*ns, *kind, *name),
        _ => return Err(format!("bad object path {path:?}: {expected}")),
    };
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && !s.ends_with('-')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if !label(ns) || !label(name) {
        return Err(format!("bad object path {path:?}: {expected}"));
    }
    if kind != "svc" {
        return Err(format!(
            "bad object path {path:?}: kind {kind:?} is not supported here, expected svc"
        ));
    }
    Ok(if ns == "root" {
        name.to_string()
    } else {
        format!("{ns}/svc/{name}")
    })
}

/// A network namespace name for an object's own namespace, unique per cluster and path.
pub fn netns_name(cluster: &str, path: &str) -> String {
    format!("om-{cluster}-{}", path.replace('/', "."))
}

/// Transport protocol of an `expose` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One `expose` entry: a container port, published on a host port when one is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expose {
    pub port: u16,
    pub proto: Proto,
    pub host_port: Option<u16>,
}

impl fmt::Display for Expose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.proto.as_str())?;
        if let Some(h) = self.host_port {
            write!(f, ":{h}")?;
        }
        Ok(())
    }
}

pub const EXPOSE_FORMS: &str =
    "<port>/<proto>[:<hostport>] (80/tcp, 80/tcp:8001) or <port>:<hostport>/<proto> (80:8001/tcp), proto tcp or udp, ports 1-65535";

/// Parses an `expose` entry: `80/tcp`, `80/tcp:8001` (upstream) or `80:8001/tcp` (the seed).
pub fn parse_expose(s: &str) -> Result<Expose, String> {
    let bad = |why: String| format!("{why}, expected {EXPOSE_FORMS}");
    let port = |p: &str, what: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(format!("bad {what} {p:?}"))),
        }
    };
    let proto = |p: &str| match p {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        _ => Err(bad(format!("bad protocol {p:?}"))),
    };
    let Some((left, right)) = s.split_once('/') else {
        return Err(bad("no /<proto>".to_string()));
    };
    if right.contains('/') {
        return Err(bad("more than one '/'".to_string()));
    }
    if let Some((p, h)) = left.split_once(':') {
        // 80:8001/tcp
        return Ok(Expose {
            port: port(p, "port")?,
            proto: proto(right)?,
            host_port: Some(port(h, "host port")?),
        });
    }
    let (pr, host) = match right.split_once(':') {
        Some((pr, h)) => (pr, Some(port(h, "host port")?)),
        None => (right, None),
    };
    Ok(Expose {
        port: port(left, "port")?,
        proto: proto(pr)?,
        host_port: host,
    })
}

/// An option of an `ip#N` section: (option, list, expected).
type OptSpec = (&'static str, bool, &'static str);

const IP_OPTIONS: &[OptSpec] = &[
    ("type", false, "cni"),
    ("network", false, "the name of a declared network (bridge or routed_bridge)"),
    (
        "netns",
        false,
        "a network namespace name (/var/run/netns/NAME) or an absolute path (/proc/PID/ns/net); empty: the object's own",
    ),
    ("expose", true, EXPOSE_FORMS),
];

/// Checks an object keyword `ip#N.option`; returns its rid (`ip#N`), index and option.
fn parse_key(key: &str) -> Result<(String, u32, &'static OptSpec), String> {
    let (section, option) = key.split_once('.').ok_or_else(|| {
        format!("bad keyword {key:?}: expected ip#<n>.<option>, e.g. ip#0.network")
    })?;
    let idx = section
        .strip_prefix("ip#")
        .and_then(|n| n.parse::<u32>().ok().filter(|_| !n.starts_with('+')))
        .ok_or_else(|| {
            format!("unknown section {section:?}: expected ip#<n> (a resource id such as ip#0)")
        })?;
    let spec = IP_OPTIONS
        .iter()
        .find(|(o, _, _)| *o == option)
        .ok_or_else(|| {
            let names: Vec<&str> = IP_OPTIONS.iter().map(|(o, _, _)| *o).collect();
            format!(
                "unknown keyword {key}: expected one of {}",
                names.join(", ")
            )
        })?;
    Ok((format!("ip#{idx}"), idx, spec))
}

fn check_value(key: &str, option: &str, value: &str) -> Result<(), String> {
    match option {
        "type" if value != "cni" => Err(format!(
            "{key}={value}: unsupported resource type, expected cni"
        )),
        "network" if !crate::keyword::valid_network_name(value) => Err(format!(
            "{key}={value}: bad network name, expected letters, digits, '_' or '-'"
        )),
        "netns" if !valid_netns(value) =>
        {
            Err(format!(
                "{key}={value}: bad network namespace, expected a name (letters, digits, '.', '_', '-') or an absolute path"
            ))
        }
        "expose" => {
            let mut published = std::collections::BTreeSet::new();
            for w in words(value) {
                let e = parse_expose(&w).map_err(|e| format!("{key}={w}: {e}"))?;
                let host = (e.host_port.unwrap_or(e.port), e.proto);
                if !published.insert(host) {
                    return Err(format!(
                        "{key}={value}: host port {}/{} published twice, expected each host port once",
                        host.0,
                        host.1.as_str()
                    ));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `ip#N.network` names a network where addresses come from CNI: a bridge or
/// routed_bridge network declared in the cluster layer or in some node's layer.
fn check_network(state: &State, key: &str, name: &str) -> Result<(), String> {
    use crate::network::{networks, NetType};
    let mut usable = std::collections::BTreeSet::new();
    let mut found = None;
    let views = std::iter::once(None).chain(state.config.nodes.keys().map(|n| Some(n.as_str())));
    for view in views {
        for n in networks(&state.config, view) {
            if matches!(n.ntype, NetType::Bridge | NetType::RoutedBridge) && n.cidr.is_some() {
                usable.insert(n.name.clone());
            }
            if n.name == name {
                found = Some(n.ntype);
            }
        }
    }
    if usable.contains(name) {
        return Ok(());
    }
    let list: Vec<&str> = usable.iter().map(String::as_str).collect();
    let expected = if list.is_empty() {
        "a bridge or routed_bridge network, and none is declared".to_string()
    } else {
        format!("a bridge or routed_bridge network: {}", list.join(", "))
    };
    Err(match found {
        Some(t) => format!(
            "{key}={name}: a {} network gives no CNI addresses, expected {expected}",
            t.as_str()
        ),
        None => format!("{key}={name}: no such network, expected {expected}"),
    })
}

/// A namespace name (letters, digits, `.`, `_`, `-`), an absolute path without `..`, or
/// empty (the object's own).
fn valid_netns(v: &str) -> bool {
    v.is_empty()
        || (v.starts_with('/') && !v.contains(".."))
        || v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// An `ip#N` resource of type cni, ready to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpResource {
    pub rid: String,
    pub network: String,
    /// `None`: the object's own namespace.
    pub netns: Option<String>,
    /// `eth<N>` for `ip#N`.
    pub ifname: String,
    pub expose: Vec<Expose>,
}

/// The ip resources of an object configuration, in rid order.
pub fn resources(cfg: &Layer) -> Result<Vec<IpResource>, Vec<String>> {
    let mut idx: Vec<u32> = cfg
        .keys()
        .filter_map(|k| parse_key(k).ok().map(|(_, i, _)| i))
        .collect();
    idx.sort();
    idx.dedup();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for i in idx {
        let rid = format!("ip#{i}");
        let get = |o: &str| cfg.get(&format!("{rid}.{o}")).cloned();
        if get("type").as_deref() != Some("cni") {
            errors.push(format!("{rid}.type: missing, expected cni"));
            continue;
        }
        let Some(network) = get("network") else {
            errors.push(format!(
                "{rid}.network: missing, expected the name of a declared network"
            ));
            continue;
        };
        let expose = words(&get("expose").unwrap_or_default())
            .iter()
            .filter_map(|w| parse_expose(w).ok())
            .collect();
        out.push(IpResource {
            rid: rid.clone(),
            network,
            netns: get("netns").filter(|s| !s.is_empty()),
            ifname: format!("eth{i}"),
            expose,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The canonical path and the object's current configuration (empty for a new object).
fn current(state: &State, path: &str) -> Result<(String, Layer), Rejected> {
    let path = parse_path(path).map_err(|e| Rejected { errors: vec![e] })?;
    let cfg = state
        .objects
        .get(&path)
        .map(|o| o.config.clone())
        .unwrap_or_default();
    Ok((path, cfg))
}

/// `om <path> set --kw ...`: the changes, as one `object.changed` event (`None`: no change).
pub fn decide_set(
    state: &State,
    path: &str,
    kws: &[String],
) -> Result<Option<ObjectChanged>, Rejected> {
    let (path, mut cfg) = current(state, path)?;
    let mut errors = Vec::new();
    let mut touched = Vec::new();
    for kw in kws {
        let Some((lhs, value)) = kw.split_once('=') else {
            errors.push(format!(
                "bad keyword argument {kw:?}: expected KEY=VALUE, KEY+=VALUE or KEY-=VALUE"
            ));
            continue;
        };
        let (key, op) = if let Some(k) = lhs.strip_suffix('+') {
            (k.trim(), OpKind::Append)
        } else if let Some(k) = lhs.strip_suffix('-') {
            (k.trim(), OpKind::Remove)
        } else {
            (lhs.trim(), OpKind::Set)
        };
        let value = value.trim();
        let (_, _, &(option, list, expected)) = match parse_key(key) {
            Ok(k) => k,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if op != OpKind::Set && !list {
            errors.push(format!(
                "{key}: {} applies to list keywords only; use {key}=VALUE",
                if op == OpKind::Append { "+=" } else { "-=" }
            ));
            continue;
        }
        let new = if list {
            let mut l = if op == OpKind::Set {
                Vec::new()
            } else {
                words(cfg.get(key).map(String::as_str).unwrap_or(""))
            };
            for w in words(value) {
                match op {
                    OpKind::Remove => l.retain(|x| *x != w),
                    _ if l.contains(&w) => {}
                    _ => l.push(w),
                }
            }
            l.join(" ")
        } else {
            value.to_string()
        };
        if new.is_empty() && !(list && op == OpKind::Remove) && option != "netns" {
            errors.push(format!("{key}: empty value, expected {expected}"));
            continue;
        }
        if let Err(e) = check_value(key, option, &new) {
            errors.push(e);
            continue;
        }
        if option == "network" {
            if let Err(e) = check_network(state, key, &new) {
                errors.push(e);
                continue;
            }
        }
        if new.is_empty() && option != "netns" {
            cfg.remove(key);
        } else {
            cfg.insert(key.to_string(), new);
        }
        touched.push(key.to_string());
    }
    if !errors.is_empty() {
        return Err(Rejected { errors });
    }
    Ok(changes(state, &path, cfg, touched))
}

/// `om <path> unset --kw K` (a key, or a whole `ip#N` section).
pub fn decide_unset(
    state: &State,
    path: &str,
    keys: &[String],
) -> Result<Option<ObjectChanged>, Rejected> {
    let (path, mut cfg) = current(state, path)?;
    let mut errors = Vec::new();
    let mut touched = Vec::new();
    for k in keys {
        let k = k.trim();
        if k.contains('=') {
            errors.push(format!(
                "bad keyword argument {k:?}: expected a keyword without a value"
            ));
            continue;
        }
        if !k.contains('.') {
            if parse_key(&format!("{k}.type")).is_err() {
                errors.push(format!(
                    "unknown section {k:?}: expected ip#<n> (a resource id such as ip#0)"
                ));
                continue;
            }
            let keys: Vec<String> = cfg
                .keys()
                .filter(|x| x.split_once('.').map(|(s, _)| s) == Some(k))
                .cloned()
                .collect();
            for x in keys {
                cfg.remove(&x);
                touched.push(x);
            }
            continue;
        }
        match parse_key(k) {
            Ok(_) => {
                cfg.remove(k);
                touched.push(k.to_string());
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(Rejected { errors });
    }
    Ok(changes(state, &path, cfg, touched))
}

fn changes(state: &State, path: &str, cfg: Layer, touched: Vec<String>) -> Option<ObjectChanged> {
    let old = state.objects.get(path).map(|o| &o.config);
    let mut seen = std::collections::BTreeSet::new();
    let changes: Vec<Change> = touched
        .into_iter()
        .filter(|k| seen.insert(k.clone()))
        .filter(|k| old.and_then(|o| o.get(k)) != cfg.get(k))
        .map(|k| Change {
            node: None,
            value: cfg.get(&k).cloned(),
            key: k,
            origin: Origin::Operator,
        })
        .collect();
    (!changes.is_empty()).then(|| ObjectChanged {
        path: path.to_string(),
        changes,
    })
}

/// `om <path> start --node N`: the target event, `None` when the object is already started
/// there and up.
pub fn decide_start(
    state: &State,
    path: &str,
    node: &str,
) -> Result<Option<ObjectTarget>, Rejected> {
    let path = parse_path(path).map_err(|e| Rejected { errors: vec![e] })?;
    let reject = |e: String| Rejected { errors: vec![e] };
    let obj = state
        .objects
        .get(&path)
        .filter(|o| !o.config.is_empty())
        .ok_or_else(|| reject(format!("{path}: no such object: configure it first with om {path} set --kw ip#0.type=cni --kw ip#0.network=<network>")))?;
    let members = state.config.cluster_nodes();
    if !members.iter().any(|n| n == node) {
        return Err(reject(format!(
            "--node {node}: not in cluster.nodes ({})",
            if members.is_empty() {
                "empty".into()
            } else {
                members.join(" ")
            }
        )));
    }
    let res = resources(&obj.config).map_err(|errors| Rejected { errors })?;
    let nets = network::networks(&state.config, Some(node));
    let mut errors = Vec::new();
    for r in &res {
        match nets.iter().find(|n| n.name == r.network) {
            None => errors.push(format!(
                "{}.network={}: no such network on node {node}, expected one of {}",
                r.rid,
                r.network,
                nets.iter()
                    .filter(|n| matches!(n.ntype, NetType::Bridge | NetType::RoutedBridge))
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(n) if !matches!(n.ntype, NetType::Bridge | NetType::RoutedBridge) => {
                errors.push(format!(
                    "{}.network={}: a {} network, expected a bridge or routed_bridge network",
                    r.rid,
                    r.network,
                    n.ntype.as_str()
                ))
            }
            _ => {}
        }
    }
    if !errors.is_empty() {
        return Err(Rejected { errors });
    }
    match &obj.target {
        Some((Target::Started { node: n }, _)) if n != node => Err(reject(format!(
            "{path} is started on {n}: stop it first (om {path} stop)"
        ))),
        Some((Target::Started { .. }, seq))
            if obj
                .instances
                .get(node)
                .is_some_and(|i| i.status.state == Up::Up && i.status.target_seq == *seq) =>
        {
            Ok(None)
        }
        _ => Ok(Some(ObjectTarget {
            path,
            target: Target::Started {
                node: node.to_string(),
            },
        })),
    }
}

/// `om <path> stop`: the target event, `None` when already stopped.
pub fn decide_stop(state: &State, path: &str) -> Result<Option<ObjectTarget>, Rejected> {
    let path = parse_path(path).map_err(|e| Rejected { errors: vec![e] })?;
    let obj = state.objects.get(&path).ok_or_else(|| Rejected {
        errors: vec![format!("{path}: no such object")],
    })?;
    let running = obj.instances.values().any(|i| i.status.state != Up::Down);
    match &obj.target {
        None | Some((Target::Stopped, _)) if !running => Ok(None),
        _ => Ok(Some(ObjectTarget {
            path,
            target: Target::Stopped,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("testbackend/svc/s1").unwrap(),
            "testbackend/svc/s1"
        );
        assert_eq!(parse_path("s1").unwrap(), "s1");
        assert_eq!(parse_path("root/svc/s1").unwrap(), "s1");
        assert!(parse_path("a/b").is_err());
        assert!(parse_path("Ns/svc/s1").is_err());
        assert_eq!(
            parse_path("ns/vol/v1").unwrap_err(),
            "bad object path \"ns/vol/v1\": kind \"vol\" is not supported here, expected svc"
        );
        assert_eq!(
            netns_name("c1", "testbackend/svc/s1"),
            "om-c1-testbackend.svc.s1"
        );
    }

    #[test]
    fn expose_forms() {
        let e = |p, proto, h| Expose {
            port: p,
            proto,
            host_port: h,
        };
        assert_eq!(parse_expose("80/tcp").unwrap(), e(80, Proto::Tcp, None));
        assert_eq!(
            parse_expose("80/tcp:8001").unwrap(),
            e(80, Proto::Tcp, Some(8001))
        );
        assert_eq!(
            parse_expose("80:8001/tcp").unwrap(),
            e(80, Proto::Tcp, Some(8001))
        );
        assert_eq!(parse_expose("53/udp").unwrap(), e(53, Proto::Udp, None));
        assert_eq!(
            parse_expose("80:8001/tcp").unwrap().to_string(),
            "80/tcp:8001"
        );
        for bad in [
            "80",
            "80/sctp",
            "0/tcp",
            "70000/tcp",
            "80/tcp:x",
            "x/tcp",
            "80/tcp/udp",
            "80:8001/tcp:9",
        ] {
            let err = parse_expose(bad).unwrap_err();
            assert!(
                err.ends_with(&format!("expected {EXPOSE_FORMS}")),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            parse_expose("80/sctp").unwrap_err(),
            format!("bad protocol \"sctp\", expected {EXPOSE_FORMS}")
        );
    }

    #[test]
    fn set_validates_and_records_only_changes() {
        use crate::event::{Change, ConfigChanged, Event, Origin};
        let mut st = State::default();
        let change = |key: &str, value: &str| Change {
            node: None,
            key: key.into(),
            value: Some(value.into()),
            origin: Origin::Operator,
        };
        st.apply(
            1,
            0,
            &Event::ConfigChanged(ConfigChanged {
                changes: vec![
                    change("network#backend1.type", "routed_bridge"),
                    change("network#backend1.network", "10.11.0.0/16"),
                    change("network#default.network", "none"),
                ],
            }),
        );
        let ev = decide_set(
            &st,
            "testbackend/svc/s1",
            &[
                "ip#0.type=cni".into(),
                "ip#0.network=backend1".into(),
                "ip#0.expose=80/tcp:8001".into(),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(ev.path, "testbackend/svc/s1");
        assert_eq!(ev.changes.len(), 3);
        let err = decide_set(
            &st,
            "testbackend/svc/s1",
            &[
                "ip#0.expose=80/sctp".into(),
                "ip#0.colour=red".into(),
                "ip#0.type=host".into(),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err.errors,
            vec![
                format!("ip#0.expose=80/sctp: bad protocol \"sctp\", expected {EXPOSE_FORMS}"),
                "unknown keyword ip#0.colour: expected one of type, network, netns, expose"
                    .to_string(),
                "ip#0.type=host: unsupported resource type, expected cni".to_string(),
            ]
        );
        assert!(decide_set(&st, "bad path", &["ip#0.type=cni".into()]).is_err());
        // The network must exist and give CNI addresses; a host port is published once.
        let err = |kw: &str| decide_set(&st, "s2", &[kw.into()]).unwrap_err().errors;
        let expected = "expected a bridge or routed_bridge network: backend1";
        assert_eq!(
            err("ip#0.network=nosuch"),
            [format!("ip#0.network=nosuch: no such network, {expected}")]
        );
        assert_eq!(
            err("ip#0.network=default"),
            [format!("ip#0.network=default: no such network, {expected}")]
        );
        assert_eq!(
            err("ip#0.network=lo"),
            [format!(
                "ip#0.network=lo: a loopback network gives no CNI addresses, {expected}"
            )]
        );
        assert_eq!(
            err("ip#0.expose=80/tcp:8001 81/tcp:8001"),
            ["ip#0.expose=80/tcp:8001 81/tcp:8001: host port 8001/tcp published twice, expected each host port once"]
        );
        assert!(decide_set(&st, "s2", &["ip#0.expose=80/tcp:8001 80/udp:8001".into()]).is_ok());
    }
}
