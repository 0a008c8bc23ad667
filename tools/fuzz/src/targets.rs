//! The target functions: each takes one input and runs it through the code the kernel runs on
//! that input, then checks what came out where a check is certain. Any panic is a defect.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use bsp::board::sd_protocol::{
    self, CardIdentity, Command, DataDirection, LongResponse, OperatingConditions, PublishedAddress, Response,
};
use kernel::{
    devicetree,
    fs::Volume,
    hil::{Clock, Console, SingleCpu},
    infer::{
        ContiguousKv, State, Tokenizer, forward,
        synthetic::{SyntheticFormat, SyntheticSpec},
    },
    model::{Config, ModelError, ModelErrorKind, ModelFile, TensorType, Weights},
    serve::{
        config,
        desk::{ControlDesk, Input, Site},
        prepare::{ModelLayout, Preparation, prepare_llama2c},
        protocol::{self, Event},
    },
};

use crate::card::SparseCard;

/// Largest tables buffer a model target grants (the kernel's weights pool refuses larger ones
/// the same way, with an error).
const MAX_TABLES_BYTES: usize = 64 << 20;

/// Text every tokenizer built from a fuzzed model encodes.
const SAMPLE_TEXT: &str = "Hello <|im_start|>user 42 caf\u{e9} \u{1F642}\n\tend";

/// Grants a tables buffer of up to [`MAX_TABLES_BYTES`], filled with a pattern (the kernel's is
/// not cleared either).
fn allocate_tables(bytes: usize) -> Result<Vec<u8>, ModelError> {
    if bytes > MAX_TABLES_BYTES {
        return Err(ModelError::new(
            0,
            ModelErrorKind::TooLarge { what: "tables buffer", value: bytes as u64 },
        ));
    }
    Ok(vec![0xA5; bytes])
}

/// A GGUF v3 file: prepared in bounded units as a load does (metadata, tensor index, shapes,
/// tokenizer tables), then the weights views and the tokenizer a batch makes from the tables;
/// the whole-file parse too, which must agree on the config.
pub fn gguf(data: &[u8]) {
    let prepared = Preparation::run(data, &mut allocate_tables);
    let whole = ModelFile::parse(data);
    let Ok((tables, layout)) = prepared else { return };
    let weights = layout.weights(data, &tables).expect("a prepared model's index gives its weights");
    if let Ok(whole) = whole {
        assert_eq!(whole.weights.config, layout.config, "the staged and the whole-file parse agree");
    }
    use_prepared_model(&weights, &layout, &tables);
}

/// A llama2.c checkpoint and its `tokenizer.bin`: a u32 LE length `n`, then `n` bytes of the
/// tokenizer file (fewer if the input ends), then the checkpoint.
pub fn llama2c(data: &[u8]) {
    let (tokenizer_length, rest) = match data.split_first_chunk::<4>() {
        Some((length, rest)) => (u32::from_le_bytes(*length) as usize, rest),
        None => (0, data),
    };
    let (tokenizer_file, checkpoint) = rest.split_at(tokenizer_length.min(rest.len()));
    let _ = ModelFile::parse(checkpoint);
    let Ok((tables, layout)) = prepare_llama2c(checkpoint, Some(tokenizer_file), &mut allocate_tables) else {
        return;
    };
    let weights = layout.weights(checkpoint, &tables).expect("a prepared model's index gives its weights");
    use_prepared_model(&weights, &layout, &tables);
}

/// What a served model does with its prepared tables: the tokenizer encodes and decodes, and,
/// when the model is small enough to be quick, one token runs through the forward pass (every
/// weights view must lie inside the file and have its shape).
fn use_prepared_model(weights: &Weights<'_>, layout: &ModelLayout, tables: &[u8]) {
    let tokenizer = layout.tokenizer(tables);
    assert!(tokenizer.vocab_size() <= layout.config.vocab_size, "the tokenizer fits the embedding");
    let ids = exercise_tokenizer(&tokenizer, SAMPLE_TEXT);
    let config = layout.config;
    if is_quick(&config) {
        let mut state = State::new(weights);
        let mut kv = ContiguousKv::new(config.layers, config.kv_dim(), config.context_length)
            .expect("a small cache is granted");
        let token = ids.first().copied().unwrap_or(0);
        let _ = forward(weights, &mut state, &mut kv, &SingleCpu, token, 0);
    }
}

