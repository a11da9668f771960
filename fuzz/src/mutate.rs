//! Byte-level mutations of corpus inputs (the stable runner's substitute for libFuzzer's), seeded
//! so that a run can be repeated.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Bytes that matter to the formats read: JSON punctuation, digits, and integer extremes.
const INTERESTING_BYTES: [u8; 16] = [
    0, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'"', b'{', b'}', b'[', b']', b',', b'-', b'e', b'\n',
];

/// Little-endian integers worth trying where a length or a count is read.
const INTERESTING_U64: [u64; 8] = [
    0,
    1,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];

/// Numbers worth trying in place of a number of a JSON text.
const INTERESTING_NUMBERS: [&str; 9] = [
    "0",
    "-1",
    "4294967296",
    "18446744073709551616",
    "1e308",
    "-1e308",
    "1e-320",
    "99999999999999",
    "0.5",
];

/// Mutates inputs with a seeded generator.
pub struct Mutator {
    rng: ChaCha8Rng,
    max_len: usize,
}

impl Mutator {
    /// A mutator whose inputs stay at most `max_len` bytes long.
    pub fn new(seed: u64, max_len: usize) -> Mutator {
        Mutator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            max_len,
        }
    }

    /// An index into a collection of `n` items (`n > 0`).
    pub fn pick(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n)
    }

    /// Apply one to four random mutations to `input`; `others` are spliced from.
    pub fn mutate(&mut self, input: &mut Vec<u8>, others: &[Vec<u8>]) {
        for _ in 0..self.rng.gen_range(1..=4) {
            self.mutate_once(input, others);
        }
        input.truncate(self.max_len);
    }

    fn pos(&mut self, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            self.rng.gen_range(0..len)
        }
    }

    fn mutate_once(&mut self, input: &mut Vec<u8>, others: &[Vec<u8>]) {
        let len = input.len();
        match self.rng.gen_range(0..10) {
            0 if len > 0 => {
                let i = self.pos(len);
                input[i] ^= 1 << self.rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = self.pos(len);
                input[i] = INTERESTING_BYTES[self.pick(INTERESTING_BYTES.len())];
            }
            2 => {
                let i = self.pos(len + 1);
                let b = if self.rng.gen() {
                    self.rng.gen()
                } else {
                    INTERESTING_BYTES[self.pick(INTERESTING_BYTES.len())]
                };
                input.insert(i, b);
            }
            3 if len > 0 => {
                let i = self.pos(len);
                let n = self.rng.gen_range(1..=16).min(len - i);
                input.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a range somewhere else.
                let i = self.pos(len);
                let n = self.rng.gen_range(1..=64).min(len - i);
                let chunk = input[i..i + n].to_vec();
                let at = self.pos(len + 1);
                input.splice(at..at, chunk);
            }
            5 if len >= 8 => {
                let i = self.pos(len - 7);
                let v = INTERESTING_U64[self.pick(INTERESTING_U64.len())];
                let bytes = if self.rng.gen() {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                let width = [1, 2, 4, 8][self.pick(4)];
                input[i..i + width].copy_from_slice(&bytes[..width]);
            }
            6 => self.replace_number(input),
            7 if !others.is_empty() => {
                let other = &others[self.pick(others.len())];
                if !other.is_empty() {
                    let i = self.pos(other.len());
                    let n = self.rng.gen_range(1..=256).min(other.len() - i);
                    let at = self.pos(len + 1);
                    input.splice(at..at, other[i..i + n].iter().copied());
                }
            }
            8 if len > 0 => {
                let n = self.pos(len);
                input.truncate(n);
            }
            _ => {
                let i = self.pos(len + 1);
                let b = self.rng.gen();
                input.insert(i, b);
            }
        }
    }

    /// Replace a run of ASCII digits (a number of a JSON text, a length of a header) with an
    /// extreme number.
    fn replace_number(&mut self, input: &mut Vec<u8>) {
        let start = self.pos(input.len());
        let Some(first) = input[start..].iter().position(u8::is_ascii_digit) else {
            return;
        };
        let from = start + first;
        let to = from + input[from..].iter().take_while(|b| b.is_ascii_digit()).count();
        let number = INTERESTING_NUMBERS[self.pick(INTERESTING_NUMBERS.len())];
        input.splice(from..to, number.bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_seeded_and_bounded() {
        let base = br#"{"a": 123, "b": [1, 2, 3]}"#.to_vec();
        let run = |seed| {
            let mut m = Mutator::new(seed, 40);
            (0..200)
                .map(|_| {
                    let mut x = base.clone();
                    m.mutate(&mut x, std::slice::from_ref(&base));
                    x
                })
                .collect::<Vec<_>>()
        };
        let a = run(1);
        assert_eq!(a, run(1));
        assert_ne!(a, run(2));
        assert!(a.iter().all(|x| x.len() <= 40));
        assert!(a.iter().filter(|x| **x != base).count() > 150);
    }
}
