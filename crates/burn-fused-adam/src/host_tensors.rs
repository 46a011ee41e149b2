//! In-place access to the host memory of CPU backends' tensors, for the fused Adam update.
//!
//! The optimizer is generic over the backend, so it cannot name a backend's tensor type. It
//! looks at the primitive through [`Any`] instead: when the backend is one whose tensors live in
//! host memory (NdArray, Flex) and all four tensors are contiguous `f32` with the same layout,
//! [`fused_adam_in_place`] runs the fused kernel on their buffers. Otherwise it changes nothing
//! and returns `false`, and the caller uses tensor operations.

use core::any::Any;

use crate::kernel::AdamCoefficients;

/// Runs the fused update on the buffers of `param`, `grad`, `moment_1` and `moment_2` if the
/// backend keeps them in host memory. Returns whether it did; on `false` nothing was changed.
/// `grad` is consumed by the step: on `true` it may hold anything (a shared parameter is
/// updated into the gradient's buffer and the two are swapped).
pub(crate) fn fused_adam_in_place<P: Any>(
    param: &mut P,
    grad: &mut P,
    moment_1: &mut P,
    moment_2: &mut P,
    coefficients: &AdamCoefficients,
) -> bool {
    #[cfg(feature = "ndarray")]
    if let Some((p, g, m, v)) = downcast(param, grad, moment_1, moment_2) {
        return ndarray::fused(p, g, m, v, coefficients);
    }
    #[cfg(feature = "flex")]
    if let Some((p, g, m, v)) = downcast(param, grad, moment_1, moment_2) {
        return flex::fused(p, g, m, v, coefficients);
    }
    let _ = (param, grad, moment_1, moment_2, coefficients);
    false
}

/// The four primitives as the concrete tensor type `T`, if that is what they are.
#[allow(dead_code)] // unused when neither CPU backend is compiled in
fn downcast<'a, P: Any, T: Any>(
    param: &'a mut P,
    grad: &'a mut P,
    moment_1: &'a mut P,
    moment_2: &'a mut P,
) -> Option<(&'a mut T, &'a mut T, &'a mut T, &'a mut T)> {
    Some((
        (param as &mut dyn Any).downcast_mut::<T>()?,
        (grad as &mut dyn Any).downcast_mut::<T>()?,
        (moment_1 as &mut dyn Any).downcast_mut::<T>()?,
        (moment_2 as &mut dyn Any).downcast_mut::<T>()?,
    ))
}

/// NdArray's tensors: an enum over dtypes around `ndarray`'s copy-on-write `ArcArray`.
#[cfg(feature = "ndarray")]
mod ndarray {
    use burn::backend::ndarray::NdArrayTensor;

    use crate::kernel::{adam_update, adam_update_over_grad, AdamCoefficients};

    /// Updates in place and returns `true`, or returns `false` without changing anything when
    /// the tensors cannot be fused (another dtype, a non-standard layout).
    pub(super) fn fused(
        param: &mut NdArrayTensor,
        grad: &mut NdArrayTensor,
        moment_1: &mut NdArrayTensor,
        moment_2: &mut NdArrayTensor,
        coefficients: &AdamCoefficients,
    ) -> bool {
        let (
            NdArrayTensor::F32(param),
            NdArrayTensor::F32(grad),
            NdArrayTensor::F32(moment_1),
            NdArrayTensor::F32(moment_2),
        ) = (param, grad, moment_1, moment_2)
        else {
            return false;
        };
        let grad_view = grad.view();
        let shape = grad_view.shape();
        // The storage type is private to burn-ndarray, so the check is a macro, not a closure.
        macro_rules! standard {
            ($s:expr) => {
                $s.shape() == shape && $s.view().is_standard_layout()
            };
        }
        if !(grad_view.is_standard_layout()
            && standard!(param)
            && standard!(moment_1)
            && standard!(moment_2))
        {
            return false;
        }
        drop(grad_view);
        if !param.is_unique() {
            // As on Flex: rather than copying a parameter that another holder keeps, write the
            // new values over the gradient (copied first if it is shared) and swap the two.
            let param_view = param.view();
            let (Some(param_values), Some(grad_values), Some(moment_1), Some(moment_2)) = (
                param_view.to_slice(),
                grad.ensure_owned().as_slice_mut(),
                moment_1.ensure_owned().as_slice_mut(),
                moment_2.ensure_owned().as_slice_mut(),
            ) else {
                return false;
            };
            adam_update_over_grad(param_values, grad_values, moment_1, moment_2, coefficients);
            drop(param_view);
            core::mem::swap(param, grad);
            return true;
        }
        // `as_slice_mut` copies a shared buffer first (copy-on-write), so other holders of the
        // same data never see the update.
        let grad_view = grad.view();
        let (Some(grad), Some(param), Some(moment_1), Some(moment_2)) = (
            grad_view.to_slice(),
            param.ensure_owned().as_slice_mut(),
            moment_1.ensure_owned().as_slice_mut(),
            moment_2.ensure_owned().as_slice_mut(),
        ) else {
            return false;
        };
        adam_update(param, grad, moment_1, moment_2, coefficients);
        true
    }
}

