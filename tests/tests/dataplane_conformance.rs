//! The dataplane conformance suite on the real kernel, through rtnetlink, one fresh
//! network namespace per case.

use om_node::dataplane::{conformance, RtnetlinkDataplane};
use om_tests::netns::{reap_stale, skip_reason, Netns};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtnetlink_dataplane_conforms_in_fresh_netns() {
    if let Some(reason) = skip_reason() {
        om_tests::skip::skip(module_path!(), &reason);
        return;
    }
    reap_stale();
    let notes = conformance::run_all(|| async {
        let ns = Netns::new("conf").expect("create netns");
        let dp = RtnetlinkDataplane::in_netns(ns.name())
            .await
            .expect("netlink in netns");
        (dp, ns)
    })
    .await;
    for n in notes {
        println!("{n}");
    }
}

/// The dataplane opened in a namespace must act there and only there: a bridge made
/// through it is visible with `ip -n`, and the test process's own namespace is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_netns_acts_in_that_namespace_only() {
    use om_node::dataplane::{BridgeSpec, Dataplane, LinkFilter};
    if let Some(reason) = skip_reason() {
        om_tests::skip::skip(module_path!(), &reason);
        return;
    }
    let ns = Netns::new("only").unwrap();
    let dp = RtnetlinkDataplane::in_netns(ns.name()).await.unwrap();
    dp.ensure_bridge(&BridgeSpec {
        name: "obr_only".into(),
        address: "10.92.0.1/24".parse().unwrap(),
        mac: None,
    })
    .await
    .unwrap();
    let shown = ns.ip(&["-o", "link", "show", "obr_only"]).unwrap();
    assert!(shown.contains("obr_only"), "{shown}");
    let own = RtnetlinkDataplane::current().await.unwrap();
    let here = own
        .links(&LinkFilter::default().with_name("obr_only"))
        .await
        .unwrap();
    assert_eq!(
        here,
        vec![],
        "the bridge leaked into the test's own namespace"
    );
}

/// Link notifications arrive for a bridge created and deleted through the dataplane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_events_report_up_and_removal() {
    use om_node::dataplane::{BridgeSpec, Dataplane, LinkEvent, LinkKind};
    use std::time::Duration;
    if let Some(reason) = skip_reason() {
        om_tests::skip::skip(module_path!(), &reason);
        return;
    }
    let ns = Netns::new("ev").unwrap();
    let dp = RtnetlinkDataplane::in_netns(ns.name()).await.unwrap();
    let mut events = dp.link_events().await.unwrap();
    dp.ensure_bridge(&BridgeSpec {
        name: "obr_ev".into(),
        address: "10.91.0.1/24".parse().unwrap(),
        mac: None,
    })
    .await
    .unwrap();
    let wait = Duration::from_secs(5);
    let up = tokio::time::timeout(wait, async {
        loop {
            match events.next().await {
                Some(LinkEvent::Changed(l)) if l.name == "obr_ev" && l.up => return l,
                Some(_) => continue,
                None => panic!("event stream closed"),
            }
        }
    })
    .await
    .expect("an up event for obr_ev within 5 s");
    assert_eq!(up.kind, LinkKind::Bridge);
    dp.delete_link("obr_ev").await.unwrap();
    let removed = tokio::time::timeout(wait, async {
        loop {
            match events.next().await {
                Some(LinkEvent::Removed { name, index }) if name == "obr_ev" => return index,
                Some(_) => continue,
                None => panic!("event stream closed"),
            }
        }
    })
    .await
    .expect("a removal event for obr_ev within 5 s");
    assert_eq!(removed, up.index);
}
