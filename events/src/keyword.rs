//! Keyword syntax and catalogue.
//!
//! A keyword is `section.option[@scope]`: `cluster.nodes`, `cni.plugins`,
//! `network#backend1.subnet@n2`. A `--kw` argument is `KEY=VALUE`, `KEY+=VALUE` or `KEY-=VALUE`
//! (the last two on list keywords, whose values are whitespace separated). Unset and get take a
//! bare `KEY`; unset also takes a whole section (`network#backend1`).

use std::fmt;

/// A configuration section.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    Cluster,
    Cni,
    Network(String),
}

impl Section {
    pub fn parse(s: &str) -> Result<Section, KeywordError> {
        match s {
            "cluster" => Ok(Section::Cluster),
            "cni" => Ok(Section::Cni),
            _ => match s.strip_prefix("network#") {
                Some(name) if valid_network_name(name) => Ok(Section::Network(name.to_string())),
                Some(name) => Err(KeywordError::NetworkName(name.to_string())),
                None => Err(KeywordError::UnknownSection(s.to_string())),
            },
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Section::Cluster => f.write_str("cluster"),
            Section::Cni => f.write_str("cni"),
            Section::Network(n) => write!(f, "network#{n}"),
        }
    }
}

/// Network names become subject tokens, CNI file names and (with `obr_`) bridge names.
pub fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Node names: hostnames (letters, digits, `-`, `_`, `.`).
pub fn valid_node_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 253
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// A parsed keyword.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub section: Section,
    pub option: String,
    pub scope: Option<String>,
}

impl Key {
    pub fn new(section: Section, option: &str, scope: Option<&str>) -> Key {
        Key {
            section,
            option: option.to_string(),
            scope: scope.map(str::to_string),
        }
    }

    /// Parses and checks a keyword against the catalogue.
    pub fn parse(s: &str) -> Result<Key, KeywordError> {
        let s = s.trim();
        let (head, scope) = match s.split_once('@') {
            Some((h, sc)) => (h, Some(sc)),
            None => (s, None),
        };
        let (section, option) = head
            .rsplit_once('.')
            .ok_or_else(|| KeywordError::Syntax(s.to_string()))?;
        if option.is_empty() || section.is_empty() {
            return Err(KeywordError::Syntax(s.to_string()));
        }
        let section = Section::parse(section)?;
        let spec = spec(&section, option).ok_or_else(|| KeywordError::Unknown {
            key: s.to_string(),
            expected: options(&section).join(", "),
        })?;
        match (scope, spec.scope) {
            (Some(_), Scoping::Never) => {
                return Err(KeywordError::NotScopable {
                    key: s.to_string(),
                    option: option.to_string(),
                })
            }
            (None, Scoping::Required) => {
                return Err(KeywordError::ScopeRequired {
                    key: s.to_string(),
                    option: option.to_string(),
                })
            }
            (Some(node), _) if !valid_node_name(node) => {
                return Err(KeywordError::NodeName {
                    key: s.to_string(),
                    node: node.to_string(),
                })
            }
            _ => {}
        }
        Ok(Key {
            section,
            option: option.to_string(),
            scope: scope.map(str::to_string),
        })
    }

    pub fn spec(&self) -> &'static Spec {
        spec(&self.section, &self.option).expect("a parsed key is in the catalogue")
    }

    pub fn network(&self) -> Option<&str> {
        match &self.section {
            Section::Network(n) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.section, self.option)?;
        if let Some(s) = &self.scope {
            write!(f, "@{s}")?;
        }
        Ok(())
    }
}

/// What a `--kw` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `K=V`
    Set,
    /// `K+=V`: add the words of V to a list (once each).
    Append,
    /// `K-=V`: remove the words of V from a list.
    Remove,
}

/// One `--kw K=V` of a set command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KwOp {
    pub key: Key,
    pub op: OpKind,
    pub value: String,
}

