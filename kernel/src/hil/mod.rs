//! Hardware interface layer: the traits a board implements and the kernel calls.
//!
//! Each trait is the whole contract between `kernel` and a driver in `bsp`. The kernel never
//! reaches hardware any other way, which is what lets every kernel module run on the host.
//! [`KvStore`] is the one trait that is not about hardware: it is the seam between attention
//! and whatever holds the KV cache (contiguous or paged). [`boundary`] re-exports the plain
//! data the two sides share (the memory plan, page sizes, the protocol reserve).

mod block;
pub mod boundary;
mod clock;
mod console;
mod copy;
mod cpus;
mod kv;
mod rng;
mod telemetry;

pub use block::{BLOCK_SIZE, BlockDevice, BlockError, check_transfer, pattern_block};
pub use clock::{BoardTime, Clock, Deadline, board_time, install_board_time, ticks_to_ns};
pub use console::{Console, ConsoleTraffic, ConsoleWriter, FlowControl, TransmitFifo};
pub use copy::{CopyConstraints, CopyEngine, CopyError, CopyRequest, CopyStatus, check_request};
pub use cpus::{
    Cpus, HANG_GRACE_FACTOR, HANG_GRACE_MIN_NS, HangWatch, MAX_WORKERS, STOP_ANSWER_NS, SharesLost,
    SingleCpu, WatchVerdict, WorkerMap,
};
pub use kv::{KvError, KvStore, check_write};
pub use rng::{Rng, RngError};
pub use telemetry::{BoardTelemetry, HeapStatistics};
