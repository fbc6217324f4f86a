//! Test helpers shared by the crates' test suites (a dev-dependency only): [`Rng`], a seeded
//! generator, [`mutate_bytes`], the byte mutations of the fuzz tests, [`schema`], random
//! JSON Schemas with an independent validator, and [`fixture`] / [`reference`] / [`json_ids`]
//! for the committed fixtures.

pub mod schema;

use std::path::PathBuf;

/// `tests/fixtures/<name>` at the repository root.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// `reference.json` of fixture `name`.
pub fn reference(name: &str) -> serde_json::Value {
    let path = fixture(name).join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON array of token ids.
///
/// # Panics
/// If `v` is not an array of non-negative integers below 2³².
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of token ids")
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .expect("a token id")
        })
        .collect()
}

/// SplitMix64: deterministic, dependency-free, good enough to pick cases and mutations.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `(0, 1]`.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Values that broke loaders before, written as 4- or 8-byte integers: zero, all ones, the
/// sign bit, 2³¹ − 1, 2⁵⁹ + 4, 2⁶², 2³², an `f32` NaN.
pub const EXTREMES: [u64; 8] = [
    0,
    u64::MAX,
    1 << 63,
    (1 << 31) - 1,
    (1 << 59) + 4,
    1 << 62,
    1 << 32,
    0x7fc0_0000,
];

/// One random change to `bytes` at a position below `region`: a flipped bit, a byte set to
/// 0x00 / 0xff / 0x80 / 0x7f, an [`EXTREMES`] value written over 4 or 8 bytes, a cut, or a
/// repeated chunk of up to 64 bytes.
pub fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>, region: usize) {
    if bytes.is_empty() {
        return;
    }
    let region = region.clamp(1, bytes.len());
    let at = rng.below(region);
    match rng.below(6) {
        0 => bytes[at] ^= 1 << rng.below(8),
        1 => bytes[at] = [0u8, 0xff, 0x80, 0x7f][rng.below(4)],
        2 | 3 => {
            let v = EXTREMES[rng.below(EXTREMES.len())].to_le_bytes();
            let end = (at + [4, 8][rng.below(2)]).min(bytes.len());
            bytes[at..end].copy_from_slice(&v[..end - at]);
        }
        4 => bytes.truncate(at),
        _ => {
            let len = rng.below(64).min(bytes.len() - at);
            let chunk = bytes[at..at + len].to_vec();
            bytes.splice(at..at, chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic_and_mutations_stay_in_bounds() {
        let (mut a, mut b) = (Rng(7), Rng(7));
        assert_eq!(
            (0..4).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..4).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        let mut rng = Rng(1);
        for _ in 0..1000 {
            let mut bytes = vec![1u8; 100];
            mutate_bytes(&mut rng, &mut bytes, 10);
            assert!(bytes.len() <= 164);
            assert!(
                bytes.len() >= 100 || bytes.len() < 10,
                "cut only inside the region"
            );
        }
        assert_eq!(Rng(3).below(0), 0);
    }
}
