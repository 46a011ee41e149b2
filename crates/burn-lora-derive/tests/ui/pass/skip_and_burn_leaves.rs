//! Burn's modules that cannot hold a LoRA layer, tensors, parameters and plain data need no
//! attribute; a nested struct that does not derive `LoraModel` needs `#[lora(skip)]`.

use std::marker::PhantomData;

use burn::module::Param;
use burn::nn::attention::MultiHeadAttention;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::transformer::TransformerEncoder;
use burn::nn::{
    BatchNorm, Dropout, Embedding, Gelu, GroupNorm, Gru, LayerNorm, Linear, Lstm,
    PositionalEncoding, Relu, RmsNorm,
};
use burn::prelude::*;
use burn_lora::{LoraLinear, LoraModel};

#[derive(Module, Debug)]
struct Plain<B: Backend> {
    linear: Linear<B>,
}

#[derive(Module, Debug, LoraModel)]
struct Model<B: Backend> {
    head: LoraLinear<B>,
    #[lora(skip)]
    plain: Plain<B>,
    #[lora(skip)]
    plains: Vec<Plain<B>>,
    linear: Linear<B>,
    embedding: Embedding<B>,
    conv: Conv2d<B>,
    layer_norm: LayerNorm<B>,
    rms_norm: RmsNorm<B>,
    batch_norm: BatchNorm<B>,
    group_norm: GroupNorm<B>,
    positions: PositionalEncoding<B>,
    attention: MultiHeadAttention<B>,
    encoder: Option<TransformerEncoder<B>>,
    lstm: Lstm<B>,
    grus: Vec<Gru<B>>,
    weight: Param<Tensor<B, 2>>,
    mask: Tensor<B, 2, Bool>,
    norms: [LayerNorm<B>; 2],
    dropout: Dropout,
    gelu: Gelu,
    relu: Relu,
    pool: MaxPool2d,
    width: usize,
    scale: f64,
    causal: bool,
    name: String,
    _marker: PhantomData<B>,
}

#[allow(dead_code)]
fn count<B: Backend>(model: &mut Model<B>) -> usize {
    assert_eq!(model.lora_layers().len(), model.lora_layers_mut().len());
    model.lora_layers().len()
}

fn main() {}
