//! Two-level (Jenga-style) KV pages for models that mix layer types, such as sliding-window and
//! full-attention layers with different per-token sizes.
//!
//! Each layer group's KV for a number of positions (its page tokens, by default the same
//! `block_tokens` for every group) is one small page. Large pages are blocks of a
//! [`KvBlockPool`] sized to the least common multiple of the small-page sizes, so a large page
//! splits exactly into small pages of any one group. [`aligned_page_tokens`] gives the smaller
//! groups more positions per page so that every small page has the same size: a large page is
//! then one small page, and no sequence keeps a partly used large page per group. A large page serves one group of
//! one sequence: its small pages all belong to that sequence, and it returns to the pool whole
//! when its last small page is released. Positions that fall out of a group's sliding window
//! release their small pages as soon as a whole page is outside the window.

use super::{KvBlock, KvBlockPool};
use crate::hil::KvError;
use alloc::vec::Vec;

/// One kind of layer: how many values each position takes (keys and values of every layer of
/// the kind), and its attention window, if it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerGroup {
    /// Values per position, over all layers of the group.
    pub floats_per_token: usize,
    /// Positions attended to (the most recent ones), or `None` for full attention.
    pub window: Option<usize>,
}

/// Values in a large page for `groups` in pages of `block_tokens` positions: the least common
/// multiple of the small-page sizes. `None` if a size is zero or the multiple overflows.
pub fn large_page_floats(groups: &[LayerGroup], block_tokens: usize) -> Option<usize> {
    large_page_floats_for(groups, &alloc::vec![block_tokens; groups.len()])
}

/// Values in a large page for `groups` whose small pages hold `page_tokens[g]` positions of
/// group `g`. `None` if a size is zero, the lengths differ or the multiple overflows.
pub fn large_page_floats_for(groups: &[LayerGroup], page_tokens: &[usize]) -> Option<usize> {
    if groups.len() != page_tokens.len() {
        return None;
    }
    groups.iter().zip(page_tokens).try_fold(1usize, |multiple, (group, &tokens)| {
        let small = group.floats_per_token.checked_mul(tokens).filter(|&small| small > 0)?;
        (multiple / greatest_common_divisor(multiple, small)).checked_mul(small)
    })
}

/// Positions per small page for each of `groups` so that all small pages are the size of the
/// largest group's page of `block_tokens` positions: a group whose per-position size divides
/// that page gets as many positions as fill it; any other group keeps `block_tokens`.
pub fn aligned_page_tokens(groups: &[LayerGroup], block_tokens: usize) -> Vec<usize> {
    let largest = groups.iter().map(|group| group.floats_per_token.saturating_mul(block_tokens)).max();
    groups
        .iter()
        .map(|group| match largest {
            Some(largest) if group.floats_per_token > 0 && largest % group.floats_per_token == 0 => {
                largest / group.floats_per_token
            }
            _ => block_tokens,
        })
        .collect()
}

fn greatest_common_divisor(mut first: usize, mut second: usize) -> usize {
    while second != 0 {
        (first, second) = (second, first % second);
    }
    first
}

/// A large page held by a sequence for one group, and which of its small pages are free.
struct LargePage<'pool, 'memory> {
    block: KvBlock<'pool, 'memory>,
    group: usize,
    free_slots: Vec<u32>,
    used: usize,
}

/// Where a small page lives: a large page of the sequence and a slot in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SmallPage {
    large: usize,
    slot: u32,
}

/// One sequence's KV cache in two-level pages.
///
/// Invariants: a large page is held by this sequence only and serves one group; its `used`
/// count equals the table entries pointing into it, and it is returned to the pool when that
/// count reaches zero; the small pages of a group cover exactly the page-aligned blocks that
/// hold positions inside the group's window.
pub struct TwoLevelKv<'pool, 'memory> {
    pool: &'pool KvBlockPool<'memory>,
    groups: Vec<LayerGroup>,
    /// Positions per small page, by group.
    page_tokens: Vec<usize>,
    /// Large pages by index; `None` once returned to the pool (the index is reused).
    large: Vec<Option<LargePage<'pool, 'memory>>>,
    /// Group `g`'s small page for token block `b` is `tables[g][b]`.
    tables: Vec<Vec<Option<SmallPage>>>,
    length: usize,
}

impl<'pool, 'memory> TwoLevelKv<'pool, 'memory> {
    /// An empty cache for `groups`, in small pages of `block_tokens` positions. The pool's
    /// blocks must be [`large_page_floats`] values.
    pub fn new(
        pool: &'pool KvBlockPool<'memory>,
        groups: &[LayerGroup],
        block_tokens: usize,
    ) -> Option<Self> {
        Self::with_page_tokens(pool, groups, &alloc::vec![block_tokens; groups.len()])
    }

