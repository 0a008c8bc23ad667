//! Typed access to a memory-mapped register block at a fixed physical address.

use core::{marker::PhantomData, ops::Deref};

/// A register block of type `Registers` (a `register_structs!` type) at a fixed address.
pub struct Mmio<Registers> {
    base: usize,
    registers: PhantomData<fn() -> Registers>,
}

impl<Registers> Mmio<Registers> {
    /// A handle to the block at `base`.
    ///
    /// # Safety
    /// `base` must be the address of a device register block laid out as `Registers`, mapped
    /// as device memory for the lifetime of the handle, and every caller that writes it must
    /// serialise its accesses (the drivers do, through a lock or a single owner).
    pub const unsafe fn new(base: usize) -> Self {
        Self { base, registers: PhantomData }
    }

    /// The block's base address.
    pub fn base(&self) -> usize {
        self.base
    }
}

impl<Registers> Deref for Mmio<Registers> {
    type Target = Registers;

    fn deref(&self) -> &Registers {
        // SAFETY: `new`'s contract guarantees a live, correctly laid-out device block at
        // `base`; registers are only reached through volatile accessors of tock-registers.
        unsafe { &*(self.base as *const Registers) }
    }
}
