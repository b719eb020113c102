//! The keyed hashes whose values leave the process or must agree between processes: the
//! engine's state keys (written in checkpoints, with their seeds, and restored by whichever
//! instance a rebalance gives the partition), the tie-break between lines of equal event time
//! (`replay` and every instance of `run` must order them alike), and the token cache's
//! per-process hash.
//!
//! Why not `ahash`, which the in-memory maps use: its value for given seeds depends on how
//! the binary was built. The same seeds and input gave three values in three builds of one
//! source here (the default target, `-C target-feature=+aes`, `-C target-cpu=native`), and
//! its documentation reserves the right to change between versions. A checkpoint written by
//! one build and restored by another then keys every token differently: the state is there
//! but no event finds it. The hash here is plain integer arithmetic on little-endian reads,
//! so its value is the same on every CPU, platform and build; the tests pin known values, so
//! a change to it cannot go unnoticed (it would be a checkpoint format change).
//!
//! The construction is wyhash's multiply-fold step (`mum`): four independent chains over
//! 32-byte blocks, keyed by eight secret 64-bit keys, so that long inputs (a ~1 KB log line,
//! a ~900-byte token) hash at memory speed and an attacker who does not know the keys cannot
//! aim two inputs at one value.

use std::hash::{BuildHasher, Hasher};

/// Seeds no other process can guess (the standard library's per-process random keys): for a
/// new engine's state keys (kept in its checkpoints), the token cache's hash, a checkpoint's
/// instance id and the ingest stage's producer id.
pub fn random_seeds() -> [u64; 4] {
    let s = std::collections::hash_map::RandomState::new();
    std::array::from_fn(|i| {
        let mut h = s.build_hasher();
        h.write_usize(i);
        h.finish()
    })
}

/// Eight odd 64-bit keys: what each hash here is keyed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keys([u64; 8]);

