//! The gateway's connections: accepted up to a cap, each request head read by the gateway
//! within the header-read timeout and checked ([`intake::read_head`]), refusals answered and
//! closed, and an accepted request handed to hyper (one request per connection) with the head
//! bytes replayed in front of the rest of the stream.

use super::intake::{self, Limits};
use super::openai::ApiError;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// How connections are served.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionSettings {
    /// Time from the connection's accept to the end of its request head.
    pub header_timeout: Duration,
    /// Most connections open at once; the next waits in the listen backlog.
    pub max_connections: usize,
    /// The head and body limits.
    pub limits: Limits,
}

/// Serves `router` on `listener` until `stop` completes; connections still open then are
/// dropped with the runtime.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ConnectionSettings,
    stop: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let settings = Arc::new(settings);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = accept(&listener, &permits) => accepted,
        };
        let Some((stream, permit)) = accepted else { continue };
        let router = router.clone();
        let settings = Arc::clone(&settings);
        tokio::spawn(async move {
            connection(stream, router, &settings).await;
            drop(permit);
        });
    }
}

/// The next connection, once a place is free; `None` when accepting failed (the error is
/// passing, such as a connection reset before it was accepted, or too many open files).
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> Option<(TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _)) => {
            let _ = stream.set_nodelay(true);
            Some((stream, permit))
        }
        Err(error) => {
            eprintln!("tessera serve: accept: {error}");
            // Give the descriptors a moment to come back rather than spin on the error.
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// What reading a request head came to.
enum HeadRead {
    /// The client closed before a whole head.
    Closed,
    /// A head that passed the checks, and every byte read so far (the head and maybe some
    /// of the body).
    Accepted(Vec<u8>),
    /// A head refused.
    Refused(ApiError),
}

/// One connection: the head within the timeout, then hyper for the request.
async fn connection(mut stream: TcpStream, router: Router, settings: &ConnectionSettings) {
    let head = tokio::time::timeout(settings.header_timeout, read_head(&mut stream, &settings.limits)).await;
    let received = match head {
        Ok(HeadRead::Accepted(received)) => received,
        Ok(HeadRead::Closed) => return,
        Ok(HeadRead::Refused(error)) => {
            refuse(stream, &error, settings.header_timeout).await;
            return;
        }
        Err(_) => {
            let error = intake::timed_out("head", settings.header_timeout.as_secs());
            refuse(stream, &error, settings.header_timeout).await;
            return;
        }
    };
    let io = TokioIo::new(Replayed { prefix: received, offset: 0, stream });
    let service = TowerToHyperService::new(router);
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .keep_alive(false)
        .serve_connection(io, service)
        .await;
    if let Err(error) = served
        && !error.is_incomplete_message()
        && !error.is_canceled()
    {
        // Only a summary: most of these are clients that went away.
        eprintln!("tessera serve: connection: {error}");
    }
}

/// Reads until a whole request head arrives and checks it.
async fn read_head(stream: &mut TcpStream, limits: &Limits) -> HeadRead {
    let mut received = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let count = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return HeadRead::Closed,
            Ok(count) => count,
        };
        received.extend_from_slice(&chunk[..count]);
        match intake::read_head(&received, limits) {
            Ok(None) => {}
            Ok(Some(_)) => return HeadRead::Accepted(received),
            Err(error) => return HeadRead::Refused(error),
        }
    }
}

/// Answers `error` and closes: the write side at once, the read side when the client closes
/// its own or after `patience`. What the client still sends meanwhile (the body of a refused
/// request, more headers of a slow one) is read and dropped, so that closing with unread
/// bytes does not reset the connection before the client has read the answer.
async fn refuse(mut stream: TcpStream, error: &ApiError, patience: Duration) {
    if stream.write_all(&intake::error_answer(error)).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut chunk = [0u8; 16 * 1024];
        while let Ok(1..) = stream.read(&mut chunk).await {}
    };
    let _ = tokio::time::timeout(patience, drain).await;
}

/// A connection whose first bytes were already read: they are read again first.
struct Replayed {
    prefix: Vec<u8>,
    offset: usize,
    stream: TcpStream,
}

impl AsyncRead for Replayed {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.offset < this.prefix.len() {
            let count = buffer.remaining().min(this.prefix.len() - this.offset);
            buffer.put_slice(&this.prefix[this.offset..this.offset + count]);
            this.offset += count;
            if this.offset == this.prefix.len() {
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(context, buffer)
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(context, bytes)
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(context)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::sync::mpsc;

    /// A gateway of one route (`GET /ok`) on a free port, with `settings`.
    async fn listening(settings: ConnectionSettings) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = Router::new().route("/ok", get(|| async { "fine" }));
        tokio::spawn(serve(listener, router, settings, std::future::pending()));
        address
    }

    /// Everything the server sends until it closes the connection.
    async fn until_closed(stream: &mut TcpStream) -> String {
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await.unwrap();
        String::from_utf8_lossy(&received).into_owned()
    }

    #[tokio::test]
    async fn an_unfinished_head_gets_408_and_holds_the_only_place_until_then() {
        let settings = ConnectionSettings {
            header_timeout: Duration::from_secs(1),
            max_connections: 1,
            limits: intake::DEFAULT_LIMITS,
        };
        let address = listening(settings).await;
        let (finished, mut order) = mpsc::unbounded_channel();
        let mut loris = TcpStream::connect(address).await.unwrap();
        loris.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let loris_finished = finished.clone();
        let loris_task = tokio::spawn(async move {
            let answer = until_closed(&mut loris).await;
            loris_finished.send("loris").unwrap();
            answer
        });
        // The second client connects while the loris holds the only place: it is served only
        // once the gateway has disconnected the loris.
        let mut patient = TcpStream::connect(address).await.unwrap();
        patient.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let patient_task = tokio::spawn(async move {
            let answer = until_closed(&mut patient).await;
            finished.send("patient").unwrap();
            answer
        });
        let loris_answer = loris_task.await.unwrap();
        let patient_answer = patient_task.await.unwrap();
        assert!(loris_answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{loris_answer}");
        assert!(loris_answer.contains("\"code\":\"request_timeout\""), "{loris_answer}");
        assert!(patient_answer.starts_with("HTTP/1.1 200 OK\r\n"), "{patient_answer}");
        assert!(patient_answer.ends_with("fine"), "the head was replayed to hyper whole: {patient_answer}");
        assert_eq!((order.recv().await, order.recv().await), (Some("loris"), Some("patient")));
    }

    #[tokio::test]
    async fn a_refused_head_is_answered_and_its_body_read_before_the_close() {
        let limits = Limits { max_body: 1000, ..intake::DEFAULT_LIMITS };
        let settings =
            ConnectionSettings { header_timeout: Duration::from_secs(30), max_connections: 8, limits };
        let address = listening(settings).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        let body = vec![b'x'; 4 << 20];
        let head = format!("POST /ok HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
        client.write_all(head.as_bytes()).await.unwrap();
        // Every byte of the refused body is taken (a reset would fail this write), then the
        // answer is there to read.
        client.write_all(&body).await.unwrap();
        client.shutdown().await.unwrap();
        let answer = until_closed(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
    }
}
