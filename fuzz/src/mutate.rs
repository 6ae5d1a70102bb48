//! The stable driver's mutator: deterministic from a seed, no coverage feedback. Each
//! input is a corpus entry with one to four mutations stacked: bit flips, bytes set to
//! boundary values, 32- and 64-bit little-endian fields set to extremes (the length
//! fields decoders must bound), truncation, removal, duplication and insertion of
//! spans, and splices with another corpus entry.

use dura_core::rng::Rng;

/// Longest input the mutator makes.
pub const INPUT_BYTES_MAX: usize = 64 << 10;

const BYTES: [u8; 8] = [0, 1, 0x7f, 0x80, 0xfe, 0xff, 0x20, 0x10];

const WORDS: [u64; 12] =
    [0, 1, 2, 15, 16, 255, 4096, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, i64::MAX as u64, u64::MAX];

/// A new input made from `corpus` (not empty) with `rng`.
pub fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    assert!(!corpus.is_empty(), "a corpus to mutate");
    let mut input = corpus[rng.below(corpus.len() as u64) as usize].clone();
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, &mut input, corpus);
    }
    input.truncate(INPUT_BYTES_MAX);
    input
}

fn index(rng: &mut Rng, len: usize) -> usize {
    rng.below(len as u64) as usize
}

fn mutate_once(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let len = input.len();
    match rng.below(10) {
        // Flip one bit.
        0 if len > 0 => {
            let at = index(rng, len);
            input[at] ^= 1 << rng.below(8);
        }
        // A byte set to a boundary value or a random one.
        1 if len > 0 => {
            let at = index(rng, len);
            input[at] =
                if rng.chance(500) { BYTES[index(rng, BYTES.len())] } else { rng.next_u64() as u8 };
        }
        // A little-endian u32 set to an extreme, or nudged.
        2 if len >= 4 => {
            let at = index(rng, len - 3);
            let old = u32::from_le_bytes(input[at..at + 4].try_into().expect("4 bytes"));
            let value = match rng.below(3) {
                0 => WORDS[index(rng, WORDS.len())] as u32,
                1 => old.wrapping_add(1 + rng.below(16) as u32),
                _ => old.wrapping_sub(1 + rng.below(16) as u32),
            };
            input[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        // A little-endian u64 set to an extreme.
        3 if len >= 8 => {
            let at = index(rng, len - 7);
            input[at..at + 8].copy_from_slice(&WORDS[index(rng, WORDS.len())].to_le_bytes());
        }
        // Truncate.
        4 if len > 0 => input.truncate(index(rng, len)),
        // Remove a span.
        5 if len > 1 => {
            let at = index(rng, len);
            let end = (at + 1 + index(rng, 64)).min(len);
            input.drain(at..end);
        }
        // Duplicate a span in place.
        6 if len > 0 => {
            let at = index(rng, len);
            let end = (at + 1 + index(rng, 64)).min(len);
            let span = input[at..end].to_vec();
            let to = index(rng, len + 1);
            input.splice(to..to, span);
        }
        // Insert random bytes.
        7 => {
            let to = index(rng, len + 1);
            let count = 1 + index(rng, 16);
            let bytes = rng.bytes(count);
            input.splice(to..to, bytes);
        }
        // Splice: this input's head with another entry's tail.
        8 => {
            let other = &corpus[index(rng, corpus.len())];
            let cut = index(rng, len + 1);
            let from = index(rng, other.len() + 1);
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        // Append random bytes.
        _ => {
            let count = 1 + index(rng, 32);
            let bytes = rng.bytes(count);
            input.extend_from_slice(&bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_inputs_and_inputs_stay_bounded() {
        let corpus = vec![vec![1, 2, 3, 4, 5, 6, 7, 8, 9], vec![], vec![0xff; 100]];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..1000).map(|_| mutate(&mut rng, &corpus)).collect::<Vec<_>>()
        };
        let inputs = run(5);
        assert_eq!(inputs, run(5));
        assert_ne!(inputs, run(6));
        assert!(inputs.iter().all(|input| input.len() <= INPUT_BYTES_MAX));
        assert!(inputs.iter().any(|input| input.len() < 9) && inputs.iter().any(|i| i.len() > 100));
    }
}
