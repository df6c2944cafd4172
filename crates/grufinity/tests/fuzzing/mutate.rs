//! Byte-level mutations, and the choice between them and the JSON-aware ones.

use super::json;

/// SplitMix64: small, fast, seedable.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes that tend to matter to parsers.
const INTERESTING_BYTES: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'-', b'0', b'9', b'e', b'\n'];

/// A new input from `corpus`: one to four mutations of one entry.
pub fn mutate(corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut data = rng.pick(corpus).clone();
    for _ in 0..1 + rng.below(4) {
        data = match rng.below(10) {
            0..=3 => json::mutate(&data, rng).unwrap_or_else(|| bytes(data, corpus, rng)),
            _ => bytes(data, corpus, rng),
        };
    }
    data
}

/// One byte-level mutation.
fn bytes(mut data: Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let n = data.len();
    match rng.below(9) {
        // Flip 1 to 8 bits.
        0 if n > 0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(n);
                data[i] ^= 1 << rng.below(8);
            }
        }
        // Set a byte to an interesting or a random value.
        1 if n > 0 => {
            let i = rng.below(n);
            data[i] = if rng.chance(2) { *rng.pick(INTERESTING_BYTES) } else { rng.next() as u8 };
        }
        // Insert a few bytes.
        2 => {
            let at = rng.below(n + 1);
            let what: Vec<u8> = (0..1 + rng.below(16)).map(|_| *rng.pick(INTERESTING_BYTES)).collect();
            data.splice(at..at, what);
        }
        // Delete a range.
        3 if n > 0 => {
            let at = rng.below(n);
            let len = 1 + rng.below((n - at).min(64));
            data.drain(at..at + len);
        }
        // Duplicate a range.
        4 if n > 0 => {
            let at = rng.below(n);
            let len = 1 + rng.below((n - at).min(256));
            let copy = data[at..at + len].to_vec();
            let to = rng.below(n + 1);
            data.splice(to..to, copy);
        }
        // Truncate.
        5 if n > 0 => data.truncate(rng.below(n)),
        // Splice: the head of this input and the tail of another.
        6 => {
            let other = rng.pick(corpus);
            let cut = rng.below(n + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        // Overwrite 4 or 8 bytes with an extreme little-endian number (lengths, counts, floats).
        7 if n >= 8 => {
            let at = rng.below(n - 7);
            let value: u64 = *rng.pick(&[0, 1, u32::MAX as u64, u64::MAX, 1 << 31, 1 << 40, 0x7fc0_0000, 0x7f80_0000]);
            let width = if rng.chance(2) { 4 } else { 8 };
            data[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        }
        // Empty, or garbage.
        _ => {
            if rng.chance(4) {
                data.clear();
            } else {
                let at = rng.below(n + 1);
                data.insert(at, rng.next() as u8);
            }
        }
    }
    data
}
