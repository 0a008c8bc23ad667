//! Writes the seed corpora the fuzz targets start from (`tools/fuzz/make-seeds.sh` runs it):
//!
//! - `fuzz-seeds generate DIR`: synthetic models from the kernel's generator (GGUF in each
//!   tensor type, llama2.c with its tokenizer.bin), tokenizer inputs, console traffic, real
//!   machine-mode requests, the runner's Raspberry Pi 3 device trees, SD registers laid out
//!   as the SD specification gives them, tessera.cfg files, HTTP requests to the gateway; each
//!   under `DIR/<target>/`.
//! - `fuzz-seeds sparse IMAGE OUT`: a card image in the sparse form of `fuzz::card`.
//! - `fuzz-seeds mbr BYTES OUT`: the MBR the project's card builder writes for an image of
//!   BYTES bytes, for cards formatted with mtools behind it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kernel::infer::synthetic::{SyntheticFormat, SyntheticSpec};
use kernel::model::TensorType;

/// What `fuzz-seeds --help` prints (and, on standard error, a wrong command line).
const USAGE: &str = "\
fuzz-seeds: writes the fuzz targets' generated seeds and the pieces of the card seeds
(tools/fuzz/make-seeds.sh calls it)

usage: fuzz-seeds generate DIR          every target's generated seeds under DIR/TARGET/
       fuzz-seeds sparse IMAGE OUT      a card image in the sparse form the fat32 target reads
       fuzz-seeds mbr BYTES OUT         a master boot record for a card of BYTES
