//! Why a client's TLS handshake failed, in words an operator can act on: the one log
//! line and the `cause` label of `kafka_tee_tls_handshake_failures_total`.
//!
//! rustls reports a refused client certificate as a nested enum (an X.509 v1
//! certificate is `InvalidCertificate(Other(OtherError(UnsupportedCertVersion)))`), and
//! a plaintext Kafka client on a TLS port as a malformed record. [`Cause::of_io`] maps
//! those to a small fixed set of causes; [`Cause::advice`] says what to change.
//!
//! A misconfigured client retries many times a second (librdkafka: about 20 handshakes
//! a second here), so [`LogLimit`] lets one line per cause through every
//! [`LOG_EVERY`]; the counter still counts every failure.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_rustls::rustls::{self, AlertDescription, CertificateError, InvalidMessage};

/// The reason a client-side TLS handshake failed. The set is fixed, so it can be a
/// metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The first bytes were not a TLS record: a plaintext client on a TLS port.
    PlaintextClient,
    /// mTLS is required and the client sent no certificate.
    NoClientCert,
    /// The client certificate is X.509 v1 (no extensions), which webpki refuses.
    ClientCertV1,
    /// The client certificate was not issued by the configured client CA.
    ClientCertUnknownCa,
    /// The client certificate's notAfter is in the past.
    ClientCertExpired,
    /// The client certificate's notBefore is in the future.
    ClientCertNotYetValid,
    /// Any other problem with the client certificate (purpose, signature, encoding).
    ClientCertInvalid,
    /// The client refused the proxy's certificate (it sent a certificate alert).
    ServerCertRejected,
    /// No TLS version or cipher suite in common.
    Incompatible,
    /// The client closed or reset the connection before the handshake finished.
    ClientClosed,
    /// The handshake did not finish within the configured timeout.
    Timeout,
    /// Anything else; the log line carries the error.
    Other,
}

impl Cause {
    /// Every cause, for pre-registering the metric's series.
    pub const ALL: &[Cause] = &[
        Cause::PlaintextClient,
        Cause::NoClientCert,
        Cause::ClientCertV1,
        Cause::ClientCertUnknownCa,
        Cause::ClientCertExpired,
        Cause::ClientCertNotYetValid,
        Cause::ClientCertInvalid,
        Cause::ServerCertRejected,
        Cause::Incompatible,
        Cause::ClientClosed,
        Cause::Timeout,
        Cause::Other,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Cause::PlaintextClient => "plaintext_client",
            Cause::NoClientCert => "no_client_cert",
            Cause::ClientCertV1 => "client_cert_v1",
            Cause::ClientCertUnknownCa => "client_cert_unknown_ca",
            Cause::ClientCertExpired => "client_cert_expired",
            Cause::ClientCertNotYetValid => "client_cert_not_yet_valid",
            Cause::ClientCertInvalid => "client_cert_invalid",
            Cause::ServerCertRejected => "server_cert_rejected",
            Cause::Incompatible => "incompatible",
            Cause::ClientClosed => "client_closed",
            Cause::Timeout => "timeout",
            Cause::Other => "other",
        }
    }

    /// What happened and what to do about it, in one sentence.
    pub fn advice(self) -> &'static str {
        match self {
            Cause::PlaintextClient => {
                "plaintext client on a TLS port: the first bytes were not a TLS record; \
                 set security.protocol=SSL (or SASL_SSL) on the client"
            }
            Cause::NoClientCert => {
                "client sent no certificate but mTLS is on (tls.client_ca / --tls-client-ca): \
                 give the client a certificate signed by that CA (librdkafka: \
                 ssl.certificate.location and ssl.key.location)"
            }
            Cause::ClientCertV1 => {
                "client certificate is X.509 v1 (made by `openssl x509 -req` without \
                 extensions), which is refused: re-issue it as X.509 v3 from the same CSR \
                 and CA: openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key \
                 -CAcreateserial -days 365 -out client.pem -extfile <(printf \
                 'basicConstraints=CA:FALSE\\nkeyUsage=digitalSignature\\nextendedKeyUsage=clientAuth')"
            }
            Cause::ClientCertUnknownCa => {
                "client certificate was not issued by a CA in tls.client_ca (--tls-client-ca): \
                 issue it from that CA, or append its issuer's certificate to that file"
            }
            Cause::ClientCertExpired => {
                "client certificate has expired (notAfter is in the past): issue a new one \
                 and install it on the client; if it should still be valid, check this \
                 host's clock"
            }
            Cause::ClientCertNotYetValid => {
                "client certificate is not valid yet (notBefore in the future): check this \
                 host's clock and the issuing machine's"
            }
            Cause::ClientCertInvalid => {
                "client certificate refused: it must be a v3 certificate with \
                 extendedKeyUsage=clientAuth (or none), signed with a supported algorithm"
            }
            Cause::ServerCertRejected => {
                "client refused the proxy's certificate: give the client the CA that signed \
                 tls.cert (ssl.ca.location) and check the certificate names the address the \
                 client dials"
            }
            Cause::Incompatible => {
                "client shares no TLS version or cipher suite with the proxy (TLS 1.2 and \
                 1.3 are served)"
            }
            Cause::ClientClosed => "client closed the connection during the handshake",
            Cause::Timeout => {
                "the client connected but did not finish the handshake within \
                 tls.handshake_timeout_ms (a stalled client, a TCP probe, or a very slow link)"
            }
            Cause::Other => "see the error",
        }
    }

    /// Classifies the error of a failed `TlsAcceptor::accept`.
    pub fn of_io(e: &io::Error) -> Cause {
        if let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Cause::of_rustls(tls);
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Cause::ClientClosed,
            io::ErrorKind::TimedOut => Cause::Timeout,
            _ => Cause::Other,
        }
    }

    pub fn of_rustls(e: &rustls::Error) -> Cause {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(InvalidMessage::InvalidContentType)
            | E::InvalidMessage(InvalidMessage::UnknownProtocolVersion) => Cause::PlaintextClient,
            E::NoCertificatesPresented => Cause::NoClientCert,
            E::InvalidCertificate(c) => Cause::of_certificate(c),
            E::PeerIncompatible(_) => Cause::Incompatible,
            E::AlertReceived(a) => Cause::of_alert(*a),
            _ => Cause::Other,
        }
    }

    fn of_certificate(e: &CertificateError) -> Cause {
        use CertificateError as C;
        match e {
            C::UnknownIssuer => Cause::ClientCertUnknownCa,
            C::Expired | C::ExpiredContext { .. } => Cause::ClientCertExpired,
            C::NotValidYet | C::NotValidYetContext { .. } => Cause::ClientCertNotYetValid,
            C::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
                Some(webpki::Error::UnsupportedCertVersion) => Cause::ClientCertV1,
                _ => Cause::ClientCertInvalid,
            },
            _ => Cause::ClientCertInvalid,
        }
    }

    fn of_alert(a: AlertDescription) -> Cause {
        use AlertDescription as A;
        match a {
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA => Cause::ServerCertRejected,
            A::ProtocolVersion | A::InsufficientSecurity | A::HandshakeFailure => {
                Cause::Incompatible
            }
            _ => Cause::Other,
        }
    }
}

