//! Fused operations on Flex and on `Autodiff<Flex>`, and (feature `ndarray`) on NdArray and
//! `Autodiff<NdArray>`: one pass over host memory forward, and one backward node in the
//! autodiff graph instead of a node per decomposed operation.
//!
//! The crate is generic over the backend. A fused operation runs when the backend's float
//! tensor is a [`Host`] backend's (Flex's [`FlexTensor`], NdArray's) or the autodiff
//! decorator's around one (`AutodiffTensor<Flex>`, whatever its checkpointing strategy); the
//! tensors are recognised by their type. The kernels read and write Flex's tensors: Flex's are
//! moved, not copied; NdArray's buffers move into Flex's and back, copied only where the
//! buffer is shared or strided. Anything else gets its inputs back, for Burn's decomposed
//! operations.

use core::any::{Any, TypeId};
use core::fmt::Debug;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, TensorData, TensorMetadata};
use rayon::prelude::*;

/// The float tensor of the autodiff decorator around `H` (burn-autodiff's `AutodiffTensor`,
/// which it names only through the backend).
pub(crate) type AutodiffTensor<H = Flex> = burn::tensor::ops::FloatTensor<Autodiff<H>>;

/// A backend whose tensors are host memory that the kernels run on as Flex's tensors.
pub(crate) trait Host: Backend {
    /// The tensor as Flex's, sharing its buffer where it can.
    fn to_flex(tensor: Self::FloatTensorPrimitive) -> FlexTensor;

    /// Flex's tensor as this backend's, sharing its buffer where it can.
    fn from_flex(tensor: FlexTensor) -> Self::FloatTensorPrimitive;
}

impl Host for Flex {
    fn to_flex(tensor: FlexTensor) -> FlexTensor {
        tensor
    }

    fn from_flex(tensor: FlexTensor) -> FlexTensor {
        tensor
    }
}

#[cfg(feature = "ndarray")]
mod ndarray {
    use burn::backend::flex::{FlexTensor, Layout};
    use burn::backend::ndarray::NdArrayTensor;
    use burn::backend::NdArray;
    use burn::tensor::backend::ExecutionError;
    use burn::tensor::ops::{BoolTensorOps, FloatTensorOps, IntTensorOps};
    use burn::tensor::{read_sync, DType, Shape, TensorData};

    /// NdArray's reads are of its own host buffers: they complete at once and cannot fail.
    fn read(data: Result<TensorData, ExecutionError>) -> TensorData {
        match data {
            Ok(data) => data,
            Err(error) => unreachable!("NdArray read its own buffer with an error: {error:?}"),
        }
    }

    /// Moves the buffer of a contiguous, unshared tensor; copies the memory of a shared one or
    /// of a permuted view (a transposed weight) as it lies, keeping its strides.
    impl super::Host for NdArray {
        fn to_flex(tensor: NdArrayTensor) -> FlexTensor {
            if let NdArrayTensor::F32(storage) = &tensor {
                let view = storage.view();
                let moved = storage.is_unique() && view.is_standard_layout();
                let ascending = view.strides().iter().all(|&stride| stride >= 0);
                if let (false, true, Some(memory)) =
                    (moved, ascending, view.as_slice_memory_order())
                {
                    return memory_copy(memory, view.shape(), view.strides());
                }
            }
            FlexTensor::from_data(read(read_sync(<NdArray>::float_into_data(tensor))))
        }

        fn from_flex(tensor: FlexTensor) -> NdArrayTensor {
            NdArrayTensor::from_data(tensor.into_data())
        }
    }

    /// A copy of `memory`, the values of a view in the order they lie (a contiguous array or a
    /// permutation of one, no stride negative), in one `memcpy`, read through the view's
    /// `strides`. NdArray copies such a view value by value, in the order of its indices.
    fn memory_copy(memory: &[f32], shape: &[usize], strides: &[isize]) -> FlexTensor {
        let data = TensorData::new(memory.to_vec(), [memory.len()]);
        let layout = Layout::new(Shape::from(shape), strides.to_vec(), 0);
        FlexTensor::new(data.bytes, layout, DType::F32)
    }

    /// NdArray's boolean tensor as Flex's (one byte per value).
    pub(crate) fn bool_to_flex(tensor: NdArrayTensor) -> FlexTensor {
        FlexTensor::from_data(read(read_sync(<NdArray>::bool_into_data(tensor))))
    }