/// Whether one forward pass of a model of `config` takes well under a millisecond.
fn is_quick(config: &Config) -> bool {
    config.context_length <= 64
        && config.layers <= 4
        && config.vocab_size <= 4096
        && config.dim.saturating_mul(config.hidden_dim) <= 1 << 16
        && config.dim <= 1024
}

/// Encodes `text`, decodes every id (each after the one before, as replies are streamed) and
/// reads each id's properties; returns the ids.
fn exercise_tokenizer(tokenizer: &Tokenizer<&[u8]>, text: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    tokenizer.encode(text, &mut ids);
    let vocab_size = tokenizer.vocab_size();
    assert!(ids.iter().all(|&id| (id as usize) < vocab_size), "encode gives ids inside the vocabulary");
    decode_all(tokenizer, &ids);
    ids
}

/// Decodes `ids` in order, with the property queries a reply makes.
fn decode_all(tokenizer: &Tokenizer<&[u8]>, ids: &[u32]) {
    let mut previous = None;
    for &id in ids {
        let _ = tokenizer.decode(previous, id);
        let _ = (tokenizer.spelling(id), tokenizer.is_control(id), tokenizer.is_stop(id));
        previous = Some(id);
    }
}

/// The two tokenizers the `tokenizer` target drives: a byte-level BPE one from a GGUF model and
/// a scored one from a llama2.c `tokenizer.bin`, each built once from synthetic models.
struct TokenizerPair {
    bpe: (Vec<u8>, ModelLayout),
    scored: (Vec<u8>, ModelLayout),
}

fn tokenizer_pair() -> &'static TokenizerPair {
    static PAIR: OnceLock<TokenizerPair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let spec = SyntheticSpec {
            dim: 32,
            hidden_dim: 64,
            layers: 1,
            heads: 4,
            kv_heads: 2,
            vocab_size: 320,
            context_length: 16,
            tied: true,
            seed: 7,
        };
        let gguf = spec.generate(SyntheticFormat::Gguf(TensorType::Q8_0)).expect("a valid synthetic spec");
        let bpe = Preparation::run(&gguf.model, &mut allocate_tables).expect("the synthetic GGUF prepares");
        let llama2c = spec.generate(SyntheticFormat::Llama2c).expect("a valid synthetic spec");
        let scored = prepare_llama2c(&llama2c.model, llama2c.tokenizer.as_deref(), &mut allocate_tables)
            .expect("the synthetic checkpoint prepares");
        TokenizerPair { bpe, scored }
    })
}

/// The tokenizers: the first byte picks the tokenizer (bit 0: BPE or scored) and the work
/// (bit 1: encode the rest as UTF-8 text, lossily as a console line could not be; or decode
/// the rest as u32 LE token ids, of any value).
pub fn tokenizer(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let pair = tokenizer_pair();
    let (tables, layout) = if mode & 1 == 0 { &pair.bpe } else { &pair.scored };
    let tokenizer = layout.tokenizer(tables);
    if mode & 2 == 0 {
        exercise_tokenizer(&tokenizer, &String::from_utf8_lossy(rest));
    } else {
        let ids: Vec<u32> = rest
            .chunks_exact(4)
            .map(|chunk| u32::from_le_bytes(chunk.try_into().expect("4 bytes")))
            .collect();
        decode_all(&tokenizer, &ids);
    }
}

/// A console that hands out the input's bytes and keeps what the desk writes.
struct FuzzConsole {
    input: Mutex<VecDeque<u8>>,
    written: AtomicU64,
}

