//! The gateway's side of one board: machine-mode ids handed out, each request's records routed
//! to it, cancels sent for requests dropped before they ended, and what happens when the board
//! (re)boots or its line drops (every request in flight fails as unavailable).

use super::records::{Line, Record, parse_line};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::{Duration, timeout};

/// What a request hears: a record from the board, or that the board went away.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// A record about the request.
    Record(Record),
    /// The board rebooted or its line dropped; the request is lost.
    Lost(String),
}

/// Why a request could not be sent or answered.
#[derive(Clone, Debug, PartialEq)]
pub enum HubError {
    /// The board is not there or not ready (503).
    Unavailable(String),
    /// The board sent nothing about the request for the deadline (504).
    Silent,
}

/// The connection state the hub keeps.
#[derive(Default)]
struct State {
    /// Where lines for the board go, while a link is up.
    writer: Option<UnboundedSender<Vec<u8>>>,
    /// Whether the board serves (its ready line or a record seen since the link came up).
    ready: bool,
    /// Why the board is not usable, when it is not.
    down_reason: String,
    /// Requests in flight: where their records go.
    routes: HashMap<u64, Route>,
    /// Generations the board confirmed it cancelled (a `done` with finish "cancelled" after
    /// the gateway's cancel).
    confirmed_cancels: u64,
    /// Times the link came up.
    connections: u64,
    /// Changes whenever the board may have restarted (the link came up or dropped, or the
    /// board printed its boot banner): what was learned about it before may be stale.
    epoch: u64,
}

/// Where a request's records go.
enum Route {
    /// To its ticket; `generation` marks a generation.
    Live {
        /// The ticket's end of the channel.
        sender: UnboundedSender<Delivery>,
        /// Whether it is a generation.
        generation: bool,
    },
    /// A generation whose ticket was dropped and which was cancelled: nobody reads its records;
    /// it is in flight on the board until its final record arrives.
    Cancelling,
}

