/// `n` reproducible values in `[-1, 1]` (xorshift from `seed`): the inputs of the crate's tests
/// and of its criterion benches (`benches/common` includes this file).
pub fn noise(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}
