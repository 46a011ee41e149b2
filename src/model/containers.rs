//! [`VisitLoraLayers`] for the LoRA layers themselves and for Burn's module containers (`Vec`,
//! `Option`, arrays) of anything that holds them, so that the derive and hand-written models
//! can hold layers in them.

use burn::tensor::backend::Backend;

use crate::layers::conv2d::LoraConv2d;
use crate::layers::embedding::LoraEmbedding;
use crate::layers::layer::LoraLayer;
use crate::layers::linear::LoraLinear;
use crate::model::lora_model::VisitLoraLayers;

/// A LoRA layer visits itself.
macro_rules! layer_is_a_model {
    ($layer:ident) => {
        impl<B: Backend> VisitLoraLayers<B> for $layer<B> {
            fn visit_lora_layers<'a>(&'a self, layers: &mut Vec<&'a dyn LoraLayer<B>>) {
                layers.push(self);
            }

            fn visit_lora_layers_mut<'a>(&'a mut self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>) {
                layers.push(self);
            }
        }
    };
}

layer_is_a_model!(LoraLinear);
layer_is_a_model!(LoraEmbedding);
layer_is_a_model!(LoraConv2d);

impl<B: Backend, T: VisitLoraLayers<B>> VisitLoraLayers<B> for Vec<T> {
    fn visit_lora_layers<'a>(&'a self, layers: &mut Vec<&'a dyn LoraLayer<B>>) {
        for item in self {
            item.visit_lora_layers(layers);
        }
    }

    fn visit_lora_layers_mut<'a>(&'a mut self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>) {
        for item in self {
            item.visit_lora_layers_mut(layers);
        }
    }
}

impl<B: Backend, T: VisitLoraLayers<B>> VisitLoraLayers<B> for Option<T> {
    fn visit_lora_layers<'a>(&'a self, layers: &mut Vec<&'a dyn LoraLayer<B>>) {
        if let Some(item) = self {
            item.visit_lora_layers(layers);
        }
    }

    fn visit_lora_layers_mut<'a>(&'a mut self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>) {
        if let Some(item) = self {
            item.visit_lora_layers_mut(layers);
        }
    }
}

impl<B: Backend, T: VisitLoraLayers<B>, const N: usize> VisitLoraLayers<B> for [T; N] {
    fn visit_lora_layers<'a>(&'a self, layers: &mut Vec<&'a dyn LoraLayer<B>>) {
        for item in self {
            item.visit_lora_layers(layers);
        }
    }

    fn visit_lora_layers_mut<'a>(&'a mut self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>) {
        for item in self {
            item.visit_lora_layers_mut(layers);
        }
    }
}
