//! Running third-party parsers that may panic on corrupt input.
//!
//! Fuzzing (`crates/paragen-fuzz`) found that burn 0.21's record loader (`Invalid id.`)
//! and tokenizers 0.22 (`Helper`) panic on some corrupt files instead of returning an
//! error. [`catch_quietly`] turns such a panic into an error message, without the panic
//! report on stderr, so that a corrupt file is an error naming it like any other.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside [`catch_quietly`].
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `parse`; a panic inside it becomes `Err(its message)` and is not printed.
///
/// The first call installs a panic hook that defers to the one before it except on a
/// thread inside `catch_quietly`, so panics elsewhere are reported as always.
pub fn catch_quietly<R>(parse: impl FnOnce() -> R) -> Result<R, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was_quiet = QUIET.with(|q| q.replace(true));
    let result = catch_unwind(AssertUnwindSafe(parse));
    QUIET.with(|q| q.set(was_quiet));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the parser panicked".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_later_panics_still_unwind() {
        assert_eq!(catch_quietly(|| 7), Ok(7));
        let err = catch_quietly(|| -> u8 { panic!("Invalid id.") }).unwrap_err();
        assert_eq!(err, "Invalid id.");
        let err = catch_quietly(|| -> u8 { panic!("{} items", 3) }).unwrap_err();
        assert_eq!(err, "3 items");
        assert!(
            !QUIET.with(Cell::get),
            "the thread is loud again afterwards"
        );
        assert!(std::panic::catch_unwind(|| panic!("elsewhere")).is_err());
    }
}
