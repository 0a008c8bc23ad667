//! What the gateway does for each API call, apart from HTTP: the model a request names made
//! active first (a hot-swap on the board) or refused, the generation sent, its records turned
//! into one answer or a stream of chunks, and its end counted; a stream whose client went away
//! is cancelled on the board.

use super::hub::{Hub, HubError, Ticket};
use super::metrics::{BoardGauges, Metrics};
use super::openai::{self, AnswerIdentity, ApiError, Endpoint, Generation};
use super::records::{Finished, Record};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// How long the gateway waits for the board.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// Longest silence about a request (between two of its records) before 504.
    pub record: Duration,
    /// Longest wait for a model load.
    pub load: Duration,
    /// Longest wait for a `models` or `mem` answer.
    pub query: Duration,
}

/// The active model, if any, and every model on the card with its size in bytes.
type CardModels = (Option<String>, Vec<(String, u64)>);

/// What the gateway knows of the card's models, and in which epoch of the board it learned it.
struct KnownModels {
    epoch: u64,
    active: Option<String>,
    models: Vec<(String, u64)>,
}

/// The gateway's shared state.
pub struct Gateway {
    /// The board.
    pub hub: Arc<Hub>,
    /// The card's models and the active one, from the last `models` answer, kept up to date by
    /// loads and by the model each answer names; forgotten when the board may have restarted.
    known: Mutex<Option<KnownModels>>,
    metrics: Mutex<Metrics>,
    deadlines: Deadlines,
    answers: AtomicU64,
    /// Held while a request makes sure its model is the active one.
    model_switch: tokio::sync::Mutex<()>,
}

/// A generation's answer: whole, or a stream of server-sent events.
pub enum Answer {
    /// The whole answer object.
    Whole(Value),
    /// Events as they come (each one whole `data:` event).
    Stream(mpsc::Receiver<String>),
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// The API error for a hub failure.
fn hub_error(error: HubError, deadline: Duration) -> ApiError {
    match error {
        HubError::Unavailable(reason) => ApiError::unavailable(reason),
        HubError::Silent => ApiError::silent(deadline.as_secs()),
    }
}

impl Gateway {
    /// A gateway over `hub`.
    pub fn new(hub: Arc<Hub>, deadlines: Deadlines) -> Self {
        Self {
            hub,
            known: Mutex::new(None),
            metrics: Mutex::new(Metrics::new()),
            deadlines,
            answers: AtomicU64::new(1),
            model_switch: tokio::sync::Mutex::new(()),
        }
    }

