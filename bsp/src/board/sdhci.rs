//! SD host controller (SDHCI v3, PIO) driver: the Arasan EMMC of the BCM2837 (Pi 3, Zero 2 W,
//! QEMU raspi3b) and, as small variants, the BCM2711's EMMC2 (the Pi 4's card slot) and its
//! Arasan EMMC (where QEMU raspi4b attaches the card).
//!
//! Implements [`kernel::hil::BlockDevice`] with single and multi-block reads and writes
//! (CMD17/18, CMD24/25 with auto-CMD12). Every wait is bounded by the generic timer; a failed
//! command resets the CMD and DAT lines and is retried a bounded number of times before a
//! typed [`BlockError`] is returned. Both SDSC (byte addresses) and SDHC (block addresses)
//! cards are handled.
//!
//! The Pi 4 variants differ only in base address, clock id, pin routing (EMMC2 has dedicated
//! pins) and, for EMMC2, SD bus power: after the controller reset EMMC2 gets its bus power on
//! at 3.3 V (Power Control, CONTROL0 bits 8-11), then 2 ms to settle, as Circle does. The 1.8 V
//! regulator that must be off first is the firmware's (a mailbox call, made by the caller).

use super::sd_protocol::{
    self as sd, CardIdentity, Command, DataDirection, LongResponse, OperatingConditions, PublishedAddress,
    Response,
};
use crate::mmio::Mmio;
use kernel::hil::{BLOCK_SIZE, BlockDevice, BlockError, Clock, check_transfer};
use tock_registers::{
    interfaces::{ReadWriteable, Readable, Writeable},
    register_bitfields, register_structs,
    registers::{ReadOnly, ReadWrite},
};

