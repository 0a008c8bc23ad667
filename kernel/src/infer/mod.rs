//! The inference engine: tokenizers, the llama forward pass, its compute kernels, the
//! contiguous KV cache and the sampler. Identical code runs on the host and in the unikernel.

// Every module here forbids unsafe code except `simd`, the one audited SIMD module.

pub mod forward;
pub mod kernels;
pub mod kv;
pub mod matmul;
pub mod parallel;
pub mod sampler;
pub mod session;
pub mod simd;
pub mod synthetic;
pub mod tokenizer;

pub use forward::{InferError, State, forward};
pub use kernels::Precision;
pub use kv::ContiguousKv;
pub use sampler::{Sampler, SamplerConfig};
pub use session::Session;
pub use tokenizer::Tokenizer;

#[cfg(test)]
mod tests;