";

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    if arguments.iter().any(|argument| argument == "-h" || argument == "--help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = match arguments.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["generate", directory] => generate(Path::new(directory)),
        ["sparse", image, out] => std::fs::read(image)
            .and_then(|bytes| std::fs::write(out, fuzz::card::SparseCard::sparse_image(&bytes))),
        ["mbr", bytes, out] => match bytes.parse::<u64>() {
            Ok(bytes) => std::fs::write(out, sdimage::image::master_boot_record(bytes)),
            Err(error) => Err(std::io::Error::other(format!("{bytes}: {error}"))),
        },
        _ => {
            eprint!("{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fuzz-seeds: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `bytes` as `DIR/target/name`.
fn put(directory: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let folder: PathBuf = directory.join(target);
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join(name), bytes)
}

fn generate(directory: &Path) -> std::io::Result<()> {
    models(directory)?;
    tokenizer_inputs(directory)?;
    console_traffic(directory)?;
    device_trees(directory)?;
    sd_registers(directory)?;
    config_files(directory)?;
    gateway_requests(directory)
}

/// An HTTP/1.1 request as the `openai` client and curl send one.
fn http_request(method: &str, path: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nUser-Agent: OpenAI/Python 1.54.0\r\n{extra_headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Requests to `tessera serve`, each under its name: generations, then the other routes and
/// refusals.
fn gateway_requests(directory: &Path) -> std::io::Result<()> {
    for (name, bytes) in generation_requests().into_iter().chain(other_requests()) {
        put(directory, "gateway", name, &bytes)?;
    }
    Ok(())
}

/// Generations: chat (whole, streamed, with stop strings and settings, text parts, a long
/// conversation) and plain completions.
fn generation_requests() -> Vec<(&'static str, Vec<u8>)> {
    let chat = "/v1/chat/completions";
    let messages = r#"[{"role":"system","content":"You answer briefly."},{"role":"user","content":"What is the capital of France?"}]"#;
    let long_turns: Vec<String> = (0..24)
        .map(|turn| {
            let role = if turn % 2 == 0 { "user" } else { "assistant" };
            format!(r#"{{"role":"{role}","content":"turn {turn}: {}"}}"#, "the board answers ".repeat(20))
        })
        .collect();
    vec![
        (
            "chat",
            http_request(
                "POST",
                chat,
                "",
                &format!(r#"{{"model":"tiny-a.gguf","messages":{messages},"max_tokens":12}}"#),
            ),
        ),
        (
            "chat-stream",
            http_request(
                "POST",
                chat,
                "",
                &format!(
                    r#"{{"messages":{messages},"stream":true,"stream_options":{{"include_usage":true}},"temperature":0.7,"top_p":0.9,"seed":42}}"#
                ),
            ),
        ),
        (
            "chat-stop",
            http_request(
                "POST",
                chat,
                "",
                &format!(r#"{{"messages":{messages},"stop":["\n","Paris"],"max_completion_tokens":32}}"#),
            ),
        ),
        (
            "chat-parts",
            http_request(
                "POST",
                chat,
                "",
                r#"{"messages":[{"role":"developer","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there \u007f é 🙂"}]},{"role":"assistant","content":null},{"role":"user","content":"again"}],"n":1}"#,
            ),
        ),
        (
            "chat-long",
            http_request(
                "POST",
                chat,
                "",
                &format!(r#"{{"messages":[{}],"max_tokens":4}}"#, long_turns.join(",")),
            ),
        ),
        (
            "completion",
            http_request(
                "POST",
                "/v1/completions",
                "",
                r#"{"model":"tiny-b","prompt":"Once upon a time","max_tokens":5,"stop":"."}"#,
            ),
        ),
        (
            "completion-array",
            http_request("POST", "/v1/completions", "", r#"{"prompt":["One prompt"],"stream":true}"#),
        ),
    ]
}

/// The other routes, and refusals: invalid JSON, wrong types, values out of range, huge and
/// many headers, a declared body over the limit, a cut body, conflicting lengths, chunks.
fn other_requests() -> Vec<(&'static str, Vec<u8>)> {
    let chat = "/v1/chat/completions";
    let messages = r#"[{"role":"user","content":"What is the capital of France?"}]"#;
    vec![
        ("models", http_request("GET", "/v1/models", "", "")),
        ("metrics", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("invalid-json", http_request("POST", chat, "", "{not json")),
        (
            "wrong-types",
            http_request(
                "POST",
                chat,
                "",
                r#"{"messages":[{"role":"robot","content":3}],"max_tokens":"many","stop":[1]}"#,
            ),
        ),
        (
            "too-many-tokens",
            http_request(
                "POST",
                chat,
                "",
                &format!(r#"{{"messages":{messages},"max_tokens":5000,"temperature":3}}"#),
            ),
        ),
        ("huge-header", http_request("GET", "/health", &format!("X-Big: {}\r\n", "a".repeat(20_000)), "")),
        ("many-headers", http_request("GET", "/health", &"X-Many: 1\r\n".repeat(70), "")),
        (
            "declared-too-large",
            format!("POST {chat} HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n{{").into_bytes(),
        ),
        (
            "cut-body",
            format!("POST {chat} HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n\r\n{{\"messages\":")
                .into_bytes(),
        ),
        (
            "conflicting-lengths",
            format!("POST {chat} HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}")
                .into_bytes(),
        ),
        (
            "chunked",
            format!("POST {chat} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"a\":\r\n0\r\n\r\n")
                .into_bytes(),
        ),
    ]
}

/// The smallest synthetic shape the generator takes (quantized formats need multiples of 32).
fn small_spec(seed: u64, layers: usize, tied: bool) -> SyntheticSpec {
    SyntheticSpec {
        dim: 32,
        hidden_dim: 32,
        layers,
        heads: 4,
        kv_heads: 2,
        vocab_size: 272,
        context_length: 8,
        tied,
        seed,
    }
}

fn models(directory: &Path) -> std::io::Result<()> {
    let failed = |error: &str| std::io::Error::other(error.to_string());
    for (name, tensor_type, layers, tied) in [
        ("q4_0-1layer-tied.gguf", TensorType::Q4_0, 1, true),
        ("q4_1-2layers.gguf", TensorType::Q4_1, 2, false),
        ("q8_0-1layer-tied.gguf", TensorType::Q8_0, 1, true),
        ("f32-1layer-tied.gguf", TensorType::F32, 1, true),
    ] {
        let model =
            small_spec(3, layers, tied).generate(SyntheticFormat::Gguf(tensor_type)).map_err(failed)?;
        put(directory, "gguf", name, &model.model)?;
    }
    for (name, layers, tied) in [("1layer-tied.bin", 1, true), ("2layers.bin", 2, false)] {
        let model = small_spec(4, layers, tied).generate(SyntheticFormat::Llama2c).map_err(failed)?;
        let tokenizer = model.tokenizer.unwrap_or_default();
        let mut input = (tokenizer.len() as u32).to_le_bytes().to_vec();
        input.extend_from_slice(&tokenizer);
        input.extend_from_slice(&model.model);
        put(directory, "llama2c", name, &input)?;
    }
    Ok(())
}

fn tokenizer_inputs(directory: &Path) -> std::io::Result<()> {
    let texts: [(&str, &str); 5] = [
        ("english", "What is the capital of France? Answer in one word."),
        ("chat", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"),
        ("unicode", "caf\u{e9} na\u{ef}ve \u{65e5}\u{672c}\u{8a9e} \u{1F642}\u{200D}\u{1F680} \u{feff}x"),
        ("digits", "3.14159 2024-12-07 0x7fff_ffff  \t spaces\r\n"),
        ("code", "fn main() { println!(\"{}\", 1 + 2); } // done"),
    ];
    for (name, text) in texts {
        for (mode, tokenizer) in [(0u8, "bpe"), (1, "scored")] {
            let mut input = vec![mode];
            input.extend_from_slice(text.as_bytes());
            put(directory, "tokenizer", &format!("encode-{tokenizer}-{name}"), &input)?;
        }
    }
    for (mode, tokenizer) in [(2u8, "bpe"), (3, "scored")] {
        let mut input = vec![mode];
        for id in [0u32, 1, 2, 65, 256, 257, 258, 271, 272, 100_000, u32::MAX] {
            input.extend_from_slice(&id.to_le_bytes());
        }
        put(directory, "tokenizer", &format!("decode-{tokenizer}"), &input)?;
    }
    Ok(())
}

/// Real requests of the machine-mode protocol, as the host CLI and the tests send them.
const REQUESTS: [&str; 10] = [
    r#"{"id":1,"op":"generate","prompt":"What is the capital of France?"}"#,
    r#"{"id":2,"op":"generate","prompt":"Tell me a story","max_tokens":64,"temperature":0.7}"#,
    r#"{"id":3,"op":"cancel","target":2}"#,
    r#"{"id":4,"op":"stats"}"#,
    r#"{"id":5,"op":"models"}"#,
    r#"{"id":6,"op":"mem"}"#,
    r#"{"id":7,"op":"trace","max":16}"#,
    r#"{"id":8,"op":"trace","max":0}"#,
    r#"{"id":9,"op":"generate","prompt":"caf\u00e9 \ud83d\ude42","max_tokens":0}"#,
    r#"{"id":10,"op":"launch"}"#,
];

fn console_traffic(directory: &Path) -> std::io::Result<()> {
    for (index, request) in REQUESTS.iter().enumerate() {
        put(directory, "protocol", &format!("request-{:02}", index + 1), request.as_bytes())?;
    }
    let sessions: [(&str, &[u8]); 7] = [
        ("chat", b"hello\r\nWhat is 2+2?\r/stats\n/cancel\r\n/mem\r/trace\r/models\r/load other.gguf\r"),
        ("machine", b"{\"id\":1,\"op\":\"generate\",\"prompt\":\"hi\"}\n{\"id\":2,\"op\":\"stats\"}\n{\"id\":3,\"op\":\"cancel\",\"target\":1}\n"),
        ("editing", b"helo\x08lo\x7f\x7fworld\r\n\xc3\xa9\x08\r\x08\x08\r"),
        ("noise", b"\x1b[A\x1b[2J\x00\x01\xff\xfe/stats\r\xc3(\r\xe2\x82\r\t tab\r"),
        ("set", b"/set temperature 0.5\r/set bandwidth_cap 100\r/set seed 7\r/reset\r/help\r"),
        ("crlf-mix", b"a\r\n\r\nb\n\rc\r\r\n{\"id\":5}\r{\"op\":\"stats\",\"id\":6}\r"),
        ("utf8", "\u{65e5}\u{672c} \u{1F642}\r".as_bytes()),
    ];
    for (name, bytes) in sessions {
        put(directory, "console", name, bytes)?;
    }
    let mut overlong = vec![b'x'; kernel::serve::MAX_LINE + 10];
    overlong.extend_from_slice(b"\r/stats\r");
    put(directory, "console", "overlong", &overlong)
}

fn device_trees(directory: &Path) -> std::io::Result<()> {
    put(directory, "devicetree", "rpi3-1g.dtb", &runner::device_tree::raspberry_pi_3(0x3C00_0000))?;
    put(directory, "devicetree", "rpi3-512m.dtb", &runner::device_tree::raspberry_pi_3(0x2000_0000))?;
    put(
        directory,
        "devicetree",
        "rpi3-nested-40.dtb",
        &runner::device_tree::raspberry_pi_3_nested(0x3C00_0000, 40),
    )
}

/// A CSD (as the SDHCI's four response words) and an SCR, as one input.
fn register_input(csd: u128, scr: [u8; 8]) -> Vec<u8> {
    let stripped = csd >> 8;
    let mut input = Vec::new();
    for word in 0..4 {
        input.extend_from_slice(&((stripped >> (32 * word)) as u32).to_le_bytes());
    }
    input.extend_from_slice(&scr);
    input
}

/// The rest of a full `sd_registers` input after its CSD and SCR: a CID given in card order
/// (16 bytes, CRC last; the SDHCI's four words drop the CRC), a command byte with its first
/// response word, an OCR (R3), an R6 and an R7.
struct Responses {
    cid: [u8; 16],
    command: u8,
    r1: u32,
    ocr: u32,
    r6: u32,
    r7: u32,
}

/// A CSD and an SCR (as [`register_input`] lays them out) followed by `responses`.
fn full_register_input(csd: u128, scr: [u8; 8], responses: &Responses) -> Vec<u8> {
    let mut input = register_input(csd, scr);
    let cid = u128::from_be_bytes(responses.cid) >> 8;
    for word in 0..4 {
        input.extend_from_slice(&((cid >> (32 * word)) as u32).to_le_bytes());
    }
    input.push(responses.command);
    for word in [responses.r1, responses.ocr, responses.r6, responses.r7] {
        input.extend_from_slice(&word.to_le_bytes());
    }
    input
}

fn sd_registers(directory: &Path) -> std::io::Result<()> {
    // A CSD 2.0 (SDHC, C_SIZE for about 30 GB) with an SCR offering a 4-bit bus, a CSD 1.0
    // (SDSC, 1 GB) with a 1-bit SCR, and a CSD of a structure version no card uses.
    put(
        directory,
        "sd_registers",
        "csd2-sdhc",
        &register_input(0x400E_0032_5B59_0000_EDC8_7F80_0A40_4001, [0x02, 0x35, 0x84, 0x43, 0, 0, 0, 0]),
    )?;
    put(
        directory,
        "sd_registers",
        "csd1-sdsc",
        &register_input(0x005E_0032_5F5A_83CF_EDB7_FF9F_9640_0001, [0x01, 0x25, 0, 0, 0, 0, 0, 0]),
    )?;
    put(
        directory,
        "sd_registers",
        "csd-version-3",
        &register_input(0xC00E_0032_5B59_0000_0001_FFFF_0A40_0001, [0x02, 0x35, 0x80, 0x03, 0, 0, 0, 0]),
    )?;
    // With a CID and responses: QEMU's emulated card (its fixed CID; a READ_SINGLE_BLOCK in
    // the transfer state, powered up as SDHC, an address in the identification state, the
    // voltage check echoed), a real card's CID (a 32 GB card) with a READ_MULTIPLE_BLOCK
    // refused as out of range, the OCR still busy, an R6 with all three error bits and a
    // voltage refused, and a hostile CID (control and non-ASCII bytes in its names, month 13)
    // with all-ones responses behind a command byte no driver command has.
    let sdhc = 0x400E_0032_5B59_0000_EDC8_7F80_0A40_4001;
    let sdhc_scr = [0x02, 0x35, 0x84, 0x43, 0, 0, 0, 0];
    let qemu = Responses {
        cid: [0xAA, b'X', b'Y', b'Q', b'E', b'M', b'U', b'!', 0x01, 0xDE, 0xAD, 0xBE, 0xEF, 0x00, 0x62, 0x19],
        command: 17,
        r1: 4 << 9 | 1 << 8,
        ocr: 0xC0FF_8000,
        r6: 0x4567_0400,
        r7: 0x1AA,
    };
    put(directory, "sd_registers", "cid-qemu", &full_register_input(sdhc, sdhc_scr, &qemu))?;
    let real = Responses {
        cid: [0x1B, b'S', b'M', b'E', b'B', b'1', b'Q', b'T', 0x30, 0xF1, 0x77, 0x5F, 0xEA, 0x01, 0x1A, 0xB9],
        command: 18,
        r1: 1 << 31 | 4 << 9 | 1 << 8,
        ocr: 0x40FF_8000,
        r6: 0xAAAA_E400,
        r7: 0x2AA,
    };
    put(directory, "sd_registers", "cid-real-card", &full_register_input(sdhc, sdhc_scr, &real))?;
    let hostile = Responses {
        cid: [
            0xFF, 0x1B, b'[', b'\n', 0x7F, 0x80, 0xC3, 0xE9, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xF0, 0xFD, 0xFF,
        ],
        command: 0xC8,
        r1: u32::MAX,
        ocr: u32::MAX,
        r6: u32::MAX,
        r7: u32::MAX,
    };
    put(
        directory,
        "sd_registers",
        "cid-hostile",
        &full_register_input(
            0x005E_0032_5F5A_83CF_EDB7_FF9F_9640_0001,
            [0x01, 0x25, 0, 0, 0, 0, 0, 0],
            &hostile,
        ),
    )
}

fn config_files(directory: &Path) -> std::io::Result<()> {
    let files: [(&str, &str); 3] = [
        (
            "all-keys",
            "# tessera.cfg\nweights_budget_mib = 512\narena_limit_mib = 600\nkv_quota_tokens = 2048\n\
             uart_flow_control = rts_cts\nbandwidth_cap_mbps = 800\n",
        ),
        ("off", "bandwidth_cap_mbps = off\r\nuart_flow_control = none # the default\r\n\r\n"),
        ("problems", "weights_budget_mib = 0\narena_limit_mib = lots\nkv_quota_tokens\ncolour = blue\n=\n"),
    ];
    for (name, text) in files {
        put(directory, "config", name, text.as_bytes())?;
    }
    Ok(())
}
