//! Where the fast paths run: inside [`with_fast_paths`], on the CPU backend's compute threads.
//!
//! Outside it, every function of this crate is exactly Burn's operation, so that a layer built
//! on them (burn-lora's `LoraLinear`) gives bit for bit what Burn's own layer gives. Inside it,
//! the fast paths may sum in another order, and differ from Burn's results by rounding.
//!
//! The scope also moves the computation onto the backend's threads. Flex splits its work over
//! Rayon's global pool. Called from a thread outside the pool (a program's main thread), every
//! parallel operation hands its work to the pool and sleeps until the pool wakes it again: two
//! thread wake-ups per operation, tens of microseconds each on a virtual machine, which a
//! decoding step, a few hundred small operations, pays hundreds of times. Run from one of the
//! pool's own threads, a parallel operation shares its work with the other threads, which are
//! still spinning from the previous one, and no thread sleeps.

use core::cell::Cell;

use burn::tensor::backend::Backend;

std::thread_local! {
    static FAST_PATHS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `body` with this crate's fast paths enabled, on one of the backend's compute threads
/// when `B` has them (Flex, with the `flex` feature) and the caller is not one already. The
/// caller waits for it either way.
///
/// Within `body`, [`linear`](crate::linear) and [`matmul`](crate::matmul) take the fast paths
/// where they apply, and their results may differ from Burn's operations by floating-point
/// rounding (the order of a sum); on other backends nothing changes.
pub fn with_fast_paths<B: Backend, R: Send>(body: impl FnOnce() -> R + Send) -> R {
    let run = || {
        let _restore = Restore(FAST_PATHS.replace(true));
        body()
    };
    #[cfg(feature = "flex")]
    if crate::host::is_flex::<B>() && rayon::current_thread_index().is_none() {
        return rayon::scope(|_| run());
    }
    run()
}

/// Whether the calling thread is inside [`with_fast_paths`].
pub(crate) fn fast_paths_enabled() -> bool {
    FAST_PATHS.get()
}

/// Puts the thread's previous setting back, also when `body` panics.
struct Restore(bool);

impl Drop for Restore {
    fn drop(&mut self) {
        FAST_PATHS.set(self.0);
    }
}
