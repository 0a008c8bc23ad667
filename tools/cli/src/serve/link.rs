//! The line to the board: a serial device (115200 8N1, raw) or a QEMU the gateway boots
//! itself with the board's serial console on the child's pipes, and the loop that keeps it up:
//! it feeds every line to the [`Hub`], and when the line drops (QEMU exits, the device goes
//! away) it fails the requests in flight, then opens it again (booting a new QEMU).

use super::hub::Hub;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// How the board is reached.
#[derive(Clone, Debug)]
pub enum Transport {
    /// A serial device such as /dev/ttyUSB0, and whether RTS/CTS flow control is on.
    Serial { path: PathBuf, rts_cts: bool },
    /// A QEMU the gateway starts.
    Qemu(QemuBoard),
}

/// The QEMU the gateway boots: binary, machine, kernel image, SD image and extra arguments.
#[derive(Clone, Debug)]
pub struct QemuBoard {
    /// qemu-system-aarch64 (or `$QEMU`).
    pub binary: String,
    /// The machine, such as raspi3b.
    pub machine: String,
    /// kernel8.img.
    pub kernel: PathBuf,
    /// The SD image with the models.
    pub sd: PathBuf,
    /// More arguments for QEMU.
    pub extra: Vec<String>,
}

impl QemuBoard {
    /// QEMU's arguments: the board, its kernel and card, and its serial console on stdio.
    pub fn arguments(&self) -> Vec<String> {
        let mut arguments: Vec<String> =
            ["-M", &self.machine, "-display", "none", "-monitor", "none", "-serial", "stdio"]
                .iter()
                .map(|argument| argument.to_string())
                .collect();
        arguments.push("-kernel".into());
        arguments.push(self.kernel.display().to_string());
        arguments.push("-drive".into());
        arguments.push(format!("file={},if=sd,format=raw", self.sd.display()));
        arguments.extend(self.extra.iter().cloned());
        arguments
    }
}

/// An open line: the board's lines come in, bytes for it go out.
struct Connection {
    lines: UnboundedReceiver<String>,
    writer: UnboundedSender<Vec<u8>>,
    child: Option<tokio::process::Child>,
}

/// The QEMU process id while one runs (0 otherwise), for `/health`.
pub static QEMU_PID: AtomicU32 = AtomicU32::new(0);

/// Bytes copied from `reader` and cut into lines (at `\n`) for `lines`.
async fn pump_lines(reader: impl tokio::io::AsyncRead + Unpin, lines: UnboundedSender<String>) {
    let mut reader = BufReader::new(reader);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if lines.send(String::from_utf8_lossy(&buffer).into_owned()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Boots `board` in QEMU with its console on the child's stdin and stdout. QEMU's own messages
/// (a bad argument, "terminating on signal 15 from pid …") go to the gateway's stderr, so a
/// board that stops without a word from the kernel still leaves a reason in the log.
fn open_qemu(board: &QemuBoard) -> Result<Connection, String> {
    for (what, path) in [("kernel", &board.kernel), ("SD image", &board.sd)] {
        if !path.is_file() {
            return Err(format!("the {what} {} is missing (make build sdcard)", path.display()));
        }
    }
    let mut child = tokio::process::Command::new(&board.binary)
        .args(board.arguments())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot start {}: {error}", board.binary))?;
    QEMU_PID.store(child.id().unwrap_or(0), Ordering::Relaxed);
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("QEMU's pipes are missing".into());
    };
    let (line_sender, lines) = unbounded_channel();
    tokio::spawn(pump_lines(stdout, line_sender));
    let (writer, mut outgoing) = unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            if stdin.write_all(&bytes).await.and(stdin.flush().await).is_err() {
                return;
            }
        }
    });
    Ok(Connection { lines, writer, child: Some(child) })
}

