//! The pre-MMU check: kernel8's code that runs before the MMU is on must hold no exclusive or
//! atomic instruction, because a Cortex-A53 cannot complete a load/store-exclusive pair on
//! Device memory (all memory, with the MMU off) while QEMU always can.
//!
//! The check reads `llvm-objdump`'s symbol table and disassembly of the ELF. Its roots are the
//! code between `_start` and `__premmu_end`: `_start` (`.text.boot`) and every function of
//! boot's `premmu` module (`.text.premmu`, gathered by the linker script between
//! `__premmu_start` and `__premmu_end`). From the roots it follows every direct branch that
//! leaves a function (calls, tail calls) to the function it lands in, transitively, and stops
//! only at functions whose name says they run after the MMU is on (`after_mmu`: the panic
//! handler reaches `panic_after_mmu` only after reading SCTLR_EL1.M). Indirect branches (the
//! formatting machinery's calls through `fmt::Write` and `Display` tables) cannot be followed;
//! they are counted and reported.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// Mnemonic prefixes of the load/store-exclusive and atomic read-modify-write families.
/// Acquire/release loads and stores (`ldar`, `stlr`, `ldapr`) are single ordinary accesses
/// and work on Device memory, so they are not here.
const FORBIDDEN_PREFIXES: [&str; 24] = [
    "ldxr", "ldaxr", "stxr", "stlxr", "ldxp", "ldaxp", "stxp", "stlxp", "cas", "swp", "ldadd", "ldclr",
    "ldeor", "ldset", "ldsmax", "ldsmin", "ldumax", "ldumin", "stadd", "stclr", "steor", "stset", "stsmax",
    "stumax",
];

/// Whether `mnemonic` is an exclusive or atomic instruction (see [`FORBIDDEN_PREFIXES`]).
pub fn is_forbidden(mnemonic: &str) -> bool {
    let mnemonic = mnemonic.to_ascii_lowercase();
    FORBIDDEN_PREFIXES.iter().any(|prefix| mnemonic.starts_with(prefix))
        || mnemonic.starts_with("stsmin")
        || mnemonic.starts_with("stumin")
}

/// A function from the symbol table: where it starts, how long it is, its (demangled) name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// First byte.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// The symbol's name.
    pub name: String,
}

/// One disassembled instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// Its address.
    pub address: u64,
    /// The mnemonic, e.g. `bl` or `ldaxr`.
    pub mnemonic: String,
    /// The operands as printed.
    pub operands: String,
}

/// The symbols the check needs from `llvm-objdump -t -C`: every function in `.text`, and the
/// addresses of the non-function symbols (`_start`, `__premmu_start`, `__premmu_end`).
#[derive(Debug, Default)]
pub struct Symbols {
    /// Functions by start address.
    pub functions: Vec<Function>,
    /// Other `.text` symbols by name.
    pub labels: BTreeMap<String, u64>,
}

/// Parses `llvm-objdump -t -C` output.
pub fn parse_symbols(text: &str) -> Symbols {
    let mut symbols = Symbols::default();
    for line in text.lines() {
        let Some((left, right)) = line.split_once('\t') else { continue };
        let Some((address, rest)) = left.split_once(' ') else { continue };
        let Ok(address) = u64::from_str_radix(address, 16) else { continue };
        if rest.len() < 8 {
            continue;
        }
        let (flags, section) = rest.split_at(7);
        if section.trim() != ".text" {
            continue;
        }
        let Some((size, name)) = right.split_once(' ') else { continue };
        let Ok(size) = u64::from_str_radix(size, 16) else { continue };
        if flags.contains('F') {
            symbols.functions.push(Function { start: address, size, name: name.to_string() });
        } else {
            symbols.labels.insert(name.to_string(), address);
        }
    }
    symbols.functions.sort_by_key(|function| function.start);
    symbols.functions.dedup_by_key(|function| function.start);
    symbols
}

