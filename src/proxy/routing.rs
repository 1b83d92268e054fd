//! Broker routing: each DC1 broker gets a proxy port, and a client connecting to that
//! port is forwarded to that broker.
//!
//! Ports are handed out the first time a broker appears in a response: explicitly
//! configured ports first, otherwise sequentially from `first_broker_port`. The brokers
//! of one response are assigned in node-id order, so the same cluster always gets the
//! same ports from a fresh start.
//!
//! With SNI routing, no per-broker ports are opened: every broker is handed out as
//! `broker-<id>.<domain>` on the bootstrap port, and the TLS server name a client asks
//! for picks the broker (`upstream_for_sni`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// A DC1 broker's node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BrokerId(pub i32);

/// Where a client connection is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// The bootstrap port: any DC1 bootstrap address.
    Bootstrap,
    /// A per-broker port.
    Broker(BrokerId),
}

#[derive(Debug, Clone)]
struct Route {
    /// The broker's real `host:port`, as DC1 advertises it.
    upstream: String,
    proxy_port: u16,
}

/// Each newly bound per-broker listener, for the server to start accepting on.
pub type NewListener = (BrokerId, std::net::TcpListener);

pub struct Router {
    bind_ip: IpAddr,
    advertised_host: String,
    explicit_ports: BTreeMap<i32, u16>,
    /// SNI routing: (domain, the one port every broker shares).
    sni: Option<(String, u16)>,
    routes: Mutex<RouteTable>,
    /// Where new broker listeners go (None: they are only bound, as in tests).
    listeners: Option<mpsc::UnboundedSender<NewListener>>,
}

struct RouteTable {
    by_id: BTreeMap<i32, Route>,
    next_port: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no free proxy port for broker {0} (tried up to 65535)")]
    NoPort(i32),
    #[error("cannot bind the configured port {port} for broker {broker}: {source}")]
    Bind {
        broker: i32,
        port: u16,
        source: std::io::Error,
    },
}

impl Router {
    pub fn new(
        bind_ip: IpAddr,
        advertised_host: String,
        first_broker_port: u16,
        explicit_ports: BTreeMap<i32, u16>,
    ) -> Arc<Self> {
        Arc::new(Self {
            bind_ip,
            advertised_host,
            explicit_ports,
            sni: None,
            routes: Mutex::new(RouteTable {
                by_id: BTreeMap::new(),
                next_port: u32::from(first_broker_port),
            }),
            listeners: None,
        })
    }

    /// The router, sending every broker listener it binds to `listeners`. Called while
    /// the router is being built, before it is shared.
    pub fn with_listeners(
        mut self: Arc<Self>,
        listeners: mpsc::UnboundedSender<NewListener>,
    ) -> Arc<Self> {
        if let Some(r) = Arc::get_mut(&mut self) {
            r.listeners = Some(listeners);
        }
        self
    }

    /// A router that tells brokers apart by TLS server name: `broker-<id>.<domain>`,
    /// all on `port`.
    pub fn with_sni(bind_ip: IpAddr, domain: String, port: u16) -> Arc<Self> {
        let mut r = Self::new(bind_ip, domain.clone(), port, BTreeMap::new());
        if let Some(r) = Arc::get_mut(&mut r) {
            r.sni = Some((domain, port));
        }
        r
    }

