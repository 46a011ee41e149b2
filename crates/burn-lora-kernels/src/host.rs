//! Which backend a generic function was given, by the type of its tensors: the crate is generic
//! over the backend and cannot name its tensor type otherwise.

use burn::tensor::backend::Backend;

/// Whether `B` is Flex itself (not a decorator such as `Autodiff<Flex>`, whose operations must be
/// recorded for the backward pass).
pub(crate) fn is_flex<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    {
        crate::flex::is::<B::FloatTensorPrimitive, burn::backend::flex::FlexTensor>()
    }
    #[cfg(not(feature = "flex"))]
    {
        false
    }
}

/// Whether `B` is itself a backend the few-rows kernels run on (no decorator): Flex, and
/// NdArray with the `ndarray` feature.
pub(crate) fn is_host<B: Backend>() -> bool {
    #[cfg(feature = "ndarray")]
    if crate::flex::is::<B::FloatTensorPrimitive, burn::backend::ndarray::NdArrayTensor>() {
        return true;
    }
    is_flex::<B>()
}

/// Whether `B` is Flex or `Autodiff<Flex>`: backends whose products run on the host's `gemm`.
pub(crate) fn is_flex_based<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    {
        is_flex::<B>() || crate::flex::is::<B::FloatTensorPrimitive, crate::flex::AutodiffTensor>()
    }
    #[cfg(not(feature = "flex"))]
    {
        false
    }
}

/// Whether `B` is a backend the fused operations run on, or the autodiff decorator around one:
/// Flex, and NdArray with the `ndarray` feature (their tensors are host memory).
pub(crate) fn is_host_based<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    {
        crate::flex::is_host_based::<B>()
    }
    #[cfg(not(feature = "flex"))]
    {
        false
    }
}
