//! Test and benchmark data.

/// `n` bytes of xorshift64 output from `seed`: incompressible, and the same for the same
/// `n` and `seed` (a nonzero seed; zero gives zeros).
pub fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests {
    use super::noise;

    #[test]
    fn noise_is_reproducible_and_seeded() {
        assert_eq!(noise(13, 1).len(), 13);
        assert_eq!(noise(100, 7), noise(100, 7));
        assert_ne!(noise(100, 7), noise(100, 8));
        // A longer run starts with the shorter one.
        assert_eq!(noise(100, 7)[..13], noise(13, 7));
    }
}