impl Console for FuzzConsole {
    fn write_bytes(&self, bytes: &[u8]) {
        self.written.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
    fn read_byte(&self) -> Option<u8> {
        self.input.lock().expect("not poisoned").pop_front()
    }
    fn flush(&self) {}
    fn line_end_ns(&self) -> Option<u64> {
        Some(0)
    }
}

/// A clock that moves a microsecond every time it is read.
struct StepClock(AtomicU64);

impl Clock for StepClock {
    fn ticks(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
    fn frequency_hz(&self) -> u64 {
        1_000_000
    }
}

/// Bytes received on the console: the control desk's line editor assembles them (answering
/// `/stats`, `/cancel` and the machine-mode controls on the spot), and every queued line that
/// is a machine-mode request goes through the request parser, as the server takes it.
pub fn console(data: &[u8]) {
    let console =
        FuzzConsole { input: Mutex::new(data.iter().copied().collect()), written: AtomicU64::new(0) };
    let clock = StepClock(AtomicU64::new(0));
    let desk = ControlDesk::new();
    desk.set_stats_snapshot("turns 0\r\n".into());
    desk.set_generating(data.first().is_some_and(|byte| byte & 1 == 1));
    loop {
        desk.service(Site::Poll, &console, &clock);
        let mut took_any = false;
        while let Some(input) = desk.next_input() {
            took_any = true;
            if let Input::Line(line) = input {
                assert!(line.len() <= kernel::serve::MAX_LINE, "a line is at most MAX_LINE bytes");
                if line.trim_start().starts_with('{') {
                    protocol(line.as_bytes());
                }
            }
        }
        if !took_any {
            break;
        }
    }
    assert!(console.input.lock().expect("not poisoned").is_empty(), "the desk reads every byte");
    let _ = (desk.take_cancels(), desk.take_deadline_misses());
}

/// A machine-mode request line: parsed, and the error record written for a refused one must be
/// one line of JSON carrying the request's id.
pub fn protocol(data: &[u8]) {
    let Ok(line) = core::str::from_utf8(data) else { return };
    let id = protocol::request_id(line);
    match protocol::parse_request(line) {
        Ok(request) => {
            // A line turned away as busy is answered under the id `request_id` reads.
            assert_eq!(id, Some(request.id), "request_id agrees with the parsed request");
            let _ = protocol::record(Some(request.id), &Event::Info { text: line });
        }
        Err(error) => {
            let record = protocol::record(error.id, &Event::Error { message: &error.message });
            assert!(!record.trim_end().contains('\n'), "a record is one line: {record:?}");
            let value: serde_json::Value = serde_json::from_str(&record).expect("a record is JSON");
            assert_eq!(
                value.get("id").and_then(serde_json::Value::as_u64),
                error.id,
                "the record names the id"
            );
        }
    }
}

/// Directories the `fat32` target visits at most, and the bytes it reads of each file.
const MAX_DIRECTORIES: usize = 16;
const MAX_READ_BYTES: usize = 64 * 1024;
/// Chain links the `fat32` target follows for one file before giving up (a card's biggest
/// model file has about 2^17; the kernel walks them a few thousand at a time).
const MAX_CHAIN_LINKS: usize = 1 << 18;
/// Links per step of a staged open, as a background load walks them.
const LINKS_PER_STEP: usize = 4096;

/// An SD card image (in the sparse form of [`crate::card`]): mounted, listed from the root down
/// a few directories, the model library listed as `/models` does, and every file found opened
/// a step at a time, as a load does, and read, both in chunks and at offsets.
pub fn fat32(data: &[u8]) {
    let Ok(mut volume) = Volume::mount(SparseCard::parse(data)) else { return };
    let _ = kernel::serve::library::list_models(&mut volume);
    let mut directories = vec![String::from("/")];
    let mut visited = 0;
    while let Some(directory) = directories.pop() {
        visited += 1;
        if visited > MAX_DIRECTORIES {
            break;
        }
        let Ok(entries) = volume.list(&directory) else { continue };
        for entry in entries {
            let path = if directory == "/" {
                format!("/{}", entry.name())
            } else {
                format!("{directory}/{}", entry.name())
            };
            if entry.is_directory() {
                directories.push(path);
            } else {
                read_file(&mut volume, &path);
            }
        }
    }
}

/// Opens `path` in steps and reads up to [`MAX_READ_BYTES`] of it. (A corrupt directory may
/// hold one name twice, so the file opened need not be the entry listed.)
fn read_file(volume: &mut Volume<SparseCard>, path: &str) {
    let Ok(mut opening) = volume.begin_open(path) else { return };
    let mut links = 0;
    let layout = loop {
        match volume.continue_open(&mut opening, LINKS_PER_STEP) {
            Ok(Some(layout)) => break layout,
            Ok(None) if links < MAX_CHAIN_LINKS => links += LINKS_PER_STEP,
            Ok(None) | Err(_) => return,
        }
    };
    let covered: u64 = layout.extents.iter().map(|extent| extent.block_count).sum();
    assert!(covered * 512 >= layout.size, "the extents cover the file");
    let mut file = volume.reopen(&layout);
    let mut buffer = vec![0u8; 4096];
    let mut total = 0;
    while total < MAX_READ_BYTES {
        match file.read_chunk(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                assert!(read <= buffer.len());
                total += read;
            }
        }
    }
    let size = file.size();
    for offset in [size / 2, size.saturating_sub(100), size, size + 1, u64::MAX] {
        if let Ok(read) = file.read_at(offset, &mut buffer[..700]) {
            assert!(read as u64 <= size.saturating_sub(offset), "no read past the end of a file");
        }
    }
}

/// A device tree blob as the boot loader hands it over: checked and rebuilt into the canonical
/// copy the kernel keeps, whose own rebuild must give it back unchanged; then the RAM size and
/// the topology read from it.
pub fn devicetree(data: &[u8]) {
    if let Ok(canonical) = devicetree::canonical(data) {
        let again = devicetree::canonical(&canonical).expect("a canonical tree is accepted");
        assert_eq!(again, canonical, "rebuilding a canonical tree changes nothing");
    }
    let _ = devicetree::facts(data);
}

/// Every command the SD driver issues: the R1 check's command byte names one of these when its
/// index (bits 5:0) and application flag (bit 6) match, and otherwise a short-response command
/// of that index (bit 7: with busy).
const SD_COMMANDS: [Command; 17] = [
    sd_protocol::GO_IDLE_STATE,
    sd_protocol::ALL_SEND_CID,
    sd_protocol::SEND_RELATIVE_ADDR,
    sd_protocol::SELECT_CARD,
    sd_protocol::SEND_IF_COND,
    sd_protocol::SEND_CSD,
    sd_protocol::STOP_TRANSMISSION,
    sd_protocol::SEND_STATUS,
    sd_protocol::SET_BLOCKLEN,
    sd_protocol::READ_SINGLE_BLOCK,
    sd_protocol::READ_MULTIPLE_BLOCK,
    sd_protocol::WRITE_BLOCK,
    sd_protocol::WRITE_MULTIPLE_BLOCK,
    sd_protocol::APP_CMD,
    sd_protocol::SET_BUS_WIDTH,
    sd_protocol::SD_SEND_OP_COND,
    sd_protocol::SEND_SCR,
];

/// Bytes of a full `sd_registers` input (a shorter one reads as if zero-padded).
const SD_REGISTERS_INPUT: usize = 57;

/// SD card registers and responses as the SDHCI gives them, little-endian words, zero-padded
/// when short: bytes 0-15 a CSD (four response words, decoded for the capacity the driver
/// reports), 16-23 an SCR (for the bus width), 24-39 a CID (four response words: the identity
/// boot prints), 40 a command byte and 41-44 its first response word (the R1 check every
/// command goes through), 45-48 an OCR (R3), 49-52 an R6 (CMD3), 53-56 an R7 (CMD8). Each
/// decoder is checked against a plain reading of the same bits.
pub fn sd_registers(data: &[u8]) {
    let mut bytes = [0u8; SD_REGISTERS_INPUT];
    let length = data.len().min(bytes.len());
    bytes[..length].copy_from_slice(&data[..length]);
    let word = |offset: usize| u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
    let long =
        |offset: usize| LongResponse([word(offset), word(offset + 4), word(offset + 8), word(offset + 12)]);

    let csd = long(0);
    if let Ok(blocks) = sd_protocol::capacity_blocks(&csd) {
        // CSD 2.0 holds a 22-bit C_SIZE in units of 1024 blocks; CSD 1.0 at most 2^31 blocks.
        assert!(blocks <= (1 << 22) * 1024, "capacity within what a CSD can say");
    }
    for (high, low) in [(127, 126), (73, 62), (49, 47), (83, 80), (69, 48), (127, 120)] {
        assert!(csd.bits(high, low) < 1 << (high - low + 1), "a field fits its width");
    }
    let scr: [u8; 8] = bytes[16..24].try_into().expect("8 bytes");
    let _ = sd_protocol::supports_4_bit_bus(scr);

    sd_identity(&long(24), bytes[24..40].try_into().expect("16 bytes"));
    sd_card_status(bytes[40], word(41));

    let ocr = word(45);
    let conditions = OperatingConditions::decode(ocr);
    assert_eq!(conditions.powered_up, ocr >> 31 == 1, "R3 busy bit");
    assert_eq!(conditions.high_capacity, ocr >> 30 == 0b11, "R3 capacity status, once powered up");

    let r6 = word(49);
    let published = PublishedAddress::decode(r6);
    assert_eq!(u32::from(published.relative_address), r6 >> 16, "R6 address");
    let bit = |value: u32, index: u32| value >> index & 1;
    for (status_bit, response_bit) in [(23, 15), (22, 14), (19, 13)] {
        assert_eq!(bit(published.status, status_bit), bit(r6, response_bit), "R6 status bit {status_bit}");
    }
    assert_eq!(published.status & 0x1FFF, r6 & 0x1FFF, "R6 status bits 12:0");
    assert_eq!(published.status & !0x00C8_1FFF, 0, "R6 carries no other status bits");
    assert_eq!(published.errors(), published.status & sd_protocol::R1_ERROR_BITS);
    let taken = PublishedAddress::checked(r6);
    // COM_CRC_ERROR, ILLEGAL_COMMAND, ERROR (bits 15:13) and AKE_SEQ_ERROR (bit 3).
    assert_eq!(taken.is_ok(), r6 & 0xE008 == 0, "R6 taken only without an error bit");

    let r7 = word(53);
    let accepted = sd_protocol::interface_condition_accepted(r7);
    assert_eq!(accepted, r7 >> 8 & 0xF == 0b0001 && r7 & 0xFF == 0xAA, "R7 voltage and check pattern");
}

/// The CID checks: the decoded fields against the same bits read from the 16 input bytes, and
/// the text boot prints from them.
fn sd_identity(cid: &LongResponse, raw: [u8; 16]) {
    // The SDHCI's words hold register bits 127:8; the top byte of the last word is not the
    // card's.
    let register = u128::from_le_bytes(raw) << 8;
    let field =
        |high: u32, width: u32| (register >> (high + 1 - width)) as u32 & ((1u64 << width) - 1) as u32;
    let identity = CardIdentity::decode(cid);
    assert_eq!(u32::from(identity.manufacturer), field(127, 8), "MID");
    assert_eq!(u32::from(u16::from_be_bytes(identity.oem)), field(119, 16), "OID");
    for (index, &byte) in identity.product.iter().enumerate() {
        assert_eq!(u32::from(byte), field(103 - 8 * index as u32, 8), "PNM character {index}");
    }
    assert_eq!(u32::from(identity.revision), field(63, 8), "PRV");
    assert!(identity.revision_major() <= 15 && identity.revision_minor() <= 15, "PRV digits are nibbles");
    assert_eq!(identity.serial, field(55, 32), "PSN");
    assert_eq!(u32::from(identity.year), 2000 + field(19, 8), "MDT year");
    assert!((2000..=2255).contains(&identity.year), "MDT year in range");
    assert_eq!(u32::from(identity.month_field), field(11, 4), "MDT month");
    match identity.month() {
        Some(month) => assert!((1..=12).contains(&month) && month == identity.month_field),
        None => assert!(!(1..=12).contains(&identity.month_field), "a month 1-12 is a month"),
    }

    let text = identity.to_string();
    assert!(
        text.chars().all(|c| (' '..='~').contains(&c)),
        "the identity shows printable ASCII only: {text:?}"
    );
    let name: String = identity
        .oem
        .iter()
        .chain([b' '].iter())
        .chain(identity.product.iter())
        .map(|&b| sd_protocol::printable(b))
        .collect();
    assert!(text.starts_with(&name), "the text opens with the OEM id and product name: {text:?}");
    let date = match identity.month() {
        Some(month) => format!(", made {}-{month:02},", identity.year),
        None => format!(", made {},", identity.year),
    };
    assert!(text.contains(&date), "the text holds the date {date:?}: {text:?}");
    assert!(text.len() < 100, "one short line");
}

/// The R1 check of `response` for the command `selector` names and for every command the
/// driver issues, against a plain reading of the SD specification's error bits.
fn sd_card_status(selector: u8, response: u32) {
    let index = selector & 0x3F;
    let application = selector & 0x40 != 0;
    let named =
        SD_COMMANDS.iter().find(|command| command.index == index && command.application == application);
    let command = named.copied().unwrap_or(Command {
        index,
        response: if selector & 0x80 != 0 { Response::ShortBusy } else { Response::Short },
        data: DataDirection::None,
        application,
    });
    // Card status bits that report an error: out of range, address, block length, erase
    // sequence, erase parameter, write protect, lock/unlock failed, command CRC, illegal
    // command, ECC failed, controller error, general error, CSD overwrite, write-protect erase
    // skip, authentication sequence.
    let error_bits = [31, 30, 29, 28, 27, 26, 24, 23, 22, 21, 20, 19, 16, 15, 3];
    let has_error = error_bits.iter().any(|&bit| response >> bit & 1 == 1);
    for command in SD_COMMANDS.iter().copied().chain([command]) {
        let other_short_response = !command.application && matches!(command.index, 3 | 8);
        let is_r1 =
            matches!(command.response, Response::Short | Response::ShortBusy) && !other_short_response;
        let expected = if is_r1 && has_error { Err(response) } else { Ok(response) };
        assert_eq!(sd_protocol::check_card_status(command, response), expected, "R1 check of {command:?}");
    }
}

/// A console that takes settings and reports what it was asked to switch.
struct SettingsConsole;

impl Console for SettingsConsole {
    fn write_bytes(&self, _bytes: &[u8]) {}
    fn read_byte(&self) -> Option<u8> {
        None
    }
    fn flush(&self) {}
}

/// The contents of `tessera.cfg`: read as the kernel reads the file (lossy UTF-8), parsed, each
/// problem reported, the console settings applied.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (card_config, problems) = config::parse(&text);
    let lines = text.lines().count();
    for problem in &problems {
        assert!((1..=lines).contains(&problem.line), "a problem names a line of the file");
        let _ = problem.to_string();
    }
    let _ = config::apply_console_settings(&card_config, &SettingsConsole);
}