impl KwOp {
    pub fn parse(s: &str) -> Result<KwOp, KeywordError> {
        let (lhs, value) = s
            .split_once('=')
            .ok_or_else(|| KeywordError::MissingValue(s.to_string()))?;
        let (lhs, op) = if let Some(k) = lhs.strip_suffix('+') {
            (k, OpKind::Append)
        } else if let Some(k) = lhs.strip_suffix('-') {
            (k, OpKind::Remove)
        } else {
            (lhs, OpKind::Set)
        };
        let key = Key::parse(lhs)?;
        if op != OpKind::Set && !key.spec().list {
            return Err(KeywordError::NotAList {
                key: key.to_string(),
                op: if op == OpKind::Append { "+=" } else { "-=" },
            });
        }
        Ok(KwOp {
            key,
            op,
            value: value.trim().to_string(),
        })
    }
}

/// What `unset --kw` names: one keyword or a whole section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnsetTarget {
    Key(Key),
    Section(Section),
}

impl UnsetTarget {
    pub fn parse(s: &str) -> Result<UnsetTarget, KeywordError> {
        let s = s.trim();
        if s.contains('=') {
            return Err(KeywordError::UnexpectedValue(s.to_string()));
        }
        if !s.contains('.') || (s.starts_with("network#") && !s["network#".len()..].contains('.')) {
            return Ok(UnsetTarget::Section(Section::parse(s)?));
        }
        Ok(UnsetTarget::Key(Key::parse(s)?))
    }
}

/// Whether a keyword takes `@node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoping {
    Never,
    Allowed,
    Required,
}

/// Catalogue entry of one keyword.
#[derive(Debug)]
pub struct Spec {
    pub option: &'static str,
    pub scope: Scoping,
    /// Whitespace-separated list value (`+=` and `-=` allowed).
    pub list: bool,
    /// Only in the cluster layer (`om cluster set`), never in a node layer.
    pub cluster_only: bool,
    /// What a valid value looks like, for error messages and help.
    pub expected: &'static str,
}

const fn kw(
    option: &'static str,
    scope: Scoping,
    list: bool,
    cluster_only: bool,
    expected: &'static str,
) -> Spec {
    Spec {
        option,
        scope,
        list,
        cluster_only,
        expected,
    }
}

use Scoping::*;

static CLUSTER: &[Spec] = &[kw(
    "nodes",
    Never,
    true,
    true,
    "a whitespace-separated list of node names",
)];
static CNI: &[Spec] = &[
    kw("plugins", Never, false, false, "an absolute directory path"),
    kw("config", Never, false, false, "an absolute directory path"),
];
static NETWORK: &[Spec] = &[
    kw(
        "type",
        Never,
        false,
        false,
        "one of bridge, routed_bridge, weave, loopback (or lo)",
    ),
    kw(
        "network",
        Allowed,
        false,
        false,
        "a CIDR such as 10.11.0.0/16, or none",
    ),
    kw(
        "ips_per_node",
        Never,
        false,
        true,
        "a power of two, at least 4",
    ),
    kw(
        "mask_per_node",
        Never,
        false,
        true,
        "a prefix length, such as 22",
    ),
    kw(
        "subnet",
        Required,
        false,
        true,
        "a CIDR segment of the network",
    ),
    kw(
        "addr",
        Allowed,
        false,
        false,
        "an IP address or a host name",
    ),
    kw("gateway", Allowed, false, false, "an IP address"),
    kw("tunnel", Never, false, false, "one of auto, always, never"),
    kw(
        "tunnel_mode",
        Never,
        false,
        false,
        "one of ipip, gre, ip6ip6, vxlan",
    ),
    kw(
        "tables",
        Never,
        true,
        false,
        "routing table names or numbers",
    ),
    kw(
        "dev",
        Never,
        false,
        false,
        "an interface name of at most 15 characters",
    ),
    kw("public", Never, false, false, "true or false"),
];

fn table(section: &Section) -> &'static [Spec] {
    match section {
        Section::Cluster => CLUSTER,
        Section::Cni => CNI,
        Section::Network(_) => NETWORK,
    }
}

