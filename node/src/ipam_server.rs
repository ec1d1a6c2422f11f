//! The daemon's side of the `om-ipam` socket: accepts connections, reads one request each,
//! hands it to the daemon loop (which holds the state) and writes the reply back.

use crate::daemon::IpamCall;
use crate::ipam_proto::{code, Reply, Request};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// Listens on `<state_dir>/ipam.sock` (a socket left by an earlier run is replaced).
pub fn listen(state_dir: &Path) -> anyhow::Result<mpsc::Receiver<IpamCall>> {
    std::fs::create_dir_all(state_dir)?;
    let path = state_dir.join(crate::cni::IPAM_SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| anyhow::anyhow!("listen on {}: {e}", path.display()))?;
    let (tx, rx) = mpsc::channel::<IpamCall>(256);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let reply = match conn.read_to_end(&mut buf).await {
                    Err(e) => Reply::Error {
                        code: code::IO,
                        msg: format!("om-node: read the request: {e}"),
                        details: String::new(),
                    },
                    Ok(_) => match serde_json::from_slice::<Request>(&buf) {
                        Err(e) => Reply::Error {
                            code: code::DECODE,
                            msg: format!("om-node: bad IPAM request: {e}"),
                            details: String::new(),
                        },
                        Ok(req) => {
                            let (otx, orx) = oneshot::channel();
                            if tx.send((req, otx)).await.is_err() {
                                Reply::Error {
                                    code: code::TRY_AGAIN_LATER,
                                    msg: "om-node is shutting down".into(),
                                    details: String::new(),
                                }
                            } else {
                                orx.await.unwrap_or(Reply::Error {
                                    code: code::TRY_AGAIN_LATER,
                                    msg: "om-node dropped the request".into(),
                                    details: String::new(),
                                })
                            }
                        }
                    },
                };
                let body = serde_json::to_vec(&reply).expect("plain data");
                let _ = conn.write_all(&body).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(rx)
}
