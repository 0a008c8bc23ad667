//! The part of `tessera serve` that is pure functions over bytes, as a library: the OpenAI
//! request checks and translation (`openai`) and the intake of an HTTP request (`intake`).
//! The gateway binary uses them from here, and so does the gateway's fuzz target
//! (tools/fuzz), which needs neither a runtime nor a board.

#![forbid(unsafe_code)]

#[path = "serve/intake.rs"]
pub mod intake;
#[path = "serve/openai.rs"]
pub mod openai;