register_bitfields! {
    u32,
    /// Block size and count.
    BLKSIZECNT [
        /// Blocks in the transfer.
        BLKCNT OFFSET(16) NUMBITS(16) [],
        /// Bytes per block.
        BLKSIZE OFFSET(0) NUMBITS(10) []
    ],
    /// Command and transfer mode.
    CMDTM [
        /// Command index.
        CMD_INDEX OFFSET(24) NUMBITS(6) [],
        /// Command type.
        CMD_TYPE OFFSET(22) NUMBITS(2) [Normal = 0b00, Suspend = 0b01, Resume = 0b10, Abort = 0b11],
        /// The command has a data phase.
        CMD_ISDATA OFFSET(21) NUMBITS(1) [],
        /// Check the response's index.
        CMD_IXCHK_EN OFFSET(20) NUMBITS(1) [],
        /// Check the response's CRC.
        CMD_CRCCHK_EN OFFSET(19) NUMBITS(1) [],
        /// Response type.
        CMD_RSPNS_TYPE OFFSET(16) NUMBITS(2) [None = 0b00, Bits136 = 0b01, Bits48 = 0b10, Bits48Busy = 0b11],
        /// More than one block.
        TM_MULTI_BLOCK OFFSET(5) NUMBITS(1) [],
        /// Data direction: 1 = card to host.
        TM_DAT_DIR OFFSET(4) NUMBITS(1) [HostToCard = 0, CardToHost = 1],
        /// Automatic command after the transfer.
        TM_AUTO_CMD_EN OFFSET(2) NUMBITS(2) [None = 0b00, Cmd12 = 0b01],
        /// Use the block count.
        TM_BLKCNT_EN OFFSET(1) NUMBITS(1) []
    ],
    /// Present state.
    STATUS [
        /// A card is inserted.
        CARD_INSERTED OFFSET(16) NUMBITS(1) [],
        /// The data lines are in use.
        DAT_INHIBIT OFFSET(1) NUMBITS(1) [],
        /// The command line is in use.
        CMD_INHIBIT OFFSET(0) NUMBITS(1) []
    ],
    /// Host control 0 (with the Power Control byte at bits 15:8).
    CONTROL0 [
        /// SD bus voltage select.
        SD_BUS_VOLTAGE OFFSET(9) NUMBITS(3) [V3_3 = 0b111],
        /// SD bus power on.
        SD_BUS_POWER OFFSET(8) NUMBITS(1) [],
        /// High-speed timing.
        HCTL_HS_EN OFFSET(2) NUMBITS(1) [],
        /// 4-bit data bus.
        HCTL_DWIDTH OFFSET(1) NUMBITS(1) [OneBit = 0, FourBit = 1]
    ],
    /// Host control 1: clock, timeout and resets.
    CONTROL1 [
        /// Reset the data line.
        SRST_DATA OFFSET(26) NUMBITS(1) [],
        /// Reset the command line.
        SRST_CMD OFFSET(25) NUMBITS(1) [],
        /// Reset the whole host controller.
        SRST_HC OFFSET(24) NUMBITS(1) [],
        /// Data timeout exponent.
        DATA_TOUNIT OFFSET(16) NUMBITS(4) [],
        /// Clock divider, low 8 bits.
        CLK_FREQ8 OFFSET(8) NUMBITS(8) [],
        /// Clock divider, high 2 bits.
        CLK_FREQ_MS2 OFFSET(6) NUMBITS(2) [],
        /// SD clock enabled.
        CLK_EN OFFSET(2) NUMBITS(1) [],
        /// Internal clock stable.
        CLK_STABLE OFFSET(1) NUMBITS(1) [],
        /// Internal clock enabled.
        CLK_INTLEN OFFSET(0) NUMBITS(1) []
    ],
    /// Interrupt status (write 1 to clear), mask and enable.
    INTERRUPT [
        /// Auto-CMD12 error.
        ACMD_ERR OFFSET(24) NUMBITS(1) [],
        /// Data end bit error.
        DEND_ERR OFFSET(22) NUMBITS(1) [],
        /// Data CRC error.
        DCRC_ERR OFFSET(21) NUMBITS(1) [],
        /// Data timeout.
        DTO_ERR OFFSET(20) NUMBITS(1) [],
        /// Command index error.
        CBAD_ERR OFFSET(19) NUMBITS(1) [],
        /// Command end bit error.
        CEND_ERR OFFSET(18) NUMBITS(1) [],
        /// Command CRC error.
        CCRC_ERR OFFSET(17) NUMBITS(1) [],
        /// Command timeout.
        CTO_ERR OFFSET(16) NUMBITS(1) [],
        /// Some error bit is set.
        ERR OFFSET(15) NUMBITS(1) [],
        /// The data FIFO has a block to read.
        READ_RDY OFFSET(5) NUMBITS(1) [],
        /// The data FIFO has room for a block.
        WRITE_RDY OFFSET(4) NUMBITS(1) [],
        /// The data transfer finished.
        DATA_DONE OFFSET(1) NUMBITS(1) [],
        /// The command finished.
        CMD_DONE OFFSET(0) NUMBITS(1) []
    ],
    /// Capabilities.
    CAPABILITIES_0 [
        /// Base clock in MHz.
        BASE_CLOCK OFFSET(8) NUMBITS(8) []
    ],
    /// Slot interrupt status and version.
    SLOTISR_VER [
        /// Host controller specification version (2 = v3.00).
        SDVERSION OFFSET(16) NUMBITS(8) []
    ]
}

register_structs! {
    /// SDHCI register block.
    #[expect(non_snake_case, reason = "fields carry the register names of the datasheet, in upper case")]
    pub Registers {
        (0x00 => ARG2: ReadWrite<u32>),
        (0x04 => BLKSIZECNT: ReadWrite<u32, BLKSIZECNT::Register>),
        (0x08 => ARG1: ReadWrite<u32>),
        (0x0C => CMDTM: ReadWrite<u32, CMDTM::Register>),
        (0x10 => RESP: [ReadOnly<u32>; 4]),
        (0x20 => DATA: ReadWrite<u32>),
        (0x24 => STATUS: ReadOnly<u32, STATUS::Register>),
        (0x28 => CONTROL0: ReadWrite<u32, CONTROL0::Register>),
        (0x2C => CONTROL1: ReadWrite<u32, CONTROL1::Register>),
        (0x30 => INTERRUPT: ReadWrite<u32, INTERRUPT::Register>),
        (0x34 => IRPT_MASK: ReadWrite<u32, INTERRUPT::Register>),
        (0x38 => IRPT_EN: ReadWrite<u32, INTERRUPT::Register>),
        (0x3C => CONTROL2: ReadWrite<u32>),
        (0x40 => CAPABILITIES_0: ReadOnly<u32, CAPABILITIES_0::Register>),
        (0x44 => _reserved),
        (0xFC => SLOTISR_VER: ReadOnly<u32, SLOTISR_VER::Register>),
        (0x100 => @END),
    }
}

