//! What boot needs from the flattened device tree the firmware passes: the RAM size and the
//! topology (cores and memory nodes).
//!
//! The tree is input like any other, and the `fdt` crate (0.1.5) that reads it asserts and
//! unwraps on malformed trees: a flipped byte in a node name or a property tag panics it. So
//! every tree is first checked and rebuilt here ([`canonical`]): the header and every token
//! are bounds-checked, names and property names must be NUL-terminated UTF-8 inside their
//! blocks, nodes nest at most [`MAX_DEPTH`] deep and list their properties before their
//! children, `#address-cells` and `#size-cells` are one cell, and `NOP` tokens are dropped
//! (`fdt` only skips them in some places). Only that canonical copy reaches `fdt`. A tree
//! that fails gets a [`DeviceTreeError`] saying where and why, and boot carries on without it.

#![forbid(unsafe_code)]

use crate::topology::{CpuNode, Topology, TopologyError};
use alloc::vec::Vec;
use core::fmt;

/// The header's magic number.
const MAGIC: u32 = 0xd00d_feed;
/// Bytes of the version-17 header.
const HEADER_BYTES: usize = 40;
/// Deepest node nesting accepted (`fdt` keeps 64 levels; real trees use fewer than 10).
pub const MAX_DEPTH: usize = 32;

const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROPERTY: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;

/// Why a device tree was refused, with the byte offset (in the structure block for tokens)
/// where it went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceTreeError {
    /// The header is short, has the wrong magic, an old version, or blocks outside the tree.
    Header(&'static str),
    /// The structure block ends inside a token or before `END`.
    Truncated {
        /// Where the missing bytes should have been.
        offset: usize,
    },
    /// A token that is not one of the five, or one where it cannot be.
    BadToken {
        /// Its offset.
        offset: usize,
        /// The token.
        token: u32,
    },
    /// A node name or property name that is not NUL-terminated UTF-8 inside its block.
    BadName {
        /// Its offset (in the strings block for property names).
        offset: usize,
    },
    /// Nodes nested deeper than [`MAX_DEPTH`].
    TooDeep {
        /// Where the node too many starts.
        offset: usize,
    },
    /// A property after a child node (properties come first).
    PropertyAfterChild {
        /// The property's offset.
        offset: usize,
    },
    /// `#address-cells` or `#size-cells` that is not exactly one cell.
    BadCellCount {
        /// The property's offset.
        offset: usize,
    },
}

impl fmt::Display for DeviceTreeError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceTreeError::Header(reason) => write!(formatter, "bad header: {reason}"),
            DeviceTreeError::Truncated { offset } => {
                write!(formatter, "the structure block ends early (at byte {offset})")
            }
            DeviceTreeError::BadToken { offset, token } => {
                write!(formatter, "unexpected token {token:#x} at structure byte {offset}")
            }
            DeviceTreeError::BadName { offset } => {
                write!(formatter, "a name at byte {offset} is not NUL-terminated UTF-8")
            }
            DeviceTreeError::TooDeep { offset } => {
                write!(formatter, "nodes nest deeper than {MAX_DEPTH} at structure byte {offset}")
            }
            DeviceTreeError::PropertyAfterChild { offset } => {
                write!(formatter, "a property after a child node at structure byte {offset}")
            }
            DeviceTreeError::BadCellCount { offset } => {
                write!(formatter, "#address-cells or #size-cells at structure byte {offset} is not one cell")
            }
        }
    }
}

/// What boot takes from the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTreeFacts {
    /// Bytes of RAM in the `/memory` region that starts at address 0, if listed.
    pub memory: Option<u64>,
    /// The cores and memory nodes, if the tree has `/cpus` (an error if those are malformed).
    pub topology: Option<Result<Topology, TopologyError>>,
}

fn word(bytes: &[u8], offset: usize) -> Option<u32> {
    let field = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_be_bytes([field[0], field[1], field[2], field[3]]))
}

/// The NUL-terminated UTF-8 string at `offset` of `block` (without its NUL).
fn c_string(block: &[u8], offset: usize) -> Option<&str> {
    let rest = block.get(offset..)?;
    let length = rest.iter().position(|&byte| byte == 0)?;
    core::str::from_utf8(&rest[..length]).ok()
}

fn padded(length: usize) -> usize {
    length.next_multiple_of(4)
}

