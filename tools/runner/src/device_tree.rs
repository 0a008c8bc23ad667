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
    let root = Node {
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
    };
    flatten(&root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_has_valid_header_and_layout() {
        let blob = raspberry_pi_3(0x3C00_0000);
        let word = |offset: usize| u32::from_be_bytes(blob[offset..offset + 4].try_into().unwrap());
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
}
