//! Fused operations on Flex and on `Autodiff<Flex>`: one pass over host memory forward, and one
//! backward node in the autodiff graph instead of a node per decomposed operation.
//!
//! The crate is generic over the backend. A fused operation runs when the backend's float
//! tensor is Flex's ([`FlexTensor`]) or the autodiff decorator's around it
//! (`AutodiffTensor<Flex>`, whatever its checkpointing strategy); the tensors are recognised
//! by their type and moved, not copied. Anything else gets its inputs back, for Burn's
//! decomposed operations.

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

/// `Autodiff<Flex>`'s float tensor (burn-autodiff's `AutodiffTensor`, which it names only
/// through the backend).
pub(crate) type AutodiffTensor = burn::tensor::ops::FloatTensor<Autodiff<Flex>>;

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

/// Runs `op` on `inputs` when they are Flex's `f32` tensors, with or without autodiff, or gives
/// them back.
pub(crate) fn run<B: Backend, Op: FusedOp<N>, const N: usize>(
    op: Op,
    inputs: [B::FloatTensorPrimitive; N],
) -> Result<B::FloatTensorPrimitive, [B::FloatTensorPrimitive; N]> {
    if inputs.iter().any(|input| input.dtype() != DType::F32) {
        return Err(inputs);
    }
    if is::<B::FloatTensorPrimitive, FlexTensor>() {
        let (output, _) = op.forward(inputs.map(cast));
        return Ok(cast(output));
    }
    if !is::<B::FloatTensorPrimitive, AutodiffTensor>() {
        return Err(inputs);
    }
    let tracked: [AutodiffTensor; N] = inputs.map(cast);
    let constant_tracked = tracked
        .iter()
        .zip(Op::DIFFERENTIABLE)
        .any(|(input, differentiable)| !differentiable && input.is_tracked());
    if constant_tracked {
        return Err(tracked.map(cast));
    }
    let nodes = tracked.each_ref().map(|input| input.node.clone());
    let (output, state) = op.forward(tracked.map(|input| input.primitive));
    let output = match Node(op)
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Ok(cast(output))
}

/// The autodiff graph's node of a fused operation.
#[derive(Debug)]
struct Node<Op>(Op);

impl<Op: FusedOp<N>, const N: usize> Backward<Flex, N> for Node<Op> {
    type State = Op::State;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<Flex>(&ops.node);
        let needed = ops.parents.each_ref().map(Option::is_some);
        let input_grads = self.0.backward(ops.state, grad, needed);
        for (parent, input_grad) in ops.parents.into_iter().zip(input_grads) {
            if let (Some(parent), Some(input_grad)) = (parent, input_grad) {
                grads.register::<Flex>(parent.id, input_grad);
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