/// The parts of a tree's header that the rebuild needs, each block already bounds-checked.
struct Blocks<'tree> {
    /// The structure block.
    structure: &'tree [u8],
    /// The strings block.
    strings: &'tree [u8],
    /// Where the strings block starts in the tree (for error offsets).
    strings_offset: usize,
    /// The header's `boot_cpuid_phys`, copied as it is.
    boot_cpuid: u32,
}

/// Checks the header of the tree in `bytes` (magic, version, sizes, alignment) and returns
/// its structure and strings blocks.
fn read_header(bytes: &[u8]) -> Result<Blocks<'_>, DeviceTreeError> {
    let header =
        |index: usize| word(bytes, index * 4).ok_or(DeviceTreeError::Header("shorter than 40 bytes"));
    if header(0)? != MAGIC {
        return Err(DeviceTreeError::Header("wrong magic"));
    }
    let total = header(1)? as usize;
    let (structure_offset, strings_offset) = (header(2)? as usize, header(3)? as usize);
    let (version, strings_size, structure_size) = (header(5)?, header(8)? as usize, header(9)? as usize);
    if version < 17 {
        return Err(DeviceTreeError::Header("version older than 17"));
    }
    if total > bytes.len() || total < HEADER_BYTES {
        return Err(DeviceTreeError::Header("total size does not match the buffer"));
    }
    let block = |offset: usize, size: usize| {
        offset
            .checked_add(size)
            .filter(|&end| offset >= HEADER_BYTES && end <= total)
            .map(|end| &bytes[offset..end])
            .ok_or(DeviceTreeError::Header("a block lies outside the tree"))
    };
    if !structure_offset.is_multiple_of(4) {
        return Err(DeviceTreeError::Header("the structure block is not 4-byte aligned"));
    }
    let structure = block(structure_offset, structure_size)?;
    let strings = block(strings_offset, strings_size)?;
    Ok(Blocks { structure, strings, strings_offset, boot_cpuid: header(7)? })
}

/// The walk over a structure block that checks each token and appends the kept ones to `out`.
struct StructureCopy<'tree, 'out> {
    /// The tree's blocks.
    blocks: &'tree Blocks<'tree>,
    /// The rebuilt tree so far.
    out: &'out mut Vec<u8>,
    /// Per open node: whether a child has started (no more properties then).
    has_child: [bool; MAX_DEPTH + 1],
    /// How many nodes are open.
    depth: usize,
    /// Whether the root node has ended (only `END` may follow).
    root_closed: bool,
}

impl StructureCopy<'_, '_> {
    /// Copies every token of the structure block up to and including `END`, without `NOP`s.
    fn run(&mut self) -> Result<(), DeviceTreeError> {
        let structure = self.blocks.structure;
        let mut at = 0;
        loop {
            let token = word(structure, at).ok_or(DeviceTreeError::Truncated { offset: at })?;
            at = match token {
                NOP => at + 4,
                BEGIN_NODE if !self.root_closed => self.begin_node(at)?,
                END_NODE if self.depth > 0 => {
                    self.depth -= 1;
                    self.root_closed = self.depth == 0;
                    self.out.extend_from_slice(&END_NODE.to_be_bytes());
                    at + 4
                }
                PROPERTY if self.depth > 0 => self.property(at)?,
                END if self.root_closed => {
                    self.out.extend_from_slice(&END.to_be_bytes());
                    return Ok(());
                }
                token => return Err(DeviceTreeError::BadToken { offset: at, token }),
            };
        }
    }

    /// Opens the node whose `BEGIN_NODE` token is at `at`, copies it with its name, and
    /// returns the offset of the next token.
    fn begin_node(&mut self, at: usize) -> Result<usize, DeviceTreeError> {
        let structure = self.blocks.structure;
        if self.depth == MAX_DEPTH {
            return Err(DeviceTreeError::TooDeep { offset: at });
        }
        let name = c_string(structure, at + 4).ok_or(DeviceTreeError::BadName { offset: at + 4 })?;
        self.has_child[self.depth] = true;
        self.depth += 1;
        self.has_child[self.depth] = false;
        let length = padded(name.len() + 1);
        self.out.extend_from_slice(&structure[at..at + 4]);
        self.out.extend_from_slice(name.as_bytes());
        self.out.resize(self.out.len() + length - name.len(), 0);
        Ok(at + 4 + length)
    }

