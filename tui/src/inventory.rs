//! `--inventory FILE`: the nodes to watch, as TOML.
//!
//! ```toml
//! [[nodes]]
//! addr = "ssh://ops@gpu-node-1"
//! name = "node-1"          # optional label
//! ```

use std::path::Path;

use serde::Deserialize;

use emoe_agent::daemon::client::AgentAddr;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    nodes: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    addr: toml::Spanned<String>,
    /// Shown instead of the agent's hostname.
    #[serde(default)]
    name: Option<String>,
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

/// One node of an inventory: where its agent is and an optional label.
#[derive(Clone, Debug, PartialEq)]
pub struct InventoryNode {
    pub addr: AgentAddr,
    pub name: Option<String>,
}

/// The largest inventory read (a few thousand nodes fit in far less).
pub const MAX_FILE: u64 = 1 << 20;

/// The nodes of an inventory file; errors read `FILE:LINE:COL: message`.
pub fn load(path: &Path) -> Result<Vec<InventoryNode>, String> {
    let text = emoe_core::fsio::read_to_string_capped(path, MAX_FILE)
        .map_err(|e| format!("cannot read the inventory: {e}"))?;
    parse(&text, &path.display().to_string())
}

pub fn parse(text: &str, origin: &str) -> Result<Vec<InventoryNode>, String> {
    let f: File = toml::from_str(text).map_err(|e| {
        let (l, c) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        format!("{origin}:{l}:{c}: {}", e.message())
    })?;
    if f.nodes.is_empty() {
        return Err(format!("{origin}: the inventory lists no [[nodes]]"));
    }
    f.nodes
        .iter()
        .map(|n| {
            let addr = n.addr.get_ref().parse::<AgentAddr>().map_err(|e| {
                let (l, c) = line_col(text, n.addr.span().start);
                format!("{origin}:{l}:{c}: {e}")
            })?;
            Ok(InventoryNode {
                addr,
                name: n.name.clone().filter(|s| !s.trim().is_empty()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_errors_with_lines() {
        let ok = "[[nodes]]\naddr = \"unix:/tmp/a.sock\"\n\n[[nodes]]\naddr = \"http://127.0.0.1:7000\"\nname = \"b\"\n";
        let nodes = parse(ok, "inv.toml").unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].name, None);
        assert_eq!(nodes[1].name.as_deref(), Some("b"));
        let bad = "[[nodes]]\naddr = \"unix:/tmp/a.sock\"\n\n[[nodes]]\naddr = \"ftp://x\"\n";
        let e = parse(bad, "inv.toml").unwrap_err();
        assert!(e.starts_with("inv.toml:5:8:"), "{e}");
        assert!(e.contains("ftp://x"), "{e}");
        let e = parse("[[nodes]]\naddr = 3\n", "inv.toml").unwrap_err();
        assert!(e.starts_with("inv.toml:2:"), "{e}");
        let e = parse("[[nodes]]\nadr = \"unix:/x\"\n", "inv.toml").unwrap_err();
        assert!(e.contains("adr"), "{e}");
        assert!(parse("nodes = []\n", "inv.toml").is_err());
    }
}
