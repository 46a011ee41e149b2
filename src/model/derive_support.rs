//! What `#[derive(LoraModel)]` expands to (`burn_lora::__private`): not public API.
//!
//! The derive cannot see which field types implement [`VisitLoraLayers`], so it asks the compiler
//! through autoref specialization. For each field it writes
//! `Probe::<B, FieldType, _>::new(&self.field).visit(layers)`: method lookup first tries the
//! receiver `Probe<B, T, _>` by value, where [`VisitLayers::visit`] exists exactly when
//! `T: VisitLoraLayers<B>` and forwards to [`VisitLoraLayers::visit_lora_layers`]; failing that,
//! it borrows the receiver and finds a `visit` on `&Probe<B, T, _>`, which does nothing. The
//! choice is made where the derived impl is type-checked, with `B` still generic: it holds
//! whenever the field's type has an impl for every backend (`LoraLinear<B>`, `Vec<Block<B>>`,
//! `[LoraLinear<B>; N]`, a struct deriving `LoraModel`) and fails for a type with none
//! (`LayerNorm<B>`, `usize`).
//!
//! Visiting nothing is only right for a type that cannot hold a LoRA layer. A type that is not
//! generic over the backend (`usize`, `Dropout`) cannot, and gets [`VisitNothing`]. A type
//! generic over the backend could (a nested struct that forgot `#[derive(LoraModel)]`), so the
//! derive gives it a `visit` of its own that requires [`NoLoraLayers`] of the type the field's
//! `Vec`, `Option` or array holds (the third parameter of `Probe`): Burn's modules and tensors
//! have it, anything else is a compile error on the field, in a message that names it.
//! A field whose type names another type parameter (`M`) could go either way, so the derive
//! bounds it (`M: VisitLoraLayers<B>`) and calls the trait directly instead.

use core::marker::PhantomData;

use burn::module::{Param, Parameter, RunningState};
use burn::nn;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorKind};

use crate::layers::adapter::LoraAdapter;
use crate::layers::layer::LoraLayer;
use crate::model::lora_model::VisitLoraLayers;

/// A field of type `T` seen through its shared reference; `E` is the type its `Vec`, `Option`
/// or array holds (`T` itself for other types), which a field generic over the backend and not
/// a LoRA model must have [`NoLoraLayers`] for.
pub struct Probe<'a, B, T: ?Sized, E: ?Sized>(&'a T, PhantomData<fn() -> (B, *const E)>);

impl<'a, B, T: ?Sized, E: ?Sized> Probe<'a, B, T, E> {
    /// Wraps a field.
    pub fn new(field: &'a T) -> Self {
        Self(field, PhantomData)
    }
}

/// A field seen through its mutable reference.
pub struct ProbeMut<'a, B, T: ?Sized>(&'a mut T, PhantomData<fn() -> B>);

impl<'a, B, T: ?Sized> ProbeMut<'a, B, T> {
    /// Wraps a field.
    pub fn new(field: &'a mut T) -> Self {
        Self(field, PhantomData)
    }
}

/// Chosen for fields that are LoRA models: lists their layers.
pub trait VisitLayers<'a, B: Backend> {
    /// Pushes the field's LoRA layers.
    fn visit(self, layers: &mut Vec<&'a dyn LoraLayer<B>>);
}

impl<'a, B: Backend, T: VisitLoraLayers<B>, E: ?Sized> VisitLayers<'a, B> for Probe<'a, B, T, E> {
    fn visit(self, layers: &mut Vec<&'a dyn LoraLayer<B>>) {
        self.0.visit_lora_layers(layers);
    }
}

/// Chosen, one autoref later, for every other field not generic over the backend: nothing to
/// list.
pub trait VisitNothing<'a, B: Backend> {
    /// Pushes nothing.
    fn visit(&self, layers: &mut Vec<&'a dyn LoraLayer<B>>);
}

impl<'a, B: Backend, T: ?Sized, E: ?Sized> VisitNothing<'a, B> for Probe<'a, B, T, E> {
    fn visit(&self, _layers: &mut Vec<&'a dyn LoraLayer<B>>) {}
}

