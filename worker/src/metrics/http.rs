//! The smallest HTTP/1.1 server Prometheus can scrape: `GET /metrics`
//! answers the exposition, anything else 404, and every connection closes
//! after its one response. Written on tokio rather than pulling in an HTTP
//! stack for a single read-only route.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::prometheus::CONTENT_TYPE;

/// The most a request head may take; Prometheus sends a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `/metrics` on every interface at `port`.
pub(crate) async fn bind(port: u16) -> Result<TcpListener, String> {
    TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| format!("cannot serve /metrics on port {port}: {e}"))
}

/// Answers scrapes until the task is aborted; `render` gives the body, or
/// why there is none (answered 503).
pub(crate) async fn serve<F, Fut>(listener: TcpListener, render: F)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<String, String>> + Send,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: pass, then go on.
                tracing::warn!("/metrics cannot accept a connection: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            if let Err(err) = answer(stream, render).await {
                tracing::debug!("/metrics request failed: {err}");
            }
        });
    }
}

async fn answer<F, Fut>(mut stream: TcpStream, render: F) -> std::io::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let response = if is_metrics_get(&head) {
        match render().await {
            Ok(body) => response("200 OK", CONTENT_TYPE, &body),
            Err(why) => response("503 Service Unavailable", "text/plain", &format!("{why}\n")),
        }
    } else {
        response(
            "404 Not Found",
            "text/plain",
            "not found: try GET /metrics\n",
        )
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the blank line that ends the request head (the body of a
/// GET, if any, is ignored).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// `GET /metrics` (a query string allowed), HTTP/1.0 or 1.1.
fn is_metrics_get(head: &str) -> bool {
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split('?').next().unwrap_or_default());
    method == Some("GET") && path == Some("/metrics")
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        for (head, expect) in [
            ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", true),
            ("GET /metrics?x=1 HTTP/1.0\r\n\r\n", true),
            ("GET / HTTP/1.1\r\n\r\n", false),
            ("POST /metrics HTTP/1.1\r\n\r\n", false),
            ("GET /metricsx HTTP/1.1\r\n\r\n", false),
            ("", false),
        ] {
            assert_eq!(is_metrics_get(head), expect, "{head:?}");
        }
    }

    #[tokio::test]
    async fn answers_and_closes() {
        let listener = bind(0).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(serve(listener, || async { Ok("m 1\n".to_owned()) }));
        for (path, status, body) in [
            ("/metrics", "200 OK", "m 1\n"),
            ("/other", "404 Not Found", "not found"),
        ] {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut reply = String::new();
            // Reading to the end proves the server closed the connection.
            stream.read_to_string(&mut reply).await.unwrap();
            assert!(
                reply.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{reply}"
            );
            assert!(reply.contains(body), "{reply}");
        }
        server.abort();
    }
}
