use super::*;

#[test]
fn backoff_doubles_up_to_max() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
    let got: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
    assert_eq!(got, vec![100, 200, 350, 350]);
    b.reset();
    assert_eq!(b.next_delay().as_millis(), 100);
}

#[test]
fn errors_name_the_cluster() {
    let e = ClientError::Kafka {
        cluster: Cluster::Dc2,
        error: ResponseError::NotLeaderOrFollower,
        context: "produce to t-0".into(),
    };
    assert_eq!(e.to_string(), "DC2: produce to t-0: NotLeaderOrFollower");
    assert!(e.is_retriable() && e.needs_metadata_refresh());
    let e = ClientError::Kafka {
        cluster: Cluster::Dc1,
        error: ResponseError::TopicAuthorizationFailed,
        context: "fetch".into(),
    };
    assert!(!e.is_retriable());
    assert_eq!(e.cluster(), Cluster::Dc1);
}

#[tokio::test]
async fn unreachable_bootstrap_fails_with_the_cluster_named() {
    // A port nobody listens on: bind, learn the port, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut cfg = ClientConfig::new(Cluster::Dc2, vec![format!("127.0.0.1:{port}")]);
    cfg.connect_timeout = Duration::from_millis(500);
    let err = Client::connect(cfg).await.expect_err("nothing listens");
    assert_eq!(err.cluster(), Cluster::Dc2);
    assert!(err.to_string().starts_with("DC2: "), "{err}");
    assert!(err.is_retriable());
}