/// Flex's tensors: a reference-counted byte buffer with a strided layout and a runtime dtype.
#[cfg(feature = "flex")]
mod flex {
    use burn::backend::flex::FlexTensor;
    use burn::tensor::DType;

    use crate::kernel::{adam_update, adam_update_over_grad, AdamCoefficients};

    /// The contiguous `f32` range of a tensor's buffer, if it has one of this shape.
    fn f32_range(tensor: &FlexTensor, shape: &[usize]) -> Option<(usize, usize)> {
        if tensor.dtype() != DType::F32 || tensor.layout().shape().as_slice() != shape {
            return None;
        }
        tensor.layout().contiguous_offsets()
    }

    /// Updates in place and returns `true`, or returns `false` without changing anything when
    /// the tensors cannot be fused (another dtype, a non-contiguous layout).
    pub(super) fn fused(
        param: &mut FlexTensor,
        grad: &mut FlexTensor,
        moment_1: &mut FlexTensor,
        moment_2: &mut FlexTensor,
        coefficients: &AdamCoefficients,
    ) -> bool {
        let shape = grad.layout().shape().as_slice().to_vec();
        let ranges = (
            f32_range(param, &shape),
            f32_range(grad, &shape),
            f32_range(moment_1, &shape),
            f32_range(moment_2, &shape),
        );
        let (Some(p), Some(g), Some(m), Some(v)) = ranges else {
            return false;
        };
        // Each range is the tensor's own contiguous span of its storage (`contiguous_offsets`),
        // so the slices below are in bounds, and all four have the gradient's shape.
        if !param.is_unique() {
            // Another holder keeps the old values (burn-train's Learner holds its copy of the
            // model during the step). Rather than copying them (`storage_mut`'s copy-on-write)
            // or allocating a fresh buffer (page faults and zeroing on every step, a third of a
            // small model's step), write the new values over the gradient, which this step
            // consumes, and hand its buffer back as the parameter. A gradient that is itself
            // shared is copied first by `storage_mut`, so its other holders see no change.
            adam_update_over_grad(
                &param.storage::<f32>()[p.0..p.1],
                &mut grad.storage_mut::<f32>()[g.0..g.1],
                &mut moment_1.storage_mut::<f32>()[m.0..m.1],
                &mut moment_2.storage_mut::<f32>()[v.0..v.1],
                coefficients,
            );
            core::mem::swap(param, grad);
            return true;
        }
        // `storage_mut` copies a shared buffer first (copy-on-write).
        adam_update(
            &mut param.storage_mut::<f32>()[p.0..p.1],
            &grad.storage::<f32>()[g.0..g.1],
            &mut moment_1.storage_mut::<f32>()[m.0..m.1],
            &mut moment_2.storage_mut::<f32>()[v.0..v.1],
            coefficients,
        );
        true
    }
}

#[cfg(all(test, any(feature = "ndarray", feature = "flex")))]
mod tests {
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::{Tensor, TensorData, TensorPrimitive};

    use super::*;

    #[cfg(feature = "ndarray")]
    type Host = burn::backend::NdArray;
    #[cfg(all(feature = "flex", not(feature = "ndarray")))]
    type Host = burn::backend::Flex;

