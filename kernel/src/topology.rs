//! Topology: the cores and the memory nodes they sit on, from the device tree (`/cpus/cpu@N`
//! `reg`, and `numa-node-id` on cpu and memory nodes where present) or, without a device tree,
//! from the cores that came online (MPIDR affinity 0 = core number).
//!
//! The slab's per-core caches are sized from [`Topology::cores`], and pools that are per node
//! follow [`Topology::nodes`]. Every Raspberry Pi has a single memory node, so there the node
//! split is one pool and no NUMA gain is claimed; the path stays the same for a board with
//! several.

#![forbid(unsafe_code)]

use core::fmt;

/// Most cores a topology describes.
pub const MAX_CORES: usize = 16;
/// Most memory nodes a topology describes.
pub const MAX_NODES: usize = 8;

/// Where a [`Topology`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologySource {
    /// The device tree passed at entry.
    DeviceTree,
    /// No device tree: the cores that reported in, numbered by MPIDR, on one node.
    Mpidr,
}

/// Why a device tree's topology was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologyError {
    /// No cpu nodes.
    NoCores,
    /// More cpu nodes than [`MAX_CORES`].
    TooManyCores(usize),
    /// More distinct `numa-node-id`s than [`MAX_NODES`].
    TooManyNodes,
    /// A cell property whose length is not the cell count it should have.
    BadCells {
        /// The property.
        property: &'static str,
        /// Its length in bytes.
        length: usize,
    },
    /// Two cpu nodes with the same `reg`.
    DuplicateCore(u64),
}

impl fmt::Display for TopologyError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyError::NoCores => write!(formatter, "the device tree lists no cpus"),
            TopologyError::TooManyCores(count) => {
                write!(formatter, "the device tree lists {count} cpus, more than {MAX_CORES}")
            }
            TopologyError::TooManyNodes => write!(formatter, "more than {MAX_NODES} memory nodes"),
            TopologyError::BadCells { property, length } => {
                write!(formatter, "property {property} is {length} bytes, not whole cells")
            }
            TopologyError::DuplicateCore(id) => write!(formatter, "cpu {id:#x} is listed twice"),
        }
    }
}

/// One cpu node of a device tree, as raw property bytes.
#[derive(Clone, Copy, Debug)]
pub struct CpuNode<'tree> {
    /// The `reg` property (the MPIDR affinity), big-endian, `address_cells` cells.
    pub reg: &'tree [u8],
    /// The `numa-node-id` property, if present (one big-endian cell).
    pub numa_node_id: Option<&'tree [u8]>,
}

/// Cores and memory nodes. Nodes are renumbered densely (0, 1, ...) in the order of their
/// device-tree ids; a core with no `numa-node-id` is on the node of id 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    core_ids: [u64; MAX_CORES],
    core_nodes: [u8; MAX_CORES],
    cores: usize,
    nodes: usize,
    source: TopologySource,
}

fn read_cells(property: &'static str, bytes: &[u8], cells: usize) -> Result<u64, TopologyError> {
    if !(1..=2).contains(&cells) || bytes.len() != cells * 4 {
        return Err(TopologyError::BadCells { property, length: bytes.len() });
    }
    Ok(bytes.chunks_exact(4).fold(0u64, |value, cell| {
        (value << 32) | u64::from(u32::from_be_bytes([cell[0], cell[1], cell[2], cell[3]]))
    }))
}

impl Topology {
    /// `cores` cores numbered 0.. on one memory node (no device tree). At least one core and
    /// at most [`MAX_CORES`] are kept.
    pub fn from_mpidr(cores: usize) -> Self {
        let cores = cores.clamp(1, MAX_CORES);
        Self {
            core_ids: core::array::from_fn(|index| index as u64),
            core_nodes: [0; MAX_CORES],
            cores,
            nodes: 1,
            source: TopologySource::Mpidr,
        }
    }

