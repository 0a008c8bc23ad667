//! The HTTP layer of `tessera serve`, kept thin: routes, bodies read with a size limit, and
//! answers (JSON, server-sent events, Prometheus text, the web chat page) from [`Gateway`].

use super::gateway::{Answer, Gateway};
use super::link::QEMU_PID;
use super::openai::{self, ApiError, Endpoint};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The web chat: one self-contained page.
const CHAT_PAGE: &str = include_str!("chat.html");

/// The router over `gateway`, refusing bodies over `body_limit` bytes.
pub fn router(gateway: Arc<Gateway>, body_limit: usize) -> Router {
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
        .with_state(gateway)
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

async fn health(State(gateway): State<Arc<Gateway>>) -> Response {
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

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    let text = gateway.metrics_text().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn models(State(gateway): State<Arc<Gateway>>) -> Response {
    let response = match gateway.model_list().await {
        Ok(list) => axum::Json(list).into_response(),
        Err(error) => error_response(&error),
    };
    gateway.count_request("/v1/models", response.status().as_u16());
    response
}

async fn chat(State(gateway): State<Arc<Gateway>>, body: Result<Bytes, BytesRejection>) -> Response {
    generate(gateway, body, Endpoint::Chat).await
}

async fn completions(State(gateway): State<Arc<Gateway>>, body: Result<Bytes, BytesRejection>) -> Response {
    generate(gateway, body, Endpoint::Completion).await
}

/// A body that could not be read: too large (413) or broken (400).
fn body_error(rejection: &BytesRejection) -> ApiError {
    let status = rejection.status().as_u16();
    let code = if status == 413 { "request_too_large" } else { "invalid_body" };
    ApiError::new(status, "invalid_request_error", code, rejection.body_text())
}

async fn generate(
    gateway: Arc<Gateway>,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Response {
    let parsed = match &body {
        Ok(bytes) => match endpoint {
            Endpoint::Chat => openai::parse_chat(bytes),
            Endpoint::Completion => openai::parse_completion(bytes),
        },
        Err(rejection) => Err(body_error(rejection)),
    };
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
