//! The process allocator of paragen's binaries: mimalloc, told to keep freed memory.
//!
//! A training step allocates and frees tensor buffers of megabytes each. glibc's malloc
//! hands such buffers back to the kernel (munmap) and faults them in again, zeroed, on
//! the next step; mimalloc's defaults do the same after a 10 ms delay ("purging"). On
//! the 2-core machines here `perf` put 26% of a training step in the kernel's page
//! zeroing (`clear_page_erms`). [`keep_freed_memory`] turns purging off, so freed pages
//! stay in the process and are reused.
//!
//! A binary opts in with
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: paragen_backend::allocator::MiMalloc = paragen_backend::allocator::MiMalloc;
//! fn main() { paragen_backend::allocator::keep_freed_memory(); /* ... */ }
//! ```

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};
pub use mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc v3's `mimalloc.h` (the version
/// libmimalloc-sys builds by default; its Rust bindings name only older indices).
const ARENA_EAGER_COMMIT: mi_option_t = 4;
/// `mi_option_purge_delay`: milliseconds before freed memory goes back to the OS;
/// -1 never.
const PURGE_DELAY: mi_option_t = 15;

/// The options and the values paragen sets, each with the environment variable that
/// overrides it (mimalloc's own names, so a user can still tune them).
const OPTIONS: [(mi_option_t, i64, &str); 2] = [
    (PURGE_DELAY, -1, "MIMALLOC_PURGE_DELAY"),
    (ARENA_EAGER_COMMIT, 1, "MIMALLOC_ARENA_EAGER_COMMIT"),
];

/// Keeps freed memory in the process (no purging, arenas committed eagerly), unless the
/// environment sets the option. Call it first thing in `main`; it has an effect only
/// when mimalloc is the global allocator.
pub fn keep_freed_memory() {
    for (option, value, env) in OPTIONS {
        if std::env::var_os(env).is_none() {
            // SAFETY: plain setters of mimalloc's option table, with valid indices.
            unsafe { mi_option_set(option, value as _) };
        }
    }
}

/// mimalloc's current purge delay in milliseconds (-1: never purges).
pub fn purge_delay_ms() -> i64 {
    // SAFETY: a getter of mimalloc's option table with a valid index.
    unsafe { mi_option_get(PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_stays_in_the_process() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        keep_freed_memory();
        assert_eq!(purge_delay_ms(), -1);
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(ARENA_EAGER_COMMIT) }, 1);
    }
}
