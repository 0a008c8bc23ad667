//! The HTTP layer of `tessera serve`, kept thin: routes, bodies read with a size limit, and
//! answers (JSON, server-sent events, Prometheus text, the web chat page) from [`Gateway`].

use super::gateway::{Answer, Gateway};
use super::intake;
use super::link::QEMU_PID;
use super::openai::{self, ApiError, Endpoint};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The web chat: one self-contained page.
const CHAT_PAGE: &str = include_str!("chat.html");

/// The gateway and how long a request body may take to arrive.
#[derive(Clone)]
pub struct Served {
    gateway: Arc<Gateway>,
    body_timeout: Duration,
}

/// The router over `gateway`, refusing bodies over `body_limit` bytes or slower than
/// `body_timeout` (408).
pub fn router(gateway: Arc<Gateway>, body_limit: usize, body_timeout: Duration) -> Router {
    let served = Served { gateway, body_timeout };
    Router::new()
        .route("/", get(|| async { Html(CHAT_PAGE) }))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(served)
}

/// An error as a response.
fn error_response(error: &ApiError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(error.body())).into_response()
}

async fn not_found() -> Response {
    error_response(&ApiError::new(404, "invalid_request_error", "unknown_url", "no such route"))
}

async fn method_not_allowed() -> Response {
    error_response(&ApiError::new(
        405,
        "invalid_request_error",
        "method_not_allowed",
        "method not allowed on this route",
    ))
}

async fn health(State(Served { gateway, .. }): State<Served>) -> Response {
    let (ready, reason) = gateway.hub.status();
    let pid = QEMU_PID.load(Ordering::Relaxed);
    let body = json!({
        "status": if ready { "ok" } else { "unavailable" },
        "board": if ready { "ready" } else { reason.as_str() },
        "in_flight": gateway.hub.generations_in_flight(),
        "qemu_pid": (pid != 0).then_some(pid),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(Served { gateway, .. }): State<Served>) -> Response {
    let text = gateway.metrics_text().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn models(State(Served { gateway, .. }): State<Served>) -> Response {
    let response = match gateway.model_list().await {
        Ok(list) => axum::Json(list).into_response(),
        Err(error) => error_response(&error),
    };
    gateway.count_request("/v1/models", response.status().as_u16());
    response
}

async fn chat(State(served): State<Served>, request: Request) -> Response {
    let body = read_body(&served, request).await;
    generate(served.gateway, body, Endpoint::Chat).await
}

async fn completions(State(served): State<Served>, request: Request) -> Response {
    let body = read_body(&served, request).await;
    generate(served.gateway, body, Endpoint::Completion).await
}

/// The request's body, within the body limit and the body timeout.
async fn read_body(served: &Served, request: Request) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(served.body_timeout, Bytes::from_request(request, &())).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(rejection)) => Err(body_error(&rejection)),
        Err(_) => Err(intake::timed_out("body", served.body_timeout.as_secs())),
    }
}

/// A body that could not be read: too large (413) or broken (400).
fn body_error(rejection: &BytesRejection) -> ApiError {
    let status = rejection.status().as_u16();
    let code = if status == 413 { "request_too_large" } else { "invalid_body" };
    ApiError::new(status, "invalid_request_error", code, rejection.body_text())
}

async fn generate(gateway: Arc<Gateway>, body: Result<Bytes, ApiError>, endpoint: Endpoint) -> Response {
    let parsed = body.and_then(|bytes| match endpoint {
        Endpoint::Chat => openai::parse_chat(&bytes),
        Endpoint::Completion => openai::parse_completion(&bytes),
    });
    let response = match parsed {
        Ok(generation) => match gateway.generate(generation).await {
            Ok(Answer::Whole(answer)) => axum::Json(answer).into_response(),
            Ok(Answer::Stream(events)) => stream_response(events),
            Err(error) => error_response(&error),
        },
        Err(error) => error_response(&error),
    };
    gateway.count_request(endpoint.path(), response.status().as_u16());
    response
}

/// A `text/event-stream` response of the events as they come.
fn stream_response(events: tokio::sync::mpsc::Receiver<String>) -> Response {
    let stream = futures_util::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        Some((Ok::<_, Infallible>(Bytes::from(event)), events))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