    /// NdArray's integer tensor as Flex's.
    pub(crate) fn int_to_flex(tensor: NdArrayTensor) -> FlexTensor {
        FlexTensor::from_data(read(read_sync(<NdArray>::int_into_data(tensor))))
    }
}

/// A boolean tensor of a [`Host`] backend as Flex's, or `None` for other backends' (`P` is a
/// backend's `BoolTensorPrimitive`; the autodiff decorator keeps its inner backend's).
pub(crate) fn host_bool<P: 'static>(tensor: P) -> Option<FlexTensor> {
    if is::<P, FlexTensor>() {
        return Some(cast(tensor));
    }
    #[cfg(feature = "ndarray")]
    if is::<P, burn::backend::ndarray::NdArrayTensor>() {
        return Some(ndarray::bool_to_flex(cast(tensor)));
    }
    None
}

/// An integer tensor of a [`Host`] backend as Flex's, or `None` for other backends' (`P` is a
/// backend's `IntTensorPrimitive`).
pub(crate) fn host_int<P: 'static>(tensor: P) -> Option<FlexTensor> {
    if is::<P, FlexTensor>() {
        return Some(cast(tensor));
    }
    #[cfg(feature = "ndarray")]
    if is::<P, burn::backend::ndarray::NdArrayTensor>() {
        return Some(ndarray::int_to_flex(cast(tensor)));
    }
    None
}

/// Whether `B` is a [`Host`] backend or the autodiff decorator around one.
pub(crate) fn is_host_based<B: Backend>() -> bool {
    let tensor = TypeId::of::<B::FloatTensorPrimitive>();
    #[cfg(feature = "ndarray")]
    if is_ndarray::<B::FloatTensorPrimitive>()
        || tensor == TypeId::of::<AutodiffTensor<burn::backend::NdArray>>()
    {
        return true;
    }
    tensor == TypeId::of::<FlexTensor>() || tensor == TypeId::of::<AutodiffTensor>()
}

/// Whether `P` is NdArray's tensor.
#[cfg(feature = "ndarray")]
fn is_ndarray<P: 'static>() -> bool {
    is::<P, burn::backend::ndarray::NdArrayTensor>()
}

/// A fused operation of `N` float inputs and one output, on `f32` host tensors.
pub(crate) trait FusedOp<const N: usize>: Debug + Send + Sized + 'static {
    /// What the backward needs (tensors share their buffers: a clone is a reference).
    type State: Clone + Debug + Send + 'static;

    /// Which inputs have a gradient; the others (tables of constants) must not be tracked by
    /// autodiff, or the operation is not fused.
    const DIFFERENTIABLE: [bool; N];

    /// The output, and the state its backward needs.
    fn forward(&self, inputs: [FlexTensor; N]) -> (FlexTensor, Self::State);

    /// The gradients of the inputs marked in `needed` (the others are `None`), given the
    /// output's.
    fn backward(
        &self,
        state: Self::State,
        grad: FlexTensor,
        needed: [bool; N],
    ) -> [Option<FlexTensor>; N];
}

/// Runs `op` on `inputs` when they are a [`Host`] backend's `f32` tensors, with or without
/// autodiff, or gives them back.
pub(crate) fn run<B: Backend, Op: FusedOp<N>, const N: usize>(
    op: Op,
    inputs: [B::FloatTensorPrimitive; N],
) -> Result<B::FloatTensorPrimitive, [B::FloatTensorPrimitive; N]> {
    if inputs.iter().any(|input| input.dtype() != DType::F32) {
        return Err(inputs);
    }
    let unused = match run_on::<B, Flex, Op, N>(op, inputs) {
        Ok(output) => return Ok(output),
        Err(unused) => unused,
    };
    #[cfg(feature = "ndarray")]
    let unused = match run_on::<B, burn::backend::NdArray, Op, N>(unused.0, unused.1) {
        Ok(output) => return Ok(output),
        Err(unused) => unused,
    };
    Err(unused.1)
}