    /// Checks the property whose `PROP` token is at `at` (it comes before any child, its value
    /// lies inside the block, its name is a string, cell counts are one cell), copies it, and
    /// returns the offset of the next token.
    fn property(&mut self, at: usize) -> Result<usize, DeviceTreeError> {
        let Blocks { structure, strings, strings_offset, .. } = *self.blocks;
        if self.has_child[self.depth] {
            return Err(DeviceTreeError::PropertyAfterChild { offset: at });
        }
        let truncated = DeviceTreeError::Truncated { offset: at };
        let length = word(structure, at + 4).ok_or(truncated)? as usize;
        let name_offset = word(structure, at + 8).ok_or(truncated)? as usize;
        let end = (at + 12).checked_add(length).filter(|&end| end <= structure.len()).ok_or(truncated)?;
        let name = c_string(strings, name_offset)
            .ok_or(DeviceTreeError::BadName { offset: strings_offset + name_offset })?;
        if matches!(name, "#address-cells" | "#size-cells") && length != 4 {
            return Err(DeviceTreeError::BadCellCount { offset: at });
        }
        self.out.extend_from_slice(&structure[at..end]);
        self.out.resize(self.out.len() + padded(length) - length, 0);
        Ok(at + 12 + padded(length))
    }
}

/// Writes the version-17 header at the front of `out`, a rebuilt tree whose structure block
/// starts at `structure_start` and whose strings block (of `strings_size` bytes) follows
/// the structure block at `strings_start`.
fn write_header(
    out: &mut [u8],
    structure_start: usize,
    strings_start: usize,
    strings_size: usize,
    boot_cpuid: u32,
) {
    let fields = [
        MAGIC,
        out.len() as u32,
        structure_start as u32,
        strings_start as u32,
        HEADER_BYTES as u32,
        17,
        16,
        boot_cpuid,
        strings_size as u32,
        (strings_start - structure_start) as u32,
    ];
    for (slot, field) in out.chunks_exact_mut(4).zip(fields) {
        slot.copy_from_slice(&field.to_be_bytes());
    }
}

/// A checked, rebuilt copy of the tree in `bytes`: header, an empty memory-reservation map,
/// the structure block without `NOP`s, and the strings block.
pub fn canonical(bytes: &[u8]) -> Result<Vec<u8>, DeviceTreeError> {
    let blocks = read_header(bytes)?;
    let mut out = Vec::with_capacity(HEADER_BYTES + 16 + blocks.structure.len() + blocks.strings.len());
    out.resize(HEADER_BYTES + 16, 0);
    let structure_start = out.len();
    StructureCopy {
        blocks: &blocks,
        out: &mut out,
        has_child: [false; MAX_DEPTH + 1],
        depth: 0,
        root_closed: false,
    }
    .run()?;
    let strings_start = out.len();
    out.extend_from_slice(blocks.strings);
    write_header(&mut out, structure_start, strings_start, blocks.strings.len(), blocks.boot_cpuid);
    Ok(out)
}

/// The RAM size and topology the tree in `bytes` describes, or why it was refused.
pub fn facts(bytes: &[u8]) -> Result<DeviceTreeFacts, DeviceTreeError> {
    let canonical = canonical(bytes)?;
    let tree = fdt::Fdt::new(&canonical).map_err(|_| DeviceTreeError::Header("refused by the fdt reader"))?;
    let memory = tree
        .find_node("/memory")
        .and_then(|node| node.reg())
        .and_then(|mut regions| regions.find(|region| region.starting_address.is_null()))
        .and_then(|region| region.size)
        .map(|size| size as u64);
    // fdt 0.1.5's find_node("/cpus") returned None on the tree the device_tree QEMU test
    // passes (observed; all_nodes lists it), so the node is found by walking them all.
    let topology = tree.all_nodes().find(|node| node.name == "cpus").map(|cpus| {
        let address_cells =
            cpus.property("#address-cells").and_then(|property| property.as_usize()).unwrap_or(1);
        let cpu_nodes =
            cpus.children().filter(|node| node.name.split('@').next() == Some("cpu")).map(|node| CpuNode {
                reg: node.property("reg").map_or(&[][..], |property| property.value),
                numa_node_id: node.property("numa-node-id").map(|property| property.value),
            });
        let memory_nodes = tree
            .all_nodes()
            .filter(|node| {
                node.property("device_type").and_then(|property| property.as_str()) == Some("memory")
            })
            .filter_map(|node| node.property("numa-node-id").map(|property| property.value));
        Topology::from_device_tree(cpu_nodes, address_cells, memory_nodes)
    });
    Ok(DeviceTreeFacts { memory, topology })
}