/// Which SDHCI instance this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// BCM2835/2837 Arasan EMMC at 0x3F300000, pins GPIO 48-53 (Pi 3, Zero 2 W, QEMU raspi3b).
    Bcm2837Emmc,
    /// BCM2711 EMMC2 at 0xFE340000 with dedicated pins: the Pi 4's card slot.
    Bcm2711Emmc2,
    /// BCM2711 Arasan EMMC at 0xFE300000: on a Pi 4 the WiFi chip's SDIO host; QEMU raspi4b
    /// attaches its SD card here (through GPIO 48-53 on ALT3, as on the raspi3b).
    Bcm2711Emmc,
}

impl Variant {
    /// The controller's base address.
    pub fn base(self) -> usize {
        match self {
            Variant::Bcm2837Emmc => super::rpi3::memory_map::EMMC,
            Variant::Bcm2711Emmc2 => super::rpi4::memory_map::EMMC2,
            Variant::Bcm2711Emmc => super::rpi4::memory_map::EMMC,
        }
    }

    /// The mailbox clock id of the controller's base clock.
    pub fn clock_id(self) -> u32 {
        match self {
            Variant::Bcm2837Emmc | Variant::Bcm2711Emmc => 1,
            Variant::Bcm2711Emmc2 => 12,
        }
    }

    /// The controller's name, as boot reports it.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Bcm2837Emmc | Variant::Bcm2711Emmc => "EMMC",
            Variant::Bcm2711Emmc2 => "EMMC2",
        }
    }

    /// Whether the driver switches the SD bus power on itself after the controller reset.
    fn powers_the_bus(self) -> bool {
        self == Variant::Bcm2711Emmc2
    }
}

/// Identification clock (SD specification: at most 400 kHz).
const IDENTIFICATION_HZ: u32 = 400_000;
/// Default-speed transfer clock.
const TRANSFER_HZ: u32 = 25_000_000;
/// Longest wait for one command or one data block.
const COMMAND_TIMEOUT_US: u64 = 500_000;
/// Longest wait for the card-detect bit after the controller reset (Circle waits 500 ms too).
/// A card whose detect bit never sets is tried anyway, as bztsrc's driver does: the detect line
/// is not wired the same on every board.
const CARD_DETECT_TIMEOUT_US: u64 = 500_000;
/// Settling time after switching EMMC2's SD bus power on (Circle waits 2 ms).
const BUS_POWER_SETTLE_US: u64 = 2_000;
/// Settling time around an SD clock change: after stopping the clock, after the new divider is
/// stable, and after starting it again (Circle waits 2 ms at each of these points).
const CLOCK_SETTLE_US: u64 = 2_000;
/// Longest time ACMD41 may keep reporting busy. The SD specification gives a card 1 s from
/// the first ACMD41; slow cards take longer, and the references allow more (bztsrc six tries
/// 1 s apart, Circle retries every 500 ms without a limit), so Tessera allows 3 s.
const POWER_UP_TIMEOUT_US: u64 = 3_000_000;
/// Pause between ACMD41 tries while the card reports busy.
const POWER_UP_POLL_US: u64 = 10_000;
/// Tries per transfer before giving up.
const RETRIES: u32 = 3;
/// Blocks per multi-block command (the block count register has 16 bits).
const MAX_BLOCKS_PER_COMMAND: usize = 0xFFFF;

/// Why the card could not be brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The controller reports no card inserted.
    NoCard,
    /// The controller did not leave reset or start its clock.
    ControllerTimeout,
    /// A command of the initialisation sequence failed.
    Command {
        /// The command index.
        index: u8,
        /// What went wrong.
        error: BlockError,
    },
    /// The card does not accept 2.7-3.6 V (CMD8 echo mismatch).
    VoltageMismatch(u32),
    /// The card stayed busy in ACMD41.
    PowerUpTimeout,
    /// The CSD has a structure version this driver does not know.
    UnknownCsd,
}

