//! What a structure costs on the heap, for the byte budgets (the token cache, rule state).
//!
//! The figures are the allocations a structure asks for, plus the allocator's own overhead per
//! allocation and the slack of hash tables, so that a budget in bytes bounds resident memory
//! and not only the payload. `benches/memory.rs` (`memory spray`) checks them against RSS.

/// What the allocator keeps beside each allocation (glibc: an 8-byte header, 16-byte
/// alignment), so that many small strings are not undercounted.
pub const ALLOC_OVERHEAD: usize = 16;

/// One allocation of `len` bytes.
pub fn alloc_bytes(len: usize) -> usize {
    len + ALLOC_OVERHEAD
}

/// A hash table (hashbrown, as std's) that can hold `capacity` entries of `entry` bytes:
/// buckets, at most 7/8 of them full, a power of two, plus one control byte each.
pub fn table_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity * 8).div_ceil(7).next_power_of_two();
    alloc_bytes(buckets * (entry + 1))
}

/// What inserting one more entry adds to a table now holding `len` of `capacity`: a full
/// table doubles its buckets (the first allocation holds 3).
pub fn table_growth(len: usize, capacity: usize, entry: usize) -> usize {
    match capacity {
        0 => table_bytes(3, entry),
        c if len >= c => table_bytes(c, entry),
        _ => 0,
    }
}

/// What a `Vec<T>` of `capacity` holds on the heap.
pub fn vec_bytes<T>(capacity: usize) -> usize {
    match capacity * std::mem::size_of::<T>() {
        0 => 0,
        n => alloc_bytes(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_count_their_slack() {
        assert_eq!(table_bytes(0, 8), 0);
        assert_eq!(table_bytes(3, 8), alloc_bytes(4 * 9));
        assert_eq!(table_bytes(7, 8), alloc_bytes(8 * 9));
        assert_eq!(table_bytes(8, 8), alloc_bytes(16 * 9));
        let mut m = std::collections::HashMap::<u64, u64>::new();
        for i in 0..1_000 {
            m.insert(i, i);
        }
        // what std allocated is what we count
        let buckets = (m.capacity() * 8).div_ceil(7).next_power_of_two();
        assert_eq!(table_bytes(m.capacity(), 16), alloc_bytes(buckets * 17));
        assert!((1_000..=2_048).contains(&buckets), "{buckets}");
    }
}