/// Opens the serial device at 115200 8N1 in raw mode (with RTS/CTS flow control when
/// `rts_cts`), with a reader and a writer thread.
fn open_serial(path: &Path, rts_cts: bool) -> Result<Connection, String> {
    let flow_control =
        if rts_cts { serialport::FlowControl::Hardware } else { serialport::FlowControl::None };
    let port = serialport::new(path.to_string_lossy(), 115_200)
        .data_bits(serialport::DataBits::Eight)
        .parity(serialport::Parity::None)
        .stop_bits(serialport::StopBits::One)
        .flow_control(flow_control)
        .timeout(Duration::from_millis(200))
        .open()
        .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    let mut reader = port.try_clone().map_err(|error| format!("{}: {error}", path.display()))?;
    let mut port_writer = port;
    let (line_sender, lines) = unbounded_channel();
    std::thread::spawn(move || {
        let mut pending = Vec::new();
        let mut buffer = [0u8; 1024];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => return,
                Ok(count) => pending.extend_from_slice(&buffer[..count]),
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(_) => return,
            }
            while let Some(end) = pending.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line_sender.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                    return;
                }
            }
        }
    });
    let (writer, mut outgoing) = unbounded_channel::<Vec<u8>>();
    std::thread::spawn(move || {
        while let Some(bytes) = outgoing.blocking_recv() {
            if port_writer.write_all(&bytes).and_then(|()| port_writer.flush()).is_err() {
                return;
            }
        }
    });
    Ok(Connection { lines, writer, child: None })
}

/// Keeps the line to the board up for as long as the gateway runs: opens it, feeds its lines to
/// `hub` (and to `log`, when given), and opens it again when it drops. On a serial line, where
/// the board may already be serving, a `models` request every two seconds finds out when it
/// answers.
pub async fn keep_up(hub: Arc<Hub>, transport: Transport, mut log: Option<std::fs::File>) {
    loop {
        let opened = match &transport {
            Transport::Qemu(board) => open_qemu(board),
            Transport::Serial { path, rts_cts } => open_serial(path, *rts_cts),
        };
        let mut connection = match opened {
            Ok(connection) => connection,
            Err(reason) => {
                eprintln!("tessera serve: {reason}; trying again");
                hub.detach(&reason);
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        hub.attach(connection.writer.clone());
        let prober = matches!(transport, Transport::Serial { .. }).then(|| {
            let hub = Arc::clone(&hub);
            tokio::spawn(async move {
                while !hub.is_ready() {
                    let id = hub.next_id();
                    hub.send_raw(&format!("{{\"id\":{id},\"op\":\"models\"}}\r"));
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            })
        });
        while let Some(line) = connection.lines.recv().await {
            if let Some(file) = &mut log {
                let _ = file.write_all(line.as_bytes());
            }
            hub.handle_line(&line);
        }
        if let Some(prober) = prober {
            prober.abort();
        }
        let reason = match &mut connection.child {
            Some(child) => {
                let status = child.wait().await.map(|status| status.to_string()).unwrap_or_default();
                QEMU_PID.store(0, Ordering::Relaxed);
                format!("QEMU exited ({status}); booting the board again")
            }
            None => "the serial line dropped; opening it again".to_string(),
        };
        eprintln!("tessera serve: {reason}");
        hub.detach(&reason);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_gets_the_board_its_card_and_a_serial_pipe() {
        let board = QemuBoard {
            binary: "qemu-system-aarch64".into(),
            machine: "raspi3b".into(),
            kernel: "build/kernel8.img".into(),
            sd: "build/sd.img".into(),
            extra: vec!["-accel".into(), "tcg,thread=single".into()],
        };
        let arguments = board.arguments().join(" ");
        assert_eq!(
            arguments,
            "-M raspi3b -display none -monitor none -serial stdio -kernel build/kernel8.img \
             -drive file=build/sd.img,if=sd,format=raw -accel tcg,thread=single"
        );
    }

    #[tokio::test]
    async fn lines_are_cut_at_newlines() {
        let (sender, mut lines) = unbounded_channel();
        pump_lines(&b"> {\"id\":1}\r\npartial"[..], sender).await;
        assert_eq!(lines.recv().await.as_deref(), Some("> {\"id\":1}\r\n"));
        assert_eq!(lines.recv().await.as_deref(), Some("partial"));
        assert_eq!(lines.recv().await, None);
    }
}