impl core::fmt::Display for InitError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::NoCard => write!(formatter, "no SD card inserted"),
            InitError::ControllerTimeout => write!(formatter, "SD controller did not start"),
            InitError::Command { index, error } => write!(formatter, "SD command {index} failed: {error}"),
            InitError::VoltageMismatch(echo) => {
                write!(formatter, "SD card rejected the voltage check ({echo:#x})")
            }
            InitError::PowerUpTimeout => write!(formatter, "SD card did not finish powering up"),
            InitError::UnknownCsd => write!(formatter, "SD card reports an unknown CSD version"),
        }
    }
}

/// Facts about the initialised card.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardInfo {
    /// Block addressed (SDHC/SDXC) rather than byte addressed (SDSC).
    pub high_capacity: bool,
    /// Capacity in 512-byte blocks.
    pub blocks: u64,
    /// The relative card address.
    pub relative_address: u16,
    /// Whether the bus runs 4 bits wide.
    pub four_bit_bus: bool,
    /// The transfer clock in Hz.
    pub clock_hz: u32,
    /// Whether the controller's card-detect bit was set: when it was not, the card was tried
    /// anyway (and answered, or the driver would have returned [`InitError::NoCard`]).
    pub card_detected: bool,
    /// Who made the card and what it is, from its CID (text fields as the card sent them).
    pub identity: CardIdentity,
}

/// Counters of what the driver did, for telemetry and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferCounters {
    /// Read commands issued (CMD17 + CMD18).
    pub read_commands: u64,
    /// Blocks read.
    pub blocks_read: u64,
    /// Write commands issued.
    pub write_commands: u64,
    /// Blocks written.
    pub blocks_written: u64,
    /// Commands retried after an error.
    pub retries: u64,
}

/// An initialised SD card behind an SDHCI controller.
pub struct Sdhci<'clock> {
    registers: Mmio<Registers>,
    variant: Variant,
    clock: &'clock dyn Clock,
    card: CardInfo,
    /// Largest number of blocks per read or write command; 1 forces single-block transfers.
    pub max_blocks_per_command: usize,
    counters: TransferCounters,
    /// The test hook's read faults, when armed (see [`super::sd_faults`]).
    read_faults: Option<super::sd_faults::ReadFaults>,
}

impl<'clock> Sdhci<'clock> {
    /// Resets the controller of `variant` and brings the card up: identification, selection,
    /// clock switch and (where the card supports it) a 4-bit bus. `base_clock_hz` is the
    /// controller's input clock (from the mailbox), or `None` to trust the capabilities
    /// register.
    ///
    /// # Safety
    /// The variant's register block must be mapped as device memory and driven by nothing
    /// else; on the Pi 3 the SD pins must be routed to it (GPIO 48-53, or QEMU's default).
    pub unsafe fn new(
        variant: Variant,
        clock: &'clock dyn Clock,
        base_clock_hz: Option<u32>,
    ) -> Result<Self, InitError> {
        // SAFETY: forwarded from the caller.
        let registers = unsafe { Mmio::new(variant.base()) };
        let mut driver = Self {
            registers,
            variant,
            clock,
            card: CardInfo {
                high_capacity: false,
                blocks: 0,
                relative_address: 0,
                four_bit_bus: false,
                clock_hz: 0,
                card_detected: false,
                identity: CardIdentity::default(),
            },
            max_blocks_per_command: MAX_BLOCKS_PER_COMMAND,
            counters: TransferCounters::default(),
            read_faults: None,
        };
        match driver.initialise(base_clock_hz) {
            Ok(()) => Ok(driver),
            // A card that never raised the detect bit and then failed to answer is most likely
            // not there.
            Err(InitError::Command { .. } | InitError::PowerUpTimeout) if !driver.card.card_detected => {
                Err(InitError::NoCard)
            }
            Err(error) => Err(error),
        }
    }

    /// The controller the card is on.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// What the card is.
    pub fn card(&self) -> CardInfo {
        self.card
    }

    /// Transfer counters since initialisation.
    pub fn counters(&self) -> TransferCounters {
        self.counters
    }