/// Parses `llvm-objdump -d --no-show-raw-insn` output into instructions.
pub fn parse_instructions(text: &str) -> Vec<Instruction> {
    let mut instructions = Vec::new();
    for line in text.lines() {
        let Some((address, rest)) = line.split_once(':') else { continue };
        let address = address.trim();
        if address.is_empty() || address.contains(' ') {
            continue;
        }
        let Ok(address) = u64::from_str_radix(address, 16) else { continue };
        let mut fields = rest.trim().splitn(2, char::is_whitespace);
        let Some(mnemonic) = fields.next().filter(|mnemonic| !mnemonic.is_empty()) else { continue };
        let operands = fields.next().unwrap_or("").trim().to_string();
        instructions.push(Instruction { address, mnemonic: mnemonic.to_string(), operands });
    }
    instructions
}

/// The target address of a direct branch (`b`, `bl`, `b.cond`, `cbz`, `cbnz`, `tbz`, `tbnz`),
/// or `None` for anything else.
pub fn branch_target(instruction: &Instruction) -> Option<u64> {
    let mnemonic = instruction.mnemonic.as_str();
    let branches =
        matches!(mnemonic, "b" | "bl" | "cbz" | "cbnz" | "tbz" | "tbnz") || mnemonic.starts_with("b.");
    if !branches {
        return None;
    }
    let operand = instruction.operands.split(',').map(str::trim).find(|operand| operand.starts_with("0x"))?;
    let hex = operand.trim_start_matches("0x");
    let hex = hex.split(|character: char| !character.is_ascii_hexdigit()).next()?;
    u64::from_str_radix(hex, 16).ok()
}

/// An exclusive or atomic instruction found in pre-MMU code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The function it is in.
    pub function: String,
    /// The instruction.
    pub instruction: Instruction,
    /// How the walk reached the function from a root (root first).
    pub path: Vec<String>,
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct Report {
    /// Functions in the pre-MMU range itself.
    pub roots: Vec<String>,
    /// Every function checked (roots and those reached from them).
    pub checked: usize,
    /// Instructions checked.
    pub instructions: usize,
    /// Indirect branches (`br`, `blr`) in the checked code.
    pub indirect_branches: usize,
    /// Functions the walk did not enter because they run after the MMU is on.
    pub boundaries: BTreeSet<String>,
    /// The exclusive and atomic instructions found.
    pub violations: Vec<Violation>,
}

impl fmt::Display for Report {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "pre-MMU code: {} functions checked ({} in .text.boot and .text.premmu, the rest reached \
             by direct branches), {} instructions, {} indirect branches (not followed)",
            self.checked,
            self.roots.len(),
            self.instructions,
            self.indirect_branches
        )?;
        for boundary in &self.boundaries {
            writeln!(formatter, "  not entered (runs after the MMU is on): {boundary}")?;
        }
        for violation in &self.violations {
            writeln!(
                formatter,
                "  EXCLUSIVE/ATOMIC {:#x}: {} {} in {}\n    reached by {}",
                violation.instruction.address,
                violation.instruction.mnemonic,
                violation.instruction.operands,
                violation.function,
                violation.path.join(" -> ")
            )?;
        }
        Ok(())
    }
}

/// A function's place in the instruction list and its name, keyed by its start address.
struct Block {
    name: String,
    end: u64,
}

