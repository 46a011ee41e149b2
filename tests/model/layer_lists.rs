//! A user's model lists its LoRA layers twice (`lora_layers`, `lora_layers_mut`): operations
//! that pair the two lists refuse lists that disagree, and module paths are never guessed.

use crate::common::B;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_lora::{
    load_adapter, lora_layer_paths, save_adapter, LoraConfig, LoraError, LoraLinear,
    LoraLinearConfig, LoraModel, PathMap,
};
use burn_lora::{LoraLayer, Targets, VisitLoraLayers};

/// Two layers; `swapped` makes `lora_layers_mut` list them in the other order.
#[derive(Module, Debug)]
struct Net<B: Backend> {
    encoder: LoraLinear<B>,
    head: LoraLinear<B>,
    #[module(skip)]
    swapped: bool,
}

impl<B: Backend> VisitLoraLayers<B> for Net<B> {
    fn visit_lora_layers<'a>(&'a self, layers: &mut Vec<&'a dyn LoraLayer<B>>) {
        layers.push(&self.encoder);
        layers.push(&self.head);
    }
    fn visit_lora_layers_mut<'a>(&'a mut self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>) {
        if self.swapped {
            layers.push(&mut self.head);
            layers.push(&mut self.encoder);
        } else {
            layers.push(&mut self.encoder);
            layers.push(&mut self.head);
        }
    }
}

impl<B: Backend> LoraModel<B> for Net<B> {}

/// Square layers, so swapped factors would fit and go unnoticed without the check.
fn net(swapped: bool) -> Net<B> {
    let device = Default::default();
    let layer = || LoraLinearConfig::new(6, 6).init::<B>(&device).unwrap();
    Net {
        encoder: layer(),
        head: layer(),
        swapped,
    }
}

fn is_invalid_model(result: Result<(), LoraError>, context: &str) {
    match result {
        Err(LoraError::InvalidModel(message)) => {
            assert!(
                message.contains("disagree") || message.contains("path"),
                "{context}: {message}"
            )
        }
        other => panic!("{context}: expected InvalidModel, got {other:?}"),
    }
}

#[test]
fn paths_are_the_field_names() {
    assert_eq!(lora_layer_paths(&net(false)).unwrap(), ["encoder", "head"]);
}

#[test]
fn disagreeing_layer_lists_are_an_error_for_load_adapter_and_change_nothing() {
    let mut source = net(false);
    source
        .encoder
        .add_adapter("default", &LoraConfig::new(2, 2.0))
        .unwrap();
    source
        .head
        .add_adapter("default", &LoraConfig::new(2, 2.0))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&source, "default", dir.path(), &PathMap::identity()).unwrap();

    let mut model = net(true);
    is_invalid_model(
        load_adapter(&mut model, "default", dir.path(), &PathMap::identity()),
        "load_adapter",
    );
    assert!(model.adapter_names().is_empty());
}

#[test]
fn disagreeing_layer_lists_are_an_error_for_combine_and_attach() {
    let mut model = net(true);
    model
        .encoder
        .add_adapter("a", &LoraConfig::new(2, 2.0))
        .unwrap();
    model
        .head
        .add_adapter("a", &LoraConfig::new(2, 2.0))
        .unwrap();
    is_invalid_model(model.combine_adapters("mix", &[("a", 1.0)]), "combine");
    assert_eq!(model.adapter_names(), vec!["a"]);
    is_invalid_model(
        model.attach("b", &LoraConfig::new(1, 1.0), &Targets::all()),
        "attach",
    );
    assert_eq!(model.adapter_names(), vec!["a"]);
}

/// A model whose "two" layers are clones of one: they share their parameter ids.
#[derive(Module, Debug)]
struct Cloned<B: Backend> {
    first: LoraLinear<B>,
    second: LoraLinear<B>,
}

impl<B: Backend> VisitLoraLayers<B> for Cloned<B> {
    fn visit_lora_layers<'a>(&'a self, layers: &mut Vec<&'a dyn LoraLayer<B>>) {
        layers.push(&self.first);
        layers.push(&self.second);
    }
    fn visit_lora_layers_mut<'a>(&'a mut self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>) {
        layers.push(&mut self.first);
        layers.push(&mut self.second);
    }
}

impl<B: Backend> LoraModel<B> for Cloned<B> {}

#[test]
fn cloned_layers_sharing_parameter_ids_are_an_error_not_a_guessed_path() {
    let layer = LoraLinearConfig::new(4, 3)
        .init::<B>(&Default::default())
        .unwrap();
    let model = Cloned {
        first: layer.clone(),
        second: layer,
    };
    match lora_layer_paths(&model) {
        Err(LoraError::InvalidModel(message)) => {
            assert!(message.contains("\"first.weight\""), "{message}");
            assert!(message.contains("\"second.weight\""), "{message}");
        }
        other => panic!("expected InvalidModel, got {other:?}"),
    }
}

/// A model that lists a layer which is not one of its fields.
#[derive(Module, Debug)]
struct Outside<B: Backend> {
    inner: LoraLinear<B>,
    #[module(skip)]
    stray: Option<LoraLinear<B>>,
}

impl<B: Backend> VisitLoraLayers<B> for Outside<B> {
    fn visit_lora_layers<'a>(&'a self, layers: &mut Vec<&'a dyn LoraLayer<B>>) {
        self.inner.visit_lora_layers(layers);
        self.stray.visit_lora_layers(layers);
    }
    fn visit_lora_layers_mut<'a>(&'a mut self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>) {
        self.inner.visit_lora_layers_mut(layers);
        self.stray.visit_lora_layers_mut(layers);
    }
}

impl<B: Backend> LoraModel<B> for Outside<B> {}

#[test]
fn a_listed_layer_outside_the_module_tree_is_an_error_not_a_fallback_name() {
    let device = Default::default();
    let layer = || LoraLinearConfig::new(4, 3).init::<B>(&device).unwrap();
    let model = Outside {
        inner: layer(),
        stray: Some(layer()),
    };
    match lora_layer_paths(&model) {
        Err(LoraError::InvalidModel(message)) => {
            assert!(message.contains("layer 1"), "{message}")
        }
        other => panic!("expected InvalidModel, got {other:?}"),
    }
}

#[test]
fn parameter_report_counts_each_parameter_once_or_is_an_error_without_layer_paths() {
    // Known paths: the report's base is exactly the model's parameter count.
    let model = net(false);
    let report = model.parameter_report().unwrap();
    assert_eq!(report.base_params(), model.num_params());
    assert_eq!(report.other_params, 0);

    // Without paths the layers' parameters cannot be told from the others (made-up paths
    // counted each of them twice, as a layer's and as "other"): an error, not a count.
    let device = Default::default();
    let layer = || LoraLinearConfig::new(4, 3).init::<B>(&device).unwrap();
    let shared = layer();
    let cloned = Cloned {
        first: shared.clone(),
        second: shared,
    };
    let outside = Outside {
        inner: layer(),
        stray: Some(layer()),
    };
    for (what, result) in [
        ("cloned", cloned.parameter_report()),
        ("outside", outside.parameter_report()),
    ] {
        assert!(
            matches!(result, Err(LoraError::InvalidModel(_))),
            "{what}: {result:?}"
        );
    }
}
