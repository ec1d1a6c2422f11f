//! The nats-server harness itself: restarts keep the port and the store, drop leaves
//! nothing behind.

use std::path::Path;
use std::process::Command;

use async_nats::jetstream::{self, stream};
use om_tests::nats::{container, NatsServer, Stop};

async fn stream_of(client: async_nats::Client) -> (jetstream::Context, stream::Stream) {
    let js = jetstream::new(client);
    let s = js
        .get_or_create_stream(stream::Config {
            name: "H".into(),
            subjects: vec!["h.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    (js, s)
}

async fn publish(js: &jetstream::Context) -> u64 {
    js.publish("h.x", "x".into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// A graceful restart and a crash (SIGKILL) each keep the port and the stored messages;
/// a client made before reconnects by itself.
async fn restarts_keep_port_and_store(mut server: NatsServer) {
    let (js, _) = stream_of(server.client().await.unwrap()).await;
    assert_eq!(publish(&js).await, 1);
    let port = server.port();

    server.restart().await.unwrap();
    assert_eq!(server.port(), port);
    let (js2, mut s) = stream_of(server.client().await.unwrap()).await;
    assert_eq!(s.info().await.unwrap().state.last_sequence, 1);
    assert_eq!(publish(&js2).await, 2);

    server.stop(Stop::Kill).await.unwrap();
    server.start_again().await.unwrap();
    assert_eq!(s.info().await.unwrap().state.last_sequence, 2);
    // The first client, connected before both restarts, publishes again.
    assert_eq!(publish(&js).await, 3);
}

#[tokio::test]
async fn binary_restarts_keep_port_and_store() {
    let Some(server) = NatsServer::spawn_binary_or_skip().await else {
        return;
    };
    assert_eq!(server.mode(), "binary");
    restarts_keep_port_and_store(server).await;
}

#[tokio::test]
async fn container_restarts_keep_port_and_store() {
    if om_tests::nats::binary_or_skip().is_none() {
        return;
    }
    if let Some(why) = container::refuse_reason() {
        om_tests::skip::skip(module_path!(), &format!("container mode: {why}"));
        return;
    }
    let server = NatsServer::in_container().await.unwrap();
    assert_eq!(server.mode(), "container");
    restarts_keep_port_and_store(server).await;
}

#[tokio::test]
async fn drop_kills_the_process_and_removes_the_store() {
    let Some(server) = NatsServer::spawn_binary_or_skip().await else {
        return;
    };
    let pid = server.pid().unwrap();
    let dir = server.dir().unwrap().to_path_buf();
    assert!(dir.join("store").is_dir());
    drop(server);
    // Reaped, so not even a zombie remains.
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
}

#[tokio::test]
async fn drop_removes_the_container() {
    if om_tests::nats::binary_or_skip().is_none() {
        return;
    }
    if let Some(why) = container::refuse_reason() {
        om_tests::skip::skip(module_path!(), &format!("container mode: {why}"));
        return;
    }
    let server = NatsServer::in_container().await.unwrap();
    let id = server.container_id().unwrap().to_string();
    drop(server);
    let inspect = Command::new("docker")
        .args(["inspect", "--format", "{{.Id}}", &id])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "container {id} still exists");
}