    fn wait(&self, mut done: impl FnMut(&Registers) -> bool, timeout_us: u64) -> bool {
        let deadline = self.clock.deadline_after_us(timeout_us);
        loop {
            if done(&self.registers) {
                return true;
            }
            if deadline.passed(self.clock) {
                return done(&self.registers);
            }
        }
    }

    fn initialise(&mut self, base_clock_hz: Option<u32>) -> Result<(), InitError> {
        let registers = &self.registers;
        registers.CONTROL1.modify(CONTROL1::SRST_HC::SET);
        if !self.wait(|registers| !registers.CONTROL1.is_set(CONTROL1::SRST_HC), COMMAND_TIMEOUT_US) {
            return Err(InitError::ControllerTimeout);
        }
        if self.variant.powers_the_bus() {
            registers.CONTROL0.modify(CONTROL0::SD_BUS_POWER::SET + CONTROL0::SD_BUS_VOLTAGE::V3_3);
            self.clock.delay_us(BUS_POWER_SETTLE_US);
        }
        self.card.card_detected =
            self.wait(|registers| registers.STATUS.is_set(STATUS::CARD_INSERTED), CARD_DETECT_TIMEOUT_US);
        // Status bits only latch when their mask bit is set; no interrupt line is used.
        registers.IRPT_MASK.set(u32::MAX);
        registers.IRPT_EN.set(0);
        registers.INTERRUPT.set(u32::MAX);
        let base_hz = base_clock_hz
            .filter(|&hz| hz > 0)
            .unwrap_or(registers.CAPABILITIES_0.read(CAPABILITIES_0::BASE_CLOCK) * 1_000_000);
        self.set_clock(base_hz, IDENTIFICATION_HZ)?;

        self.command(sd::GO_IDLE_STATE, 0).map_err(|error| InitError::Command { index: 0, error })?;
        let echo = self
            .command(sd::SEND_IF_COND, sd::IF_COND_ARGUMENT)
            .map_err(|error| InitError::Command { index: 8, error })?;
        if !sd::interface_condition_accepted(echo) {
            return Err(InitError::VoltageMismatch(echo));
        }
        let deadline = self.clock.deadline_after_us(POWER_UP_TIMEOUT_US);
        let conditions = loop {
            let ocr = self
                .application_command(sd::SD_SEND_OP_COND, sd::OP_COND_ARGUMENT)
                .map_err(|error| InitError::Command { index: 41, error })?;
            let conditions = OperatingConditions::decode(ocr);
            if conditions.powered_up {
                break conditions;
            }
            if deadline.passed(self.clock) {
                return Err(InitError::PowerUpTimeout);
            }
            self.clock.delay_us(POWER_UP_POLL_US);
        };
        self.card.high_capacity = conditions.high_capacity;
        self.command(sd::ALL_SEND_CID, 0).map_err(|error| InitError::Command { index: 2, error })?;
        self.card.identity = CardIdentity::decode(&self.long_response());
        self.card.relative_address = self
            .command(sd::SEND_RELATIVE_ADDR, 0)
            .and_then(|published| PublishedAddress::checked(published).map_err(BlockError::Refused))
            .map_err(|error| InitError::Command { index: 3, error })?;
        let rca_argument = u32::from(self.card.relative_address) << 16;
        self.command(sd::SEND_CSD, rca_argument).map_err(|error| InitError::Command { index: 9, error })?;
        self.card.blocks = sd::capacity_blocks(&self.long_response()).map_err(|_| InitError::UnknownCsd)?;
        self.command(sd::SELECT_CARD, rca_argument)
            .map_err(|error| InitError::Command { index: 7, error })?;
        self.set_clock(base_hz, TRANSFER_HZ)?;
        if !self.card.high_capacity {
            self.command(sd::SET_BLOCKLEN, BLOCK_SIZE as u32)
                .map_err(|error| InitError::Command { index: 16, error })?;
        }
        let mut scr = [0u8; 8];
        self.registers.BLKSIZECNT.write(BLKSIZECNT::BLKSIZE.val(8) + BLKSIZECNT::BLKCNT.val(1));
        self.application_command(sd::SEND_SCR, 0)
            .and_then(|_| self.read_data(&mut scr, 8))
            .map_err(|error| InitError::Command { index: 51, error })?;
        if sd::supports_4_bit_bus(scr) {
            self.application_command(sd::SET_BUS_WIDTH, sd::BUS_WIDTH_4)
                .map_err(|error| InitError::Command { index: 6, error })?;
            self.registers.CONTROL0.modify(CONTROL0::HCTL_DWIDTH::FourBit);
            self.card.four_bit_bus = true;
        }
        Ok(())
    }

