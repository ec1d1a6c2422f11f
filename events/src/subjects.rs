//! Stream and subject layout of one cluster.
//!
//! One JetStream stream per cluster, `OM_<cluster>`, holding the subjects `om.<cluster>.ev.>`.
//! Request/reply subjects (`om.<cluster>.q.>`) are plain NATS and never stored.
//!
//! | subject | what | conditional on |
//! |---|---|---|
//! | `om.<c>.ev.config` | keyword changes of the cluster and node layers, segment assignments | last subject sequence |
//! | `om.<c>.ev.node.<node>` | node announcements and applied reports | nothing (facts from one writer) |
//! | `om.<c>.ev.ipam.<net>.<node>` | IP allocations and releases in one node's segment | last subject sequence |
//! | `om.<c>.ev.obj.<path>` | service object configuration and instance state | last subject sequence |
//! | `om.<c>.q.view` | projector queries (request/reply) | |
//! | `om.<c>.q.node.<node>.setup` | ask a node daemon to reconcile now (request/reply) | |
//!
//! Names that are not plain subject tokens (a node `n1.example.com`, a path `ns/svc/s1`) are
//! escaped by [`token`] so that every name maps to exactly one token and back.

/// Characters kept as they are in a subject token; everything else is `%XX` escaped.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Escapes a name into a single NATS subject token, reversibly.
pub fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if plain(b as char) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`token`]; `None` when the token is not a valid escape.
pub fn untoken(tok: &str) -> Option<String> {
    let bytes = tok.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = tok.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Is `name` acceptable as a cluster name (it appears verbatim in stream and subject names)?
pub fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(plain)
}

/// Subject and stream names of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    /// The cluster name, already checked by [`valid_cluster_name`].
    pub cluster: String,
}

impl Subjects {
    pub fn new(cluster: &str) -> Self {
        Subjects {
            cluster: cluster.to_string(),
        }
    }
    /// `OM_<cluster>`: JetStream stream names may not contain `.`, `*`, `>`.
    pub fn stream(&self) -> String {
        format!("OM_{}", self.cluster)
    }
    /// Every event subject of the cluster (the stream's subject filter).
    pub fn events(&self) -> String {
        format!("om.{}.ev.>", self.cluster)
    }
    pub fn config(&self) -> String {
        format!("om.{}.ev.config", self.cluster)
    }
    pub fn node(&self, node: &str) -> String {
        format!("om.{}.ev.node.{}", self.cluster, token(node))
    }
    pub fn ipam(&self, network: &str, node: &str) -> String {
        format!(
            "om.{}.ev.ipam.{}.{}",
            self.cluster,
            token(network),
            token(node)
        )
    }
    pub fn object(&self, path: &str) -> String {
        format!("om.{}.ev.obj.{}", self.cluster, token(path))
    }
    pub fn query_view(&self) -> String {
        format!("om.{}.q.view", self.cluster)
    }
    pub fn query_setup(&self, node: &str) -> String {
        format!("om.{}.q.node.{}.setup", self.cluster, token(node))
    }
    /// The local request subject a node daemon serves for its IPAM plugin.
    pub fn query_ipam(&self, node: &str) -> String {
        format!("om.{}.q.node.{}.ipam", self.cluster, token(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_stay_single_tokens() {
        for name in ["node1", "n1.example.com", "ns/svc/s1", "a%b", "x y", "é"] {
            let t = token(name);
            assert!(!t.contains('.') && !t.contains(' ') && !t.contains('*') && !t.contains('>'));
            assert_eq!(untoken(&t).as_deref(), Some(name));
        }
        assert_eq!(token("n1.example.com"), "n1%2Eexample%2Ecom");
        assert_eq!(token("testbackend/svc/s1"), "testbackend%2Fsvc%2Fs1");
    }

    #[test]
    fn layout() {
        let s = Subjects::new("prod");
        assert_eq!(s.stream(), "OM_prod");
        assert_eq!(s.events(), "om.prod.ev.>");
        assert_eq!(s.config(), "om.prod.ev.config");
        assert_eq!(s.ipam("backend1", "n1"), "om.prod.ev.ipam.backend1.n1");
        assert!(valid_cluster_name("default"));
        assert!(!valid_cluster_name("a.b"));
        assert!(!valid_cluster_name(""));
    }
}