    fn metrics(&self) -> std::sync::MutexGuard<'_, Metrics> {
        self.metrics.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts an API call to `endpoint` answered with `status`.
    pub fn count_request(&self, endpoint: &str, status: u16) {
        self.metrics().count_request(endpoint, status);
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Option<KnownModels>> {
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The card's models and the active one as last learned, if still of this epoch.
    fn known_models(&self) -> Option<CardModels> {
        let epoch = self.hub.epoch();
        let known = self.known();
        known
            .as_ref()
            .filter(|known| known.epoch == epoch)
            .map(|known| (known.active.clone(), known.models.clone()))
    }

    /// `model` answered or was loaded: it is the active one.
    fn note_active(&self, model: &str) {
        let epoch = self.hub.epoch();
        if let Some(known) = self.known().as_mut().filter(|known| known.epoch == epoch) {
            known.active = Some(model.to_string());
        }
    }

    /// The card's models and the active one (the `models` op).
    pub async fn models(&self) -> Result<CardModels, ApiError> {
        let query = self.deadlines.query;
        let epoch = self.hub.epoch();
        match self.hub.ask(json!({"op": "models"}), query).await.map_err(|error| hub_error(error, query))? {
            Record::Models { active, models } => {
                *self.known() = Some(KnownModels { epoch, active: active.clone(), models: models.clone() });
                Ok((active, models))
            }
            Record::Error(message) => Err(ApiError::new(503, "server_error", "board_unavailable", message)),
            other => {
                Err(ApiError::new(502, "server_error", "board_error", format!("unexpected answer {other:?}")))
            }
        }
    }

    /// `GET /v1/models`.
    pub async fn model_list(&self) -> Result<Value, ApiError> {
        let (active, models) = self.models().await?;
        Ok(openai::model_list(active.as_deref(), &models, unix_seconds()))
    }

    /// `/metrics`: the gateway's figures and, when the board answers, its pools.
    pub async fn metrics_text(&self) -> String {
        let mem = match self.hub.ask(json!({"op": "mem"}), self.deadlines.query).await {
            Ok(Record::Mem(value)) => Some(value),
            _ => None,
        };
        let gauges = BoardGauges {
            up: self.hub.is_ready(),
            queue_depth: self.hub.generations_in_flight(),
            connections: self.hub.connections(),
            confirmed_cancels: self.hub.confirmed_cancels(),
        };
        self.metrics().render(&gauges, mem.as_ref())
    }

    /// Makes the model `asked` names the active one (loading it on the board when it is not),
    /// or the active one when none is named; returns its file name.
    async fn settle_model(&self, asked: Option<&str>) -> Result<String, ApiError> {
        let _switching = self.model_switch.lock().await;
        let (active, models) = match self.known_models() {
            Some(known) => known,
            None => self.models().await?,
        };
        let Some(asked) = asked else {
            return active.ok_or_else(|| ApiError::unavailable("the board has no model loaded"));
        };
        let Some(name) = openai::resolve_model(asked, &models) else {
            return Err(ApiError::unknown_model(asked));
        };
        if active.as_deref() == Some(name) {
            return Ok(name.to_string());
        }
        let load = self.deadlines.load;
        match self
            .hub
            .ask(json!({"op": "load", "model": name}), load)
            .await
            .map_err(|error| hub_error(error, load))?
        {
            Record::Loaded(model) => {
                self.note_active(&model);
                Ok(model)
            }
            Record::Error(message) => Err(ApiError::new(503, "server_error", "model_load_failed", message)),
            other => {
                Err(ApiError::new(502, "server_error", "board_error", format!("unexpected answer {other:?}")))
            }
        }
    }

    /// Runs one generation: the model settled, the request sent, and its first record awaited
    /// (so a refusal still gets its status), then the whole answer or a stream.
    pub async fn generate(self: &Arc<Self>, generation: Generation) -> Result<Answer, ApiError> {
        let model = self.settle_model(generation.model.as_deref()).await?;
        let record_deadline = self.deadlines.record;
        let mut ticket = self
            .hub
            .submit(true, |id| generation.line(id))
            .map_err(|error| hub_error(error, record_deadline))??;
        let first = ticket.next(record_deadline).await.map_err(|error| hub_error(error, record_deadline))?;
        if let Record::Error(message) = &first {
            ticket.end();
            return Err(openai::board_refusal(message));
        }
        let serial = self.answers.fetch_add(1, Ordering::Relaxed);
        let identity = AnswerIdentity::new(generation.endpoint, serial, unix_seconds(), &model);
        if generation.stream {
            let (events, receiver) = mpsc::channel(64);
            let gateway = Arc::clone(self);
            tokio::spawn(async move { gateway.stream(ticket, first, generation, identity, events).await });
            Ok(Answer::Stream(receiver))
        } else {
            self.collect(ticket, first, generation.endpoint, identity).await.map(Answer::Whole)
        }
    }

    /// The records of a generation gathered into one answer.
    async fn collect(
        &self,
        mut ticket: Ticket,
        first: Record,
        endpoint: Endpoint,
        identity: AnswerIdentity,
    ) -> Result<Value, ApiError> {
        let deadline = self.deadlines.record;
        let mut text = String::new();
        let mut record = first;
        loop {
            match record {
                Record::Token(piece) => text.push_str(&piece),
                Record::Done(finished) => {
                    ticket.end();
                    self.count_finished(&finished);
                    let usage = openai::usage(finished.prompt_tokens, finished.completion_tokens);
                    let identity = AnswerIdentity { model: finished.model.clone(), ..identity };
                    return Ok(openai::answer(
                        endpoint,
                        &identity,
                        &text,
                        openai::finish_reason(&finished.finish),
                        usage,
                    ));
                }
                Record::Error(message) => {
                    ticket.end();
                    return Err(openai::board_refusal(&message));
                }
                _ => {}
            }
            record = ticket.next(deadline).await.map_err(|error| hub_error(error, deadline))?;
        }
    }

    fn count_finished(&self, finished: &Finished) {
        self.note_active(&finished.model);
        self.metrics().count_generation(
            finished.prompt_tokens,
            finished.completion_tokens,
            finished.first_token_ms,
            finished.tokens_per_second,
        );
    }

    /// Streams a generation's records as chunks to `events` until it ends; when the client
    /// goes away (`events` closes) the ticket is dropped, which cancels it on the board.
    async fn stream(
        self: Arc<Self>,
        mut ticket: Ticket,
        first: Record,
        generation: Generation,
        identity: AnswerIdentity,
        events: mpsc::Sender<String>,
    ) {
        let endpoint = generation.endpoint;
        let deadline = self.deadlines.record;
        let mut record = Ok(first);
        let mut first_chunk = true;
        loop {
            let event = match record {
                Ok(Record::Token(piece)) => {
                    let chunk = openai::chunk(endpoint, &identity, Some(&piece), first_chunk, None);
                    first_chunk = false;
                    openai::event(&chunk)
                }
                Ok(Record::Done(finished)) => {
                    ticket.end();
                    self.count_finished(&finished);
                    let reason = openai::finish_reason(&finished.finish);
                    let mut text =
                        openai::event(&openai::chunk(endpoint, &identity, None, first_chunk, Some(reason)));
                    if generation.include_usage {
                        let usage = openai::usage(finished.prompt_tokens, finished.completion_tokens);
                        text.push_str(&openai::event(&openai::usage_chunk(endpoint, &identity, usage)));
                    }
                    text.push_str(openai::DONE_EVENT);
                    let _ = events.send(text).await;
                    return;
                }
                Ok(Record::Error(message)) => {
                    ticket.end();
                    let error = openai::board_refusal(&message);
                    let _ =
                        events.send(format!("{}{}", openai::event(&error.body()), openai::DONE_EVENT)).await;
                    return;
                }
                Ok(_) => String::new(),
                Err(error) => {
                    let error = hub_error(error, deadline);
                    let _ =
                        events.send(format!("{}{}", openai::event(&error.body()), openai::DONE_EVENT)).await;
                    return;
                }
            };
            if !event.is_empty() && events.send(event).await.is_err() {
                self.metrics().count_cancel();
                return;
            }
            record = tokio::select! {
                next = ticket.next(deadline) => next,
                () = events.closed() => {
                    self.metrics().count_cancel();
                    return;
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
    use tokio::task::JoinHandle;

    /// A gateway over a hub whose board is this test: it reads the lines sent and answers.
    fn gateway() -> (Arc<Gateway>, UnboundedReceiver<Vec<u8>>) {
        gateway_with(Duration::from_secs(30))
    }

    /// The same, waiting at most `record` for each record of a generation.
    fn gateway_with(record: Duration) -> (Arc<Gateway>, UnboundedReceiver<Vec<u8>>) {
        let hub = Arc::new(Hub::new());
        let (writer, lines) = unbounded_channel();
        hub.attach(writer);
        hub.handle_line("Type /help for commands");
        let deadlines = Deadlines { record, load: Duration::from_secs(30), query: Duration::from_secs(30) };
        (Arc::new(Gateway::new(hub, deadlines)), lines)
    }

    #[tokio::test]
    async fn a_silent_board_is_504_and_a_lost_one_503() {
        let (gateway, mut lines) = gateway_with(Duration::from_millis(1));
        let generation = openai::parse_completion(br#"{"prompt":"Hi"}"#).unwrap();
        let running = start(&gateway, generation);
        let models = request(&mut lines).await;
        answer(&gateway, &models["id"], MODELS);
        let generate = request(&mut lines).await;
        let error = running.await.unwrap().err().unwrap();
        assert_eq!((error.status, error.code), (504, Some("board_timeout")));
        let cancel = request(&mut lines).await;
        assert_eq!(cancel["target"], generate["id"], "the silent request is cancelled");

        let (gateway, mut lines) = gateway_with(Duration::from_secs(30));
        let generation = openai::parse_completion(br#"{"prompt":"Hi"}"#).unwrap();
        let running = start(&gateway, generation);
        let models = request(&mut lines).await;
        answer(&gateway, &models["id"], MODELS);
        let _generate = request(&mut lines).await;
        gateway.hub.detach("QEMU exited");
        let error = running.await.unwrap().err().unwrap();
        assert_eq!((error.status, error.message.as_str()), (503, "QEMU exited"));
        let refused = openai::parse_completion(br#"{"prompt":"Hi"}"#).unwrap();
        assert_eq!(
            gateway.generate(refused).await.err().map(|error| error.status),
            Some(503),
            "503 while it is down"
        );
        let (writer, mut lines) = unbounded_channel();
        gateway.hub.attach(writer);
        gateway.hub.handle_line("Type /help for commands");
        let again = openai::parse_completion(br#"{"prompt":"Hi"}"#).unwrap();
        let running = start(&gateway, again);
        let models = request(&mut lines).await;
        assert_eq!(models["op"], "models", "after a reboot the card's models are asked again");
        answer(&gateway, &models["id"], MODELS);
        let generate = request(&mut lines).await;
        answer(&gateway, &generate["id"], DONE);
        assert!(matches!(running.await.unwrap(), Ok(Answer::Whole(_))));
    }

    /// The next request the board got, parsed.
    /// Starts `gateway.generate(generation)` as a task of its own.
    fn start(gateway: &Arc<Gateway>, generation: Generation) -> JoinHandle<Result<Answer, ApiError>> {
        let gateway = Arc::clone(gateway);
        tokio::spawn(async move { gateway.generate(generation).await })
    }

    async fn request(lines: &mut UnboundedReceiver<Vec<u8>>) -> Value {
        let bytes = lines.recv().await.expect("a request");
        serde_json::from_slice(String::from_utf8(bytes).unwrap().trim_end().as_bytes()).unwrap()
    }

    fn answer(gateway: &Gateway, id: &Value, record: &str) {
        gateway.hub.handle_line(&format!("{{\"id\":{id},{record}}}\r\n"));
    }

    const MODELS: &str = r#""event":"models","active":"a.gguf","models":[{"name":"a.gguf","bytes":1},{"name":"b.gguf","bytes":2}]"#;
    const DONE: &str = r#""event":"done","usage":{"prompt_tokens":4,"cached_tokens":0,"completion_tokens":2},"timings":{"first_token_ms":5.0,"total_ms":9.0,"tokens_per_second":3.0},"finish":"stop","model":"b.gguf""#;

    #[tokio::test]
    async fn another_model_is_loaded_first_and_the_answer_is_whole() {
        let (gateway, mut lines) = gateway();
        let generation =
            openai::parse_chat(br#"{"model":"b","messages":[{"role":"user","content":"Hi"}]}"#).unwrap();
        let running = start(&gateway, generation);
        let models = request(&mut lines).await;
        assert_eq!(models["op"], "models");
        answer(&gateway, &models["id"], MODELS);
        let load = request(&mut lines).await;
        assert_eq!((load["op"].as_str(), load["model"].as_str()), (Some("load"), Some("b.gguf")));
        answer(&gateway, &load["id"], r#""event":"loaded","model":"b.gguf""#);
        let generate = request(&mut lines).await;
        assert_eq!(generate["messages"][0]["content"], "Hi");
        answer(&gateway, &generate["id"], r#""event":"token","text":"Par""#);
        answer(&gateway, &generate["id"], r#""event":"token","text":"is""#);
        answer(&gateway, &generate["id"], DONE);
        let Ok(Answer::Whole(whole)) = running.await.unwrap() else { panic!("no whole answer") };
        assert_eq!(whole["choices"][0]["message"]["content"], "Paris");
        assert_eq!(whole["choices"][0]["finish_reason"], "stop");
        assert_eq!(whole["usage"]["total_tokens"], 6);
        assert_eq!(whole["model"], "b.gguf");
        assert_eq!(gateway.hub.generations_in_flight(), 0);
    }

    #[tokio::test]
    async fn unknown_models_and_refusals_get_their_statuses() {
        let (gateway, mut lines) = gateway();
        let unknown =
            openai::parse_chat(br#"{"model":"zzz","messages":[{"role":"user","content":"Hi"}]}"#).unwrap();
        let running = start(&gateway, unknown);
        let models = request(&mut lines).await;
        answer(&gateway, &models["id"], MODELS);
        assert_eq!(running.await.unwrap().err().map(|error| error.status), Some(404));

        let busy = openai::parse_completion(br#"{"prompt":"Hi"}"#).unwrap();
        let running = start(&gateway, busy);
        let generate = request(&mut lines).await;
        assert_eq!(generate["op"], "generate", "the card's models are known: no second query");
        answer(
            &gateway,
            &generate["id"],
            r#""event":"error","message":"too many requests: 128 are already waiting""#,
        );
        assert_eq!(running.await.unwrap().err().map(|error| error.status), Some(429));
    }

    #[tokio::test]
    async fn a_stream_sends_chunks_and_a_client_that_leaves_cancels() {
        let (gateway, mut lines) = gateway();
        let generation =
            openai::parse_chat(br#"{"messages":[{"role":"user","content":"Hi"}],"stream":true,"stream_options":{"include_usage":true}}"#)
                .unwrap();
        let running = start(&gateway, generation);
        let models = request(&mut lines).await;
        answer(&gateway, &models["id"], MODELS);
        let generate = request(&mut lines).await;
        answer(&gateway, &generate["id"], r#""event":"token","text":"Pa""#);
        let Ok(Answer::Stream(mut events)) = running.await.unwrap() else { panic!("no stream") };
        let first = events.recv().await.unwrap();
        let chunk: Value = serde_json::from_str(first.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(chunk["choices"][0]["delta"], json!({"role": "assistant", "content": "Pa"}));
        answer(&gateway, &generate["id"], DONE);
        let last = events.recv().await.unwrap();
        assert!(last.contains("\"finish_reason\":\"stop\""), "{last}");
        assert!(last.contains("\"total_tokens\":6"), "{last}");
        assert!(last.ends_with("data: [DONE]\n\n"));

        // A second stream whose client goes away after its first chunk.
        let generation =
            openai::parse_chat(br#"{"messages":[{"role":"user","content":"Hi"}],"stream":true}"#).unwrap();
        let running = start(&gateway, generation);
        let generate = request(&mut lines).await;
        answer(&gateway, &generate["id"], r#""event":"token","text":"x""#);
        let Ok(Answer::Stream(events)) = running.await.unwrap() else { panic!("no stream") };
        drop(events);
        let cancel = request(&mut lines).await;
        assert_eq!((cancel["op"].as_str(), &cancel["target"]), (Some("cancel"), &generate["id"]));
        assert_eq!(gateway.hub.generations_in_flight(), 1, "in flight until the board ends it");
        answer(&gateway, &generate["id"], &DONE.replace("\"stop\"", "\"cancelled\""));
        assert_eq!((gateway.hub.generations_in_flight(), gateway.hub.confirmed_cancels()), (0, 1));
    }
}
