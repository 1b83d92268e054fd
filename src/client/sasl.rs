//! SASL for kafka-tee's own connections: PLAIN (RFC 4616) and SCRAM-SHA-256/512
//! (RFC 5802, RFC 7677) over SaslHandshake v1 + SaslAuthenticate, as Kafka brokers
//! expect after ApiVersions.
//!
//! The SCRAM client checks the server's final signature too, so a man in the middle
//! that does not know the password cannot pretend the login succeeded. The password
//! never leaves this module except inside PLAIN's token or as SCRAM's proof.

use std::num::NonZeroU32;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};

use crate::config::SaslMechanism;

/// Iteration counts outside this range are refused: fewer than RFC 7677's minimum is a
/// downgrade, more would let a hostile server make the proxy spin.
const ITERATIONS: std::ops::RangeInclusive<u32> = 4096..=1_000_000;

/// Mechanism, username and password for one cluster. `Debug` hides the password.
#[derive(Clone)]
pub struct SaslCredentials {
    pub mechanism: SaslMechanism,
    pub username: String,
    password: String,
}

impl SaslCredentials {
    pub fn new(mechanism: SaslMechanism, username: String, password: String) -> Self {
        Self {
            mechanism,
            username,
            password,
        }
    }
}

impl std::fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Why a login failed; the connection is closed by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("the broker does not offer {wanted} (it offers: {offered})")]
    MechanismNotOffered {
        wanted: &'static str,
        offered: String,
    },
    #[error("the broker refused the login (error {code}): {message}")]
    Refused { code: i16, message: String },
    #[error("bad SCRAM message from the broker: {0}")]
    BadServerMessage(String),
    #[error("the broker's SCRAM signature is wrong: it does not know this user's password")]
    BadServerSignature,
    #[error("no randomness for the SCRAM nonce")]
    NoRandom,
}

/// A step of a SASL exchange: bytes to send, then what the next server message means.
pub(crate) enum Exchange {
    Plain,
    Scram(ScramClient),
}

impl Exchange {
    /// The first client message.
    pub(crate) fn start(creds: &SaslCredentials) -> Result<(Self, Vec<u8>), SaslError> {
        match creds.mechanism {
            SaslMechanism::Plain => {
                let mut token = Vec::with_capacity(creds.username.len() + creds.password.len() + 2);
                token.push(0);
                token.extend_from_slice(creds.username.as_bytes());
                token.push(0);
                token.extend_from_slice(creds.password.as_bytes());
                Ok((Exchange::Plain, token))
            }
            SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                let mut raw = [0u8; 24];
                ring::rand::SystemRandom::new()
                    .fill(&mut raw)
                    .map_err(|_| SaslError::NoRandom)?;
                let scram = ScramClient::new(creds, &B64.encode(raw));
                let first = scram.client_first();
                Ok((Exchange::Scram(scram), first.into_bytes()))
            }
        }
    }
}

/// The client side of one SCRAM exchange.
pub(crate) struct ScramClient {
    algorithm: pbkdf2::Algorithm,
    hmac: hmac::Algorithm,
    digest: &'static digest::Algorithm,
    password: String,
    client_first_bare: String,
    nonce: String,
    /// Set once the client-final message is built: the signature the server must send.
    expected_server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    pub(crate) fn new(creds: &SaslCredentials, nonce: &str) -> Self {
        let (algorithm, hmac, digest) = match creds.mechanism {
            SaslMechanism::ScramSha512 => (
                pbkdf2::PBKDF2_HMAC_SHA512,
                hmac::HMAC_SHA512,
                &digest::SHA512,
            ),
            _ => (
                pbkdf2::PBKDF2_HMAC_SHA256,
                hmac::HMAC_SHA256,
                &digest::SHA256,
            ),
        };
        let user = creds.username.replace('=', "=3D").replace(',', "=2C");
        Self {
            algorithm,
            hmac,
            digest,
            password: creds.password.clone(),
            client_first_bare: format!("n={user},r={nonce}"),
            nonce: nonce.to_string(),
            expected_server_signature: None,
        }
    }