    /// The 136-bit response (CID or CSD) of the last command, as the four response registers
    /// hold it.
    fn long_response(&self) -> LongResponse {
        LongResponse(core::array::from_fn(|index| self.registers.RESP[index].get()))
    }

    /// Programs the SD clock to at most `target_hz` from `base_hz` (10-bit divided clock):
    /// waits for the command and data lines to be idle, stops the clock, lets it settle, writes
    /// the divider, waits for the internal clock to be stable, lets it settle, starts the SD
    /// clock and lets it settle again.
    fn set_clock(&mut self, base_hz: u32, target_hz: u32) -> Result<(), InitError> {
        let registers = &self.registers;
        let idle = |registers: &Registers| {
            !registers.STATUS.is_set(STATUS::CMD_INHIBIT) && !registers.STATUS.is_set(STATUS::DAT_INHIBIT)
        };
        if !self.wait(idle, COMMAND_TIMEOUT_US) {
            return Err(InitError::ControllerTimeout);
        }
        registers.CONTROL1.modify(CONTROL1::CLK_EN::CLEAR);
        self.clock.delay_us(CLOCK_SETTLE_US);
        // SD clock = base / (2 * divisor); divisor 0 means undivided.
        let divisor = base_hz.div_ceil(2 * target_hz).min(0x3FF);
        registers.CONTROL1.modify(
            CONTROL1::CLK_FREQ8.val(divisor & 0xFF)
                + CONTROL1::CLK_FREQ_MS2.val(divisor >> 8)
                + CONTROL1::DATA_TOUNIT.val(0xE)
                + CONTROL1::CLK_INTLEN::SET,
        );
        if !self.wait(|registers| registers.CONTROL1.is_set(CONTROL1::CLK_STABLE), COMMAND_TIMEOUT_US) {
            return Err(InitError::ControllerTimeout);
        }
        self.clock.delay_us(CLOCK_SETTLE_US);
        registers.CONTROL1.modify(CONTROL1::CLK_EN::SET);
        self.clock.delay_us(CLOCK_SETTLE_US);
        self.card.clock_hz = if divisor == 0 { base_hz } else { base_hz / (2 * divisor) };
        Ok(())
    }

    /// Resets the command and data lines after an error and clears the status bits.
    fn recover(&mut self) {
        self.registers.CONTROL1.modify(CONTROL1::SRST_CMD::SET + CONTROL1::SRST_DATA::SET);
        self.wait(
            |registers| {
                !registers.CONTROL1.is_set(CONTROL1::SRST_CMD)
                    && !registers.CONTROL1.is_set(CONTROL1::SRST_DATA)
            },
            COMMAND_TIMEOUT_US,
        );
        self.registers.INTERRUPT.set(u32::MAX);
    }

    fn application_command(&mut self, command: Command, argument: u32) -> Result<u32, BlockError> {
        let rca_argument = u32::from(self.card.relative_address) << 16;
        self.command(sd::APP_CMD, rca_argument)?;
        self.command(command, argument)
    }

