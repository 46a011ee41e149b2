//! [`LoraModel`] for the blocks: each lists its LoRA layers in field order, so a block alone or
//! a model built from blocks gets the whole model-level API.

use burn::tensor::backend::Backend;

use crate::layers::layer::LoraLayer;
use crate::model::lora_model::{LoraModel, VisitLoraLayers};
use crate::nn::attention::MultiHeadAttention;
use crate::nn::transformer::{
    PositionWiseFeedForward, TransformerEncoder, TransformerEncoderLayer,
};

/// Implements [`VisitLoraLayers`] (visiting `fields` in order) and [`LoraModel`] for a block.
macro_rules! block_visits_fields {
    ($block:ident: $($field:ident),+) => {
        impl<B: Backend> VisitLoraLayers<B> for $block<B> {
            fn visit_lora_layers<'a>(&'a self, layers: &mut Vec<&'a dyn LoraLayer<B>>) {
                $(self.$field.visit_lora_layers(layers);)+
            }

            fn visit_lora_layers_mut<'a>(&'a mut self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>) {
                $(self.$field.visit_lora_layers_mut(layers);)+
            }
        }

        impl<B: Backend> LoraModel<B> for $block<B> {}
    };
}

block_visits_fields!(MultiHeadAttention: query, key, value, output);
block_visits_fields!(PositionWiseFeedForward: linear_inner, linear_outer);
block_visits_fields!(TransformerEncoderLayer: mha, pwff);
block_visits_fields!(TransformerEncoder: layers);
