//! SD card protocol facts: command numbers, response kinds, and decoding of what the card
//! answers: the short responses (R1 card status, R3 OCR, R6 published address, R7 interface
//! condition) and the CID, CSD and SCR registers. Pure data, tested on the host; the SDHCI
//! driver uses it, and the `sd_registers` fuzz target runs it.

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

/// Whether a command's response is an R1 (or R1b) card status: every short response with a
/// CRC except CMD8's (R7, the interface condition) and CMD3's (R6, the published address).
pub fn carries_card_status(command: Command) -> bool {
    let other_short_response = !command.application
        && (command.index == SEND_IF_COND.index || command.index == SEND_RELATIVE_ADDR.index);
    matches!(command.response, Response::Short | Response::ShortBusy) && !other_short_response
}

/// Checks the first response word of `command`: `Err(status)` when it is an R1 card status
/// with an error bit of [`R1_ERROR_BITS`] set, `Ok(word)` otherwise (the word is returned
/// unchanged, whatever the response kind, for the caller to decode).
pub fn check_card_status(command: Command, response: u32) -> Result<u32, u32> {
    if carries_card_status(command) && response & R1_ERROR_BITS != 0 { Err(response) } else { Ok(response) }
}

/// Whether CMD8's answer (R7) accepts the host's request: the voltage range (bits 11:8) and the
/// check pattern (bits 7:0) of [`IF_COND_ARGUMENT`] echoed back.
pub fn interface_condition_accepted(response: u32) -> bool {
    response & 0xFFF == IF_COND_ARGUMENT
}

/// What ACMD41's answer (R3, the OCR) says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperatingConditions {
    /// The card finished powering up (bit 31; the card is busy while it is clear).
    pub powered_up: bool,
    /// Card capacity status (bit 30): block addressed (SDHC/SDXC). The bit means something only
    /// once the card has powered up, so it reads false before.
    pub high_capacity: bool,
}

impl OperatingConditions {
    /// Decodes the OCR word of an R3 response.
    pub fn decode(ocr: u32) -> Self {
        let powered_up = ocr & OCR_POWERED_UP != 0;
        Self { powered_up, high_capacity: powered_up && ocr & OCR_HIGH_CAPACITY != 0 }
    }
}

/// What CMD3's answer (R6) says: the card's new relative address and its compressed status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishedAddress {
    /// The relative card address (bits 31:16).
    pub relative_address: u16,
    /// The status bits of bits 15:0, moved to where an R1 card status has them: bit 15 is
    /// COM_CRC_ERROR (status bit 23), 14 ILLEGAL_COMMAND (22), 13 ERROR (19), 12:0 are
    /// status bits 12:0 (the current state, READY_FOR_DATA, APP_CMD, AKE_SEQ_ERROR).
    pub status: u32,
}

impl PublishedAddress {
    /// Decodes an R6 response word.
    pub fn decode(response: u32) -> Self {
        let compressed = response & 0xFFFF;
        let status = (compressed & 0xC000) << 8 | (compressed & 0x2000) << 6 | compressed & 0x1FFF;
        Self { relative_address: (response >> 16) as u16, status }
    }

    /// The error bits of the status ([`R1_ERROR_BITS`] that R6 can carry).
    pub fn errors(&self) -> u32 {
        self.status & R1_ERROR_BITS
    }

    /// The relative address of an R6 word whose status has no error bit, or `Err(status)`
    /// (a card that reports a CRC error, an illegal command, a general error or an
    /// authentication sequence error while it publishes its address is not taken; Circle's
    /// driver refuses the first three).
    pub fn checked(response: u32) -> Result<u16, u32> {
        let published = Self::decode(response);
        if published.errors() == 0 { Ok(published.relative_address) } else { Err(published.status) }
    }
}

/// The card's identity, from its CID register (read by ALL_SEND_CID). Every field is what the
/// card sent, unchecked: the text fields may hold any byte, and [`core::fmt::Display`] shows
/// each byte that is not printable ASCII as `?`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CardIdentity {
    /// Manufacturer id (MID, bits 127:120), assigned by the SD Card Association.
    pub manufacturer: u8,
    /// OEM/application id (OID, bits 119:104): two characters.
    pub oem: [u8; 2],
    /// Product name (PNM, bits 103:64): five characters.
    pub product: [u8; 5],
    /// Product revision (PRV, bits 63:56): two BCD digits, `major.minor`.
    pub revision: u8,
    /// Product serial number (PSN, bits 55:24).
    pub serial: u32,
    /// Manufacturing year (MDT bits 19:12 counted from 2000): 2000 to 2255.
    pub year: u16,
    /// Manufacturing month field (MDT bits 11:8) as sent: 1 to 12 for a month, though 4 bits
    /// hold 0 to 15.
    pub month_field: u8,
}

impl CardIdentity {
    /// Decodes a CID as the SDHCI reports it.
    pub fn decode(cid: &LongResponse) -> Self {
        let byte = |high: u32| cid.bits(high, high - 7) as u8;
        Self {
            manufacturer: byte(127),
            oem: [byte(119), byte(111)],
            product: [byte(103), byte(95), byte(87), byte(79), byte(71)],
            revision: byte(63),
            serial: cid.bits(55, 24),
            year: 2000 + cid.bits(19, 12) as u16,
            month_field: cid.bits(11, 8) as u8,
        }
    }