/// An HTTP request's bytes as `tessera serve` receives them on a connection: the head checked
/// against the gateway's limits, the body of a generation route checked and translated, and
/// the machine-mode line made (`cli::intake::examine`, over the gateway's own `intake` and
/// `openai` code). A refusal must be a client error (4xx) that renders as one whole HTTP
/// answer; a line must be one CR-terminated JSON request within the board's line limit, with
/// no other line end and no DEL, that the board's own parser either takes as a generation or
/// refuses with a message the gateway reports as a client error (400), never as its failure.
pub fn gateway(data: &[u8]) {
    use cli::intake::{self, Examined};
    match intake::examine(data, &intake::DEFAULT_LIMITS) {
        Ok(Examined::Incomplete | Examined::Other(_)) => {}
        Ok(Examined::Generation(line)) => gateway_line(&line),
        Err(error) => {
            assert!((400..500).contains(&error.status), "a refusal is a client error: {error:?}");
            let answer = intake::error_answer(&error);
            let text = core::str::from_utf8(&answer).expect("an answer is UTF-8");
            let (head, body) = text.split_once("\r\n\r\n").expect("an answer has a head and a body");
            assert!(head.starts_with(&format!("HTTP/1.1 {} ", error.status)), "{head}");
            let body: serde_json::Value = serde_json::from_str(body).expect("the body is JSON");
            assert!(body["error"]["message"].is_string(), "{body}");
        }
    }
}

/// The checks of [`gateway`] on a machine-mode line the gateway would send.
fn gateway_line(line: &str) {
    let text = line.strip_suffix('\r').expect("the line ends with CR");
    assert!(
        text.len() <= cli::openai::BOARD_LINE_LIMIT,
        "{} bytes passes the board's line limit",
        text.len()
    );
    assert!(!text.contains(['\r', '\n', '\u{7f}']), "one line, DEL escaped");
    match protocol::parse_request(text) {
        Ok(request) => {
            assert_eq!(request.id, 1);
            assert!(matches!(request.operation, protocol::Operation::Generate { .. }), "{text}");
        }
        Err(error) => {
            let answer = cli::openai::board_refusal(&error.message);
            assert_eq!(answer.status, 400, "the board refuses what the gateway passed: {}", error.message);
        }
    }
}
