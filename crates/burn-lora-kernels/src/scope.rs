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
//! pool's own threads, a parallel operation shares its work with the other threads, and the
//! caller does not sleep; those threads still fall asleep a few microseconds after their last
//! job, so the few-rows products, a step's largest work, run on helpers of their own that stay
//! awake between them (`flex::team`).

use core::cell::Cell;

use burn::tensor::backend::Backend;

std::thread_local! {
    static FAST_PATHS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `body` with this crate's fast paths enabled, on one of the backend's compute threads
/// ([`on_compute_threads`]) when `B` is Flex (with the `flex` feature) or NdArray (with
/// `ndarray`). The caller waits for it either way.
///
/// Within `body`, [`linear`](crate::linear) and [`matmul`](crate::matmul) take the fast paths
/// where they apply, and their results may differ from Burn's operations by floating-point
/// rounding (the order of a sum); on other backends nothing changes.
pub fn with_fast_paths<B: Backend, R: Send>(body: impl FnOnce() -> R + Send) -> R {
    let run = || {
        let _restore = Restore(FAST_PATHS.replace(true));
        body()
    };
    if crate::host::is_host::<B>() {
        on_compute_threads(run)
    } else {
        run()
    }
}

/// Runs `body` on one of the CPU backends' compute threads (Rayon's global pool, which Flex
/// and NdArray split their work over) unless the caller is one already, and waits for it; runs
/// it here without the `flex` feature. Nothing else changes: every operation is Burn's.
///
/// For a training step on a CPU backend, `Autodiff<Flex>` included: the forward, the backward
/// and the optimizer's update are thousands of operations, and from a thread outside the pool
/// each parallel one wakes the pool's threads and sleeps until they are done.
///
/// ```
/// let sum = burn_lora_kernels::on_compute_threads(|| 1 + 1);
/// assert_eq!(sum, 2);
/// ```
pub fn on_compute_threads<R: Send>(body: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "flex")]
    if rayon::current_thread_index().is_none() {
        return rayon::scope(|_| body());
    }
    body()
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