pub fn spec(section: &Section, option: &str) -> Option<&'static Spec> {
    table(section).iter().find(|s| s.option == option)
}

pub fn options(section: &Section) -> Vec<&'static str> {
    table(section).iter().map(|s| s.option).collect()
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeywordError {
    #[error("bad keyword {0:?}: expected <section>.<option>[@<node>], e.g. network#backend1.type")]
    Syntax(String),
    #[error("bad keyword argument {0:?}: expected KEY=VALUE, KEY+=VALUE or KEY-=VALUE")]
    MissingValue(String),
    #[error("bad keyword argument {0:?}: expected a keyword without a value")]
    UnexpectedValue(String),
    #[error("unknown section {0:?}: expected cluster, cni or network#<name>")]
    UnknownSection(String),
    #[error("bad network name {0:?}: expected letters, digits, '_' or '-', starting with a letter or digit, at most 64 characters")]
    NetworkName(String),
    #[error("unknown keyword {key}: expected one of {expected}")]
    Unknown { key: String, expected: String },
    #[error("{key}: keyword {option} does not take a @node scope")]
    NotScopable { key: String, option: String },
    #[error("{key}: keyword {option} must be scoped to a node, as {option}@<node>")]
    ScopeRequired { key: String, option: String },
    #[error("{key}: bad node name {node:?}: expected letters, digits, '-', '_' or '.'")]
    NodeName { key: String, node: String },
    #[error("{key}: {op} applies to list keywords only; use {key}=VALUE")]
    NotAList { key: String, op: &'static str },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_keywords() {
        let op = KwOp::parse("network#backend1.ips_per_node=1024").unwrap();
        assert_eq!(op.key.to_string(), "network#backend1.ips_per_node");
        assert_eq!((op.op, op.value.as_str()), (OpKind::Set, "1024"));
        let op = KwOp::parse("network#backend1.addr@node1=1.2.3.4").unwrap();
        assert_eq!(op.key.scope.as_deref(), Some("node1"));
        let op = KwOp::parse("cluster.nodes+=n4").unwrap();
        assert_eq!(op.op, OpKind::Append);
        let op = KwOp::parse("cluster.nodes-=n4").unwrap();
        assert_eq!(op.op, OpKind::Remove);
        assert_eq!(
            KwOp::parse("cni.plugins=/usr/libexec/cni").unwrap().value,
            "/usr/libexec/cni"
        );
    }

    #[test]
    fn errors_name_the_keyword_and_what_is_expected() {
        let e = KwOp::parse("network#b.colour=red").unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown keyword network#b.colour: expected one of type, network, ips_per_node, mask_per_node, subnet, addr, gateway, tunnel, tunnel_mode, tables, dev, public"
        );
        assert_eq!(
            KwOp::parse("network#b.type@n1=bridge")
                .unwrap_err()
                .to_string(),
            "network#b.type@n1: keyword type does not take a @node scope"
        );
        assert_eq!(
            KwOp::parse("network#b.subnet=10.0.0.0/24")
                .unwrap_err()
                .to_string(),
            "network#b.subnet: keyword subnet must be scoped to a node, as subnet@<node>"
        );
        assert_eq!(
            KwOp::parse("network#b.type+=bridge")
                .unwrap_err()
                .to_string(),
            "network#b.type: += applies to list keywords only; use network#b.type=VALUE"
        );
        assert!(KwOp::parse("network#b.type").is_err());
        assert!(KwOp::parse("network#b/x.type=bridge").is_err());
        assert!(KwOp::parse("nodes=a").is_err());
        assert!(KwOp::parse("foo.bar=a").is_err());
    }

    #[test]
    fn unset_targets() {
        assert_eq!(
            UnsetTarget::parse("network#backend1").unwrap(),
            UnsetTarget::Section(Section::Network("backend1".into()))
        );
        assert!(matches!(
            UnsetTarget::parse("network#backend1.tunnel").unwrap(),
            UnsetTarget::Key(_)
        ));
        assert!(UnsetTarget::parse("network#backend1.tunnel=x").is_err());
    }
}
