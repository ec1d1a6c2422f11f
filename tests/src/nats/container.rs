//! `nats-server` in a container started by testcontainers.
//!
//! No registry is reachable from the test machines, so the image is built here, `FROM
//! scratch`, from the static `nats-server` binary the binary mode uses, and tagged
//! `om-test/nats:<version>`. It is built once per process, and not at all when the tag
//! already exists (`skip_if_exists`); testcontainers pulls only when creating a container
//! answers 404, so the local image is used as is.
//!
//! The client port is published on 127.0.0.1 only, at a host port chosen here rather than by
//! Docker: Docker picks a new port each time a container starts, and [`restart`] must keep
//! the address clients reconnect to.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use testcontainers::bollard::models::PortBinding;
use testcontainers::core::build::build_options::BuildImageOptions;
use testcontainers::core::IntoContainerPort;
use testcontainers::runners::{AsyncBuilder, AsyncRunner};
use testcontainers::{ContainerAsync, GenericBuildableImage, GenericImage, ImageExt};
use tokio::sync::OnceCell;

use super::process::{free_port, Stop};

/// Repository part of the image name.
pub const IMAGE: &str = "om-test/nats";

const DOCKERFILE: &str = "FROM scratch
COPY nats-server /nats-server
EXPOSE 4222
ENTRYPOINT [\"/nats-server\"]
";

/// Does a Docker engine answer `docker info` within five seconds? Asked once per process.
pub fn docker_answers() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        let Ok(mut child) = Command::new("docker")
            .arg("info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return false;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    })
}

/// `2.15.1` from `nats-server --version` (`nats-server: v2.15.1`).
pub fn version(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .split_whitespace()
        .last()
        .map(|v| v.trim_start_matches('v').to_string())
        .filter(|v| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
        });
    v.with_context(|| format!("unexpected `{} --version` output {text:?}", bin.display()))
}

/// Builds `om-test/nats:<version>` from `bin` unless it exists; returns the tag.
pub async fn image(bin: &Path) -> Result<String> {
    static BUILT: OnceCell<String> = OnceCell::const_new();
    BUILT
        .get_or_try_init(|| async {
            let tag = version(bin)?;
            let _built: GenericImage = GenericBuildableImage::new(IMAGE, &tag)
                .with_dockerfile_string(DOCKERFILE)
                .with_file(bin, "./nats-server")
                .build_image_with(BuildImageOptions::new().with_skip_if_exists(true))
                .await
                .with_context(|| format!("building image {IMAGE}:{tag} from {}", bin.display()))?;
            Ok(tag)
        })
        .await
        .cloned()
}

/// A running container and the host port its client port is published on.
pub struct NatsContainer {
    pub container: ContainerAsync<GenericImage>,
    pub port: u16,
    pub descriptor: String,
}

impl NatsContainer {
    /// Starts `nats-server -js` (store in the container's own file system, gone with it).
    pub async fn start(bin: &Path) -> Result<Self> {
        let tag = image(bin).await?;
        let port = free_port()?;
        let bindings: HashMap<String, Option<Vec<PortBinding>>> = [(
            "4222/tcp".to_string(),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(port.to_string()),
            }]),
        )]
        .into_iter()
        .collect();
        let container = GenericImage::new(IMAGE, tag.as_str())
            .with_exposed_port(4222.tcp())
            .with_cmd(["-js", "-sd", "/data", "-a", "0.0.0.0", "-p", "4222"])
            .with_host_config_modifier(move |hc| {
                hc.publish_all_ports = Some(false);
                hc.port_bindings = Some(bindings.clone());
            })
            .start()
            .await
            .with_context(|| format!("starting a container of {IMAGE}:{tag}"))?;
        Ok(NatsContainer {
            container,
            port,
            descriptor: format!("{IMAGE}:{tag}"),
        })
    }

    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// Stops and starts the container: same port, same store (the container's file system).
    pub async fn stop(&self, how: Stop) -> Result<()> {
        let timeout = match how {
            Stop::Graceful => 10,
            Stop::Kill => 0,
        };
        self.container
            .stop_with_timeout(Some(timeout))
            .await
            .with_context(|| format!("stopping container {}", self.id()))
    }

    pub async fn start_again(&self) -> Result<()> {
        self.container
            .start()
            .await
            .with_context(|| format!("starting container {} again", self.id()))
    }

    /// The container's log (nats-server logs on stderr), last `lines` lines.
    pub async fn log_tail(&self, lines: usize) -> String {
        match self.container.stderr_to_vec().await {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(no container log: {e})"),
        }
    }

    /// `Some(state)` when the container is not running.
    pub async fn exited(&self) -> Option<String> {
        match self.container.is_running().await {
            Ok(true) => None,
            Ok(false) => Some(match self.container.exit_code().await {
                Ok(Some(code)) => format!("container exited with status {code}"),
                _ => "container not running".into(),
            }),
            Err(e) => Some(format!("cannot inspect container: {e}")),
        }
    }
}

/// Why the container mode cannot be used, given `OM_TEST_NATS`.
pub fn refuse_reason() -> Option<String> {
    match std::env::var("OM_TEST_NATS").as_deref() {
        Ok("binary") => Some("OM_TEST_NATS=binary".into()),
        _ if !docker_answers() => Some("no Docker engine answers `docker info`".into()),
        _ => None,
    }
}

/// Fails unless the container mode may be used.
pub fn require() -> Result<()> {
    if let Some(why) = refuse_reason() {
        bail!("the container mode cannot be used: {why}");
    }
    Ok(())
}
