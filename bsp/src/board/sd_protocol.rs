//! SD card protocol facts: command numbers, response kinds, and decoding of the OCR, CSD and
//! SCR registers. Pure data, tested on the host; the SDHCI driver uses it.

#![forbid(unsafe_code)]

/// The shape of a command's response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    /// No response (CMD0).
    None,
    /// 136-bit response (R2: CID, CSD).
    Long,
    /// 48-bit response with CRC and index (R1, R6, R7).
    Short,
    /// 48-bit response with busy signalling on DAT0 (R1b).
    ShortBusy,
    /// 48-bit response without valid CRC or index (R3: OCR).
    ShortNoCrc,
}

/// Whether a command moves data, and which way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirection {
    /// No data phase.
    None,
    /// Card to host.
    Read,
    /// Host to card.
    Write,
}

/// One SD command as the driver issues it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// Command index (0-63).
    pub index: u8,
    /// Response shape.
    pub response: Response,
    /// Data phase.
    pub data: DataDirection,
    /// Whether it is an application command (needs CMD55 first).
    pub application: bool,
}

const fn command(index: u8, response: Response, data: DataDirection, application: bool) -> Command {
    Command { index, response, data, application }
}

/// CMD0: reset to idle.
pub const GO_IDLE_STATE: Command = command(0, Response::None, DataDirection::None, false);
/// CMD2: ask for the CID.
pub const ALL_SEND_CID: Command = command(2, Response::Long, DataDirection::None, false);
/// CMD3: ask for a relative card address.
pub const SEND_RELATIVE_ADDR: Command = command(3, Response::Short, DataDirection::None, false);
/// CMD7: select the card.
pub const SELECT_CARD: Command = command(7, Response::ShortBusy, DataDirection::None, false);
/// CMD8: interface condition (voltage check pattern).
pub const SEND_IF_COND: Command = command(8, Response::Short, DataDirection::None, false);
/// CMD9: ask for the CSD.
pub const SEND_CSD: Command = command(9, Response::Long, DataDirection::None, false);
/// CMD12: stop a multi-block transfer.
pub const STOP_TRANSMISSION: Command = command(12, Response::ShortBusy, DataDirection::None, false);
/// CMD13: card status.
pub const SEND_STATUS: Command = command(13, Response::Short, DataDirection::None, false);
/// CMD16: block length (SDSC only).
pub const SET_BLOCKLEN: Command = command(16, Response::Short, DataDirection::None, false);
/// CMD17: read one block.
pub const READ_SINGLE_BLOCK: Command = command(17, Response::Short, DataDirection::Read, false);
/// CMD18: read blocks until stopped.
pub const READ_MULTIPLE_BLOCK: Command = command(18, Response::Short, DataDirection::Read, false);
/// CMD24: write one block.
pub const WRITE_BLOCK: Command = command(24, Response::Short, DataDirection::Write, false);
/// CMD25: write blocks until stopped.
pub const WRITE_MULTIPLE_BLOCK: Command = command(25, Response::Short, DataDirection::Write, false);
/// CMD55: the next command is an application command.
pub const APP_CMD: Command = command(55, Response::Short, DataDirection::None, false);
/// ACMD6: bus width.
pub const SET_BUS_WIDTH: Command = command(6, Response::Short, DataDirection::None, true);
/// ACMD41: operating conditions; starts initialisation.
pub const SD_SEND_OP_COND: Command = command(41, Response::ShortNoCrc, DataDirection::None, true);
/// ACMD51: read the 8-byte SCR.
pub const SEND_SCR: Command = command(51, Response::Short, DataDirection::Read, true);

/// CMD8 argument: 2.7-3.6 V and check pattern 0xAA.
pub const IF_COND_ARGUMENT: u32 = 0x1AA;
/// ACMD41 argument: high capacity supported, maximum performance, 3.2-3.4 V window.
pub const OP_COND_ARGUMENT: u32 = 0x51FF_8000;
/// OCR bit: the card finished powering up.
pub const OCR_POWERED_UP: u32 = 1 << 31;
/// OCR bit: card capacity status (SDHC/SDXC, block addressed).
pub const OCR_HIGH_CAPACITY: u32 = 1 << 30;
/// ACMD6 argument for a 4-bit bus.
pub const BUS_WIDTH_4: u32 = 2;

