//! [`LoraModel`] for the LoRA layers themselves (a model of one layer) and for Burn's module
//! containers (`Vec`, `Option`, arrays) of anything that is one, so that the derive and
//! hand-written models can hold layers in them.

use core::fmt::Debug;

use burn::tensor::backend::Backend;

use crate::layers::layer::LoraLayer;
use crate::layers::linear::LoraLinear;
use crate::model::LoraModel;

/// A LoRA layer is a model of one layer.
macro_rules! layer_is_a_model {
    ($layer:ident) => {
        impl<B: Backend> LoraModel<B> for $layer<B> {
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

impl<B: Backend, T: LoraModel<B> + Debug + Send + Clone> LoraModel<B> for Vec<T> {
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

impl<B: Backend, T: LoraModel<B> + Debug + Send + Clone> LoraModel<B> for Option<T> {
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

impl<B: Backend, T: LoraModel<B> + Debug + Send + Clone, const N: usize> LoraModel<B> for [T; N] {
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
