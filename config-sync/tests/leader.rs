//! Leader election through the real kube client against the test API server.

use std::time::Duration;

use config_sync::leader::LeaderElector;
use test_apiserver::ApiServer;

async fn client(api: &ApiServer) -> kube::Client {
    let config = kube::Config::new(api.url().parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

#[tokio::test]
async fn one_leader_renews_and_another_takes_over_only_after_expiry() {
    let api = ApiServer::start().await;
    let mut a = LeaderElector::new(client(&api).await, "gw", "lease", "replica-a");
    let mut b = LeaderElector::new(client(&api).await, "gw", "lease", "replica-b");
    a.duration = Duration::from_secs(1);
    b.duration = Duration::from_secs(1);

    assert!(
        a.try_lead().await.unwrap(),
        "the first replica creates the lease"
    );
    assert!(!b.try_lead().await.unwrap(), "the lease is held");
    assert!(a.try_lead().await.unwrap(), "the holder renews");
    assert!(!b.try_lead().await.unwrap());
    let lease = api
        .get("coordination.k8s.io/v1", "Lease", "gw", "lease")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");

    // a stops renewing: after the lease duration, b takes over and a does not get it back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        b.try_lead().await.unwrap(),
        "an expired lease is taken over"
    );
    assert!(!a.try_lead().await.unwrap());
    let lease = api
        .get("coordination.k8s.io/v1", "Lease", "gw", "lease")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}
