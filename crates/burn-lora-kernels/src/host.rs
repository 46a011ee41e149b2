//! Which backend a generic function was given, by the type of its tensors: the crate is generic
//! over the backend and cannot name its tensor type otherwise.

use burn::tensor::backend::Backend;

/// Whether `B` is Flex itself (not a decorator such as `Autodiff<Flex>`, whose operations must be
/// recorded for the backward pass).
pub(crate) fn is_flex<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    {
        core::any::TypeId::of::<B::FloatTensorPrimitive>()
            == core::any::TypeId::of::<burn::backend::flex::FlexTensor>()
    }
    #[cfg(not(feature = "flex"))]
    {
        false
    }
}
