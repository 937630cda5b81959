//! A plugin's outbound calls of both kinds, HTTP and gRPC: run one to its answer, and hand
//! the answer to the callback the ABI names for it. The request pipeline and the plugin's
//! background task (calls from root contexts) both go through here.

use std::sync::Arc;

use wasmer::{RuntimeError, Store};

use super::host::{Callout, CalloutAnswer};
use super::instance::{Callbacks, ROOT_CONTEXT_ID};
use super::runtime::Phase;
use super::{grpc_call, http_call};
use crate::upstream::UpstreamPool;

/// Runs `call`; failures are answers too (no headers, or a gRPC status).
pub async fn execute(call: &Callout, upstreams: &[Arc<UpstreamPool>]) -> CalloutAnswer {
    match call {
        Callout::Http(call) => CalloutAnswer::Http(http_call::execute(call, upstreams).await),
        Callout::Grpc(call) => CalloutAnswer::Grpc(grpc_call::execute(call, upstreams).await),
    }
}

impl CalloutAnswer {
    /// The phase its callback is counted under.
    pub fn phase(&self) -> Phase {
        match self {
            CalloutAnswer::Http(_) => Phase::HttpCallResponse,
            CalloutAnswer::Grpc(_) => Phase::GrpcCallResponse,
        }
    }

    /// Calls the plugin's callback for this answer, as Envoy does: `on_http_call_response`
    /// for an http_call; for a unary gRPC call `on_grpc_receive` with the message when it
    /// succeeded, `on_grpc_close` with the status when it did not. Callouts belong to the
    /// root context, whose id the callbacks get (the SDKs find the caller by token).
    pub fn deliver(
        &self,
        token: u32,
        store: &mut Store,
        callbacks: &Callbacks,
    ) -> Result<(), RuntimeError> {
        let root = ROOT_CONTEXT_ID as i32;
        let token = token as i32;
        match self {
            CalloutAnswer::Http(answer) => match &callbacks.on_http_call_response {
                Some(function) => function.call(
                    store,
                    root,
                    token,
                    answer.headers.len() as i32,
                    answer.body.len() as i32,
                    answer.trailers.len() as i32,
                ),
                None => Ok(()),
            },
            CalloutAnswer::Grpc(answer) if answer.status == grpc_call::code::OK => match &callbacks
                .on_grpc_receive
            {
                Some(function) => function.call(store, root, token, answer.message.len() as i32),
                None => Ok(()),
            },
            CalloutAnswer::Grpc(answer) => match &callbacks.on_grpc_close {
                Some(function) => function.call(store, root, token, answer.status as i32),
                None => Ok(()),
            },
        }
    }
}
