//! `tessera serve`: the OpenAI-compatible gateway. It talks machine mode to one board (a serial
//! device, or a QEMU it boots) and serves the OpenAI HTTP API, `/health`, `/metrics` and a web
//! chat at `/`.

mod gateway;
mod http;
mod hub;
mod link;
mod listen;
mod metrics;
mod records;

use cli::{intake, openai};

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The options of `tessera serve`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("board").required(true).args(["serial", "qemu"])))]
pub struct ServeOptions {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The board's serial device (115200 8N1, raw), such as /dev/ttyUSB0.
    #[arg(long)]
    serial: Option<PathBuf>,
    /// RTS/CTS hardware flow control on --serial, for a board wired for it (GPIO 16/17) whose
    /// card's tessera.cfg says `uart_flow_control = rts_cts`.
    #[arg(long, requires = "serial")]
    rts_cts: bool,
    /// Boot the board in QEMU (with --kernel and --sd), its serial console on a pipe; QEMU is
    /// stopped when the gateway exits, and booted again if it dies (QEMU's own messages, such
    /// as why it stopped, go to the gateway's stderr).
    #[arg(long)]
    qemu: bool,
    /// kernel8.img for --qemu.
    #[arg(long, default_value = "build/kernel8.img")]
    kernel: PathBuf,
    /// The SD image for --qemu (its /models are the models served).
    #[arg(long, default_value = "build/sdcard.img")]
    sd: PathBuf,
    /// QEMU machine for --qemu.
    #[arg(long, default_value = "raspi3b")]
    machine: String,
    /// One more QEMU argument (repeatable), such as --qemu-arg=-accel --qemu-arg=tcg,thread=single.
    #[arg(long = "qemu-arg", allow_hyphen_values = true)]
    qemu_arguments: Vec<String>,
    /// Seconds a request may wait for the board's next record before it fails with 504.
    #[arg(long, default_value_t = 300)]
    deadline: u64,
    /// Seconds a model load may take.
    #[arg(long, default_value_t = 600)]
    load_deadline: u64,
    /// Largest request body, in bytes (more is refused with 413).
    #[arg(long, default_value_t = intake::DEFAULT_LIMITS.max_body)]
    max_body: usize,
    /// Seconds from a connection's accept to the end of its request head; a client that takes
    /// longer gets 408 and is disconnected (a slow-loris holds nothing for long).
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a request's body may take to arrive once its head has; then 408.
    #[arg(long, default_value_t = 30)]
    body_timeout: u64,
    /// Most client connections open at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Copy everything the board prints to this file.
    #[arg(long)]
    board_log: Option<PathBuf>,
}

/// Runs the gateway until Ctrl-C or SIGTERM.
pub fn serve(options: ServeOptions) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    runtime.block_on(run(options))
}

async fn run(options: ServeOptions) -> Result<(), String> {
    let transport = match &options.serial {
        Some(path) => link::Transport::Serial { path: path.clone(), rts_cts: options.rts_cts },
        None => link::Transport::Qemu(link::QemuBoard {
            binary: std::env::var("QEMU").unwrap_or_else(|_| "qemu-system-aarch64".into()),
            machine: options.machine.clone(),
            kernel: options.kernel.clone(),
            sd: options.sd.clone(),
            extra: options.qemu_arguments.clone(),
        }),
    };
    let log = match &options.board_log {
        Some(path) => {
            Some(std::fs::File::create(path).map_err(|error| format!("{}: {error}", path.display()))?)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", options.listen))?;
    let hub = Arc::new(hub::Hub::new());
    let board = tokio::spawn(link::keep_up(Arc::clone(&hub), transport, log));
    let deadlines = gateway::Deadlines {
        record: Duration::from_secs(options.deadline.max(1)),
        load: Duration::from_secs(options.load_deadline.max(1)),
        query: Duration::from_secs(options.deadline.clamp(1, 60)),
    };
    let gateway = Arc::new(gateway::Gateway::new(hub, deadlines));
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    eprintln!("tessera serve: listening on http://{address} (web chat at /, API at /v1)");
    let limits = intake::Limits { max_body: options.max_body, ..intake::DEFAULT_LIMITS };
    let settings = listen::ConnectionSettings {
        header_timeout: Duration::from_secs(options.header_timeout.max(1)),
        max_connections: options.max_connections,
        limits,
    };
    let body_timeout = Duration::from_secs(options.body_timeout.max(1));
    listen::serve(listener, http::router(gateway, limits.max_body, body_timeout), settings, stop_signal())
        .await;
    // Dropping the board's task stops QEMU (it is killed when its handle goes).
    board.abort();
    let _ = board.await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
