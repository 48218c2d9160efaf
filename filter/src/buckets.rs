//! The farm's buckets: a client (its address, or address and source port) is
//! hashed by the kernel into one of [`BUCKETS`] buckets, and each bucket has at
//! most one owner, the only node that accepts new connections hashed into it.
//!
//! Owns: [`BucketSet`], the set of buckets a node owns (what the nftables set
//! holds). No I/O.

use std::fmt;

/// How many buckets the clients are hashed into (`jhash ... mod 256`).
pub const BUCKETS: usize = 256;

/// A set of buckets (0..=255), as a bitmap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct BucketSet([u64; 4]);

impl BucketSet {
    /// No bucket.
    pub const fn empty() -> Self {
        Self([0; 4])
    }

    /// Every bucket.
    pub const fn full() -> Self {
        Self([u64::MAX; 4])
    }

    /// Adds bucket `b`.
    pub fn insert(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] |= 1 << (b & 63);
    }

    /// Removes bucket `b`.
    pub fn remove(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] &= !(1 << (b & 63));
    }

    /// True if bucket `b` is in the set.
    pub fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }

    /// How many buckets the set holds.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// True if the set holds no bucket.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }

    /// The buckets, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(|b| self.contains(*b))
    }

    /// Buckets in either set.
    pub fn union(&self, other: &Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i] | other.0[i]))
    }

    /// Buckets in both sets.
    pub fn intersection(&self, other: &Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i] & other.0[i]))
    }

    /// Buckets in `self` and not in `other`.
    pub fn difference(&self, other: &Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i] & !other.0[i]))
    }

    /// The set as inclusive ranges of consecutive buckets.
    pub fn ranges(&self) -> Vec<(u8, u8)> {
        let mut out: Vec<(u8, u8)> = Vec::new();
        for b in self.iter() {
            match out.last_mut() {
                Some((_, hi)) if hi.checked_add(1) == Some(b) => *hi = b,
                _ => out.push((b, b)),
            }
        }
        out
    }
}

impl FromIterator<u8> for BucketSet {
    fn from_iter<I: IntoIterator<Item = u8>>(iter: I) -> Self {
        let mut s = Self::empty();
        for b in iter {
            s.insert(b);
        }
        s
    }
}

/// `{0-84, 200}`: the ranges, as an operator reads them.
impl fmt::Display for BucketSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (lo, hi)) in self.ranges().into_iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        f.write_str("}")
    }
}

impl fmt::Debug for BucketSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BucketSet{self} ({} buckets)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations_and_display() {
        let a: BucketSet = (0..=84).chain([200, 255]).collect();
        assert_eq!(a.len(), 87);
        assert!(a.contains(84) && a.contains(255) && !a.contains(85));
        assert_eq!(a.to_string(), "{0-84, 200, 255}");
        let b: BucketSet = (80..=100).collect();
        assert_eq!(a.intersection(&b).to_string(), "{80-84}");
        assert_eq!(a.difference(&b).to_string(), "{0-79, 200, 255}");
        assert_eq!(a.union(&b).len(), 87 + 16);
        assert_eq!(BucketSet::full().len(), BUCKETS);
        assert!(BucketSet::empty().is_empty());
        assert_eq!(BucketSet::full().to_string(), "{0-255}");
    }
}