    /// The topology a device tree describes: `cpus` are the `/cpus/cpu@N` nodes (with
    /// `/cpus`'s `#address-cells`), `memory_node_ids` the `numa-node-id`s of its memory nodes.
    pub fn from_device_tree<'tree>(
        cpus: impl IntoIterator<Item = CpuNode<'tree>>,
        address_cells: usize,
        memory_node_ids: impl IntoIterator<Item = &'tree [u8]>,
    ) -> Result<Self, TopologyError> {
        let mut ids = [0u64; MAX_CORES];
        let mut raw_nodes = [0u64; MAX_CORES];
        let mut cores = 0;
        for cpu in cpus {
            if cores == MAX_CORES {
                return Err(TopologyError::TooManyCores(cores + 1));
            }
            let id = read_cells("reg", cpu.reg, address_cells)?;
            if ids[..cores].contains(&id) {
                return Err(TopologyError::DuplicateCore(id));
            }
            ids[cores] = id;
            raw_nodes[cores] = match cpu.numa_node_id {
                Some(bytes) => read_cells("numa-node-id", bytes, 1)?,
                None => 0,
            };
            cores += 1;
        }
        if cores == 0 {
            return Err(TopologyError::NoCores);
        }
        // Distinct node ids, sorted, from cpus and memory nodes alike.
        let mut known = [0u64; MAX_NODES];
        let mut nodes = 0;
        let mut note = |id: u64| -> Result<(), TopologyError> {
            if known[..nodes].contains(&id) {
                return Ok(());
            }
            if nodes == MAX_NODES {
                return Err(TopologyError::TooManyNodes);
            }
            known[nodes] = id;
            nodes += 1;
            Ok(())
        };
        for &id in &raw_nodes[..cores] {
            note(id)?;
        }
        for bytes in memory_node_ids {
            note(read_cells("numa-node-id", bytes, 1)?)?;
        }
        let known = &mut known[..nodes];
        known.sort_unstable();
        let mut core_nodes = [0u8; MAX_CORES];
        for (node, raw) in core_nodes.iter_mut().zip(&raw_nodes[..cores]) {
            *node = known.iter().position(|id| id == raw).unwrap_or(0) as u8;
        }
        Ok(Self { core_ids: ids, core_nodes, cores, nodes, source: TopologySource::DeviceTree })
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// Number of memory nodes (at least 1).
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Where this topology came from.
    pub fn source(&self) -> TopologySource {
        self.source
    }

    /// The MPIDR affinity (device-tree `reg`) of core `index`, if it exists.
    pub fn core_id(&self, index: usize) -> Option<u64> {
        (index < self.cores).then(|| self.core_ids[index])
    }

    /// The memory node of core `index` (node 0 for a core that does not exist).
    pub fn node_of(&self, index: usize) -> usize {
        if index < self.cores { usize::from(self.core_nodes[index]) } else { 0 }
    }

    /// The cores on memory node `node`.
    pub fn cores_on(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.cores).filter(move |&index| self.node_of(index) == node)
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.source {
            TopologySource::DeviceTree => "device tree",
            TopologySource::Mpidr => "MPIDR, no usable device tree",
        };
        write!(formatter, "{} cores, {} memory node", self.cores, self.nodes)?;
        if self.nodes == 1 {
            write!(formatter, " ({source}): a single node, so no NUMA gain is claimed")
        } else {
            write!(formatter, "s ({source}): per-node pools follow it")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cell(value: u32) -> [u8; 4] {
        value.to_be_bytes()
    }

    #[test]
    fn a_pi_has_four_cores_on_one_node() {
        let regs = [cell(0), cell(1), cell(2), cell(3)];
        let cpus = regs.iter().map(|reg| CpuNode { reg, numa_node_id: None });
        let topology = Topology::from_device_tree(cpus, 1, []).unwrap();
        assert_eq!((topology.cores(), topology.nodes()), (4, 1));
        assert_eq!(topology.core_id(3), Some(3));
        assert_eq!(topology.cores_on(0).count(), 4);
        assert_eq!(
            topology.to_string(),
            "4 cores, 1 memory node (device tree): a single node, so no NUMA gain is claimed"
        );
        assert_eq!(
            Topology::from_mpidr(4).to_string(),
            "4 cores, 1 memory node (MPIDR, no usable device tree): a single node, so no NUMA gain is claimed"
        );
    }

    #[test]
    fn sparse_node_ids_are_renumbered_and_memory_only_nodes_count() {
        let (zero, one, node_two, node_five) = (cell(0), cell(0x100), cell(2), cell(5));
        let cpus = [
            CpuNode { reg: &zero, numa_node_id: Some(&node_five) },
            CpuNode { reg: &one, numa_node_id: Some(&node_two) },
        ];
        let memory_only = cell(9);
        let topology = Topology::from_device_tree(cpus, 1, [&memory_only[..]]).unwrap();
        assert_eq!(topology.nodes(), 3);
        assert_eq!((topology.node_of(0), topology.node_of(1)), (1, 0));
        assert_eq!(topology.core_id(1), Some(0x100));
        assert!(topology.to_string().starts_with("2 cores, 3 memory nodes (device tree)"));
    }

    #[test]
    fn bad_trees_get_typed_errors() {
        let none: [CpuNode<'_>; 0] = [];
        assert_eq!(Topology::from_device_tree(none, 1, []), Err(TopologyError::NoCores));
        let zero = cell(0);
        let twice = [CpuNode { reg: &zero, numa_node_id: None }; 2];
        assert_eq!(Topology::from_device_tree(twice, 1, []), Err(TopologyError::DuplicateCore(0)));
        let short = [CpuNode { reg: &zero[..3], numa_node_id: None }];
        assert_eq!(
            Topology::from_device_tree(short, 1, []),
            Err(TopologyError::BadCells { property: "reg", length: 3 })
        );
        let regs: Vec<[u8; 4]> = (0..17).map(cell).collect();
        let many = regs.iter().map(|reg| CpuNode { reg, numa_node_id: None });
        assert_eq!(Topology::from_device_tree(many, 1, []), Err(TopologyError::TooManyCores(17)));
        let two_cells = [0u8, 0, 0, 1, 0, 0, 0, 2];
        let wide = [CpuNode { reg: &two_cells, numa_node_id: None }];
        assert_eq!(Topology::from_device_tree(wide, 2, []).unwrap().core_id(0), Some(0x1_0000_0002));
        assert_eq!(Topology::from_mpidr(0).cores(), 1);
    }

    proptest! {
        /// Arbitrary property bytes never panic, and an accepted topology is consistent.
        #[test]
        fn arbitrary_properties_never_panic(
            cpus in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..9),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..6))),
                0..20),
            address_cells in 0usize..4,
            memory in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 0..4),
        ) {
            let nodes = cpus.iter().map(|(reg, numa)| CpuNode { reg, numa_node_id: numa.as_deref() });
            if let Ok(topology) = Topology::from_device_tree(nodes, address_cells, memory.iter().map(Vec::as_slice)) {
                prop_assert!((1..=MAX_CORES).contains(&topology.cores()));
                prop_assert!((1..=MAX_NODES).contains(&topology.nodes()));
                let placed: usize = (0..topology.nodes()).map(|node| topology.cores_on(node).count()).sum();
                prop_assert_eq!(placed, topology.cores());
            }
        }
    }
}
