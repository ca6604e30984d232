//! HTTP/1.1 on the client port (and on `--listen-metrics-urls`): `/health`, `/livez`, `/readyz`,
//! `/version`, `/metrics` and etcd's grpc-gateway JSON API (`api::gateway`).
//!
//! etcd serves gRPC and HTTP on one port; so do we: `net::serve` tells a new connection's
//! protocol from its first bytes (`net::sniff`) and hands HTTP/1.1 ones here, served with hyper's
//! HTTP/1.1 server. Status lines, headers and bodies follow etcd 3.4 byte for byte where clients
//! parse them (CORS headers on every answer, `{"health":"true"}`, the gateway's JSON errors and
//! its `{"result":...}` stream framing). The simulator's transport carries no HTTP/1.1: this is
//! compiled there but never served.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use serde::de::DeserializeOwned;

use super::gateway::{self, GatewayError, Reply, Route, Services};
use super::health_check::{check_health, HealthQuery};
use super::held_body::HeldBody;
use super::maintenance::API_VERSION;
use super::status;
use crate::limits;
use crate::net::http_slots::ServingMark;
use crate::node::send_budget::Held;
use crate::node::Node;
use crate::rt::Shutdown;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// `body`, holding its connection's slot busy until it has been sent (or dropped).
fn busy_until_sent(body: Body, busy: crate::net::http_slots::Busy) -> Body {
    struct Holding {
        body: Body,
        _busy: crate::net::http_slots::Busy,
    }
    impl hyper::body::Body for Holding {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Pin::new(&mut self.get_mut().body).poll_frame(cx)
        }
        fn is_end_stream(&self) -> bool {
            self.body.is_end_stream()
        }
        fn size_hint(&self) -> hyper::body::SizeHint {
            self.body.size_hint()
        }
    }
    Holding { body, _busy: busy }.boxed_unsync()
}

/// What a listener serves over HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The client port: everything, the JSON gateway included.
    Client,
    /// A `--listen-metrics-urls` listener: `/metrics` and `/health` only, as in etcd.
    MetricsOnly,
}

impl crate::net::serve::Http1Service for HttpApi {
    fn serve_http1(
        self: Arc<Self>,
        conn: crate::net::serve::Http1Conn,
        stop: Shutdown,
    ) -> impl std::future::Future<Output = ()> + Send {
        self.serve_connection(conn, stop)
    }
}

/// The HTTP side of one member.
pub struct HttpApi {
    node: Arc<Node>,
    services: Services,
    scope: Scope,
    /// HTTP/1.1 connection slots of this listener.
    connections: Arc<crate::net::http_slots::Slots>,
}

impl HttpApi {
    /// The HTTP endpoints of `node` for a listener of `scope`.
    pub fn new(node: Arc<Node>, access: Arc<super::access::Access>, scope: Scope) -> Arc<Self> {
        Arc::new(Self {
            services: Services::new(node.clone(), access),
            node,
            scope,
            connections: crate::net::http_slots::Slots::new(limits::HTTP_MAX_CONNECTIONS),
        })
    }

    /// Serve one HTTP/1.1 connection until the client leaves, `shutdown` is raised or a newcomer
    /// takes its slot while it idles (`net::http_slots`); closed at once if no slot can be had.
    pub async fn serve_connection<S>(self: Arc<Self>, io: S, shutdown: Shutdown)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Refusals are counted and logged by the slots.
        let Some(slot) = self.connections.admit() else {
            return;
        };
        let slot = Arc::new(slot);
        let api = self.clone();
        let serving = slot.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let api = api.clone();
            // A request from here until its response body is sent or dropped; the handler says
            // when it has read what it needs from the client (`ServingMark`).
            let busy = serving.request();
            req.extensions_mut().insert(busy.mark());
            async move {
                let response = api.handle(req).await;
                Ok::<_, Infallible>(response.map(|body| busy_until_sent(body, busy)))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            // Header names as Go writes them (`Content-Type`), for clients that compare bytes.
            .title_case_headers(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits::HTTP_HEADER_READ_TIMEOUT)
            .serve_connection(hyper_util::rt::TokioIo::new(io), service);
        tokio::select! {
            biased;
            _ = shutdown.wait() => {}
            _ = slot.evicted() => tracing::debug!("idle HTTP connection closed for a new one"),
            result = conn => {
                if let Err(e) = result {
                    tracing::debug!("HTTP connection ended: {e}");
                }
            }
        }
    }

