//! Short byte strings made per request without an allocation each: per-thread buffers that
//! hand out `Bytes` slices of themselves (the request id, X-Forwarded-For, the upstream
//! request's path); and header maps reused per worker, at the end. A buffer is reused in place
//! once every slice of it has been dropped; one whose slices are still alive (a long
//! request's id) is left to them and replaced.

use bytes::{Bytes, BytesMut};
use std::cell::RefCell;

/// The size of each buffer.
const BUFFER: usize = 4096;
/// Buffers per thread, used in turn: by the time one comes round again, the requests its
/// slices were made for are normally over, so it is reused in place.
const RING: usize = 4;
/// Pieces longer than this are allocated on their own (a few would use up a buffer).
pub const MAX_PIECE: usize = 512;

thread_local! {
    static BUFFERS: RefCell<Ring> = RefCell::new(Ring::default());
}

#[derive(Default)]
struct Ring {
    bufs: [BytesMut; RING],
    at: usize,
}

impl Ring {
    /// The buffer to write the next piece to, with room for `len` bytes.
    fn room(&mut self, len: usize) -> &mut BytesMut {
        // Between pieces a buffer holds no bytes of its own: its capacity is the room left.
        if self.bufs[self.at].capacity() < len {
            self.at = (self.at + 1) % RING;
            // In place when no slice of that buffer is alive any more, else a new buffer
            // (bytes' `reserve` reclaims a uniquely held buffer).
            self.bufs[self.at].reserve(BUFFER);
        }
        &mut self.bufs[self.at]
    }
}

/// A piece of at most `max_len` bytes, written by `write`. Writing more is allowed but may
/// cost an allocation.
pub fn build(max_len: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
    if max_len > MAX_PIECE {
        let mut own = BytesMut::with_capacity(max_len);
        write(&mut own);
        return own.freeze();
    }
    BUFFERS.with(|ring| {
        let mut ring = ring.borrow_mut();
        let buf = ring.room(max_len);
        write(buf);
        buf.split().freeze()
    })
}

/// A copy of `bytes`.
pub fn copy(bytes: &[u8]) -> Bytes {
    build(bytes.len(), |buf| buf.extend_from_slice(bytes))
}

/// Header maps (http 1) kept per worker: the proxy takes one for each upstream request and
/// gives back each upstream response's once copied to the client's; the HTTP/1.1 client
/// (src/upstream/h1.rs) takes one for each response head and gives back each request's once
/// written. Two taken and two given back per request: no allocation for either head.
const MAX_MAPS: usize = 64;
/// A map grown past this (a response with many headers) is not kept.
const MAX_MAP_CAPACITY: usize = 64;

thread_local! {
    static MAPS: RefCell<Vec<http::HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty header map: one given back earlier, or a new one.
pub fn header_map() -> http::HeaderMap {
    MAPS.with_borrow_mut(Vec::pop).unwrap_or_default()
}

/// A header map done with: emptied (its values, which may be slices of a read buffer, let go
/// at once) and kept for [`header_map`].
pub fn recycle(mut map: http::HeaderMap) {
    if map.capacity() > MAX_MAP_CAPACITY {
        return;
    }
    map.clear();
    MAPS.with_borrow_mut(|maps| {
        if maps.len() < MAX_MAPS {
            maps.push(map);
        }
    });
}

/// Header names outside http's standard table, converted once per worker and cloned after
/// (http allocates such a name each time it parses one). Direct-mapped by a hash of the name
/// as given: a name that misses is parsed and takes its slot. Used for the names that cross
/// between the two http crates and for those an upstream's response head carries.
pub struct NameCache<N> {
    slots: [Option<N>; NAME_SLOTS],
}

/// Slots in a [`NameCache`].
pub const NAME_SLOTS: usize = 64;

impl<N: Clone> NameCache<N> {
    pub const fn new() -> Self {
        NameCache {
            slots: [const { None }; NAME_SLOTS],
        }
    }

    /// `name` converted: from its slot (compared without regard to case, as names are), or
    /// parsed by `parse` (and kept); `None` when `parse` refuses it.
    pub fn get(
        &mut self,
        name: &[u8],
        as_str: impl Fn(&N) -> &str,
        parse: impl FnOnce(&[u8]) -> Option<N>,
    ) -> Option<N> {
        use std::hash::BuildHasher;
        let i = rustc_hash::FxBuildHasher.hash_one(name) as usize % NAME_SLOTS;
        match &self.slots[i] {
            Some(n) if as_str(n).as_bytes().eq_ignore_ascii_case(name) => Some(n.clone()),
            _ => {
                let n = parse(name)?;
                self.slots[i] = Some(n.clone());
                Some(n)
            }
        }
    }
}

impl<N: Clone> Default for NameCache<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_copies_and_buffers_come_round_again() {
        let a = copy(b"first");
        let b = build(8, |buf| buf.extend_from_slice(b"second"));
        assert_eq!((&a[..], &b[..]), (&b"first"[..], &b"second"[..]));
        // Enough pieces to go round the ring several times, kept alive or not.
        let kept: Vec<Bytes> = (0..3 * RING * BUFFER / 100)
            .map(|i| {
                let piece = copy(&[(i % 251) as u8; 100]);
                assert_eq!(piece.len(), 100);
                piece
            })
            .collect();
        for (i, piece) in kept.iter().enumerate() {
            assert!(
                piece.iter().all(|&x| x == (i % 251) as u8),
                "piece {i} changed"
            );
        }
        drop(kept);
        for i in 0..3 * RING * BUFFER / 100 {
            assert_eq!(copy(&[i as u8; 100])[..], [i as u8; 100]);
        }
        let long = copy(&[7; MAX_PIECE + 1]);
        assert_eq!(long.len(), MAX_PIECE + 1);
    }
}
