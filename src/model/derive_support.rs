//! What `#[derive(LoraModel)]` expands to (`burn_lora::__private`): not public API.
//!
//! The derive cannot see which field types implement [`VisitLoraLayers`], so it asks the compiler
//! through autoref specialization. For each field it writes
//! `Probe::<B, FieldType>::new(&self.field).visit(layers)`: method lookup first tries the
//! receiver `Probe<B, T>` by value, where [`VisitLayers::visit`] exists exactly when
//! `T: VisitLoraLayers<B>` and forwards to [`VisitLoraLayers::visit_lora_layers`]; failing that, it borrows
//! the receiver and finds [`VisitNothing::visit`] on `&Probe<B, T>`, which does nothing. The
//! choice is made where the derived impl is type-checked, with `B` still generic: it holds
//! whenever the field's type has an impl for every backend (`LoraLinear<B>`, `Vec<Block<B>>`,
//! `[LoraLinear<B>; N]`, a struct deriving `LoraModel`) and fails for a type with none
//! (`LayerNorm<B>`, `usize`). A field whose type names another type parameter (`M`) could go
//! either way, so the derive bounds it (`M: VisitLoraLayers<B>`) and calls the trait directly instead.

use core::marker::PhantomData;

use burn::tensor::backend::Backend;

use crate::layers::layer::LoraLayer;
use crate::model::lora_model::VisitLoraLayers;

/// A field seen through its shared reference.
pub struct Probe<'a, B, T: ?Sized>(&'a T, PhantomData<fn() -> B>);

impl<'a, B, T: ?Sized> Probe<'a, B, T> {
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

impl<'a, B: Backend, T: VisitLoraLayers<B>> VisitLayers<'a, B> for Probe<'a, B, T> {
    fn visit(self, layers: &mut Vec<&'a dyn LoraLayer<B>>) {
        self.0.visit_lora_layers(layers);
    }
}

/// Chosen, one autoref later, for every other field: nothing to list.
pub trait VisitNothing<'a, B: Backend> {
    /// Pushes nothing.
    fn visit(&self, layers: &mut Vec<&'a dyn LoraLayer<B>>);
}

impl<'a, B: Backend, T: ?Sized> VisitNothing<'a, B> for Probe<'a, B, T> {
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