    /// Answer one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let mark = req.extensions().get::<ServingMark>().cloned();
        let serving = || {
            if let Some(m) = &mark {
                m.serving();
            }
        };
        if !gateway::under_prefix(&path) {
            // Nothing more to read from the client.
            serving();
        }
        if req.method() == Method::OPTIONS {
            // CORS preflight: etcd answers it with its CORS headers and nothing else.
            return respond(StatusCode::OK, None, Bytes::new());
        }
        match (self.scope, path.as_str()) {
            (_, "/metrics") => self.metrics(),
            (_, "/health") => {
                let query = req.uri().query().unwrap_or_default().to_string();
                self.health(req.method(), &query).await
            }
            (Scope::Client, "/livez") => plain(StatusCode::OK, "ok"),
            (Scope::Client, "/readyz") => self.readyz().await,
            (Scope::Client, "/version") => self.version(req.method()),
            (Scope::Client, p) if gateway::under_prefix(p) => match gateway::route(p) {
                Some(route) if req.method() == Method::POST => self.gateway(route, req).await,
                Some(_) => go_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
                None => go_error(StatusCode::NOT_FOUND, "Not Found"),
            },
            _ => go_error(StatusCode::NOT_FOUND, "404 page not found"),
        }
    }

    fn metrics(&self) -> Response<Body> {
        let mut scrape = self.node.scrape();
        scrape.version = API_VERSION;
        let text = self.node.metrics().render(&scrape);
        respond(
            StatusCode::OK,
            Some("text/plain; version=0.0.4; charset=utf-8"),
            Bytes::from(text),
        )
    }

    async fn health(&self, method: &Method, query: &str) -> Response<Body> {
        if method != Method::GET {
            return not_get();
        }
        let body = |healthy: bool, reason: &str| {
            serde_json::json!({ "health": healthy.to_string(), "reason": reason }).to_string()
        };
        let checked = check_health(&self.node, &HealthQuery::parse(query)).await;
        let metrics = self.node.metrics();
        match &checked {
            Ok(()) => metrics.health_success.inc(),
            Err(_) => metrics.health_failures.inc(),
        }
        match checked {
            // Go's ResponseWriter sniffs the JSON as text/plain; etcd sets no type itself.
            Ok(()) => respond(
                StatusCode::OK,
                Some("text/plain; charset=utf-8"),
                Bytes::from(body(true, "")),
            ),
            Err(reason) => go_error(StatusCode::SERVICE_UNAVAILABLE, &body(false, &reason)),
        }
    }

    async fn readyz(&self) -> Response<Body> {
        if check_health(&self.node, &HealthQuery::default())
            .await
            .is_ok()
        {
            plain(StatusCode::OK, "ok")
        } else {
            go_error(StatusCode::SERVICE_UNAVAILABLE, "readyz check failed")
        }
    }

    fn version(&self, method: &Method) -> Response<Body> {
        if method != Method::GET {
            return not_get();
        }
        // The cluster version with patch 0, as etcd reports it: the downgrade target while a
        // downgrade is enabled.
        let cluster = self.node.versions().cluster_version();
        let body = format!(r#"{{"etcdserver":"{API_VERSION}","etcdcluster":"{cluster}"}}"#);
        respond(StatusCode::OK, Some("application/json"), Bytes::from(body))
    }

    async fn gateway(&self, route: Route, req: Request<Incoming>) -> Response<Body> {
        self.node.metrics().gateway_requests.inc();
        let token = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let max_request_bytes = self.node.config().max_request_bytes;
        let max_body = limits::gateway_max_body_bytes(max_request_bytes);
        let mark = req.extensions().get::<ServingMark>().cloned();
        let serving = move || {
            if let Some(m) = &mark {
                m.serving();
            }
        };
        let body = req.into_body();
        if route.is_streaming() {
            return self
                .gateway_stream(route, body, token, max_body, serving)
                .await;
        }
        let bytes = match http_body_util::Limited::new(body, max_body).collect().await {
            Ok(collected) => {
                serving();
                collected.to_bytes()
            }
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return status_error(GatewayError::TooLarge(max_body).into());
            }
            Err(e) => return status_error(GatewayError::BadJson(e.to_string()).into()),
        };
        let parsed = match gateway::parse(route, &bytes) {
            Ok(parsed) => parsed,
            Err(e) => return status_error(e.into()),
        };
        // The bound gRPC's decoder puts on the same request.
        if parsed.encoded_len() > max_request_bytes + limits::GRPC_OVERHEAD_BYTES {
            return status_error(
                GatewayError::TooLarge(max_request_bytes + limits::GRPC_OVERHEAD_BYTES).into(),
            );
        }
        match self.services.call(parsed, token.as_deref()).await {
            Ok(Reply::Unary(json)) => ok_json(Bytes::from(json)),
            Ok(Reply::Held(json, held)) => ok_json_held(json, held),
            Ok(Reply::Stream(stream)) => ok_stream(stream, None),
            Err(status) => status_error(status),
        }
    }

    /// A streaming method (watch, lease keep-alive): requests are JSON values read from the body
    /// as they arrive; once the first is in (or the body ended), the call starts and responses
    /// stream back as newline-delimited `{"result":...}` objects.
    async fn gateway_stream(
        &self,
        route: Route,
        body: Incoming,
        token: Option<String>,
        max_body: usize,
        serving: impl FnOnce(),
    ) -> Response<Body> {
        // Dropped with the response body (the client left): the requests end, and with them the
        // call (a watch would otherwise wait for its next request forever).
        let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
        let reply = if route == Route::Watch {
            // etcd keeps a watch stream open after the request body ends.
            let requests =
                match feed(body, max_body, limits::WATCH_STREAM_BUFFER, true, gone_rx).await {
                    Ok(requests) => requests,
                    Err(e) => return status_error(status::gateway_stream_error(e)),
                };
            // The first request is in: the call is being served from here.
            serving();
            self.services.watch_stream(requests, token.as_deref()).await
        } else {
            let buffer = limits::LEASE_KEEPALIVE_STREAM_BUFFER;
            let requests = match feed(body, max_body, buffer, false, gone_rx).await {
                Ok(requests) => requests,
                Err(e) => return status_error(status::gateway_stream_error(e)),
            };
            serving();
            self.services
                .keep_alive_stream(requests, token.as_deref())
                .await
        };
        match reply {
            Ok(Reply::Stream(stream)) => ok_stream(stream, Some(gone_tx)),
            Ok(Reply::Unary(json)) => ok_json(Bytes::from(json)),
            Ok(Reply::Held(json, held)) => ok_json_held(json, held),
            Err(status) => status_error(status),
        }
    }
}