    /// client-first-message: no channel binding, no authorization id.
    pub(crate) fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Reads server-first-message and builds client-final-message.
    pub(crate) fn client_final(&mut self, server_first: &[u8]) -> Result<String, SaslError> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| SaslError::BadServerMessage("server-first is not UTF-8".into()))?;
        let attr = |name: char| {
            server_first
                .split(',')
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        };
        if let Some(e) = attr('e') {
            return Err(SaslError::BadServerMessage(format!("server error: {e}")));
        }
        let nonce = attr('r').ok_or_else(|| SaslError::BadServerMessage("no nonce".into()))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(SaslError::BadServerMessage(
                "the server nonce does not extend ours".into(),
            ));
        }
        let salt = attr('s')
            .and_then(|s| B64.decode(s).ok())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| SaslError::BadServerMessage("missing or bad salt".into()))?;
        let iterations = attr('i')
            .and_then(|i| i.parse::<u32>().ok())
            .filter(|i| ITERATIONS.contains(i))
            .and_then(NonZeroU32::new)
            .ok_or_else(|| {
                SaslError::BadServerMessage(format!(
                    "iteration count missing or outside {ITERATIONS:?}"
                ))
            })?;

        let len = self.digest.output_len();
        let mut salted = vec![0u8; len];
        pbkdf2::derive(
            self.algorithm,
            iterations,
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let salted_key = hmac::Key::new(self.hmac, &salted);
        let client_key = hmac::sign(&salted_key, b"Client Key");
        let stored_key = digest::digest(self.digest, client_key.as_ref());
        let server_key = hmac::sign(&salted_key, b"Server Key");

        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac::sign(
            &hmac::Key::new(self.hmac, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(client_signature.as_ref())
            .map(|(k, s)| k ^ s)
            .collect();
        let server_signature = hmac::sign(
            &hmac::Key::new(self.hmac, server_key.as_ref()),
            auth_message.as_bytes(),
        );
        self.expected_server_signature = Some(server_signature.as_ref().to_vec());
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final-message.
    pub(crate) fn verify_server_final(&self, server_final: &[u8]) -> Result<(), SaslError> {
        let text = std::str::from_utf8(server_final)
            .map_err(|_| SaslError::BadServerMessage("server-final is not UTF-8".into()))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(SaslError::BadServerMessage(format!("server error: {e}")));
        }
        let got = text
            .split(',')
            .find_map(|kv| kv.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or_else(|| SaslError::BadServerMessage("no server signature".into()))?;
        // Not a secret comparison: every exchange has a fresh nonce, so timing tells a
        // server nothing it could reuse.
        match &self.expected_server_signature {
            Some(want) if *want == got => Ok(()),
            _ => Err(SaslError::BadServerSignature),
        }
    }
}

/// Runs the login on a connection that has just learnt the broker's API versions.
/// Returns the session lifetime the broker granted (KIP-368), if any.
pub(crate) async fn authenticate(
    conn: &super::BrokerConnection,
    creds: &SaslCredentials,
) -> Result<Option<Duration>, super::ClientError> {
    let fail = |e: SaslError| conn.auth_error(creds.mechanism, e.to_string());
    let wanted = creds.mechanism.name();
    let mut hs = SaslHandshakeRequest::default();
    hs.mechanism = StrBytes::from_static_str(wanted);
    let resp = conn.call(&hs, 1).await?;
    if resp.error_code != 0 {
        let offered: Vec<&str> = resp.mechanisms.iter().map(|m| m.as_str()).collect();
        return Err(fail(SaslError::MechanismNotOffered {
            wanted,
            offered: offered.join(", "),
        }));
    }
    let version = conn.version_for::<SaslAuthenticateRequest>(0..=2)?;
    let (mut exchange, first) = Exchange::start(creds).map_err(fail)?;
    let (reply, lifetime) = authenticate_step(conn, creds, version, first).await?;
    match &mut exchange {
        Exchange::Plain => Ok(lifetime),
        Exchange::Scram(scram) => {
            let last = scram.client_final(&reply).map_err(fail)?;
            let (server_final, lifetime) =
                authenticate_step(conn, creds, version, last.into_bytes()).await?;
            scram.verify_server_final(&server_final).map_err(fail)?;
            Ok(lifetime)
        }
    }
}

/// One SaslAuthenticate round trip: the server's bytes and session lifetime. A lost
/// connection stays a connection error; a Kafka error is a refused login.
async fn authenticate_step(
    conn: &super::BrokerConnection,
    creds: &SaslCredentials,
    version: i16,
    token: Vec<u8>,
) -> Result<(Bytes, Option<Duration>), super::ClientError> {
    let mut req = SaslAuthenticateRequest::default();
    req.auth_bytes = Bytes::from(token);
    let resp = conn.call(&req, version).await?;
    if resp.error_code != 0 {
        let refused = SaslError::Refused {
            code: resp.error_code,
            message: resp
                .error_message
                .map(|m| m.to_string())
                .unwrap_or_default(),
        };
        return Err(conn.auth_error(creds.mechanism, refused.to_string()));
    }
    let lifetime = u64::try_from(resp.session_lifetime_ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    Ok((resp.auth_bytes, lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(mechanism: SaslMechanism, user: &str, password: &str) -> SaslCredentials {
        SaslCredentials::new(mechanism, user.into(), password.into())
    }

    /// RFC 7677 section 3: the SCRAM-SHA-256 exchange for user/pencil, byte for byte.
    #[test]
    fn scram_sha256_matches_rfc7677() {
        let c = creds(SaslMechanism::ScramSha256, "user", "pencil");
        let mut scram = ScramClient::new(&c, "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(scram.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let last = scram.client_final(server_first).expect("client-final");
        assert_eq!(
            last,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        scram
            .verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .expect("server signature");
        assert_eq!(
            scram.verify_server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(SaslError::BadServerSignature)
        );
    }

    #[test]
    fn plain_token_and_usernames_are_escaped_for_scram() {
        let (_, token) = Exchange::start(&creds(SaslMechanism::Plain, "u", "p")).expect("plain");
        assert_eq!(token, b"\0u\0p");
        let scram = ScramClient::new(&creds(SaslMechanism::ScramSha512, "a=b,c", "p"), "N");
        assert_eq!(scram.client_first(), "n,,n=a=3Db=2Cc,r=N");
    }

    #[test]
    fn hostile_server_first_messages_are_refused() {
        let c = creds(SaslMechanism::ScramSha512, "u", "p");
        for (bad, why) in [
            (&b"r=OTHER,s=AAAA,i=4096"[..], "nonce"),
            (b"r=N,s=AAAA,i=4096", "nonce"),
            (b"r=Nx,s=!!!,i=4096", "salt"),
            (b"r=Nx,s=AAAA,i=1", "iteration"),
            (b"r=Nx,s=AAAA,i=4000000000", "iteration"),
            (b"e=unknown-user", "unknown-user"),
            (b"\xff\xfe", "UTF-8"),
        ] {
            let mut scram = ScramClient::new(&c, "N");
            let err = scram.client_final(bad).expect_err("refused").to_string();
            assert!(err.contains(why), "{why} not in {err}");
        }
        // No signature checked before client-final was built.
        let scram = ScramClient::new(&c, "N");
        assert!(scram.verify_server_final(b"v=AAAA").is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = creds(SaslMechanism::Plain, "u", "sekrit-value");
        assert!(!format!("{c:?}").contains("sekrit"));
    }
}