/// One board, shared by every HTTP request.
pub struct Hub {
    state: Mutex<State>,
    next_id: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// A hub with no board yet.
    pub fn new() -> Self {
        let state = State { down_reason: "the board is not connected yet".into(), ..State::default() };
        Self { state: Mutex::new(state), next_id: AtomicU64::new(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh machine-mode id (never reused, across reconnections too).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The link to the board came up: lines go to `writer`. The board is not ready until its
    /// ready line or a record arrives.
    pub fn attach(&self, writer: UnboundedSender<Vec<u8>>) {
        let mut state = self.lock();
        state.writer = Some(writer);
        state.ready = false;
        state.down_reason = "the board is booting".into();
        state.connections += 1;
        state.epoch += 1;
    }

    /// The link dropped: every request in flight is lost with `reason`.
    pub fn detach(&self, reason: &str) {
        let mut state = self.lock();
        state.writer = None;
        state.ready = false;
        state.down_reason = reason.to_string();
        state.epoch += 1;
        Self::fail_all(&mut state, reason);
    }

    fn fail_all(state: &mut State, reason: &str) {
        for (_, route) in state.routes.drain() {
            if let Route::Live { sender, .. } = route {
                let _ = sender.send(Delivery::Lost(reason.to_string()));
            }
        }
    }

    /// Whether the board serves.
    pub fn is_ready(&self) -> bool {
        self.lock().ready
    }

    /// Why the board is not ready (empty when it is).
    pub fn status(&self) -> (bool, String) {
        let state = self.lock();
        (state.ready, if state.ready { String::new() } else { state.down_reason.clone() })
    }

    /// The board's epoch: it changes whenever the board may have restarted.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Times the link came up since the gateway started.
    pub fn connections(&self) -> u64 {
        self.lock().connections
    }

    /// Generations in flight on the board (sent and not yet ended, cancelled ones included
    /// until the board ends them).
    pub fn generations_in_flight(&self) -> usize {
        let state = self.lock();
        state
            .routes
            .values()
            .filter(|route| matches!(route, Route::Live { generation: true, .. } | Route::Cancelling))
            .count()
    }

    /// Generations the board confirmed it cancelled after their client went away.
    pub fn confirmed_cancels(&self) -> u64 {
        self.lock().confirmed_cancels
    }

    /// Takes one line the board printed: routes a record to its request, and notes a boot (every
    /// request in flight is lost) or readiness.
    pub fn handle_line(&self, line: &str) {
        match parse_line(line) {
            Line::Record(id, record) => {
                let mut state = self.lock();
                if state.writer.is_some() && !state.ready {
                    state.ready = true;
                    state.down_reason.clear();
                }
                let Some(id) = id else { return };
                match state.routes.get(&id) {
                    Some(Route::Live { sender, .. }) => {
                        let _ = sender.send(Delivery::Record(record));
                    }
                    Some(Route::Cancelling) => {
                        if let Record::Done(finished) = &record {
                            state.confirmed_cancels += u64::from(finished.finish == "cancelled");
                        }
                        if matches!(record, Record::Done(_) | Record::Error(_)) {
                            state.routes.remove(&id);
                        }
                    }
                    None => {}
                }
            }
            Line::Booting => {
                let mut state = self.lock();
                state.ready = false;
                state.down_reason = "the board is rebooting".into();
                state.epoch += 1;
                Self::fail_all(&mut state, "the board rebooted");
            }
            Line::Ready => {
                let mut state = self.lock();
                if state.writer.is_some() {
                    state.ready = true;
                    state.down_reason.clear();
                }
            }
            Line::Other => {}
        }
    }

    /// Writes a line to the board regardless of readiness (probes, cancels); false when no link
    /// is up.
    pub fn send_raw(&self, line: &str) -> bool {
        let state = self.lock();
        state.writer.as_ref().is_some_and(|writer| writer.send(line.as_bytes().to_vec()).is_ok())
    }

    /// Sends the request that `line_for(id)` makes, with a fresh id, and returns the ticket its
    /// records come through. `generation` marks a generation (cancelled if the ticket is dropped
    /// before it ends, and counted in the queue depth).
    pub fn submit<E>(
        self: &Arc<Self>,
        generation: bool,
        line_for: impl FnOnce(u64) -> Result<String, E>,
    ) -> Result<Result<Ticket, E>, HubError> {
        let id = self.next_id();
        let line = match line_for(id) {
            Ok(line) => line,
            Err(error) => return Ok(Err(error)),
        };
        let (sender, receiver) = unbounded_channel();
        let mut state = self.lock();
        if !state.ready {
            return Err(HubError::Unavailable(state.down_reason.clone()));
        }
        let Some(writer) = &state.writer else {
            return Err(HubError::Unavailable(state.down_reason.clone()));
        };
        if writer.send(line.into_bytes()).is_err() {
            return Err(HubError::Unavailable("the board's line is closed".into()));
        }
        state.routes.insert(id, Route::Live { sender, generation });
        Ok(Ok(Ticket { hub: Arc::clone(self), id, receiver, generation, ended: false }))
    }

    /// Sends a request that is answered by one record (models, mem, load) and waits for it, at
    /// most `deadline`.
    pub async fn ask(
        self: &Arc<Self>,
        request: serde_json::Value,
        deadline: Duration,
    ) -> Result<Record, HubError> {
        let ticket = self.submit(false, |id| {
            let mut request = request;
            request["id"] = id.into();
            Ok::<_, ()>(format!("{request}\r"))
        })?;
        let Ok(mut ticket) = ticket else { return Err(HubError::Unavailable("unreachable".into())) };
        let record = ticket.next(deadline).await;
        ticket.end();
        record
    }

    /// The ticket of request `id` is gone: its route goes, or, when `cancel` asks (a generation
    /// that has not ended), the board is told to cancel it and it stays in flight until the
    /// board ends it.
    fn forget(&self, id: u64, cancel: bool) {
        let mut state = self.lock();
        let Some(writer) = state.writer.clone().filter(|_| cancel && state.routes.contains_key(&id)) else {
            state.routes.remove(&id);
            return;
        };
        state.routes.insert(id, Route::Cancelling);
        let cancel_id = self.next_id();
        let line = format!("{{\"id\":{cancel_id},\"op\":\"cancel\",\"target\":{id}}}\r");
        let _ = writer.send(line.into_bytes());
    }
}

/// One request in flight. Dropping a generation's ticket before its end cancels it on the board.
pub struct Ticket {
    hub: Arc<Hub>,
    id: u64,
    receiver: UnboundedReceiver<Delivery>,
    generation: bool,
    ended: bool,
}

impl Ticket {
    /// The request's machine-mode id.
    #[cfg(test)]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next record about the request, waiting at most `deadline` for it.
    pub async fn next(&mut self, deadline: Duration) -> Result<Record, HubError> {
        match timeout(deadline, self.receiver.recv()).await {
            Err(_) => Err(HubError::Silent),
            Ok(Some(Delivery::Record(record))) => Ok(record),
            Ok(Some(Delivery::Lost(reason))) => {
                self.ended = true;
                Err(HubError::Unavailable(reason))
            }
            Ok(None) => {
                self.ended = true;
                Err(HubError::Unavailable("the board's line closed".into()))
            }
        }
    }

    /// The request ended (its final record arrived): no cancel is owed.
    pub fn end(mut self) {
        self.ended = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.hub.forget(self.id, self.generation && !self.ended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_hub() -> (Arc<Hub>, UnboundedReceiver<Vec<u8>>) {
        let hub = Arc::new(Hub::new());
        let (writer, lines) = unbounded_channel();
        hub.attach(writer);
        hub.handle_line("Type /help for commands, or a JSON request for machine mode.");
        (hub, lines)
    }

    fn sent(lines: &mut UnboundedReceiver<Vec<u8>>) -> String {
        String::from_utf8(lines.try_recv().expect("a line was sent")).unwrap()
    }

    #[tokio::test]
    async fn records_reach_their_request_and_a_dropped_generation_is_cancelled() {
        let (hub, mut lines) = ready_hub();
        let line = |id| Ok::<_, ()>(format!("{{\"id\":{id}}}\r"));
        let mut first = hub.submit(true, line).unwrap().unwrap();
        let second = hub.submit(true, line).unwrap().unwrap();
        assert_ne!(first.id(), second.id());
        assert_eq!(sent(&mut lines), format!("{{\"id\":{}}}\r", first.id()));
        assert_eq!(hub.generations_in_flight(), 2);
        hub.handle_line(&format!("{{\"id\":{},\"event\":\"token\",\"text\":\"a\"}}", first.id()));
        hub.handle_line(&format!("{{\"id\":{},\"event\":\"token\",\"text\":\"b\"}}", second.id()));
        assert_eq!(first.next(Duration::from_secs(5)).await, Ok(Record::Token("a".into())));
        let second_id = second.id();
        drop(second);
        let _ = sent(&mut lines);
        assert_eq!(
            sent(&mut lines).trim_end().split_once(",\"op\"").map(|(_, rest)| rest.to_string()),
            Some(format!(":\"cancel\",\"target\":{second_id}}}"))
        );
        first.end();
        assert!(lines.try_recv().is_err(), "an ended request owes no cancel");
        assert_eq!(hub.generations_in_flight(), 1, "the cancelled one runs until the board ends it");
        hub.handle_line(&format!("{{\"id\":{second_id},\"event\":\"token\",\"text\":\"c\"}}"));
        assert_eq!(hub.generations_in_flight(), 1);
        hub.handle_line(&format!(
            "{{\"id\":{second_id},\"event\":\"done\",\"usage\":{{}},\"timings\":{{}},\"finish\":\"cancelled\",\"model\":\"m\"}}"
        ));
        assert_eq!((hub.generations_in_flight(), hub.confirmed_cancels()), (0, 1));
    }

    #[tokio::test]
    async fn a_reboot_or_a_dropped_line_fails_requests_in_flight() {
        let (hub, _lines) = ready_hub();
        let line = |id| Ok::<_, ()>(format!("{{\"id\":{id}}}\r"));
        let mut ticket = hub.submit(true, line).unwrap().unwrap();
        hub.handle_line("Tessera 0.1.0 - LLM inference unikernel");
        assert_eq!(
            ticket.next(Duration::from_secs(5)).await,
            Err(HubError::Unavailable("the board rebooted".into()))
        );
        assert!(!hub.is_ready());
        assert!(matches!(hub.submit(true, line), Err(HubError::Unavailable(_))), "refused while it boots");
        hub.handle_line("Type /help for commands");
        let mut ticket = hub.submit(true, line).unwrap().unwrap();
        hub.detach("the serial line dropped");
        assert_eq!(
            ticket.next(Duration::from_secs(5)).await,
            Err(HubError::Unavailable("the serial line dropped".into()))
        );
        assert_eq!(hub.status(), (false, "the serial line dropped".to_string()));
        let (writer, _lines) = unbounded_channel();
        hub.attach(writer);
        assert!(!hub.is_ready());
        hub.handle_line("{\"id\":77,\"event\":\"models\",\"active\":null,\"models\":[]}");
        assert!(hub.is_ready(), "a record means the board serves");
        assert_eq!(hub.connections(), 2);
        assert_eq!(hub.epoch(), 4, "two attaches, a boot banner and a detach");
    }

    #[tokio::test]
    async fn a_silent_board_times_out() {
        let (hub, _lines) = ready_hub();
        let mut ticket = hub.submit(false, |id| Ok::<_, ()>(format!("{id}\r"))).unwrap().unwrap();
        assert_eq!(ticket.next(Duration::from_millis(1)).await, Err(HubError::Silent));
    }
}
