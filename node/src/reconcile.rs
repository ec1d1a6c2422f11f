//! Observe and apply: the I/O around the pure [`plan`](crate::plan::plan).

use crate::cni;
use crate::dataplane::{Dataplane, LinkFilter, OM_ROUTE_PROTOCOL};
use crate::desired::Desired;
use crate::plan::{Observed, Op, OWNED_PREFIXES};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The CNI files the daemon wrote, kept in its state directory: the daemon never removes a
/// file in the CNI directory it did not write.
pub struct Manifest {
    path: PathBuf,
    pub files: BTreeSet<(PathBuf, String)>,
}

impl Manifest {
    pub fn load(state_dir: &Path) -> Self {
        let path = state_dir.join("cni-manifest.json");
        let files = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<(PathBuf, String)>>(&b).ok())
            .unwrap_or_default()
            .into_iter()
            .collect();
        Manifest { path, files }
    }

    fn save(&self) -> std::io::Result<()> {
        let v: Vec<&(PathBuf, String)> = self.files.iter().collect();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        cni::write_atomic(
            dir,
            "cni-manifest.json",
            &serde_json::to_string(&v).expect("paths and names"),
        )
    }
}

/// Reads what the daemon owns on the node.
pub async fn observe<D: Dataplane>(
    dp: &D,
    desired: &Desired,
    manifest: &Manifest,
) -> Result<Observed, String> {
    let mut filter = LinkFilter::prefixes(OWNED_PREFIXES);
    for b in &desired.bridges {
        filter = filter.with_name(b.name.clone());
    }
    let links = dp.links(&filter).await.map_err(|e| e.to_string())?;
    let routes = dp
        .routes(OM_ROUTE_PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    let mut cni_files = BTreeMap::new();
    for (dir, name) in &manifest.files {
        if *dir != desired.cni_dir {
            continue;
        }
        if let Ok(content) = std::fs::read_to_string(dir.join(name)) {
            cni_files.insert(name.clone(), content);
        }
    }
    Ok(Observed {
        links,
        routes,
        cni_files,
    })
}

/// Applies the operations in order; every error is collected, none stops the others.
pub async fn apply<D: Dataplane>(
    dp: &D,
    ops: &[Op],
    cni_dir: &Path,
    manifest: &mut Manifest,
) -> (Vec<String>, Vec<String>) {
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for op in ops {
        let r: Result<(), String> = match op {
            Op::DeleteRoute(r) => dp.delete_route(r).await.map_err(|e| e.to_string()),
            Op::DeleteLink(n) => dp.delete_link(n).await.map_err(|e| e.to_string()),
            Op::EnsureBridge(b) => dp
                .ensure_bridge(b)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Op::EnsureTunnel(t) => dp
                .ensure_tunnel(t)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Op::ReplaceRoute(r) => dp.replace_route(r).await.map_err(|e| e.to_string()),
            Op::RemoveCni(n) => {
                let r = std::fs::remove_file(cni_dir.join(n));
                manifest.files.remove(&(cni_dir.to_path_buf(), n.clone()));
                match r {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(format!("remove {}: {e}", cni_dir.join(n).display()))
                    }
                    _ => Ok(()),
                }
            }
            Op::WriteCni { name, content } => {
                manifest.files.insert((cni_dir.to_path_buf(), name.clone()));
                cni::write_atomic(cni_dir, name, content)
                    .map_err(|e| format!("write {}: {e}", cni_dir.join(name).display()))
            }
        };
        match r {
            Ok(()) => {
                tracing::info!("{op}");
                done.push(op.to_string());
            }
            Err(e) => {
                tracing::warn!("{e}");
                errors.push(e);
            }
        }
    }
    if let Err(e) = manifest.save() {
        errors.push(format!("save cni manifest: {e}"));
    }
    (done, errors)
}