/// Walks the pre-MMU code of `symbols` and `instructions`; fails when the roots cannot be
/// found (`_start` and `__premmu_end` are missing, or no function lies between them).
pub fn check(symbols: &Symbols, instructions: &[Instruction]) -> Result<Report, String> {
    let label = |name: &str| {
        symbols.labels.get(name).copied().ok_or_else(|| format!("symbol {name} not found: is this kernel8?"))
    };
    let (entry, premmu_start, premmu_end) =
        (label("_start")?, label("__premmu_start")?, label("__premmu_end")?);
    let mut blocks: BTreeMap<u64, Block> = symbols
        .functions
        .iter()
        .filter(|function| function.size > 0)
        .map(|function| {
            (function.start, Block { name: function.name.clone(), end: function.start + function.size })
        })
        .collect();
    // `_start` is assembly without a size: it runs up to the pre-MMU section.
    blocks.entry(entry).or_insert(Block { name: "_start".to_string(), end: premmu_start });
    let containing = |address: u64| {
        blocks.range(..=address).next_back().filter(|(_, block)| address < block.end).map(|(start, _)| *start)
    };
    let roots: Vec<u64> = blocks.range(entry..premmu_end).map(|(start, _)| *start).collect();
    if !roots.iter().any(|&start| start >= premmu_start) {
        return Err(format!("no function lies in .text.premmu ({premmu_start:#x}..{premmu_end:#x})"));
    }
    let mut report =
        Report { roots: roots.iter().map(|start| blocks[start].name.clone()).collect(), ..Report::default() };
    let mut came_from: BTreeMap<u64, Option<u64>> = roots.iter().map(|&start| (start, None)).collect();
    let mut queue: VecDeque<u64> = roots.into_iter().collect();
    while let Some(start) = queue.pop_front() {
        let block = &blocks[&start];
        report.checked += 1;
        let first = instructions.partition_point(|instruction| instruction.address < start);
        for instruction in
            instructions[first..].iter().take_while(|instruction| instruction.address < block.end)
        {
            report.instructions += 1;
            if is_forbidden(&instruction.mnemonic) {
                report.violations.push(Violation {
                    function: block.name.clone(),
                    instruction: instruction.clone(),
                    path: path_to(start, &came_from, &blocks),
                });
            }
            if matches!(instruction.mnemonic.as_str(), "br" | "blr") {
                report.indirect_branches += 1;
            }
            let Some(target) = branch_target(instruction).and_then(containing) else { continue };
            if target == start || came_from.contains_key(&target) {
                continue;
            }
            if blocks[&target].name.contains("after_mmu") {
                report.boundaries.insert(blocks[&target].name.clone());
                continue;
            }
            came_from.insert(target, Some(start));
            queue.push_back(target);
        }
    }
    Ok(report)
}