/// [`run`] when `B` is `H` or `Autodiff<H>`; the operation and the inputs back otherwise, or
/// when a constant input is tracked.
#[allow(clippy::type_complexity)]
fn run_on<B: Backend, H: Host, Op: FusedOp<N>, const N: usize>(
    op: Op,
    inputs: [B::FloatTensorPrimitive; N],
) -> Result<B::FloatTensorPrimitive, (Op, [B::FloatTensorPrimitive; N])> {
    if is::<B::FloatTensorPrimitive, H::FloatTensorPrimitive>() {
        let (output, _) = op.forward(inputs.map(|input| H::to_flex(cast(input))));
        return Ok(cast(H::from_flex(output)));
    }
    if !is::<B::FloatTensorPrimitive, AutodiffTensor<H>>() {
        return Err((op, inputs));
    }
    let tracked: [AutodiffTensor<H>; N] = inputs.map(cast);
    let constant_tracked = tracked
        .iter()
        .zip(Op::DIFFERENTIABLE)
        .any(|(input, differentiable)| !differentiable && input.is_tracked());
    if constant_tracked {
        return Err((op, tracked.map(cast)));
    }
    let nodes = tracked.each_ref().map(|input| input.node.clone());
    let (output, state) = op.forward(tracked.map(|input| H::to_flex(input.primitive)));
    let output = H::from_flex(output);
    let prepared = <Node<Op> as Backward<H, N>>::prepare::<NoCheckpointing>(Node(op), nodes);
    let output = match prepared.compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Ok(cast(output))
}

/// The autodiff graph's node of a fused operation.
#[derive(Debug)]
struct Node<Op>(Op);

impl<H: Host, Op: FusedOp<N>, const N: usize> Backward<H, N> for Node<Op> {
    type State = Op::State;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = H::to_flex(grads.consume::<H>(&ops.node));
        let needed = ops.parents.each_ref().map(Option::is_some);
        let input_grads = self.0.backward(ops.state, grad, needed);
        for (parent, input_grad) in ops.parents.into_iter().zip(input_grads) {
            if let (Some(parent), Some(input_grad)) = (parent, input_grad) {
                grads.register::<H>(parent.id, H::from_flex(input_grad));
            }
        }
    }
}

/// Whether `T` and `U` are one type.
pub(crate) fn is<T: 'static, U: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<U>()
}

/// Moves `value` into its own type under another name; the callers check [`is`] first.
pub(crate) fn cast<T: 'static, U: 'static>(value: T) -> U {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
    {
        Some(value) => value,
        None => unreachable!("cast between distinct types"),
    }
}

/// The values of a tensor in row-major order, without a copy when it is contiguous already.
pub(crate) fn contiguous(tensor: &FlexTensor) -> FlexTensor {
    if tensor.layout().contiguous_offsets().is_some() {
        tensor.clone()
    } else {
        tensor.to_contiguous()
    }
}

/// The `f32` values of a contiguous tensor ([`contiguous`]).
pub(crate) fn values(tensor: &FlexTensor) -> &[f32] {
    let (start, end) = tensor.layout().contiguous_offsets().unwrap_or((0, 0));
    &tensor.storage::<f32>()[start..end]
}

/// A new tensor of `shape`, its values written by `fill` on chunks of `chunk` values (the last
/// may be shorter) given each chunk's first index, the chunks in parallel.
///
/// The buffer comes zeroed from the allocator (`calloc`), which is safe Rust's way to a buffer
/// that `fill` then writes.
pub(crate) fn build(
    shape: &[usize],
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> FlexTensor {
    let chunk = chunk.max(1);
    let mut out = vec![0.0f32; shape.iter().product::<usize>()];
    out.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(index, values)| fill(index * chunk, values));
    FlexTensor::from_data(TensorData::new(out, shape.to_vec()))
}

/// Two new tensors of `shape`, written together as [`build`] writes one.
pub(crate) fn build_pair(
    shape: &[usize],
    chunk: usize,
    fill: impl Fn(usize, [&mut [f32]; 2]) + Sync,
) -> [FlexTensor; 2] {
    let chunk = chunk.max(1);
    let len = shape.iter().product::<usize>();
    let (mut first, mut second) = (vec![0.0f32; len], vec![0.0f32; len]);
    first
        .par_chunks_mut(chunk)
        .zip(second.par_chunks_mut(chunk))
        .enumerate()
        .for_each(|(index, (a, b))| fill(index * chunk, [a, b]));
    [first, second].map(|values| FlexTensor::from_data(TensorData::new(values, shape.to_vec())))
}