    /// Issues `command` with `argument` and returns the first response word, or
    /// [`BlockError::Refused`] when it is an R1 card status with an error bit set
    /// ([`sd::check_card_status`]). Data commands only start here; the caller moves the data.
    fn command_with_mode(
        &mut self,
        command: Command,
        argument: u32,
        multi_block: bool,
    ) -> Result<u32, BlockError> {
        let registers = &self.registers;
        let needs_data_line = command.data != DataDirection::None || command.response == Response::ShortBusy;
        if !self.wait(
            |registers| {
                !registers.STATUS.is_set(STATUS::CMD_INHIBIT)
                    && (!needs_data_line || !registers.STATUS.is_set(STATUS::DAT_INHIBIT))
            },
            COMMAND_TIMEOUT_US,
        ) {
            self.recover();
            return Err(BlockError::Timeout);
        }
        registers.INTERRUPT.set(u32::MAX);
        registers.ARG1.set(argument);
        let response = match command.response {
            Response::None => CMDTM::CMD_RSPNS_TYPE::None,
            Response::Long => CMDTM::CMD_RSPNS_TYPE::Bits136 + CMDTM::CMD_CRCCHK_EN::SET,
            Response::Short => {
                CMDTM::CMD_RSPNS_TYPE::Bits48 + CMDTM::CMD_CRCCHK_EN::SET + CMDTM::CMD_IXCHK_EN::SET
            }
            Response::ShortBusy => {
                CMDTM::CMD_RSPNS_TYPE::Bits48Busy + CMDTM::CMD_CRCCHK_EN::SET + CMDTM::CMD_IXCHK_EN::SET
            }
            Response::ShortNoCrc => CMDTM::CMD_RSPNS_TYPE::Bits48,
        };
        let data = match command.data {
            DataDirection::None => CMDTM::CMD_ISDATA::CLEAR,
            DataDirection::Read => CMDTM::CMD_ISDATA::SET + CMDTM::TM_DAT_DIR::CardToHost,
            DataDirection::Write => CMDTM::CMD_ISDATA::SET + CMDTM::TM_DAT_DIR::HostToCard,
        };
        let multi = if multi_block {
            CMDTM::TM_MULTI_BLOCK::SET + CMDTM::TM_BLKCNT_EN::SET + CMDTM::TM_AUTO_CMD_EN::Cmd12
        } else {
            CMDTM::TM_MULTI_BLOCK::CLEAR
        };
        registers.CMDTM.write(CMDTM::CMD_INDEX.val(u32::from(command.index)) + response + data + multi);
        if !self.wait(
            |registers| {
                registers.INTERRUPT.is_set(INTERRUPT::CMD_DONE) || registers.INTERRUPT.is_set(INTERRUPT::ERR)
            },
            COMMAND_TIMEOUT_US,
        ) {
            self.recover();
            return Err(BlockError::Timeout);
        }
        let status = self.registers.INTERRUPT.extract();
        if status.is_set(INTERRUPT::ERR) {
            self.recover();
            return Err(if status.is_set(INTERRUPT::CTO_ERR) {
                BlockError::Timeout
            } else {
                BlockError::DataError
            });
        }
        self.registers.INTERRUPT.write(INTERRUPT::CMD_DONE::SET);
        if command.response == Response::ShortBusy && command.data == DataDirection::None {
            // R1b: the card holds DAT0 low while busy; the controller signals DATA_DONE.
            self.wait(|registers| registers.INTERRUPT.is_set(INTERRUPT::DATA_DONE), COMMAND_TIMEOUT_US);
            self.registers.INTERRUPT.write(INTERRUPT::DATA_DONE::SET);
        }
        sd::check_card_status(command, self.registers.RESP[0].get()).map_err(BlockError::Refused)
    }

    fn command(&mut self, command: Command, argument: u32) -> Result<u32, BlockError> {
        self.command_with_mode(command, argument, false)
    }

    /// Reads `buffer.len()` bytes of data in blocks of `block_bytes` from the FIFO.
    fn read_data(&mut self, buffer: &mut [u8], block_bytes: usize) -> Result<(), BlockError> {
        for block in buffer.chunks_mut(block_bytes) {
            self.wait_data(INTERRUPT::READ_RDY)?;
            self.registers.INTERRUPT.write(INTERRUPT::READ_RDY::SET);
            for word in block.chunks_mut(4) {
                let value = self.registers.DATA.get().to_le_bytes();
                word.copy_from_slice(&value[..word.len()]);
            }
        }
        self.wait_data(INTERRUPT::DATA_DONE)?;
        self.registers.INTERRUPT.write(INTERRUPT::DATA_DONE::SET);
        Ok(())
    }

    fn write_data(&mut self, buffer: &[u8]) -> Result<(), BlockError> {
        for block in buffer.chunks(BLOCK_SIZE) {
            self.wait_data(INTERRUPT::WRITE_RDY)?;
            self.registers.INTERRUPT.write(INTERRUPT::WRITE_RDY::SET);
            for word in block.chunks(4) {
                self.registers.DATA.set(u32::from_le_bytes([word[0], word[1], word[2], word[3]]));
            }
        }
        self.wait_data(INTERRUPT::DATA_DONE)?;
        self.registers.INTERRUPT.write(INTERRUPT::DATA_DONE::SET);
        Ok(())
    }

