//! `BlockDevice`: a storage device addressed in 512-byte blocks (the SD card on the Pi).

use core::fmt;

/// The size of one block in bytes. SD cards and FAT32 volumes both use 512.
pub const BLOCK_SIZE: usize = 512;

/// Why a block transfer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// No card (or no device) is present.
    NoDevice,
    /// The device did not answer in time, even after retries.
    Timeout,
    /// The device reported a CRC or data error, even after retries.
    DataError,
    /// The request reaches past the end of the device.
    OutOfRange,
    /// The buffer length is not a whole number of blocks.
    BadLength,
    /// The device refused a command; the value is its status word.
    Refused(u32),
}

impl fmt::Display for BlockError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::NoDevice => write!(formatter, "no card present"),
            BlockError::Timeout => write!(formatter, "device timed out"),
            BlockError::DataError => write!(formatter, "data error (CRC) on transfer"),
            BlockError::OutOfRange => write!(formatter, "block address past the end of the device"),
            BlockError::BadLength => write!(formatter, "buffer is not a whole number of blocks"),
            BlockError::Refused(status) => {
                write!(formatter, "device refused command (status {status:#010x})")
            }
        }
    }
}

/// A block device. Transfers are whole blocks; `buffer.len()` must be a multiple of
/// [`BLOCK_SIZE`]. Implementations issue multi-block transfers where the device supports them.
pub trait BlockDevice {
    /// Number of blocks on the device.
    fn block_count(&self) -> u64;

    /// Reads `buffer.len() / BLOCK_SIZE` blocks starting at block `first`.
    fn read_blocks(&mut self, first: u64, buffer: &mut [u8]) -> Result<(), BlockError>;

    /// Writes `buffer.len() / BLOCK_SIZE` blocks starting at block `first`.
    fn write_blocks(&mut self, first: u64, buffer: &[u8]) -> Result<(), BlockError>;

    /// Test hook: from now on, each read command fails with probability 1/`one_in` at a
    /// random block of those it asks for, in a seeded pattern. Only `tessera.cfg`'s
    /// `sd_read_faults` arms it. The default: this device has no such hook.
    fn arm_read_faults(&mut self, _one_in: u32) -> Result<(), &'static str> {
        Err("this device has no fault injection")
    }
}

/// Checks a transfer request against the device size and block granularity.
pub fn check_transfer(device_blocks: u64, first: u64, length: usize) -> Result<u64, BlockError> {
    if !length.is_multiple_of(BLOCK_SIZE) {
        return Err(BlockError::BadLength);
    }
    let count = (length / BLOCK_SIZE) as u64;
    match first.checked_add(count) {
        Some(end) if end <= device_blocks => Ok(count),
        _ => Err(BlockError::OutOfRange),
    }
}

/// Fills `block` with the deterministic test content of block number `index`: the index as a
/// little-endian u64, then bytes that depend on index and offset. The QEMU runner writes
/// this pattern into raw SD images and the driver tests check what they read against it.
pub fn pattern_block(index: u64, block: &mut [u8]) {
    for (offset, byte) in block.iter_mut().enumerate() {
        *byte = match offset {
            0..8 => index.to_le_bytes()[offset],
            _ => (index.wrapping_mul(31).wrapping_add(offset as u64 * 7) % 251) as u8,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_differs_per_block() {
        let (mut first, mut second) = ([0u8; BLOCK_SIZE], [0u8; BLOCK_SIZE]);
        pattern_block(1, &mut first);
        pattern_block(2, &mut second);
        assert_ne!(first, second);
        assert_eq!(u64::from_le_bytes(first[..8].try_into().unwrap()), 1);
    }

    #[test]
    fn transfer_checks() {
        assert_eq!(check_transfer(10, 0, 5120), Ok(10));
        assert_eq!(check_transfer(10, 1, 5120), Err(BlockError::OutOfRange));
        assert_eq!(check_transfer(10, u64::MAX, 512), Err(BlockError::OutOfRange));
        assert_eq!(check_transfer(10, 0, 100), Err(BlockError::BadLength));
        assert_eq!(check_transfer(10, 10, 0), Ok(0));
    }
}
