//! `Handout`: a buffer the workers of a parallel run fill together, handed out in disjoint
//! pieces (whoever asks next gets the next piece) and readable whole once every piece is back.
//!
//! This is how the cores of a forward pass share an output without a lock per piece: each
//! claim is one atomic increment, and the buffer is only ever seen whole after the last
//! piece's writer has finished with it. A worker whose core is lost keeps its piece forever,
//! so the buffer is then never whole; readers see that ([`Handout::whole`] is `None`) and give
//! up instead of waiting.

#![allow(unsafe_code)]

use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

/// A buffer borrowed for the length of a parallel run, handed out a piece at a time.
///
/// Piece `i` is elements `i × piece .. min((i + 1) × piece, len)`. Every piece is handed out
/// once, to the first [`Handout::claim`] that draws its index; a [`Piece`] counts as returned
/// when its writer calls [`Piece::done`]. A piece dropped without it (its writer panicked, or
/// gave up) is never returned, so the buffer is then never whole.
pub struct Handout<'buffer, T> {
    start: NonNull<T>,
    length: usize,
    piece: usize,
    pieces: usize,
    next: AtomicUsize,
    returned: AtomicUsize,
    buffer: PhantomData<&'buffer mut [T]>,
}

// SAFETY: a `Handout` gives each piece, a disjoint `&mut [T]`, to exactly one claimer (possibly
// on another core: `T: Send`), and gives out `&[T]` of the whole buffer, possibly to several
// cores at once (`T: Sync`), only once every piece has been returned, after which no piece can
// be claimed again. So no element is ever reachable through two live references where one is
// mutable.
unsafe impl<T: Send + Sync> Sync for Handout<'_, T> {}

// SAFETY: the handout owns nothing but its exclusive borrow of the buffer, which may move to
// another core with it when `T: Send`.
unsafe impl<T: Send> Send for Handout<'_, T> {}

impl<'buffer, T> Handout<'buffer, T> {
    /// Hands `buffer` out in pieces of `piece` elements (at least 1; the last piece may be
    /// shorter).
    pub fn new(buffer: &'buffer mut [T], piece: usize) -> Self {
        let piece = piece.max(1);
        let length = buffer.len();
        Self {
            start: NonNull::from(buffer).cast(),
            length,
            piece,
            pieces: length.div_ceil(piece),
            next: AtomicUsize::new(0),
            returned: AtomicUsize::new(0),
            buffer: PhantomData,
        }
    }

    /// How many pieces the buffer is cut into.
    pub fn pieces(&self) -> usize {
        self.pieces
    }

    /// Elements per piece (the last may have fewer).
    pub fn piece_length(&self) -> usize {
        self.piece
    }

    /// The next piece nobody has claimed yet, or `None` once all have been handed out.
    pub fn claim(&self) -> Option<Piece<'_, T>> {
        // Indices past the last only grow by one per refused claim, far from wrapping.
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        if index >= self.pieces {
            return None;
        }
        let first = index * self.piece;
        let length = self.piece.min(self.length - first);
        // SAFETY: `index` was drawn once from `next`, so no other claim covers
        // `first .. first + length`, which lies inside the buffer (index < pieces). The buffer
        // is borrowed exclusively for `'buffer`, which outlives `&self`, and no whole view of it
        // exists while this piece is out (`whole` needs every piece returned).
        let data = unsafe { core::slice::from_raw_parts_mut(self.start.as_ptr().add(first), length) };
        Some(Piece { index, data, returned: &self.returned })
    }

    /// The whole buffer, once every piece has been claimed and returned; `None` before (or
    /// forever, if a piece's holder was lost).
    pub fn whole(&self) -> Option<&[T]> {
        if self.returned.load(Ordering::Acquire) != self.pieces {
            return None;
        }
        // SAFETY: every piece has been returned (the acquire load pairs with each piece's
        // release in `done`, so their writes are visible), and none can be claimed again
        // (`returned == pieces` means every index was drawn), so shared references to the
        // whole buffer alias no mutable one. The buffer lives for `'buffer`, beyond `&self`.
        Some(unsafe { core::slice::from_raw_parts(self.start.as_ptr(), self.length) })
    }
}

/// One piece of a [`Handout`], writable by its claimer alone until [`Piece::done`].
pub struct Piece<'handout, T> {
    /// The piece's index: it starts at element `index × piece length` of the buffer.
    pub index: usize,
    data: &'handout mut [T],
    returned: &'handout AtomicUsize,
}

impl<T> Deref for Piece<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.data
    }
}

impl<T> DerefMut for Piece<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.data
    }
}

impl<T> Piece<'_, T> {
    /// Returns the piece, written: once every piece is, the buffer is whole.
    pub fn done(self) {
        self.returned.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_element_is_handed_out_once_and_the_whole_follows_the_last_return() {
        let mut buffer = [0u32; 10];
        let handout = Handout::new(&mut buffer, 4);
        assert_eq!(handout.pieces(), 3);
        let mut first = handout.claim().unwrap();
        first.fill(1);
        let mut rest: alloc::vec::Vec<_> = core::iter::from_fn(|| handout.claim()).collect();
        assert_eq!(rest.iter().map(|piece| piece.len()).collect::<alloc::vec::Vec<_>>(), [4, 2]);
        for piece in &mut rest {
            let index = piece.index as u32;
            piece.fill(index + 1);
        }
        assert!(handout.whole().is_none(), "pieces are still out");
        rest.into_iter().for_each(Piece::done);
        assert!(handout.whole().is_none(), "the first piece is still out");
        first.done();
        assert_eq!(handout.whole().unwrap(), &[1, 1, 1, 1, 2, 2, 2, 2, 3, 3]);
        assert!(handout.claim().is_none());
    }

    #[test]
    fn a_piece_never_returned_keeps_the_buffer_from_being_read() {
        let mut buffer = [0u8; 3];
        let handout = Handout::new(&mut buffer, 1);
        // The first piece's writer gives up without `done`.
        let _ = handout.claim().unwrap();
        while let Some(piece) = handout.claim() {
            piece.done();
        }
        assert!(handout.whole().is_none());
    }

    #[test]
    fn threads_fill_disjoint_pieces() {
        let mut buffer = alloc::vec![0usize; 1000];
        let handout = Handout::new(&mut buffer, 7);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    while let Some(mut piece) = handout.claim() {
                        let base = piece.index * 7;
                        piece.iter_mut().enumerate().for_each(|(offset, value)| *value += base + offset);
                        piece.done();
                    }
                });
            }
        });
        let whole = handout.whole().unwrap();
        assert!(whole.iter().enumerate().all(|(index, &value)| index == value));
    }
}