/// Read a streamed body until its first complete JSON value(s) or its end: `(requests, bytes
/// left over, whether the body ended)`.
async fn read_first<T: DeserializeOwned + Default>(
    body: &mut Incoming,
    max_body: usize,
) -> Result<(Vec<T>, Vec<u8>, bool), GatewayError> {
    let mut buf = Vec::new();
    loop {
        let ended = match next_chunk(body).await {
            Some(chunk) => {
                buf.extend_from_slice(&chunk);
                false
            }
            None => true,
        };
        if buf.len() > max_body {
            return Err(GatewayError::TooLarge(max_body));
        }
        let requests = gateway::parse_stream(&mut buf, ended)?;
        if !requests.is_empty() || ended {
            return Ok((requests, buf, ended));
        }
    }
}

/// The rest of a streamed request body, handed to the call as its values complete.
struct Feed<T> {
    tx: tokio::sync::mpsc::Sender<Result<T, tonic::Status>>,
    body: Incoming,
    buf: Vec<u8>,
    ended: bool,
    max_body: usize,
    /// Keep the request side open after the body ends, until the call is gone.
    hold_open: bool,
    /// Resolves when the response body is dropped (the client left).
    gone: tokio::sync::oneshot::Receiver<()>,
}

impl<T: DeserializeOwned + Default + Send + 'static> Feed<T> {
    /// Send `first`, then every value read after it. A malformed or oversized value ends the
    /// requests (etcd's gateway stops decoding too).
    async fn run(mut self, first: Vec<T>) {
        for req in first {
            if self.tx.send(Ok(req)).await.is_err() {
                return;
            }
        }
        while !self.ended {
            tokio::select! {
                biased;
                _ = self.tx.closed() => return,
                _ = &mut self.gone => return,
                chunk = next_chunk(&mut self.body) => match chunk {
                    Some(chunk) => self.buf.extend_from_slice(&chunk),
                    None => self.ended = true,
                },
            }
            if self.buf.len() > self.max_body {
                tracing::debug!(
                    "gateway stream message over {} bytes; ending it",
                    self.max_body
                );
                return;
            }
            match gateway::parse_stream(&mut self.buf, self.ended) {
                Ok(requests) => {
                    for req in requests {
                        if self.tx.send(Ok(req)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("gateway stream request unreadable: {e}");
                    return;
                }
            }
        }
        if self.hold_open {
            tokio::select! {
                biased;
                _ = self.tx.closed() => {}
                _ = &mut self.gone => {}
            }
        }
    }
}

/// The next data chunk of a request body; `None` at its end (or when the client is gone).
async fn next_chunk(body: &mut Incoming) -> Option<Bytes> {
    loop {
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => return Some(data),
                Err(_trailers) => continue,
            },
            Some(Err(_)) | None => return None,
        }
    }
}