/// At most one log line per cause in this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Decides which failures get a log line: the first of each cause, then at most one
/// per cause every [`LOG_EVERY`], telling how many were not logged in between.
pub struct LogLimit {
    /// Per cause (indexed like [`Cause::ALL`]): when a line was last written, and how
    /// many failures were left out since.
    last: Mutex<Vec<(Option<Instant>, u64)>>,
}

impl Default for LogLimit {
    fn default() -> Self {
        Self {
            last: Mutex::new(vec![(None, 0); Cause::ALL.len()]),
        }
    }
}

impl LogLimit {
    /// `Some(n)`: log this failure, saying that `n` like it were not logged before it.
    /// `None`: leave it out of the log.
    pub fn admit(&self, cause: Cause, now: Instant) -> Option<u64> {
        let mut last = crate::sync::lock(&self.last);
        let (at, skipped) = last.get_mut(cause as usize)?;
        match at {
            Some(t) if now.saturating_duration_since(*t) < LOG_EVERY => {
                *skipped += 1;
                None
            }
            _ => {
                *at = Some(now);
                Some(std::mem::take(skipped))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{OtherError, PeerIncompatible};
    use rustls_pki_types::UnixTime;
    use std::sync::Arc;
    use std::time::Duration;

    fn wrapped(e: rustls::Error) -> io::Error {
        // What tokio-rustls hands back for a rustls error.
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    /// The cause of a rustls error as `TlsAcceptor::accept` returns it.
    fn of(e: rustls::Error) -> Cause {
        Cause::of_io(&wrapped(e))
    }

    fn cert(e: CertificateError) -> Cause {
        of(rustls::Error::InvalidCertificate(e))
    }

    #[test]
    fn plaintext_kafka_request_is_named() {
        use InvalidMessage as M;
        assert_eq!(
            of(rustls::Error::InvalidMessage(M::InvalidContentType)),
            Cause::PlaintextClient
        );
        assert_eq!(
            of(rustls::Error::InvalidMessage(M::UnknownProtocolVersion)),
            Cause::PlaintextClient
        );
        // Other malformed messages are not guessed to be plaintext.
        assert_eq!(
            of(rustls::Error::InvalidMessage(M::MessageTooShort)),
            Cause::Other
        );
    }

    #[test]
    fn x509_v1_client_certificate_is_named() {
        let v1 = OtherError(Arc::new(webpki::Error::UnsupportedCertVersion));
        assert_eq!(cert(CertificateError::Other(v1)), Cause::ClientCertV1);
        let other = OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity));
        assert_eq!(
            cert(CertificateError::Other(other)),
            Cause::ClientCertInvalid
        );
        let advice = Cause::ClientCertV1.advice();
        assert!(advice.contains("X.509 v3"), "{advice}");
        assert!(
            advice.contains(
                "-extfile <(printf 'basicConstraints=CA:FALSE\\nkeyUsage=digitalSignature\\nextendedKeyUsage=clientAuth')"
            ),
            "{advice}"
        );
        assert!(!advice.contains('\n'), "one log line: {advice}");
    }

    #[test]
    fn certificate_problems_are_named() {
        let t = UnixTime::since_unix_epoch(Duration::from_secs(1_000));
        assert_eq!(
            cert(CertificateError::UnknownIssuer),
            Cause::ClientCertUnknownCa
        );
        assert_eq!(cert(CertificateError::Expired), Cause::ClientCertExpired);
        assert_eq!(
            cert(CertificateError::ExpiredContext {
                time: t,
                not_after: t
            }),
            Cause::ClientCertExpired
        );
        assert_eq!(
            cert(CertificateError::NotValidYetContext {
                time: t,
                not_before: t
            }),
            Cause::ClientCertNotYetValid
        );
        assert_eq!(
            cert(CertificateError::InvalidPurpose),
            Cause::ClientCertInvalid
        );
    }

    #[test]
    fn missing_client_certificate_is_named() {
        assert_eq!(
            of(rustls::Error::NoCertificatesPresented),
            Cause::NoClientCert
        );
    }

    #[test]
    fn client_refusing_the_proxy_certificate_is_named() {
        use AlertDescription as A;
        let alert = |a| of(rustls::Error::AlertReceived(a));
        assert_eq!(alert(A::UnknownCA), Cause::ServerCertRejected);
        assert_eq!(alert(A::BadCertificate), Cause::ServerCertRejected);
        assert_eq!(alert(A::ProtocolVersion), Cause::Incompatible);
        let incompatible = PeerIncompatible::Tls12NotOfferedOrEnabled;
        assert_eq!(
            of(rustls::Error::PeerIncompatible(incompatible)),
            Cause::Incompatible
        );
    }

    #[test]
    fn closed_connections_and_the_rest() {
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(Cause::of_io(&eof), Cause::ClientClosed);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(Cause::of_io(&reset), Cause::ClientClosed);
        let other = io::Error::other("something");
        assert_eq!(Cause::of_io(&other), Cause::Other);
        assert_eq!(of(rustls::Error::General("x".into())), Cause::Other);
    }

    #[test]
    fn labels_are_distinct_and_prometheus_safe() {
        let mut seen = std::collections::BTreeSet::new();
        for c in Cause::ALL {
            let l = c.label();
            assert!(seen.insert(l), "{l} twice");
            assert!(
                l.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
            );
            assert!(!c.advice().is_empty());
        }
        assert_eq!(seen.len(), 12);
    }

    #[test]
    fn log_limit_lets_one_line_per_cause_through_every_interval() {
        for (i, c) in Cause::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "Cause::ALL is in declaration order");
        }
        let limit = LogLimit::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(limit.admit(Cause::ClientCertV1, t0), Some(0));
        assert_eq!(limit.admit(Cause::ClientCertV1, ms(50)), None);
        assert_eq!(limit.admit(Cause::ClientCertV1, ms(100)), None);
        // Another cause has its own allowance.
        assert_eq!(limit.admit(Cause::PlaintextClient, ms(100)), Some(0));
        let next = t0 + LOG_EVERY;
        assert_eq!(limit.admit(Cause::ClientCertV1, next), Some(2));
        assert_eq!(limit.admit(Cause::ClientCertV1, next), None);
        assert_eq!(limit.admit(Cause::ClientCertV1, next + LOG_EVERY), Some(1));
    }

    #[test]
    fn metric_help_and_readme_name_every_cause() {
        let help = crate::metrics::find("kafka_tee_tls_handshake_failures_total")
            .map(|m| m.help)
            .unwrap_or_default();
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"),
        )
        .expect("README.md");
        for c in Cause::ALL {
            assert!(help.contains(c.label()), "metric help misses {}", c.label());
            assert!(
                readme.contains(&format!("`{}`", c.label())),
                "README misses `{}`",
                c.label()
            );
        }
    }
}