    /// An empty cache for `groups` whose small pages hold `page_tokens[g]` positions of group
    /// `g` (see [`aligned_page_tokens`]). The pool's blocks must be
    /// [`large_page_floats_for`] values.
    pub fn with_page_tokens(
        pool: &'pool KvBlockPool<'memory>,
        groups: &[LayerGroup],
        page_tokens: &[usize],
    ) -> Option<Self> {
        (!groups.is_empty()
            && page_tokens.iter().all(|&tokens| tokens > 0)
            && large_page_floats_for(groups, page_tokens) == Some(pool.floats_per_block()))
        .then(|| Self {
            pool,
            groups: groups.to_vec(),
            page_tokens: page_tokens.to_vec(),
            large: Vec::new(),
            tables: groups.iter().map(|_| Vec::new()).collect(),
            length: 0,
        })
    }

    /// Positions appended so far.
    pub fn length(&self) -> usize {
        self.length
    }

    /// Makes room for the next position in every group, then releases the small pages that
    /// fell wholly out of a sliding window. On running out of memory nothing is appended.
    pub fn append(&mut self) -> Result<(), KvError> {
        let mut taken = Vec::new();
        for group in 0..self.groups.len() {
            let block = self.length / self.page_tokens[group];
            if self.tables[group].get(block).copied().flatten().is_some() {
                continue;
            }
            match self.take_small(group) {
                Ok(page) => {
                    if self.tables[group].len() <= block {
                        self.tables[group].resize(block + 1, None);
                    }
                    self.tables[group][block] = Some(page);
                    taken.push((group, block));
                }
                Err(error) => {
                    for (group, block) in taken {
                        if let Some(page) = self.tables[group][block].take() {
                            self.release_small(page);
                        }
                    }
                    return Err(error);
                }
            }
        }
        self.length += 1;
        for group in 0..self.groups.len() {
            let Some(window) = self.groups[group].window else { continue };
            // Blocks wholly before the first position still inside the window.
            let outside = self.length.saturating_sub(window) / self.page_tokens[group];
            for block in 0..outside.min(self.tables[group].len()) {
                if let Some(page) = self.tables[group][block].take() {
                    self.release_small(page);
                }
            }
        }
        Ok(())
    }

    /// The values of group `group` for the small page holding `position`, if it is held (in
    /// range and inside the group's window). Position `p` is at `p % page_tokens(group)` in it.
    pub fn page(&self, group: usize, position: usize) -> Option<&[f32]> {
        let page = self.small_page(group, position)?;
        let small = self.small_floats(group);
        let large = self.large[page.large].as_ref()?;
        let start = page.slot as usize * small;
        Some(&large.block[start..start + small])
    }

    /// Like [`TwoLevelKv::page`], writable.
    pub fn page_mut(&mut self, group: usize, position: usize) -> Option<&mut [f32]> {
        let page = self.small_page(group, position)?;
        let small = self.small_floats(group);
        let large = self.large[page.large].as_mut()?;
        let start = page.slot as usize * small;
        large.block.make_mut().ok().map(|values| &mut values[start..start + small])
    }

    /// Positions per small page of `group`.
    pub fn page_tokens(&self, group: usize) -> usize {
        self.page_tokens[group]
    }

    /// Large pages held.
    pub fn large_pages(&self) -> usize {
        self.large.iter().flatten().count()
    }

    /// Values held in large pages.
    pub fn held_floats(&self) -> usize {
        self.large_pages() * self.pool.floats_per_block()
    }

    /// Values that positions in use need: every position of a full-attention group, the
    /// positions inside the window of a sliding one.
    pub fn live_floats(&self) -> usize {
        self.groups
            .iter()
            .map(|group| {
                group.window.map_or(self.length, |window| self.length.min(window)) * group.floats_per_token
            })
            .sum()
    }

    fn small_page(&self, group: usize, position: usize) -> Option<SmallPage> {
        if position >= self.length {
            return None;
        }
        self.tables.get(group)?.get(position / self.page_tokens[group]).copied().flatten()
    }

    fn small_floats(&self, group: usize) -> usize {
        self.groups[group].floats_per_token * self.page_tokens[group]
    }

    /// A free small page of `group`: from one of this sequence's large pages of the group, or
    /// from a new large page.
    fn take_small(&mut self, group: usize) -> Result<SmallPage, KvError> {
        let reusable = self.large.iter_mut().enumerate().find_map(|(index, large)| {
            let large = large.as_mut().filter(|large| large.group == group)?;
            let slot = large.free_slots.pop()?;
            large.used += 1;
            Some(SmallPage { large: index, slot })
        });
        if let Some(page) = reusable {
            return Ok(page);
        }
        let block = self.pool.alloc_for_overwrite()?;
        let slots = (self.pool.floats_per_block() / self.small_floats(group)) as u32;
        let page = LargePage { block, group, free_slots: (1..slots).rev().collect(), used: 1 };
        let index = match self.large.iter().position(Option::is_none) {
            Some(index) => {
                self.large[index] = Some(page);
                index
            }
            None => {
                self.large.push(Some(page));
                self.large.len() - 1
            }
        };
        Ok(SmallPage { large: index, slot: 0 })
    }