/// [`VisitLayers`], mutably.
pub trait VisitLayersMut<'a, B: Backend> {
    /// Pushes the field's LoRA layers.
    fn visit_mut(self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>);
}

impl<'a, B: Backend, T: VisitLoraLayers<B>> VisitLayersMut<'a, B> for ProbeMut<'a, B, T> {
    fn visit_mut(self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>) {
        self.0.visit_lora_layers_mut(layers);
    }
}

/// [`VisitNothing`], mutably.
pub trait VisitNothingMut<'a, B: Backend> {
    /// Pushes nothing.
    fn visit_mut(&self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>);
}

impl<'a, B: Backend, T: ?Sized> VisitNothingMut<'a, B> for ProbeMut<'a, B, T> {
    fn visit_mut(&self, _layers: &mut Vec<&'a mut dyn LoraLayer<B>>) {}
}

/// Burn's modules, tensors and parameters that are generic over the backend but cannot hold a
/// LoRA layer: a field of one of these types (or a `Vec`, `Option` or array of them) contributes
/// nothing without `#[lora(skip)]`. Every other type generic over the backend must be a LoRA
/// model.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is generic over the backend but is not a LoRA model, so \
               derive(LoraModel) cannot list its LoRA layers",
    label = "neither a LoRA model nor one of Burn's modules that hold no LoRA layer",
    note = "derive `LoraModel` on `{Self}` (a type without LoRA layers then lists none), or mark \
            the field `#[lora(skip)]` if it holds no LoRA layer"
)]
pub trait NoLoraLayers<B: Backend> {}

impl<B: Backend, const D: usize, K: TensorKind<B>> NoLoraLayers<B> for Tensor<B, D, K> {}
impl<B: Backend, T: Parameter> NoLoraLayers<B> for Param<T> {}
impl<B: Backend, T> NoLoraLayers<B> for RunningState<T> {}
impl<B: Backend, T: NoLoraLayers<B>> NoLoraLayers<B> for Vec<T> {}
impl<B: Backend, T: NoLoraLayers<B>> NoLoraLayers<B> for Option<T> {}
impl<B: Backend, T: NoLoraLayers<B>, const N: usize> NoLoraLayers<B> for [T; N] {}
impl<B: Backend> NoLoraLayers<B> for LoraAdapter<B> {}

/// [`NoLoraLayers`] for modules generic over the backend alone.
macro_rules! no_lora_layers {
    ($($module:path),+ $(,)?) => {
        $(impl<B: Backend> NoLoraLayers<B> for $module {})+
    };
}

// Every module of `burn::nn` generic over the backend (those that are not, such as `Dropout`,
// `Relu` or the pools, need nothing).
no_lora_layers!(
    nn::Linear<B>,
    nn::Embedding<B>,
    nn::conv::Conv1d<B>,
    nn::conv::Conv2d<B>,
    nn::conv::Conv3d<B>,
    nn::conv::ConvTranspose1d<B>,
    nn::conv::ConvTranspose2d<B>,
    nn::conv::ConvTranspose3d<B>,
    nn::conv::DeformConv2d<B>,
    nn::BatchNorm<B>,
    nn::GroupNorm<B>,
    nn::InstanceNorm<B>,
    nn::LayerNorm<B>,
    nn::RmsNorm<B>,
    nn::norm::Normalization<B>,
    nn::PositionalEncoding<B>,
    nn::RotaryEncoding<B>,
    nn::PRelu<B>,
    nn::SwiGlu<B>,
    nn::activation::Activation<B>,
    nn::attention::MultiHeadAttention<B>,
    nn::attention::CrossAttention<B>,
    nn::transformer::PositionWiseFeedForward<B>,
    nn::transformer::TransformerEncoder<B>,
    nn::transformer::TransformerEncoderLayer<B>,
    nn::transformer::TransformerDecoder<B>,
    nn::transformer::TransformerDecoderLayer<B>,
    nn::GateController<B>,
    nn::Lstm<B>,
    nn::BiLstm<B>,
    nn::Gru<B>,
    nn::BiGru<B>,
    nn::Rnn<B>,
    nn::BiRnn<B>,
    nn::loss::BinaryCrossEntropyLoss<B>,
    nn::loss::CrossEntropyLoss<B>,
);
