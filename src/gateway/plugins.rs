//! The gateway's side of the plugin pipeline: building a request's plugin state, writing
//! the responses plugins ask for, and turning a pipeline [`Flow`] into what each Pingora
//! hook returns.

use std::sync::Arc;

use bytes::Bytes;
use pingora::prelude::*;
use pingora_error::ErrorType;

use super::context::RequestContext;
use super::errors::{self, GatewayError};
use super::headers;
use crate::plugin::host::{LocalResponse, RequestFacts};
use crate::plugin::pipeline::{Flow, Trailers};

/// `on_request_body` for one chunk.
pub async fn request_body(
    session: &mut Session,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestContext,
) -> Result<()> {
    let Some(plugins) = ctx.plugins.as_mut() else {
        return Ok(());
    };
    // Envoy calls on_request_body only when the request has a body: on_request_headers
    // already told the plugins end_of_stream. Pingora still calls this filter once, empty.
    if end_of_stream && body.as_ref().is_none_or(Bytes::is_empty) && session.is_body_empty() {
        *body = None;
        return Ok(());
    }
    let snapshot = ctx.snapshot.clone();
    let upstreams = snapshot
        .as_ref()
        .map_or(&[][..], |snapshot| &snapshot.upstreams[..]);
    let flow = plugins
        .request_body(body, end_of_stream, session.req_header_mut(), upstreams)
        .await;
    into_result(flow, ctx)
}

pub fn response_body(
    session: &Session,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestContext,
) -> Result<()> {
    let Some(plugins) = ctx.plugins.as_mut() else {
        return Ok(());
    };
    // Counted for `trailers::write_before_trailers`.
    ctx.response_body_tasks = ctx.response_body_tasks.wrapping_add(1);
    let flow = plugins.response_body(body, end_of_stream, session.req_header());
    into_result(flow, ctx)
}

/// `on_response_trailers`: how the answer ends (see [`Trailers`]).
pub fn response_trailers(
    session: &Session,
    trailers: &mut http::HeaderMap,
    ctx: &mut RequestContext,
) -> Result<Trailers> {
    let Some(plugins) = ctx.plugins.as_mut() else {
        return Ok(Trailers::Keep(Bytes::new()));
    };
    let (flow, outcome) = plugins.response_trailers(trailers, session.req_header());
    into_result(flow, ctx).map(|()| outcome)
}

/// `on_done`, `on_log`, `on_delete`.
pub fn finish(session: &Session, ctx: &mut RequestContext) {
    if let Some(plugins) = ctx.plugins.as_mut() {
        plugins.finish(Some(session.req_header()), session.response_written());
    }
}

/// Hooks past `request_filter` cannot write a response themselves: they record the answer
/// and raise an error, and `fail_to_proxy` writes it.
pub(super) fn into_result(flow: Flow, ctx: &mut RequestContext) -> Result<()> {
    match flow {
        Flow::Continue => Ok(()),
        Flow::Respond(local) => {
            let status = local.status;
            ctx.local_response = Some(local);
            Error::e_explain(ErrorType::HTTPStatus(status), "plugin local response")
        }
        Flow::Fail(error) => {
            let pingora_error = error.to_pingora();
            ctx.failure = Some(error);
            Err(pingora_error)
        }
        Flow::Close => Err(close(ctx)),
    }
}

pub(super) fn close(ctx: &mut RequestContext) -> Box<Error> {
    ctx.failure = Some(GatewayError::new(
        0,
        "plugin_closed",
        "a plugin closed the stream",
    ));
    Error::explain(ErrorType::ConnectionClosed, "plugin closed the stream")
}

fn local_header(local: &LocalResponse, request_id: &http::HeaderValue) -> Result<ResponseHeader> {
    let mut header = ResponseHeader::build(local.status, Some(local.headers.len() + 2))?;
    for (name, value) in &local.headers {
        if name.starts_with(':') || name == "content-length" || name == "transfer-encoding" {
            continue;
        }
        header.append_header(name.clone(), &value[..])?;
    }
    header.insert_header("content-length", local.body.len().to_string())?;
    header.insert_header(headers::REQUEST_ID, request_id.clone())?;
    Ok(header)
}

/// Writes a plugin's local response. Returns whether the connection can be reused.
pub async fn write_local_response(
    session: &mut Session,
    local: &LocalResponse,
    request_id: &http::HeaderValue,
) -> bool {
    let header = match local_header(local, request_id) {
        Ok(header) => header,
        Err(error) => {
            log::warn!("plugin local response has an invalid header: {error}");
            let error = GatewayError::new(
                500,
                "plugin_error",
                "a plugin sent an invalid response header",
            );
            return errors::respond(session, &error, request_id, false).await;
        }
    };
    // An unread request body would be taken as the next request on this connection.
    let reusable = session.is_body_empty() || session.is_body_done();
    if !reusable {
        session.set_keepalive(None);
    }
    // An answer without a body ends with its headers: over HTTP/2 that is one HEADERS frame
    // with END_STREAM, which is what a gRPC client needs of a trailers-only reply (a trailing
    // empty DATA frame leaves it without a status).
    // (`write_response_header` never ends the stream, whatever its flag says.)
    if local.body.is_empty() {
        let task = pingora::protocols::http::HttpTask::Header(Box::new(header), true);
        return session.write_response_tasks(vec![task]).await.is_ok() && reusable;
    }
    if session
        .write_response_header(Box::new(header), false)
        .await
        .is_err()
    {
        return false;
    }
    if session
        .write_response_body(Some(local.body.clone()), true)
        .await
        .is_err()
    {
        return false;
    }
    reusable
}

pub(super) fn replace_response(
    response: &mut ResponseHeader,
    local: &LocalResponse,
    request_id: &http::HeaderValue,
) -> Result<()> {
    *response = local_header(local, request_id)?;
    Ok(())
}

/// The `connection.tls_version` of a plaintext connection, shared: an `Arc<str>` made from
/// "" allocates every time.
fn no_tls_version() -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    Arc::clone(&EMPTY)
}

pub(super) fn facts(session: &Session, ctx: &RequestContext) -> RequestFacts {
    let socket = |address: Option<&pingora::protocols::l4::socket::SocketAddr>| {
        address.and_then(|address| address.as_inet()).copied()
    };
    RequestFacts {
        client: socket(session.client_addr()),
        server: socket(session.server_addr()),
        connection_id: ctx.connection.as_ref().map_or(0, |guard| guard.id),
        request_id: Bytes::copy_from_slice(ctx.request_id.as_bytes()),
        route: ctx.route().map(|route| Arc::clone(&route.id)),
        route_metadata: ctx.route().map(|route| Arc::clone(&route.metadata)),
        // No clock read of its own (see `wall_clock`).
        started_unix_nanos: crate::observe::wall_clock::unix_nanos_at(ctx.started),
        scheme: if session
            .digest()
            .is_some_and(|digest| digest.ssl_digest.is_some())
        {
            "https"
        } else {
            "http"
        },
        protocol: if session.is_http2() {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        },
        upstream_address: None,
        upstream_name: ctx.route().map(|route| Arc::clone(&route.upstream.name)),
        response_code: 0,
        tls_version: session
            .digest()
            .and_then(|digest| digest.ssl_digest.as_ref())
            .map_or_else(no_tls_version, |ssl| Arc::from(ssl.version.as_ref())),
        client_certificate: super::client_cert::identity_of(session),
        trace_id: ctx.trace.trace_id,
    }
}
