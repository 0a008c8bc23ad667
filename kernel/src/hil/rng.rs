//! `Rng`: a hardware random number source (the BCM2835 RNG on the Pi).

/// Why a random number could not be produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RngError {
    /// The generator produced nothing before its timeout.
    Timeout,
    /// The board has no hardware generator.
    Unavailable,
}

/// A source of hardware entropy.
pub trait Rng: Sync {
    /// Returns 32 fresh random bits.
    fn next_u32(&self) -> Result<u32, RngError>;

    /// Returns 64 fresh random bits.
    fn next_u64(&self) -> Result<u64, RngError> {
        let high = u64::from(self.next_u32()?);
        let low = u64::from(self.next_u32()?);
        Ok(high << 32 | low)
    }
}