    /// The revision's major digit (the high nibble; 0-15, as a card may send any nibble).
    pub fn revision_major(&self) -> u8 {
        self.revision >> 4
    }

    /// The revision's minor digit (the low nibble).
    pub fn revision_minor(&self) -> u8 {
        self.revision & 0xF
    }

    /// The manufacturing month (1-12), or `None` when the field holds no month.
    pub fn month(&self) -> Option<u8> {
        (1..=12).contains(&self.month_field).then_some(self.month_field)
    }
}

/// `byte` as a character fit for the console: printable ASCII as itself, anything else `?`.
pub fn printable(byte: u8) -> char {
    if (0x20..=0x7E).contains(&byte) { char::from(byte) } else { '?' }
}

impl core::fmt::Display for CardIdentity {
    /// `XY QEMU! rev 0.1, serial 0xdeadbeef, made 2006-02, manufacturer 0xaa`: the OEM id and
    /// product name, then the rest; the month is left out when the field holds none.
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use core::fmt::Write;
        for &byte in &self.oem {
            formatter.write_char(printable(byte))?;
        }
        formatter.write_char(' ')?;
        for &byte in &self.product {
            formatter.write_char(printable(byte))?;
        }
        write!(
            formatter,
            " rev {}.{}, serial {:#010x}, made {}",
            self.revision_major(),
            self.revision_minor(),
            self.serial,
            self.year
        )?;
        if let Some(month) = self.month() {
            write!(formatter, "-{month:02}")?;
        }
        write!(formatter, ", manufacturer {:#04x}", self.manufacturer)
    }
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

    /// Builds a register value from its 16 bytes in card order (most significant first, the
    /// CRC byte last).
    fn register_bytes(bytes: [u8; 16]) -> LongResponse {
        register(u128::from_be_bytes(bytes))
    }

    /// The CID QEMU's emulated card sends.
    const QEMU_CID: [u8; 16] =
        [0xAA, b'X', b'Y', b'Q', b'E', b'M', b'U', b'!', 0x01, 0xDE, 0xAD, 0xBE, 0xEF, 0x00, 0x62, 0x19];

    fn shown(identity: &CardIdentity) -> std::string::String {
        std::format!("{identity}")
    }

    #[test]
    fn cid_of_qemus_card() {
        let identity = CardIdentity::decode(&register_bytes(QEMU_CID));
        assert_eq!(identity.manufacturer, 0xAA);
        assert_eq!(&identity.oem, b"XY");
        assert_eq!(&identity.product, b"QEMU!");
        assert_eq!((identity.revision_major(), identity.revision_minor()), (0, 1));
        assert_eq!(identity.serial, 0xDEAD_BEEF);
        assert_eq!((identity.year, identity.month()), (2006, Some(2)));
        assert_eq!(shown(&identity), "XY QEMU! rev 0.1, serial 0xdeadbeef, made 2006-02, manufacturer 0xaa");
    }

    #[test]
    fn cid_of_a_real_card() {
        // A 32 GB card: manufacturer 0x1b, OEM "SM", product "EB1QT", revision 3.0, made in
        // October 2017 (MDT 0x11a).
        let cid =
            [0x1B, b'S', b'M', b'E', b'B', b'1', b'Q', b'T', 0x30, 0xF1, 0x77, 0x5F, 0xEA, 0x01, 0x1A, 0xB9];
        let identity = CardIdentity::decode(&register_bytes(cid));
        assert_eq!(shown(&identity), "SM EB1QT rev 3.0, serial 0xf1775fea, made 2017-10, manufacturer 0x1b");
    }

    #[test]
    fn cid_extremes_decode_and_show_without_control_bytes() {
        let ones = CardIdentity::decode(&register_bytes([0xFF; 16]));
        assert_eq!((ones.year, ones.month_field, ones.month()), (2255, 15, None));
        assert_eq!((ones.revision_major(), ones.revision_minor()), (15, 15));
        assert_eq!(shown(&ones), "?? ????? rev 15.15, serial 0xffffffff, made 2255, manufacturer 0xff");
        let zeros = CardIdentity::decode(&register_bytes([0; 16]));
        assert_eq!(zeros, CardIdentity { year: 2000, ..CardIdentity::default() });
        assert_eq!(shown(&zeros), "?? ????? rev 0.0, serial 0x00000000, made 2000, manufacturer 0x00");

        // Escape, newline, DEL, a UTF-8 lead byte, Latin-1: none reaches the console.
        let mut hostile = QEMU_CID;
        hostile[1..8].copy_from_slice(&[0x1B, b'\n', 0x7F, 0xC3, 0xE9, b'[', b' ']);
        let text = shown(&CardIdentity::decode(&register_bytes(hostile)));
        assert!(text.starts_with("?? ???[  rev 0.1"), "{text}");
        assert!(text.chars().all(|c| (' '..='~').contains(&c)), "{text}");
    }

    #[test]
    fn cid_month_outside_1_to_12_is_no_month() {
        for (field, month) in [(0u8, None), (1, Some(1)), (12, Some(12)), (13, None), (15, None)] {
            let mut cid = QEMU_CID;
            cid[14] = 0x60 | field;
            let identity = CardIdentity::decode(&register_bytes(cid));
            assert_eq!((identity.month_field, identity.month()), (field, month));
            let text = shown(&identity);
            match month {
                Some(month) => assert!(text.contains(&std::format!("made 2006-{month:02},")), "{text}"),
                None => assert!(text.contains("made 2006, manufacturer"), "{text}"),
            }
        }
    }

    #[test]
    fn r1_errors_are_refused_and_other_responses_pass() {
        let errors = [31, 30, 29, 28, 27, 26, 24, 23, 22, 21, 20, 19, 16, 15, 3];
        assert_eq!(errors.iter().fold(0u32, |mask, bit| mask | 1 << bit), R1_ERROR_BITS);
        for command in
            [READ_SINGLE_BLOCK, WRITE_MULTIPLE_BLOCK, APP_CMD, SET_BUS_WIDTH, SEND_SCR, SELECT_CARD]
        {
            for bit in errors {
                assert_eq!(check_card_status(command, 1 << bit), Err(1 << bit), "{command:?} bit {bit}");
            }
            // CARD_IS_LOCKED, the transfer state, READY_FOR_DATA, APP_CMD: a healthy status.
            let healthy = 1 << 25 | 4 << 9 | 1 << 8 | 1 << 5;
            assert_eq!(check_card_status(command, healthy), Ok(healthy));
        }
        // R7, R6, R3, R2 and no response carry no R1 status: the word passes as it came.
        for command in
            [SEND_IF_COND, SEND_RELATIVE_ADDR, SD_SEND_OP_COND, ALL_SEND_CID, SEND_CSD, GO_IDLE_STATE]
        {
            assert!(!carries_card_status(command));
            assert_eq!(check_card_status(command, u32::MAX), Ok(u32::MAX));
        }
    }

    #[test]
    fn r7_accepts_only_the_echoed_voltage_and_pattern() {
        assert!(interface_condition_accepted(0x1AA));
        assert!(interface_condition_accepted(0xFFFF_F1AA), "bits above the echo are not looked at");
        for rejected in [0, 0x0AA, 0x2AA, 0x1AB, 0x155, 0xFFF, u32::MAX] {
            assert!(!interface_condition_accepted(rejected), "{rejected:#x}");
        }
    }

    #[test]
    fn r3_powered_up_and_capacity() {
        let decode = OperatingConditions::decode;
        assert_eq!(decode(0x00FF_8000), OperatingConditions { powered_up: false, high_capacity: false });
        assert_eq!(decode(0x80FF_8000), OperatingConditions { powered_up: true, high_capacity: false });
        assert_eq!(decode(0xC0FF_8000), OperatingConditions { powered_up: true, high_capacity: true });
        // Capacity status while still busy means nothing yet.
        assert_eq!(decode(0x40FF_8000), OperatingConditions { powered_up: false, high_capacity: false });
        assert_eq!(decode(u32::MAX), OperatingConditions { powered_up: true, high_capacity: true });
        assert_eq!(decode(0), OperatingConditions::default());
    }

    #[test]
    fn r6_address_and_status() {
        // QEMU's first address, the card in the identification state (2) with no error.
        let published = PublishedAddress::decode(0x4567_0400);
        assert_eq!(published, PublishedAddress { relative_address: 0x4567, status: 2 << 9 });
        assert_eq!(published.errors(), 0);
        let errors = PublishedAddress::decode(0xABCD_E000);
        assert_eq!((errors.relative_address, errors.status), (0xABCD, 1 << 23 | 1 << 22 | 1 << 19));
        assert_eq!(errors.errors(), errors.status);
        let ones = PublishedAddress::decode(u32::MAX);
        assert_eq!((ones.relative_address, ones.status), (0xFFFF, 0x00C8_1FFF));
        assert_eq!(ones.errors(), 0x00C8_0008, "the three error bits and AKE_SEQ_ERROR");
        assert_eq!(PublishedAddress::decode(0), PublishedAddress::default());
        assert_eq!(PublishedAddress::checked(0x4567_0400), Ok(0x4567));
        assert_eq!(PublishedAddress::checked(0x4567_8400), Err(1 << 23 | 2 << 9), "COM_CRC_ERROR");
        assert_eq!(PublishedAddress::checked(0x4567_2400), Err(1 << 19 | 2 << 9), "ERROR");
        assert_eq!(PublishedAddress::checked(0x4567_0408), Err(2 << 9 | 1 << 3), "AKE_SEQ_ERROR");
    }

    #[test]
    fn printable_passes_only_printable_ascii() {
        for byte in 0..=255u8 {
            let shown = printable(byte);
            assert_eq!(shown == char::from(byte), (0x20..=0x7E).contains(&byte), "{byte:#x}");
            assert!(shown.is_ascii_graphic() || shown == ' ');
        }
    }
}
