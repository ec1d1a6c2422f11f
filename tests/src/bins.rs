//! The project's own binaries (`om`, `om-projector`, `om-node`), run as a user would.
//!
//! Found in `$OM_BIN_DIR`, else `<workspace>/target/release` (the test command builds them).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn bin_dir() -> PathBuf {
    std::env::var_os("OM_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"))
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The reason to skip when the binaries are not built.
pub fn missing() -> Option<String> {
    ["om", "om-projector", "om-node", "om-ipam"]
        .iter()
        .find(|b| !bin(b).exists())
        .map(|b| {
            format!(
                "{} not built (run cargo build --release --workspace)",
                bin(b).display()
            )
        })
}

/// The outcome of one `om` run.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `om` against one server and cluster.
#[derive(Debug, Clone)]
pub struct Om {
    pub server: String,
    pub cluster: String,
}

impl Om {
    pub fn new(server: &str, cluster: &str) -> Self {
        Om {
            server: server.into(),
            cluster: cluster.into(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("om"));
        c.args(args)
            .env("OM_NATS_URL", &self.server)
            .env("OM_CLUSTER", &self.cluster)
            .env_remove("OM_NODE")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Out {
        let o = self.command(args).output().expect("run om");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.code, 0, "om {args:?} failed: {}", o.stderr);
        o.stdout
    }
}

/// A child process killed (SIGTERM, then SIGKILL) on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, name: &str, log: PathBuf) -> Self {
        let f = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            child,
            name: name.into(),
        }
    }

    /// SIGTERM and wait (bounded), so the process can save its state.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// `om-projector` for one server and cluster, logging to `log`.
pub fn projector(server: &str, cluster: &str, log: PathBuf, extra: &[&str]) -> Proc {
    let mut c = Command::new(bin("om-projector"));
    c.args(extra)
        .env("OM_NATS_URL", server)
        .env("OM_CLUSTER", cluster)
        .env("OM_SNAPSHOT_INTERVAL_MS", "100");
    Proc::spawn(c, "om-projector", log)
}
