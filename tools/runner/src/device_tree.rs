//! A minimal flattened device tree writer, for booting test kernels with `-dtb`: a root with
//! a model, the ARM memory node and the four cores, as firmware would describe a Pi 3.

/// One node: its name, properties (name, raw value) and children.
pub struct Node {
    /// Node name, e.g. "memory@0" ("" for the root).
    pub name: String,
    /// Properties in order.
    pub properties: Vec<(String, Vec<u8>)>,
    /// Child nodes.
    pub children: Vec<Node>,
}

const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROPERTY: u32 = 3;
const END: u32 = 9;
const HEADER_BYTES: usize = 40;

/// A property value of big-endian 32-bit cells.
pub fn cells(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|value| value.to_be_bytes()).collect()
}

/// A property value holding a NUL-terminated string.
pub fn string(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

fn pad(bytes: &mut Vec<u8>) {
    while !bytes.len().is_multiple_of(4) {
        bytes.push(0);
    }
}

fn emit(node: &Node, structure: &mut Vec<u8>, strings: &mut Vec<u8>) {
    structure.extend(BEGIN_NODE.to_be_bytes());
    structure.extend(node.name.as_bytes());
    structure.push(0);
    pad(structure);
    for (name, value) in &node.properties {
        let offset = match strings
            .windows(name.len() + 1)
            .position(|window| &window[..name.len()] == name.as_bytes() && window[name.len()] == 0)
        {
            Some(offset) => offset,
            None => {
                let offset = strings.len();
                strings.extend(name.as_bytes());
                strings.push(0);
                offset
            }
        };
        structure.extend(PROPERTY.to_be_bytes());
        structure.extend((value.len() as u32).to_be_bytes());
        structure.extend((offset as u32).to_be_bytes());
        structure.extend(value);
        pad(structure);
    }
    node.children.iter().for_each(|child| emit(child, structure, strings));
    structure.extend(END_NODE.to_be_bytes());
}

/// Serialises `root` as a version 17 flattened device tree blob.
pub fn flatten(root: &Node) -> Vec<u8> {
    let (mut structure, mut strings) = (Vec::new(), Vec::new());
    emit(root, &mut structure, &mut strings);
    structure.extend(END.to_be_bytes());
    let reservations = HEADER_BYTES;
    let structure_offset = reservations + 16; // one empty reservation entry
    let strings_offset = structure_offset + structure.len();
    let total = strings_offset + strings.len();
    let mut blob = Vec::with_capacity(total);
    for word in [
        MAGIC,
        total as u32,
        structure_offset as u32,
        strings_offset as u32,
        reservations as u32,
        17,
        16,
        0,
        strings.len() as u32,
        structure.len() as u32,
    ] {
        blob.extend(word.to_be_bytes());
    }
    blob.extend([0u8; 16]);
    blob.extend(structure);
    blob.extend(strings);
    blob
}

/// The device tree of a Raspberry Pi 3 Model B with `memory` bytes of ARM RAM.
pub fn raspberry_pi_3(memory: u32) -> Vec<u8> {
    flatten(&raspberry_pi_3_root(memory))
}

/// [`raspberry_pi_3`] with a chain of `levels` nested nodes under `/chosen`: well formed (QEMU
/// and libfdt read it), but with more than `kernel::devicetree::MAX_DEPTH` levels the kernel
/// refuses it, which the boot test of a refused device tree uses.
pub fn raspberry_pi_3_nested(memory: u32, levels: usize) -> Vec<u8> {
    let mut root = raspberry_pi_3_root(memory);
    let mut chain = Node { name: "leaf".to_string(), properties: Vec::new(), children: Vec::new() };
    for level in 0..levels {
        chain = Node { name: format!("level{level}"), properties: Vec::new(), children: vec![chain] };
    }
    root.children[0].children.push(chain);
    flatten(&root)
}

fn raspberry_pi_3_root(memory: u32) -> Node {
    let leaf = |name: &str, properties: Vec<(&str, Vec<u8>)>| Node {
        name: name.to_string(),
        properties: properties.into_iter().map(|(name, value)| (name.to_string(), value)).collect(),
        children: Vec::new(),
    };
    let cpus = (0..4)
        .map(|core| {
            leaf(
                &format!("cpu@{core}"),
                vec![
                    ("device_type", string("cpu")),
                    ("compatible", string("arm,cortex-a53")),
                    ("reg", cells(&[core])),
                    ("enable-method", string("spin-table")),
                ],
            )
        })
        .collect();
    Node {
        name: String::new(),
        properties: vec![
            ("#address-cells".to_string(), cells(&[1])),
            ("#size-cells".to_string(), cells(&[1])),
            ("model".to_string(), string("Raspberry Pi 3 Model B")),
            ("compatible".to_string(), string("raspberrypi,3-model-b")),
        ],
        children: vec![
            leaf("chosen", vec![]),
            leaf("memory@0", vec![("device_type", string("memory")), ("reg", cells(&[0, memory]))]),
            Node {
                name: "cpus".to_string(),
                properties: vec![
                    ("#address-cells".to_string(), cells(&[1])),
                    ("#size-cells".to_string(), cells(&[0])),
                ],
                children: cpus,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(blob: &[u8], offset: usize) -> u32 {
        u32::from_be_bytes([blob[offset], blob[offset + 1], blob[offset + 2], blob[offset + 3]])
    }

    /// The tokens of a blob [`flatten`] wrote: `(offset in the blob, token, bytes it spans)`.
    fn tokens(blob: &[u8]) -> Vec<(usize, u32, usize)> {
        let (start, size) = (word(blob, 8) as usize, word(blob, 36) as usize);
        let mut found = Vec::new();
        let mut at = start;
        while at < start + size {
            let token = word(blob, at);
            let length = match token {
                BEGIN_NODE => {
                    let name = blob[at + 4..].iter().position(|&byte| byte == 0).unwrap_or(0);
                    4 + (name + 1).next_multiple_of(4)
                }
                PROPERTY => 12 + (word(blob, at + 4) as usize).next_multiple_of(4),
                _ => 4,
            };
            found.push((at, token, length));
            at += length;
        }
        found
    }

    #[test]
    fn blob_has_valid_header_and_layout() {
        let blob = raspberry_pi_3(0x3C00_0000);
        let word = |offset: usize| word(&blob, offset);
        assert_eq!(word(0), MAGIC);
        assert_eq!(word(4) as usize, blob.len());
        assert_eq!(word(8) as usize + word(36) as usize, word(12) as usize, "strings follow the structure");
        assert_eq!(word(word(8) as usize), BEGIN_NODE);
        let strings = &blob[word(12) as usize..];
        assert!(strings.windows(12).any(|window| window == b"device_type\0"));
        assert_eq!(
            strings.windows(12).filter(|window| window == b"device_type\0").count(),
            1,
            "strings shared"
        );
    }

    /// `blob` with a `NOP` token after every node name and before every property, as
    /// firmware that deletes properties in place leaves them.
    fn with_nops(blob: &[u8]) -> Vec<u8> {
        let nop = 4u32.to_be_bytes();
        let mut structure = Vec::new();
        for (at, token, length) in tokens(blob) {
            if token == PROPERTY {
                structure.extend(nop);
            }
            structure.extend(&blob[at..at + length]);
            if token == BEGIN_NODE {
                structure.extend(nop);
            }
        }
        let start = word(blob, 8) as usize;
        let mut out = blob[..start].to_vec();
        let strings_offset = out.len() + structure.len();
        out.extend(&structure);
        out.extend(&blob[word(blob, 12) as usize..]);
        let total = out.len() as u32;
        out[4..8].copy_from_slice(&total.to_be_bytes());
        out[12..16].copy_from_slice(&(strings_offset as u32).to_be_bytes());
        out[36..40].copy_from_slice(&(structure.len() as u32).to_be_bytes());
        out
    }

    #[test]
    fn the_kernel_reads_memory_and_cores_from_the_blob() {
        use kernel::devicetree::{canonical, facts};
        let blob = raspberry_pi_3(0x3C00_0000);
        let read = facts(&blob).unwrap();
        assert_eq!(read.memory, Some(0x3C00_0000));
        let topology = read.topology.unwrap().unwrap();
        assert_eq!((topology.cores(), topology.nodes()), (4, 1));
        assert_eq!(canonical(&blob).unwrap(), blob, "the writer's blobs are already canonical");
        let noisy = with_nops(&blob);
        assert!(noisy.len() > blob.len());
        assert_eq!(facts(&noisy).unwrap(), read, "NOP tokens change nothing");
        assert_eq!(canonical(&noisy).unwrap(), blob, "and are dropped");
    }

    #[test]
    fn malformed_trees_get_typed_errors() {
        use kernel::devicetree::{DeviceTreeError, MAX_DEPTH, facts};
        let blob = raspberry_pi_3(0x3C00_0000);
        let structure = u32::from_be_bytes(blob[8..12].try_into().unwrap()) as usize;
        let mut bad_magic = blob.clone();
        bad_magic[0] = 0;
        assert_eq!(facts(&bad_magic), Err(DeviceTreeError::Header("wrong magic")));
        assert_eq!(facts(&blob[..20]), Err(DeviceTreeError::Header("shorter than 40 bytes")));
        assert_eq!(
            facts(&blob[..blob.len() - 1]),
            Err(DeviceTreeError::Header("total size does not match the buffer"))
        );
        let mut bad_tag = blob.clone();
        bad_tag[structure + 8 + 3] = 7; // the root's first property tag
        assert_eq!(facts(&bad_tag), Err(DeviceTreeError::BadToken { offset: 8, token: 7 }));
        let mut bad_name = blob.clone();
        bad_name[structure + 4] = 0xFF; // the root's empty name becomes a lone 0xFF byte
        bad_name[structure + 5] = 0;
        assert!(
            matches!(facts(&bad_name), Err(DeviceTreeError::BadName { offset: 4 })),
            "{:?}",
            facts(&bad_name)
        );

        let late = Node {
            name: String::new(),
            properties: vec![("#size-cells".to_string(), vec![0, 1])],
            children: Vec::new(),
        };
        assert!(matches!(facts(&flatten(&late)), Err(DeviceTreeError::BadCellCount { .. })));
        assert!(facts(&raspberry_pi_3_nested(0x3C00_0000, MAX_DEPTH - 3)).is_ok());
        let error = facts(&raspberry_pi_3_nested(0x3C00_0000, MAX_DEPTH)).unwrap_err();
        assert!(matches!(error, DeviceTreeError::TooDeep { .. }), "{error}");
        assert!(error.to_string().contains("deeper than 32"), "{error}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Corrupted trees (bytes overwritten, cut short, NOPs added) never panic the kernel's
        /// reader or the `fdt` crate behind it, and what passes is canonical.
        #[test]
        fn corrupted_trees_never_panic(
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..6),
            cut in proptest::option::of(proptest::prelude::any::<usize>()),
            nops in proptest::prelude::any::<bool>(),
        ) {
            let mut blob = raspberry_pi_3(0x3C00_0000);
            if nops {
                blob = with_nops(&blob);
            }
            for (at, byte) in edits {
                let at = at % blob.len();
                blob[at] = byte;
            }
            if let Some(cut) = cut {
                blob.truncate(cut % blob.len());
            }
            if let Ok(canonical) = kernel::devicetree::canonical(&blob) {
                proptest::prop_assert_eq!(kernel::devicetree::canonical(&canonical), Ok(canonical.clone()));
            }
            let _ = kernel::devicetree::facts(&blob);
        }
    }
}