/// Read the first request of a streaming call from `body`, then feed it and the rest (a task
/// reads them as they come) into the stream returned, buffered up to `buffer` requests.
async fn feed<T: DeserializeOwned + Default + Send + 'static>(
    mut body: Incoming,
    max_body: usize,
    buffer: usize,
    hold_open: bool,
    gone: tokio::sync::oneshot::Receiver<()>,
) -> Result<futures::stream::BoxStream<'static, Result<T, tonic::Status>>, GatewayError> {
    let (first, buf, ended) = read_first(&mut body, max_body).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(buffer);
    let requests = Feed {
        tx,
        body,
        buf,
        ended,
        max_body,
        hold_open,
        gone,
    };
    crate::rt::spawn(requests.run(first));
    Ok(receiver_stream(rx))
}

fn receiver_stream<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<Result<T, tonic::Status>>,
) -> futures::stream::BoxStream<'static, Result<T, tonic::Status>> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) }).boxed()
}

/// etcd's CORS headers (its default `--cors=*`), on every answer.
fn with_cors(builder: hyper::http::response::Builder) -> hyper::http::response::Builder {
    builder
        .header(
            "Access-Control-Allow-Headers",
            "accept, content-type, authorization",
        )
        .header(
            "Access-Control-Allow-Methods",
            "POST, GET, OPTIONS, PUT, DELETE",
        )
        .header("Access-Control-Allow-Origin", "*")
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).boxed_unsync()
}