    fn wait_data(
        &mut self,
        flag: tock_registers::fields::Field<u32, INTERRUPT::Register>,
    ) -> Result<(), BlockError> {
        if !self.wait(
            |registers| registers.INTERRUPT.is_set(flag) || registers.INTERRUPT.is_set(INTERRUPT::ERR),
            COMMAND_TIMEOUT_US,
        ) {
            self.recover();
            return Err(BlockError::Timeout);
        }
        let status = self.registers.INTERRUPT.extract();
        if status.is_set(INTERRUPT::ERR) {
            self.recover();
            return Err(if status.is_set(INTERRUPT::DTO_ERR) {
                BlockError::Timeout
            } else {
                BlockError::DataError
            });
        }
        Ok(())
    }

    /// One read or write command over `count` blocks, retried after errors.
    fn transfer(
        &mut self,
        first: u64,
        count: usize,
        mut move_data: impl FnMut(&mut Self) -> Result<(), BlockError>,
        write: bool,
    ) -> Result<(), BlockError> {
        let address = if self.card.high_capacity { first } else { first * BLOCK_SIZE as u64 };
        let address = u32::try_from(address).map_err(|_| BlockError::OutOfRange)?;
        let command = match (write, count > 1) {
            (false, false) => sd::READ_SINGLE_BLOCK,
            (false, true) => sd::READ_MULTIPLE_BLOCK,
            (true, false) => sd::WRITE_BLOCK,
            (true, true) => sd::WRITE_MULTIPLE_BLOCK,
        };
        let mut last_error = BlockError::Timeout;
        for attempt in 0..RETRIES {
            if attempt > 0 {
                self.counters.retries += 1;
            }
            self.registers
                .BLKSIZECNT
                .write(BLKSIZECNT::BLKSIZE.val(BLOCK_SIZE as u32) + BLKSIZECNT::BLKCNT.val(count as u32));
            let result = self.command_with_mode(command, address, count > 1).and_then(|_| move_data(self));
            match result {
                Ok(()) => return Ok(()),
                Err(error @ BlockError::Refused(_)) => return Err(error),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }
}

impl BlockDevice for Sdhci<'_> {
    fn block_count(&self) -> u64 {
        self.card.blocks
    }

    fn read_blocks(&mut self, first: u64, buffer: &mut [u8]) -> Result<(), BlockError> {
        let count = check_transfer(self.card.blocks, first, buffer.len())?;
        if let Some(faults) = &mut self.read_faults
            && faults.strike(first, count).is_some()
        {
            return Err(BlockError::DataError);
        }
        let per_command = self.max_blocks_per_command.clamp(1, MAX_BLOCKS_PER_COMMAND);
        for (index, chunk) in buffer.chunks_mut(per_command * BLOCK_SIZE).enumerate() {
            let start = first + (index * per_command) as u64;
            let count = chunk.len() / BLOCK_SIZE;
            self.transfer(start, count, |driver| driver.read_data(chunk, BLOCK_SIZE), false)?;
            self.counters.read_commands += 1;
            self.counters.blocks_read += count as u64;
        }
        Ok(())
    }

    fn arm_read_faults(&mut self, one_in: u32) -> Result<(), &'static str> {
        self.read_faults = Some(super::sd_faults::ReadFaults::new(one_in));
        Ok(())
    }

    fn write_blocks(&mut self, first: u64, buffer: &[u8]) -> Result<(), BlockError> {
        check_transfer(self.card.blocks, first, buffer.len())?;
        let per_command = self.max_blocks_per_command.clamp(1, MAX_BLOCKS_PER_COMMAND);
        for (index, chunk) in buffer.chunks(per_command * BLOCK_SIZE).enumerate() {
            let start = first + (index * per_command) as u64;
            let count = chunk.len() / BLOCK_SIZE;
            self.transfer(start, count, |driver| driver.write_data(chunk), true)?;
            self.counters.write_commands += 1;
            self.counters.blocks_written += count as u64;
        }
        Ok(())
    }
}
