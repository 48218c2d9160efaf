//! A seeded generator (splitmix64): fast, good enough for incompressible file
//! contents, random offsets and choices, and the same on every run and target.

pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    /// `k` distinct indices of `0..n`, ascending.
    pub(crate) fn pick(&mut self, n: u64, k: u64) -> Vec<u64> {
        let mut all: Vec<u64> = (0..n).collect();
        let k = k.min(n) as usize;
        for i in 0..k {
            let j = i + (self.next() % (n - i as u64)) as usize;
            all.swap(i, j);
        }
        let mut v = all[..k].to_vec();
        v.sort_unstable();
        v
    }
}
