//! Configuration layers: the cluster layer (`om cluster set`) and one layer per node
//! (`om node set --node N`).
//!
//! Keys are stored as written (`network#b.subnet@n2`), so that a keyword this version does not
//! know still survives a fold. A lookup "as node X" follows the upstream agents: the node's
//! layer overlays the cluster layer key by key, then `option@X` is tried before `option`.

use crate::event::Change;
use std::collections::{BTreeMap, BTreeSet};

pub type Layer = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub cluster: Layer,
    pub nodes: BTreeMap<String, Layer>,
}

impl Config {
    pub fn layer(&self, node: Option<&str>) -> Option<&Layer> {
        match node {
            None => Some(&self.cluster),
            Some(n) => self.nodes.get(n),
        }
    }

    pub fn layer_mut(&mut self, node: Option<&str>) -> &mut Layer {
        match node {
            None => &mut self.cluster,
            Some(n) => self.nodes.entry(n.to_string()).or_default(),
        }
    }

    pub fn apply(&mut self, change: &Change) {
        let node = change.node.as_deref();
        match &change.value {
            Some(v) => {
                self.layer_mut(node).insert(change.key.clone(), v.clone());
            }
            None => {
                let layer = self.layer_mut(node);
                layer.remove(&change.key);
                if layer.is_empty() {
                    if let Some(n) = node {
                        self.nodes.remove(n);
                    }
                }
            }
        }
    }

    /// A key's value in one layer.
    pub fn get(&self, node: Option<&str>, key: &str) -> Option<&str> {
        self.layer(node)?.get(key).map(String::as_str)
    }

    /// `section.option`, evaluated as node `node` (or in the cluster layer alone).
    pub fn lookup(&self, node: Option<&str>, section: &str, option: &str) -> Option<&str> {
        let plain = format!("{section}.{option}");
        if let Some(n) = node {
            let scoped = format!("{plain}@{n}");
            let nl = self.nodes.get(n);
            for key in [&scoped, &plain] {
                if let Some(v) = nl
                    .and_then(|l| l.get(key))
                    .or_else(|| self.cluster.get(key))
                {
                    return Some(v);
                }
            }
            return None;
        }
        self.cluster.get(&plain).map(String::as_str)
    }

    /// `cluster.nodes`, in order.
    pub fn cluster_nodes(&self) -> Vec<String> {
        words(
            self.cluster
                .get("cluster.nodes")
                .map(String::as_str)
                .unwrap_or(""),
        )
    }

    /// Network names declared in a layer.
    pub fn network_names(layer: &Layer) -> BTreeSet<String> {
        layer
            .keys()
            .filter_map(|k| k.strip_prefix("network#"))
            .filter_map(|rest| rest.split_once('.').map(|(name, _)| name.to_string()))
            .collect()
    }

    /// Every `subnet@NODE` of a network in the cluster layer: node ⇒ value.
    pub fn subnets(&self, network: &str) -> BTreeMap<String, String> {
        let prefix = format!("network#{network}.subnet@");
        self.cluster
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k[prefix.len()..].to_string(), v.clone()))
            .collect()
    }

    /// Keys of a section in a layer.
    pub fn section_keys(layer: &Layer, section: &str) -> Vec<String> {
        let prefix = format!("{section}.");
        layer
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every node named anywhere: `cluster.nodes`, node layers, `@node` scopes.
    pub fn known_nodes(&self) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = self.cluster_nodes().into_iter().collect();
        all.extend(self.nodes.keys().cloned());
        for layer in std::iter::once(&self.cluster).chain(self.nodes.values()) {
            for k in layer.keys() {
                if let Some((_, scope)) = k.split_once('@') {
                    all.insert(scope.to_string());
                }
            }
        }
        all
    }

    /// ini-style text, sections sorted (`cluster`, `cni`, then networks).
    pub fn render_ini(layer: &Layer) -> String {
        let mut sections: BTreeMap<(u8, String), Vec<(String, String)>> = BTreeMap::new();
        for (k, v) in layer {
            let (section, option) = match k.split_once('@') {
                Some((head, _)) => {
                    let (s, _) = head.rsplit_once('.').unwrap_or((head, ""));
                    (s.to_string(), k[s.len() + 1..].to_string())
                }
                None => match k.rsplit_once('.') {
                    Some((s, o)) => (s.to_string(), o.to_string()),
                    None => (k.clone(), String::new()),
                },
            };
            let rank = match section.as_str() {
                "cluster" => 0,
                "cni" => 1,
                _ => 2,
            };
            sections
                .entry((rank, section))
                .or_default()
                .push((option, v.clone()));
        }
        let mut out = String::new();
        for ((_, name), opts) in sections {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("[{name}]\n"));
            for (o, v) in opts {
                out.push_str(&format!("{o} = {v}\n"));
            }
        }
        out
    }
}

/// Whitespace-separated words of a list value.
pub fn words(v: &str) -> Vec<String> {
    v.split_whitespace().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Origin;

    fn set(c: &mut Config, node: Option<&str>, k: &str, v: &str) {
        c.apply(&Change {
            node: node.map(Into::into),
            key: k.into(),
            value: Some(v.into()),
            origin: Origin::Operator,
        });
    }

    #[test]
    fn scoped_lookup_follows_upstream_order() {
        let mut c = Config::default();
        set(&mut c, None, "network#b.addr", "1.1.1.1");
        set(&mut c, None, "network#b.addr@n1", "1.2.3.4");
        set(&mut c, Some("n2"), "network#b.addr", "9.9.9.9");
        assert_eq!(c.lookup(Some("n1"), "network#b", "addr"), Some("1.2.3.4"));
        assert_eq!(c.lookup(Some("n2"), "network#b", "addr"), Some("9.9.9.9"));
        assert_eq!(c.lookup(Some("n3"), "network#b", "addr"), Some("1.1.1.1"));
        assert_eq!(c.lookup(None, "network#b", "addr"), Some("1.1.1.1"));
    }

    #[test]
    fn ini_rendering() {
        let mut c = Config::default();
        set(&mut c, None, "network#b.type", "routed_bridge");
        set(&mut c, None, "network#b.subnet@n1", "10.11.0.0/22");
        set(&mut c, None, "cluster.nodes", "n1 n2");
        assert_eq!(
            Config::render_ini(&c.cluster),
            "[cluster]\nnodes = n1 n2\n\n[network#b]\nsubnet@n1 = 10.11.0.0/22\ntype = routed_bridge\n"
        );
        assert_eq!(
            c.subnets("b").get("n1").map(String::as_str),
            Some("10.11.0.0/22")
        );
    }
}