    /// The host name handed out for a broker.
    pub fn host_for(&self, id: i32) -> std::borrow::Cow<'_, str> {
        match &self.sni {
            Some((domain, _)) => format!("broker-{id}.{domain}").into(),
            None => self.advertised_host.as_str().into(),
        }
    }

    /// The upstream a TLS client asked for by server name: a known broker for
    /// `broker-<id>.<domain>`, otherwise the bootstrap brokers.
    pub fn upstream_for_sni(&self, server_name: Option<&str>) -> Upstream {
        let id = self.sni.as_ref().and_then(|(domain, _)| {
            server_name?
                .strip_suffix(domain.as_str())?
                .strip_suffix('.')?
                .strip_prefix("broker-")?
                .parse::<i32>()
                .ok()
        });
        match id {
            Some(id) if self.upstream_of(BrokerId(id)).is_some() => Upstream::Broker(BrokerId(id)),
            _ => Upstream::Bootstrap,
        }
    }

    /// Whether brokers are routed by TLS server name.
    pub fn sni_routing(&self) -> bool {
        self.sni.is_some()
    }

    pub fn advertised_host(&self) -> &str {
        &self.advertised_host
    }

    /// The real address of a broker, if it has been seen.
    pub fn upstream_of(&self, id: BrokerId) -> Option<String> {
        self.lock().by_id.get(&id.0).map(|r| r.upstream.clone())
    }

    /// Every broker route: (id, upstream, proxy port).
    pub fn routes(&self) -> Vec<(BrokerId, String, u16)> {
        self.lock()
            .by_id
            .iter()
            .map(|(id, r)| (BrokerId(*id), r.upstream.clone(), r.proxy_port))
            .collect()
    }

    /// Records the brokers of one response and returns the proxy port of each, binding
    /// listeners for brokers seen for the first time. Assigns in node-id order.
    pub fn ensure_all(&self, brokers: &mut [(i32, String)]) -> Vec<(i32, Result<u16, RouteError>)> {
        brokers.sort_by_key(|b| b.0);
        brokers
            .iter()
            .map(|(id, up)| (*id, self.ensure(BrokerId(*id), up)))
            .collect()
    }

    /// The proxy port for a broker, binding a listener if it is new. A broker whose
    /// advertised address changed keeps its port; new connections go to the new address.
    pub fn ensure(&self, id: BrokerId, upstream: &str) -> Result<u16, RouteError> {
        let mut table = self.lock();
        if let Some(route) = table.by_id.get_mut(&id.0) {
            if route.upstream != upstream {
                tracing::info!(broker = id.0, old = %route.upstream, new = %upstream, "broker address changed");
                route.upstream = upstream.to_owned();
            }
            return Ok(route.proxy_port);
        }
        if let Some((_, port)) = &self.sni {
            table.by_id.insert(
                id.0,
                Route {
                    upstream: upstream.to_owned(),
                    proxy_port: *port,
                },
            );
            tracing::info!(broker = id.0, %upstream, name = %self.host_for(id.0), "broker routed by TLS server name");
            return Ok(*port);
        }
        let (port, listener) = match self.explicit_ports.get(&id.0) {
            Some(&port) => {
                let l = std::net::TcpListener::bind(SocketAddr::new(self.bind_ip, port)).map_err(
                    |source| RouteError::Bind {
                        broker: id.0,
                        port,
                        source,
                    },
                )?;
                (port, l)
            }
            None => self.bind_next(&mut table, id)?,
        };
        table.by_id.insert(
            id.0,
            Route {
                upstream: upstream.to_owned(),
                proxy_port: port,
            },
        );
        drop(table);
        tracing::info!(broker = id.0, %upstream, port, "broker listener opened");
        match &self.listeners {
            Some(tx) => {
                if tx.send((id, listener)).is_err() {
                    tracing::debug!(broker = id.0, "broker listener not started: shutting down");
                }
            }
            None => tracing::warn!(broker = id.0, "no one starts broker listeners"),
        }
        Ok(port)
    }

    fn bind_next(
        &self,
        table: &mut RouteTable,
        id: BrokerId,
    ) -> Result<(u16, std::net::TcpListener), RouteError> {
        let taken: Vec<u16> = self.explicit_ports.values().copied().collect();
        while let Ok(port) = u16::try_from(table.next_port) {
            table.next_port += 1;
            if taken.contains(&port) {
                continue;
            }
            match std::net::TcpListener::bind(SocketAddr::new(self.bind_ip, port)) {
                Ok(l) => return Ok((port, l)),
                Err(e) => {
                    tracing::warn!(broker = id.0, port, error = %e, "port busy, trying the next one")
                }
            }
        }
        Err(RouteError::NoPort(id.0))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        // The table stays consistent even if a holder panicked: every update is one insert.
        crate::sync::lock(&self.routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_block() -> u16 {
        // A port whose next few neighbours are free too.
        loop {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let p = l.local_addr().expect("addr").port();
            drop(l);
            if p < 60000
                && (1..6).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok())
            {
                return p;
            }
        }
    }

    #[test]
    fn sequential_ports_in_node_id_order_and_stable() {
        let base = free_block();
        let r = Router::new(
            "127.0.0.1".parse().expect("ip"),
            "proxy".into(),
            base,
            BTreeMap::new(),
        );
        let mut brokers = vec![
            (3, "b3:9092".to_string()),
            (1, "b1:9092".into()),
            (2, "b2:9092".into()),
        ];
        let got: Vec<(i32, u16)> = r
            .ensure_all(&mut brokers)
            .into_iter()
            .map(|(id, p)| (id, p.expect("port")))
            .collect();
        assert_eq!(got, vec![(1, base), (2, base + 1), (3, base + 2)]);
        // Seen again, possibly at a new address: same port.
        assert_eq!(
            r.ensure(BrokerId(2), "b2-new:9092").expect("port"),
            base + 1
        );
        assert_eq!(r.upstream_of(BrokerId(2)).as_deref(), Some("b2-new:9092"));
    }

    #[test]
    fn sni_names_route_to_brokers() {
        let r = Router::with_sni("127.0.0.1".parse().expect("ip"), "kafka.test".into(), 9092);
        assert_eq!(r.ensure(BrokerId(7), "b7:1").expect("port"), 9092);
        assert_eq!(r.host_for(7), "broker-7.kafka.test");
        assert_eq!(
            r.upstream_for_sni(Some("broker-7.kafka.test")),
            Upstream::Broker(BrokerId(7))
        );
        for other in [
            Some("broker-8.kafka.test"),
            Some("broker-7.other.test"),
            Some("kafka.test"),
            None,
        ] {
            assert_eq!(r.upstream_for_sni(other), Upstream::Bootstrap, "{other:?}");
        }
    }

    #[test]
    fn explicit_ports_win() {
        let base = free_block();
        let explicit = BTreeMap::from([(7, base + 4)]);
        let r = Router::new(
            "127.0.0.1".parse().expect("ip"),
            "proxy".into(),
            base,
            explicit,
        );
        assert_eq!(r.ensure(BrokerId(7), "b7:1").expect("port"), base + 4);
        assert_eq!(r.ensure(BrokerId(8), "b8:1").expect("port"), base);
    }
}