#[inline(always)]
fn mum(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// SplitMix64's output step: spreads a seed over all 64 bits.
const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Keys {
    /// The keys of four seeds (the engine keeps its seeds in checkpoints; fixed seeds give
    /// fixed keys).
    pub const fn from_seeds(seeds: [u64; 4]) -> Self {
        let mut k = [0u64; 8];
        let mut i = 0;
        while i < 8 {
            // odd, and never zero
            k[i] = mix64(seeds[i / 2] ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
            i += 1;
        }
        Keys(k)
    }

    /// 128 bits of `t`, in one pass.
    pub fn wide(&self, t: &[u8]) -> u128 {
        let k = &self.0;
        let (mut a, mut b, mut c, mut d) = (k[0] ^ t.len() as u64, k[1], k[2], k[3]);
        let mut round = |ch: &[u8]| {
            let w = |i: usize| u64::from_le_bytes(ch[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
            a = mum(w0 ^ k[4], w1 ^ a);
            b = mum(w2 ^ k[5], w3 ^ b);
            c = mum(w1 ^ k[6], w2 ^ c);
            d = mum(w3 ^ k[7], w0 ^ d);
        };
        let mut chunks = t.chunks_exact(32);
        for ch in &mut chunks {
            round(ch);
        }
        // The tail, zero-padded (the length is in the seed, so padding is unambiguous).
        let rest = chunks.remainder();
        let mut last = [0u8; 32];
        last[..rest.len()].copy_from_slice(rest);
        round(&last);
        let hi = mum(a ^ k[2], b ^ k[3]);
        let lo = mum(c ^ k[0], d ^ k[1]);
        (u128::from(mum(hi ^ k[4], lo ^ k[5])) << 64) | u128::from(mum(lo ^ k[6], hi ^ k[7]))
    }

    /// 64 bits of `t`.
    pub fn bytes(&self, t: &[u8]) -> u64 {
        let w = self.wide(t);
        (w as u64) ^ ((w >> 64) as u64)
    }
}

/// A [`BuildHasher`] whose hashes are a function of its seeds and of what is hashed only
/// (the module's doc): for state keys, which travel in checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seeded(Keys);

impl Seeded {
    pub const fn with_seeds(seeds: [u64; 4]) -> Self {
        Seeded(Keys::from_seeds(seeds))
    }

    /// The hash of one value (as [`BuildHasher::hash_one`], without importing the trait).
    pub fn hash_one<T: std::hash::Hash>(&self, x: T) -> u64 {
        BuildHasher::hash_one(self, x)
    }
}

impl BuildHasher for Seeded {
    type Hasher = Stable;
    fn build_hasher(&self) -> Stable {
        Stable { keys: self.0, acc: 0 }
    }
}

/// The hasher of [`Seeded`]: each write is folded into the state. Integers are written
/// little-endian at a fixed width (`usize` and `isize` as 64 bits), so that what a `Hash`
/// implementation writes hashes alike on every platform.
#[derive(Clone, Debug)]
pub struct Stable {
    keys: Keys,
    acc: u64,
}

impl Stable {
    /// Folds one integer (of `width` bytes) into the state.
    #[inline]
    fn int(&mut self, v: u64, width: u64) {
        let k = &self.keys.0;
        self.acc = mum(self.acc ^ v ^ k[4], k[5] ^ width);
    }
}

impl Hasher for Stable {
    fn write(&mut self, bytes: &[u8]) {
        let k = &self.keys.0;
        let v = if bytes.len() <= 16 {
            let mut b = [0u8; 16];
            b[..bytes.len()].copy_from_slice(bytes);
            let (lo, hi) = (
                u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])),
                u64::from_le_bytes(b[8..].try_into().unwrap_or([0; 8])),
            );
            mum(lo ^ k[0], hi ^ k[1] ^ bytes.len() as u64)
        } else {
            self.keys.bytes(bytes)
        };
        self.acc = mum(self.acc ^ v ^ k[2], k[3]);
    }
    fn write_u8(&mut self, i: u8) {
        self.int(u64::from(i), 1);
    }
    fn write_u16(&mut self, i: u16) {
        self.int(u64::from(i), 2);
    }
    fn write_u32(&mut self, i: u32) {
        self.int(u64::from(i), 4);
    }
    fn write_u64(&mut self, i: u64) {
        self.int(i, 8);
    }
    fn write_u128(&mut self, i: u128) {
        self.int(i as u64, 16);
        self.int((i >> 64) as u64, 16);
    }
    fn write_usize(&mut self, i: usize) {
        self.int(i as u64, 8);
    }
    fn write_i8(&mut self, i: i8) {
        self.write_u8(i as u8);
    }
    fn write_i16(&mut self, i: i16) {
        self.write_u16(i as u16);
    }
    fn write_i32(&mut self, i: i32) {
        self.write_u32(i as u32);
    }
    fn write_i64(&mut self, i: i64) {
        self.write_u64(i as u64);
    }
    fn write_i128(&mut self, i: i128) {
        self.write_u128(i as u128);
    }
    fn write_isize(&mut self, i: isize) {
        self.int(i as u64, 8);
    }
    fn finish(&self) -> u64 {
        let k = &self.keys.0;
        mum(self.acc ^ k[6], k[7])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned values: a change to the hash changes every state key in a checkpoint and the
    /// order of lines of equal event time, so it must be a deliberate format change. These
    /// hold on every CPU and build (`scripts/test.sh` runs them again with
    /// `-C target-cpu=native`, which changed `ahash`'s values).
    #[test]
    fn values_are_the_same_on_every_build() {
        let s = Seeded::with_seeds([1, 2, 3, 4]);
        let got = [
            s.hash_one("curl/8.0"),
            s.hash_one((7u8, Some("https://issuer.example"), "jti-0001")),
            s.hash_one(std::net::IpAddr::from([203, 0, 113, 7])),
            Keys::from_seeds([1, 2, 3, 4]).bytes(&[0xab; 1000]),
            Keys::from_seeds([5, 6, 7, 8]).bytes(b""),
        ];
        let want: [u64; 5] = [
            0x53f6_32e1_d3d4_d39a,
            0x734c_3c8f_b447_1be6,
            0x6614_2eff_c4e2_3c54,
            0x5d3a_dfa2_aafc_752b,
            0x6f7d_b66a_0f7e_8bfd,
        ];
        assert_eq!(got, want, "{got:x?}");
    }

    /// Every byte and the length count, and the seeds matter.
    #[test]
    fn inputs_and_seeds_are_told_apart() {
        let s = Seeded::with_seeds([1, 2, 3, 4]);
        let k = Keys::from_seeds([1, 2, 3, 4]);
        let mut seen = std::collections::HashSet::new();
        let line: Vec<u8> = (0..100u8).collect();
        for n in 0..line.len() {
            assert!(seen.insert(k.bytes(&line[..n])), "length {n}");
        }
        for i in 0..line.len() {
            let mut l = line.clone();
            l[i] ^= 1;
            assert!(seen.insert(k.bytes(&l)), "byte {i}");
        }
        assert_ne!(s.hash_one("ab"), s.hash_one("ab\0"));
        assert_ne!(s.hash_one(("a", "bc")), s.hash_one(("ab", "c")));
        assert_ne!(s.hash_one(1u8), s.hash_one(1u64));
        assert_ne!(s.hash_one("x"), Seeded::with_seeds([1, 2, 3, 5]).hash_one("x"));
    }
}