fn respond(code: StatusCode, content_type: Option<&'static str>, body: Bytes) -> Response<Body> {
    let mut builder = with_cors(Response::builder().status(code));
    if let Some(ct) = content_type {
        builder = builder.header(CONTENT_TYPE, ct);
    }
    builder
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

fn plain(code: StatusCode, text: &'static str) -> Response<Body> {
    respond(
        code,
        Some("text/plain; charset=utf-8"),
        Bytes::from_static(text.as_bytes()),
    )
}

/// An error as Go's `http.Error` writes it: text/plain, `nosniff`, the text and a newline.
fn go_error(code: StatusCode, text: &str) -> Response<Body> {
    let mut resp = respond(
        code,
        Some("text/plain; charset=utf-8"),
        Bytes::from(format!("{text}\n")),
    );
    resp.headers_mut().insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn not_get() -> Response<Body> {
    let mut resp = go_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET"));
    resp
}

/// A successful gateway answer (grpc-gateway adds the gRPC response's content type as metadata).
fn gateway_ok(body: Body) -> Response<Body> {
    with_cors(Response::builder().status(StatusCode::OK))
        .header(CONTENT_TYPE, "application/json")
        .header("Grpc-Metadata-Content-Type", "application/grpc")
        .body(body)
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

/// A gateway answer counted as `held` in the member's send budget until its client has taken
/// it, and cut short if it has not in time (`api::held_body`).
fn ok_json_held(json: Vec<u8>, held: Held) -> Response<Body> {
    let body = HeldBody::cut_short(Full::new(Bytes::from(json)), held);
    gateway_ok(body.boxed_unsync())
}

fn ok_json(json: Bytes) -> Response<Body> {
    gateway_ok(full(json))
}

/// A streamed gateway answer: each message as `{"result":...}` and a newline; an error ends the
/// stream as `{"error":{...}}`.
fn ok_stream(
    stream: gateway::JsonStream,
    guard: Option<tokio::sync::oneshot::Sender<()>>,
) -> Response<Body> {
    let framed = stream
        .scan((false, guard), |(failed, _guard), item| {
            if *failed {
                return futures::future::ready(None);
            }
            let line = match item {
                Ok(json) => {
                    let mut line = Vec::with_capacity(json.len() + 12);
                    line.extend_from_slice(br#"{"result":"#);
                    line.extend_from_slice(&json);
                    line.extend_from_slice(b"}\n");
                    line
                }
                Err(status) => {
                    *failed = true;
                    let mut line = stream_error_json(&status);
                    line.push(b'\n');
                    line
                }
            };
            futures::future::ready(Some(Ok::<_, Infallible>(Frame::data(Bytes::from(line)))))
        })
        .boxed();
    gateway_ok(StreamBody::new(framed).boxed_unsync())
}

/// A failed gateway call: grpc-gateway's error JSON and the HTTP status of its gRPC code.
fn status_error(status: tonic::Status) -> Response<Body> {
    let code = StatusCode::from_u16(status::http_status(status.code()))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(
        code,
        Some("application/json"),
        Bytes::from(error_json(&status)),
    )
}

/// grpc-gateway's error body, its fields in etcd 3.5's order: `{"error":M,"code":N,"message":M}`.
pub fn error_json(status: &tonic::Status) -> Vec<u8> {
    let message = json_string(status.message());
    format!(
        r#"{{"error":{message},"code":{},"message":{message}}}"#,
        status.code() as i32
    )
    .into_bytes()
}

/// grpc-gateway's error object ending a stream: `{"error":{"grpc_code":N,"http_code":H,
/// "message":M,"http_status":"..."}}`.
pub fn stream_error_json(status: &tonic::Status) -> Vec<u8> {
    let http = status::http_status(status.code());
    let text = StatusCode::from_u16(http)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("");
    format!(
        r#"{{"error":{{"grpc_code":{},"http_code":{http},"message":{},"http_status":{}}}}}"#,
        status.code() as i32,
        json_string(status.message()),
        json_string(text),
    )
    .into_bytes()
}

/// A JSON string literal as Go writes it.
fn json_string(text: &str) -> String {
    String::from_utf8(gateway::to_json(&text)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_written_as_grpc_gateway_writes_them() {
        let status = tonic::Status::not_found("etcdserver: requested lease not found");
        assert_eq!(
            String::from_utf8(error_json(&status)).unwrap(),
            r#"{"error":"etcdserver: requested lease not found","code":5,"message":"etcdserver: requested lease not found"}"#
        );
        assert_eq!(
            String::from_utf8(stream_error_json(&status)).unwrap(),
            r#"{"error":{"grpc_code":5,"http_code":404,"message":"etcdserver: requested lease not found","http_status":"Not Found"}}"#
        );
    }
}
