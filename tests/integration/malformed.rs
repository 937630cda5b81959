//! Malformed requests get the right 4xx and never disturb the gateway.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx() {
    let backend = echo("e").await;
    let gateway = GatewayProcess::start(&single_route(&format!(
        "  - name: pool
    endpoints: [\"127.0.0.1:{}\"]
",
        backend.addresses()[0].port()
    )))
    .await;
    let port = gateway.http_port;

    let response = raw_request(port, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(
        response.starts_with("HTTP/1.1 400"),
        "bad request line: {response}"
    );

    let big = "a".repeat(100 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let response = raw_request(port, request.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 431"),
        "oversized headers: {response}"
    );
    assert!(response.contains("request_header_fields_too_large"));

    let huge = "a".repeat(2 * 1024 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n");
    let response = raw_request(port, request.as_bytes()).await;
    // Pingora answers 400 past its 1 MiB limit; if it closes before we finish writing, the
    // kernel may reset the connection and drop that answer, which is also a refusal.
    assert!(
        response.is_empty()
            || response.starts_with("HTTP/1.1 400")
            || response.starts_with("HTTP/1.1 431"),
        "headers past Pingora's limit: {:.80}",
        response
    );

    for (path, what) in [
        ("/../etc/passwd", "dot-dot escaping root"),
        ("/a/%2e%2e/%2E%2E/etc", "encoded dot-dot"),
        ("/a%2Fb", "encoded slash"),
        ("/a%5cb", "encoded backslash"),
        ("/a%zz", "invalid percent-encoding"),
        ("/a%00b", "encoded NUL"),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let response = raw_request(port, request.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{what}: {response}");
        assert!(response.contains("invalid_path"), "{what}: {response}");
    }

    // A path that is merely unusual is normalised, not refused.
    let request = "GET /a/./b//c/../d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let response = raw_request(port, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"path\":\"/a/b/d\""), "{response}");

    // The gateway is still fine.
    let (status, _) = get_json(&client(), &gateway.url("/after")).await;
    assert_eq!(status, 200);
}