/// The names on the walk from a root to the function at `start`.
fn path_to(start: u64, came_from: &BTreeMap<u64, Option<u64>>, blocks: &BTreeMap<u64, Block>) -> Vec<String> {
    let mut path = vec![blocks[&start].name.clone()];
    let mut current = start;
    while let Some(Some(previous)) = came_from.get(&current) {
        path.push(blocks[previous].name.clone());
        current = *previous;
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYMBOLS: &str = "\
0000000000080000 g       .text\t0000000000000000 _start
0000000000080010 g       .text\t0000000000000000 __premmu_start
0000000000080030 g       .text\t0000000000000000 __premmu_end
0000000000080010 l     F .text\t0000000000000010 boot::premmu::prepare
0000000000080020 l     F .text\t0000000000000010 boot::premmu::report
0000000000080030 l     F .text\t0000000000000010 kernel::mm::layout::plan
0000000000080040 l     F .text\t0000000000000008 boot::panic::panic_after_mmu
0000000000080048 l     F .text\t0000000000000008 kernel::telemetry::record
0000000000080050 l     F .text\t0000000000000008 bsp::unused
0000000000104f60 l     O .rodata\t0000000000000008 boot::premmu::EARLY_UART
";

    fn disassembly(plan_body: &str) -> String {
        format!(
            "
0000000000080000 <_start>:
   80000:      \tmrs\tx19, MPIDR_EL1
   80004:      \tcbz\tx19, 0x8000c <_start+0xc>
   80008:      \twfe
   8000c:      \tbl\t0x80010 <__premmu_start>
0000000000080010 <__premmu_start>:
   80010:      \tbl\t0x80030 <__premmu_end>
   80014:      \tb.ne\t0x80018 <__premmu_start+0x8>
   80018:      \tblr\tx8
   8001c:      \tret
0000000000080020 <boot::premmu::report>:
   80020:      \tbl\t0x80040 <boot::panic::panic_after_mmu>
   80024:      \tret
0000000000080030 <__premmu_end>:
   80030:      \tldr\tw8, [x0]
   80034:      \t{plan_body}
   80038:      \tret
0000000000080040 <boot::panic::panic_after_mmu>:
   80040:      \tbl\t0x80048 <kernel::telemetry::record>
0000000000080048 <kernel::telemetry::record>:
   80048:      \tldaxr\tx9, [x8]
   8004c:      \tstlxr\tw10, x9, [x8]
0000000000080050 <bsp::unused>:
   80050:      \tswp\tx1, x2, [x3]
"
        )
    }

    #[test]
    fn symbols_and_instructions_parse() {
        let symbols = parse_symbols(SYMBOLS);
        assert_eq!(symbols.functions.len(), 6, "the .rodata object is not a function");
        assert_eq!(symbols.labels["__premmu_end"], 0x80030);
        let instructions = parse_instructions(&disassembly("nop"));
        assert_eq!(
            instructions[1],
            Instruction {
                address: 0x80004,
                mnemonic: "cbz".into(),
                operands: "x19, 0x8000c <_start+0xc>".into()
            }
        );
        assert_eq!(branch_target(&instructions[1]), Some(0x8000c));
        assert_eq!(branch_target(&instructions[0]), None);
    }

    #[test]
    fn clean_pre_mmu_code_passes_and_the_walk_stops_after_the_mmu() {
        let report = check(&parse_symbols(SYMBOLS), &parse_instructions(&disassembly("nop"))).unwrap();
        assert!(report.violations.is_empty(), "{report}");
        // _start, prepare, report (roots) and plan (reached by a call); not the code after the
        // boundary, nor the unreached function.
        assert_eq!(report.checked, 4, "{report}");
        assert_eq!(report.indirect_branches, 1);
        assert!(report.boundaries.contains("boot::panic::panic_after_mmu"));
    }

    #[test]
    fn an_atomic_reached_from_a_root_is_found_with_its_path() {
        for atomic in [
            "ldaxr\tx9, [x8]",
            "stxr\tw1, x2, [x3]",
            "casal\tx1, x2, [x3]",
            "ldaddal\tx1, x2, [x3]",
            "swpb\tw1, w2, [x3]",
            "ldsetl\tx1, x2, [x3]",
        ] {
            let report = check(&parse_symbols(SYMBOLS), &parse_instructions(&disassembly(atomic))).unwrap();
            assert_eq!(report.violations.len(), 1, "{atomic}: {report}");
            let violation = &report.violations[0];
            assert_eq!(violation.function, "kernel::mm::layout::plan");
            assert_eq!(violation.path, ["boot::premmu::prepare", "kernel::mm::layout::plan"]);
        }
    }

    #[test]
    fn ordered_single_accesses_are_allowed() {
        for allowed in ["ldar", "stlr", "ldapr", "ldr", "str", "ldp", "dmb", "dsb"] {
            assert!(!is_forbidden(allowed), "{allowed}");
        }
        for forbidden in ["ldxrb", "ldaxrh", "stlxp", "casp", "ldclral", "ldeorb", "stumin", "stsminl"] {
            assert!(is_forbidden(forbidden), "{forbidden}");
        }
    }

    #[test]
    fn missing_symbols_or_an_empty_section_are_errors() {
        let instructions = parse_instructions(&disassembly("nop"));
        assert!(check(&parse_symbols(""), &instructions).unwrap_err().contains("_start"));
        let no_functions: String = SYMBOLS
            .lines()
            .filter(|line| !line.contains("premmu::"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(check(&parse_symbols(&no_functions), &instructions).unwrap_err().contains("no function"));
    }
}
