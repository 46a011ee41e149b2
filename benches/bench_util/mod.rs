//! Helpers shared by the benches.
#![allow(dead_code)]

use burn::tensor::backend::Backend;

/// Waits for an asynchronous backend (CUDA) so the work lands inside the timed region.
pub fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("backend sync");
}
