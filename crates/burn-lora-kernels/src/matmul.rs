//! Matrix products of a few rows (decoding) at the speed of the memory, and `linear` of many
//! rows as one matrix.
//!
//! Both functions are Burn's operations outside [`with_fast_paths`](crate::with_fast_paths).
//!
//! Flex multiplies with the `gemm` crate, which runs a product of one row as a single-threaded
//! matrix-vector loop, and one of a few rows through its packing kernels: at batch 1 to 8 a
//! decoder spends most of a step there, at a third of the speed at which the weights stream
//! from memory. On Flex, products of up to 16 rows of `f32` run the kernel of `flex::few_rows`
//! instead (a `Linear`'s row-major weight, or a transposed view such as tied embeddings), split
//! over threads that stay awake between products; every other product is Burn's.

use burn::tensor::backend::Backend;
use burn::tensor::module;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::scope::fast_paths_enabled;

/// The most rows the few-rows kernel takes; more go to Burn's product (`gemm`, whose packing
/// then pays off).
pub(crate) const MAX_ROWS: usize = 16;

/// `lhs · rhs`, as [`Tensor::matmul`] (within rounding inside
/// [`with_fast_paths`](crate::with_fast_paths)).
///
/// Inside the scope, on Flex, up to 16 rows take the few-rows kernel; more rows, on Flex and
/// `Autodiff<Flex>`, are [`linear`]'s fused node without a bias (its products write buffers of
/// their own, where Flex's product copies its output once more).
///
/// # Shapes
/// - lhs: `[m, k]`
/// - rhs: `[k, n]`
/// - output: `[m, n]`
pub fn matmul<B: Backend>(lhs: Tensor<B, 2>, rhs: Tensor<B, 2>) -> Tensor<B, 2> {
    if !fast_paths_enabled() {
        return lhs.matmul(rhs);
    }
    if let Some(product) = fast_matmul(&lhs, &rhs) {
        return product;
    }
    let [m, k] = lhs.dims();
    if m > 0 && k == rhs.dims()[0] && crate::host::is_host_based::<B>() {
        return fused_linear(lhs, rhs, None);
    }
    lhs.matmul(rhs)
}

/// `x W + b`, as [`burn::tensor::module::linear`] (within rounding inside
/// [`with_fast_paths`](crate::with_fast_paths)).
///
/// Inside the scope, on Flex (and NdArray with the `ndarray` feature), up to 16 rows take the
/// few-rows kernel; on Flex and `Autodiff<Flex>` (NdArray and `Autodiff<NdArray>`), an input of
/// more dimensions is multiplied as one `[rows, d_input]` matrix
/// (forward and backward), where Flex's batched product would pack `W` again for every matrix,
/// in one autodiff node whose products (`gemm`, as Flex's) write buffers of their own. On every
/// backend that is not Flex-based, in or out of the scope, an input of more than two dimensions
/// is Burn's `linear` of one `[rows, d_input]` matrix (see `burns_linear`).
///
/// # Shapes
/// - input: `[..., d_input]`
/// - weight: `[d_input, d_output]`
/// - bias: `[d_output]`
/// - output: `[..., d_output]`
pub fn linear<B: Backend, const D: usize>(
    input: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let dims = input.dims();
    let [d_input, d_output] = weight.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    if !fast_paths_enabled() || dims[D - 1] != d_input || rows == 0 {
        return burns_linear(input, weight, bias);
    }
    let mut out_dims = dims;
    out_dims[D - 1] = d_output;
    if rows <= MAX_ROWS && crate::host::is_host::<B>() {
        let matrix = input.clone().reshape([rows, d_input]);
        if let Some(output) = fast_matmul(&matrix, &weight) {
            let output = match bias {
                Some(bias) => output + bias.unsqueeze(),
                None => output,
            };
            return output.reshape(out_dims);
        }
    }
    let bias_fits = bias.as_ref().is_none_or(|bias| bias.dims() == [d_output]);
    if bias_fits && crate::host::is_host_based::<B>() {
        // Flex multiplies a batch of matrices by a broadcast weight one matrix at a time, and
        // packs the weight again for each; as one matrix of all the rows it packs it once. The
        // fused node runs the forward's and the backward's products into buffers of its own
        // (Flex copies each product's output once more).
        let matrix = input.reshape([rows, d_input]);
        return fused_linear(matrix, weight, bias).reshape(out_dims);
    }
    burns_linear(input, weight, bias)
}

/// Burn's `linear`, an input of more than two dimensions multiplied as one `[rows, d_input]`
/// matrix on the backends that are not Flex-based.
///
/// On those (wgpu, CUDA: CubeCL's kernels under `burn-fusion`), Burn 0.21 multiplies a
/// `[batch, seq, d_input]` input by the weight broadcast to `[1, d_input, d_output]`, and with
/// fusion that batched product gives wrong rows when `seq` is 1 and the input feeds two such
/// products (a decoding step's gate and up projections, measured on wgpu/lavapipe: errors of
/// order 1 in every row after the first). One matrix of all the rows is the same arithmetic
/// without the broadcast. Flex, recognised with this crate's `flex` feature, keeps Burn's batched
/// product here (its rounding is what the fixtures were checked with outside the fast paths).
fn burns_linear<B: Backend, const D: usize>(
    input: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let dims = input.dims();
    let [d_input, d_output] = weight.dims();
    if D <= 2 || dims[D - 1] != d_input || crate::host::is_flex_based::<B>() {
        return module::linear(input, weight, bias);
    }
    let rows = dims[..D - 1].iter().product::<usize>();
    let mut out_dims = dims;
    out_dims[D - 1] = d_output;
    module::linear(input.reshape([rows, d_input]), weight, bias).reshape(out_dims)
}

/// `x W + b` of a matrix as one fused node on Flex and `Autodiff<Flex>` (Burn's `linear`
/// elsewhere), the shapes checked by the caller.
fn fused_linear<B: Backend>(
    matrix: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    let placeholder = || Tensor::<B, 1>::empty([0], &matrix.device());
    let inputs = [
        matrix.clone().into_primitive().tensor(),
        weight.clone().into_primitive().tensor(),
        bias.clone()
            .unwrap_or_else(placeholder)
            .into_primitive()
            .tensor(),
    ];
    match run_fused!(B, Some(crate::flex::Linear), inputs) {
        Ok(output) => Tensor::from_primitive(TensorPrimitive::Float(output)),
        // Not `f32`: Burn's product (`module::linear` would reshape `W`, which copies a
        // transposed view on Flex).
        Err(_) => {
            let product = matrix.matmul(weight);
            match bias {
                Some(bias) => product + bias.unsqueeze(),
                None => product,
            }
        }
    }
}

#[cfg(feature = "flex")]
fn fast_matmul<B: Backend>(lhs: &Tensor<B, 2>, rhs: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    crate::flex::few_rows_matmul(lhs, rhs)
}

#[cfg(not(feature = "flex"))]
fn fast_matmul<B: Backend>(_: &Tensor<B, 2>, _: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    None
}
