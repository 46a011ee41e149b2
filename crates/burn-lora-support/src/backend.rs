//! The concrete backend that examples, tests and benches use, chosen by cargo feature.
//!
//! burn-lora is generic over `B: Backend`; only this module names a concrete one. Flex is the
//! default (the faster CPU backend in our measurements); the features `ndarray`, `wgpu` and `cuda`
//! choose another, with priority `cuda`, then `wgpu`, then `ndarray`, then `flex`.

#[cfg(feature = "cuda")]
mod chosen {
    /// The inference backend selected at compile time.
    pub type Inference = burn::backend::Cuda;
    /// The backend's name, for reports.
    pub const NAME: &str = "cuda";
}

#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
mod chosen {
    /// The inference backend selected at compile time: Burn's wgpu backend (Vulkan, Metal or
    /// DX12, WGSL shaders) on the default device (a discrete GPU first, else any adapter, a
    /// software one such as lavapipe included).
    pub type Inference = burn::backend::Wgpu;
    /// The backend's name, for reports.
    pub const NAME: &str = "wgpu";
}

#[cfg(all(feature = "ndarray", not(feature = "wgpu"), not(feature = "cuda")))]
mod chosen {
    /// The inference backend selected at compile time.
    pub type Inference = burn::backend::NdArray;
    /// The backend's name, for reports.
    pub const NAME: &str = "ndarray";
}

#[cfg(all(
    feature = "flex",
    not(feature = "ndarray"),
    not(feature = "wgpu"),
    not(feature = "cuda")
))]
mod chosen {
    /// The inference backend selected at compile time.
    pub type Inference = burn::backend::Flex;
    /// The backend's name, for reports.
    pub const NAME: &str = "flex";
}

pub use chosen::{Inference, NAME};

/// The training backend: [`Inference`] with automatic differentiation.
pub type Train = burn::backend::Autodiff<Inference>;

/// The device of the selected backend (the first GPU for `cuda`, the default adapter for `wgpu`,
/// the CPU otherwise).
pub fn device() -> burn::tensor::Device<Inference> {
    Default::default()
}
