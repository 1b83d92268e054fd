use super::*;
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use std::sync::Mutex;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Answer,
    /// Answer the handshake, then close the connection.
    CloseWhenIdle,
    /// Answer the handshake, then stamp responses with a wrong correlation id.
    WrongId,
    /// Answer the handshake, then never again.
    Silent,
}

/// A broker that speaks only ApiVersions, recording the correlation ids it sees.
async fn fake_broker(mode: Mode) -> (String, Arc<Mutex<Vec<i32>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let mut n = 0;
        loop {
            let Ok(len) = sock.read_i32().await else {
                return;
            };
            let mut body = vec![0u8; len as usize];
            if sock.read_exact(&mut body).await.is_err() {
                return;
            }
            let version = i16::from_be_bytes([body[2], body[3]]);
            let id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            log.lock().expect("log").push(id);
            n += 1;
            if n > 1 {
                match mode {
                    Mode::CloseWhenIdle => return,
                    Mode::Silent => continue,
                    _ => {}
                }
            }
            let mut resp = ApiVersionsResponse::default();
            let mut v = ApiVersion::default();
            v.api_key = ApiKey::ApiVersions as i16;
            v.max_version = 3;
            resp.api_keys.push(v);
            let mut buf = BytesMut::new();
            buf.put_i32(0);
            let stamped = if mode == Mode::WrongId && n > 1 {
                id + 1
            } else {
                id
            };
            buf.put_i32(stamped);
            resp.encode(&mut buf, version).expect("encode");
            let l = (buf.len() - 4) as i32;
            buf[..4].copy_from_slice(&l.to_be_bytes());
            if sock.write_all(&buf).await.is_err() {
                return;
            }
            if mode == Mode::CloseWhenIdle {
                return;
            }
        }
    });
    (addr, seen)
}

fn cfg() -> ClientConfig {
    let mut c = ClientConfig::new(Cluster::Dc2, vec![]);
    c.request_timeout = Duration::from_millis(500);
    c.connect_timeout = Duration::from_millis(500);
    c.max_in_flight_per_connection = 4;
    c
}

#[tokio::test]
async fn pipelined_requests_get_increasing_ids_and_their_own_answers() {
    let (addr, seen) = fake_broker(Mode::Answer).await;
    let conn = BrokerConnection::open(&cfg(), BrokerId(7), &addr)
        .await
        .expect("open");
    assert_eq!(conn.broker_versions(ApiKey::ApiVersions), Some((0, 3)));
    let mut pending = Vec::new();
    for _ in 0..20 {
        pending.push(
            conn.submit(&ApiVersionsRequest::default(), 0)
                .await
                .expect("submit"),
        );
    }
    for p in pending {
        assert_eq!(p.wait().await.expect("response").error_code, 0);
    }
    let ids = seen.lock().expect("ids").clone();
    assert_eq!(ids.len(), 21);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
}

#[tokio::test]
async fn idle_close_is_noticed() {
    let (addr, _) = fake_broker(Mode::CloseWhenIdle).await;
    let conn = BrokerConnection::open(&cfg(), BrokerId(1), &addr)
        .await
        .expect("open");
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while !conn.is_closed() {
        assert!(tokio::time::Instant::now() < until, "close not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = conn
        .call(&ApiVersionsRequest::default(), 0)
        .await
        .expect_err("closed");
    assert!(err.is_retriable(), "{err}");
}

#[tokio::test]
async fn wrong_correlation_id_fails_the_connection() {
    let (addr, _) = fake_broker(Mode::WrongId).await;
    let conn = BrokerConnection::open(&cfg(), BrokerId(1), &addr)
        .await
        .expect("open");
    let err = conn
        .call(&ApiVersionsRequest::default(), 0)
        .await
        .expect_err("mismatch");
    assert!(err.to_string().contains("correlation id"), "{err}");
    assert!(conn.is_closed());
}

#[tokio::test]
async fn silent_broker_times_out() {
    let (addr, _) = fake_broker(Mode::Silent).await;
    let conn = BrokerConnection::open(&cfg(), BrokerId(1), &addr)
        .await
        .expect("open");
    let started = std::time::Instant::now();
    let err = conn
        .call(&ApiVersionsRequest::default(), 0)
        .await
        .expect_err("timeout");
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(conn.is_closed());
}