/// Card status bits (R1) that mean the last command failed.
pub const R1_ERROR_BITS: u32 = 0xFDF9_8008;

/// A 128-bit register (CSD or CID) as the SDHCI reports it: the response bits 127:8 in
/// `words[0..4]`, least significant first, without the CRC byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongResponse(pub [u32; 4]);

impl LongResponse {
    /// Bits `high..=low` of the register, numbered as in the SD specification (127..0).
    pub fn bits(&self, high: u32, low: u32) -> u32 {
        debug_assert!(high >= low && high - low < 32 && low >= 8);
        let value = u128::from(self.0[0])
            | u128::from(self.0[1]) << 32
            | u128::from(self.0[2]) << 64
            | u128::from(self.0[3]) << 96;
        let shifted = value >> (low - 8);
        (shifted & ((1u128 << (high - low + 1)) - 1)) as u32
    }
}

/// Why a register could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A CSD structure version this driver does not know.
    UnknownCsdVersion(u32),
}

/// The card's capacity in 512-byte blocks, from its CSD.
pub fn capacity_blocks(csd: &LongResponse) -> Result<u64, DecodeError> {
    match csd.bits(127, 126) {
        0 => {
            // CSD 1.0 (SDSC): capacity = (C_SIZE + 1) * 2^(C_SIZE_MULT + 2) * 2^READ_BL_LEN.
            let size = u64::from(csd.bits(73, 62)) + 1;
            let multiplier = 1u64 << (csd.bits(49, 47) + 2);
            let block_length = 1u64 << csd.bits(83, 80);
            Ok(size * multiplier * block_length / 512)
        }
        // CSD 2.0 (SDHC/SDXC): capacity = (C_SIZE + 1) * 512 KiB.
        1 => Ok((u64::from(csd.bits(69, 48)) + 1) * 1024),
        version => Err(DecodeError::UnknownCsdVersion(version)),
    }
}

/// Whether the SCR (as read by ACMD51, 8 bytes in card order) says the card takes a 4-bit bus.
pub fn supports_4_bit_bus(scr: [u8; 8]) -> bool {
    // SD_BUS_WIDTHS is SCR bits 51:48, i.e. the low nibble of the second byte; bit 2 is 4-bit.
    scr[1] & 0b0100 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a long response from a 128-bit register value (including the CRC byte).
    fn register(value: u128) -> LongResponse {
        let stripped = value >> 8;
        LongResponse([
            stripped as u32,
            (stripped >> 32) as u32,
            (stripped >> 64) as u32,
            (stripped >> 96) as u32,
        ])
    }

    #[test]
    fn csd_version_2_capacity() {
        // CSD 2.0 with C_SIZE = 8191: (8191 + 1) * 512 KiB = 4 GiB = 8 Mi blocks.
        let csd = register(1u128 << 126 | 8191u128 << 48);
        assert_eq!(capacity_blocks(&csd), Ok(8 * 1024 * 1024));
    }

    #[test]
    fn csd_version_1_capacity() {
        // READ_BL_LEN = 9 (512), C_SIZE_MULT = 7 (x512), C_SIZE = 255: 256 * 512 * 512 bytes.
        let csd = register(9u128 << 80 | 255u128 << 62 | 7u128 << 47);
        assert_eq!(capacity_blocks(&csd), Ok(256 * 512));
        assert_eq!(capacity_blocks(&register(3u128 << 126)), Err(DecodeError::UnknownCsdVersion(3)));
    }

    #[test]
    fn field_extraction_and_bus_width() {
        let csd = register(0xABu128 << 120);
        assert_eq!(csd.bits(127, 120), 0xAB);
        assert!(supports_4_bit_bus([0x02, 0x35, 0, 0, 0, 0, 0, 0]));
        assert!(!supports_4_bit_bus([0x02, 0x31, 0, 0, 0, 0, 0, 0]));
    }
}