    /// Returns a small page to its large page, and the large page to the pool once it is
    /// wholly free.
    fn release_small(&mut self, page: SmallPage) {
        let Some(large) = self.large[page.large].as_mut() else { return };
        large.free_slots.push(page.slot);
        large.used -= 1;
        if large.used == 0 {
            self.large[page.large] = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::{buffer::tests::host_backed_memory, kv::KvBlockPool, layout::MIB};
    use proptest::prelude::*;

    #[test]
    fn large_pages_are_the_least_common_multiple() {
        let sliding = LayerGroup { floats_per_token: 256, window: Some(64) };
        let full = LayerGroup { floats_per_token: 384, window: None };
        assert_eq!(large_page_floats(&[sliding, full], 16), Some(12_288), "3 sliding or 2 full pages");
        assert_eq!(large_page_floats(&[full], 16), Some(6_144));
        assert_eq!(large_page_floats(&[LayerGroup { floats_per_token: 0, window: None }], 16), None);
        let aligned = aligned_page_tokens(&[sliding, full], 16);
        assert_eq!(aligned, [24, 16], "24 sliding positions fill a 16-position full page");
        assert_eq!(large_page_floats_for(&[sliding, full], &aligned), Some(6_144), "one small page");
        let odd = LayerGroup { floats_per_token: 5, window: None };
        assert_eq!(aligned_page_tokens(&[odd, full], 16), [16, 16], "5 does not divide 6144");
        assert_eq!(large_page_floats_for(&[odd, full], &[16]), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Appending positions keeps exactly the in-window pages, pages keep their values, the
        /// pool's count equals the large pages held, and everything returns on drop.
        #[test]
        fn windows_release_pages_and_contents_survive(
            window in 1usize..40,
            block_tokens in 1usize..6,
            appends in 1usize..120,
            aligned in any::<bool>(),
        ) {
            static MEMORY: std::sync::OnceLock<&'static crate::mm::buffer::BackedMemory> = std::sync::OnceLock::new();
            let memory = *MEMORY.get_or_init(|| host_backed_memory(16 * MIB));
            let groups = [
                LayerGroup { floats_per_token: 2, window: Some(window) },
                LayerGroup { floats_per_token: 3, window: None },
            ];
            let page_tokens =
                if aligned { aligned_page_tokens(&groups, block_tokens) } else { alloc::vec![block_tokens; 2] };
            let large = large_page_floats_for(&groups, &page_tokens).unwrap();
            let pool = KvBlockPool::new(memory, large, 10_000).unwrap();
            let mut kv = TwoLevelKv::with_page_tokens(&pool, &groups, &page_tokens).unwrap();
            for position in 0..appends {
                kv.append().unwrap();
                for group in 0..2 {
                    let offset = position % page_tokens[group];
                    let page = kv.page_mut(group, position).unwrap();
                    page[offset * (group + 2)] = position as f32;
                }
                let length = position + 1;
                for (group, layer_group) in groups.iter().enumerate() {
                    let tokens = page_tokens[group];
                    let first_kept = layer_group.window.map_or(0, |window| length.saturating_sub(window) / tokens * tokens);
                    for earlier in 0..length {
                        let page = kv.page(group, earlier);
                        prop_assert_eq!(page.is_some(), earlier >= first_kept, "group {} position {}", group, earlier);
                        if let Some(page) = page {
                            prop_assert_eq!(page[earlier % tokens * (group + 2)], earlier as f32);
                        }
                    }
                }
                let used: usize = kv.large.iter().flatten().map(|large| large.used).sum();
                let entries: usize = kv.tables.iter().flatten().flatten().count();
                prop_assert_eq!(used, entries);
                prop_assert!(kv.large.iter().flatten().all(|large| large.used > 0));
                prop_assert_eq!(pool.statistics().blocks_in_use, kv.large_pages());
                prop_assert!(kv.live_floats() <= kv.held_floats());
            }
            drop(kv);
            prop_assert_eq!(pool.statistics().blocks_in_use, 0);
        }
    }

    #[test]
    fn running_out_appends_nothing() {
        let memory = host_backed_memory(16 * MIB);
        let groups = [
            LayerGroup { floats_per_token: 1, window: None },
            LayerGroup { floats_per_token: 2, window: None },
        ];
        let pool = KvBlockPool::new(memory, large_page_floats(&groups, 2).unwrap(), 1).unwrap();
        let mut kv = TwoLevelKv::new(&pool, &groups, 2).unwrap();
        assert_eq!(kv.append(), Err(KvError::OutOfMemory), "two groups need two large pages");
        assert_eq!((kv.length(), kv.large_pages(), pool.statistics().blocks_in_use), (0, 0, 0));
        assert!(TwoLevelKv::new(&pool, &groups, 3).is_none(), "page shape must match the pool");
    }
}