    fn tensor(values: &[f32], shape: [usize; 2]) -> Tensor<Host, 2> {
        Tensor::from_data(TensorData::new(values.to_vec(), shape), &Default::default())
    }

    fn primitive(t: Tensor<Host, 2>) -> FloatTensor<Host> {
        t.into_primitive().tensor()
    }

    fn values(p: FloatTensor<Host>) -> Vec<f32> {
        Tensor::<Host, 2>::from_primitive(TensorPrimitive::Float(p))
            .into_data()
            .to_vec()
            .unwrap()
    }

    const C: AdamCoefficients = AdamCoefficients {
        beta_1: 0.9,
        beta_2: 0.999,
        correction: 1.0,
        epsilon: 1e-8,
        lr: 0.1,
        l2_penalty: 0.0,
        decay: 1.0,
        tiny: crate::kernel::TINY,
        tiny_square: crate::kernel::TINY * crate::kernel::TINY,
    };

    #[test]
    fn host_backend_tensors_are_updated_in_place() {
        let data: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let mut p = primitive(tensor(&data, [2, 3]));
        let mut g = primitive(tensor(&[1.0; 6], [2, 3]));
        let (mut m, mut v) = (
            primitive(tensor(&[0.0; 6], [2, 3])),
            primitive(tensor(&[0.0; 6], [2, 3])),
        );
        assert!(fused_adam_in_place(&mut p, &mut g, &mut m, &mut v, &C));
        let expected: Vec<f32> = data
            .iter()
            .map(|x| x - 0.1 * 0.1 / (0.001f32.sqrt() + 1e-8))
            .collect();
        let got = values(p);
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5, "{got:?} vs {expected:?}");
        }
        assert_eq!(values(m), vec![1.0 - 0.9f32; 6], "m = (1 - β₁)·g");
    }

    #[test]
    fn a_transposed_gradient_is_left_to_the_tensor_path_untouched() {
        let mut p = primitive(tensor(&[1.0; 6], [2, 3]));
        // Same shape as `p`, but column-major in memory.
        let mut g = primitive(tensor(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2]).transpose());
        let (mut m, mut v) = (
            primitive(tensor(&[0.0; 6], [2, 3])),
            primitive(tensor(&[0.0; 6], [2, 3])),
        );
        assert!(!fused_adam_in_place(&mut p, &mut g, &mut m, &mut v, &C));
        assert_eq!(values(p), vec![1.0; 6]);
        assert_eq!(values(m), vec![0.0; 6]);
    }

    #[test]
    fn a_shared_parameter_is_updated_without_touching_its_other_holders() {
        let state = || {
            (
                primitive(tensor(&[0.0; 6], [2, 3])),
                primitive(tensor(&[0.0; 6], [2, 3])),
            )
        };
        // Reference: nothing shared, updated in place.
        let mut q = primitive(tensor(&[1.0; 6], [2, 3]));
        let mut g = primitive(tensor(&[1.0; 6], [2, 3]));
        let (mut m_q, mut v_q) = state();
        assert!(fused_adam_in_place(&mut q, &mut g, &mut m_q, &mut v_q, &C));
        assert!(values(q.clone()).iter().all(|&x| x < 1.0));

        // The parameter shared (as the Learner's copy of the model shares it), the gradient
        // shared or not: the other holders keep their values, and the results are bit for bit
        // the reference's.
        let original = tensor(&[1.0; 6], [2, 3]);
        let gradient = tensor(&[1.0; 6], [2, 3]);
        for share_gradient in [false, true] {
            let mut p = primitive(original.clone());
            let mut g = if share_gradient {
                primitive(gradient.clone())
            } else {
                primitive(tensor(&[1.0; 6], [2, 3]))
            };
            let (mut m, mut v) = state();
            assert!(fused_adam_in_place(&mut p, &mut g, &mut m, &mut v, &C));
            assert_eq!(values(p), values(q.clone()));
            assert_eq!(values(m), values(m_q.clone()));
            assert_eq!(values(v), values(v_q.clone()));
        }
        assert_eq!(original.into_data().to_vec::<f32>().unwrap(), vec![1.0; 6]);
        assert_eq!(gradient.into_data().to_vec::<f32>().unwrap(), vec![1.0; 6]);
    }
}
