//! The small HTTP/1.1 client `kafka-tee status` uses to read a proxy's admin endpoint.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::status::StatusReport;

/// Why `kafka-tee status` could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("cannot reach the admin endpoint at {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("admin endpoint at {addr} gave no complete answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("admin endpoint at {addr} answered {status} for {path}: {body}")]
    Status {
        addr: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("admin endpoint at {addr} sent a malformed answer: {message}")]
    Malformed { addr: String, message: String },
}

/// An HTTP response as the small client reads it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Largest admin response the client reads.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// A one-shot `GET path` to `addr` (`HOST:PORT`), the whole exchange within `timeout`.
pub async fn http_get(
    addr: &str,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, AdminClientError> {
    let unreachable = |message: String| AdminClientError::Unreachable {
        addr: addr.to_owned(),
        message,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if raw.len() > MAX_RESPONSE {
            return Err(AdminClientError::Malformed {
                addr: addr.to_owned(),
                message: format!("response larger than {MAX_RESPONSE} bytes"),
            });
        }
        parse_response(&raw).map_err(|message| AdminClientError::Malformed {
            addr: addr.to_owned(),
            message,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(AdminClientError::Timeout {
            addr: addr.to_owned(),
            timeout,
        }),
    }
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if body.len() < len {
            return Err(format!("body has {} of {len} bytes", body.len()));
        }
        body.truncate(len);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

/// Fetches and decodes `/status.json` from an admin endpoint.
pub async fn fetch_status(addr: &str, timeout: Duration) -> Result<StatusReport, AdminClientError> {
    let r = http_get(addr, "/status.json", timeout).await?;
    if r.status != 200 {
        return Err(AdminClientError::Status {
            addr: addr.to_owned(),
            path: "/status.json".into(),
            status: r.status,
            body: String::from_utf8_lossy(&r.body).chars().take(200).collect(),
        });
    }
    serde_json::from_slice(&r.body).map_err(|e| AdminClientError::Malformed {
        addr: addr.to_owned(),
        message: format!("status.json: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn client_reports_unreachable_endpoint() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let err = fetch_status(&format!("127.0.0.1:{port}"), Duration::from_secs(2))
            .await
            .expect_err("nothing listens");
        assert!(err.to_string().contains("cannot reach"), "{err}");
    }

    #[test]
    fn parses_chunked_and_sized_responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").expect("ok");
        assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
        let r = parse_response(
            b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!((r.status, r.body.as_slice()), (503, b"abcde".as_slice()));
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
    }
}
