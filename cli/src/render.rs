//! The ASCII tree tables of `om net status`, as OpenSVC v2 prints them: glyphs `|- `,
//! `` `- ``, continuations `|  ` and `   `; every cell padded to its column's width and
//! followed by two spaces (the last one too); the first column holds the tree prefix.

/// A row and its children.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub cells: Vec<String>,
    pub children: Vec<Node>,
}

impl Node {
    pub fn new<S: Into<String>>(cells: impl IntoIterator<Item = S>) -> Self {
        Node {
            cells: cells.into_iter().map(Into::into).collect(),
            children: Vec::new(),
        }
    }
}

fn flatten(node: &Node, prefix: &str, glyph: &str, out: &mut Vec<Vec<String>>) {
    let mut cells = node.cells.clone();
    if let Some(first) = cells.first_mut() {
        *first = format!("{prefix}{glyph}{first}");
    }
    out.push(cells);
    let n = node.children.len();
    let cont = match glyph {
        "" => String::new(),
        "|- " => format!("{prefix}|  "),
        _ => format!("{prefix}   "),
    };
    for (i, child) in node.children.iter().enumerate() {
        flatten(child, &cont, if i + 1 < n { "|- " } else { "`- " }, out);
    }
}

/// Renders the tree rooted at `root` (the header row).
pub fn forest(root: &Node) -> String {
    let mut rows = Vec::new();
    flatten(root, "", "", &mut rows);
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            out.push_str(c);
            out.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The v2 forest output of the reference (§9), to the byte.
    #[test]
    fn v2_gold() {
        let mut root = Node::new(["name", "type", "network", "size", "used", "free", "pct"]);
        root.children = vec![
            Node::new([
                "backend",
                "routed_bridge",
                "10.11.0.0/16",
                "65536",
                "2",
                "65534",
                "0.00%",
            ]),
            Node::new([
                "default",
                "bridge",
                "10.22.0.0/16",
                "65536",
                "0",
                "65536",
                "0.00%",
            ]),
            Node::new(["lo", "loopback", "127.0.0.1/32", "1", "0", "1", "0.00%"]),
        ];
        assert_eq!(
            forest(&root),
            "name        type           network       size   used  free   pct    \n\
             |- backend  routed_bridge  10.11.0.0/16  65536  2     65534  0.00%  \n\
             |- default  bridge         10.22.0.0/16  65536  0     65536  0.00%  \n\
             `- lo       loopback       127.0.0.1/32  1      0     1      0.00%  \n"
        );
        let mut root = Node::new(["name", "type", "network", "size", "used", "free", "pct"]);
        let mut backend = Node::new([
            "backend",
            "routed_bridge",
            "10.11.0.0/16",
            "65536",
            "2",
            "65534",
            "0.00%",
        ]);
        let mut ip = Node::new(["ip", "node", "service", "resource"]);
        ip.children = vec![
            Node::new(["10.11.0.2", "node1", "svc1", "ip#0"]),
            Node::new(["10.11.4.2", "node2", "svc2", "ip#0"]),
        ];
        backend.children = vec![ip];
        root.children = vec![backend];
        assert_eq!(
            forest(&root),
            "name                type           network       size      used  free   pct    \n\
             `- backend          routed_bridge  10.11.0.0/16  65536     2     65534  0.00%  \n   \
             `- ip            node           service       resource  \n      \
             |- 10.11.0.2  node1          svc1          ip#0      \n      \
             `- 10.11.4.2  node2          svc2          ip#0      \n"
        );
    }
}
