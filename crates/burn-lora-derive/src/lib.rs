//! # burn-lora-derive
//!
//! `#[derive(LoraModel)]` for [burn-lora](https://docs.rs/burn-lora): implements
//! `burn_lora::LoraModel` for a Burn module struct by listing the LoRA layers among its fields,
//! so that adapters can be attached, switched, merged, saved and loaded model-wide.
//!
//! Use it through burn-lora, which re-exports it under the name of the trait (as Burn does with
//! `Module`): `use burn_lora::LoraModel;` brings both, and `#[derive(Module, Debug, LoraModel)]`
//! derives both. Depending on this crate directly is not needed, and the expansion refers to
//! `::burn_lora`, so burn-lora must be a dependency of the crate that uses the derive.
//!
//! See [`LoraModel`](macro@LoraModel) for what the derive finds and what it rejects.

#![warn(missing_docs)]

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

mod expand;
mod types;

/// Implements `burn_lora::LoraModel<B>` for a struct by visiting its fields in declaration
/// order.
///
/// # What it finds
///
/// Every field whose type is a LoRA model contributes its layers, with no attribute needed:
///
/// - a LoRA layer: `LoraLinear<B>` (and the other LoRA layer kinds);
/// - a `Vec`, `Option` or array of LoRA models: its items in order (`None` contributes nothing);
/// - a struct that derives (or implements) `LoraModel` too: its layers, in its own order.
///
/// These fields contribute nothing, also with no attribute:
///
/// - Burn's modules that cannot hold a LoRA layer: those of `burn::nn` generic over the backend
///   (`Linear`, `Embedding`, the convolutions, `LayerNorm`, `RmsNorm`, `BatchNorm`, `GroupNorm`,
///   `InstanceNorm`, `PositionalEncoding`, `RotaryEncoding`, `PRelu`, `SwiGlu`, Burn's attention
///   and transformer blocks, `Lstm`, `Gru`, `Rnn` and their bidirectional forms, the losses),
///   tensors, `Param` and `RunningState`, and `Vec`s, `Option`s and arrays of these;
/// - any type not generic over the backend: `Dropout`, `Relu`, `Gelu`, the pools, `usize`,
///   `f64`, `bool`, `String`, a configuration, `PhantomData`. It cannot hold a `LoraLayer<B>`.
///
/// Any other field generic over the backend is a compile error on its type, naming the field:
/// a nested `Block<B>` that derives `Module` but not `LoraModel` would hide its layers from
/// `lora_layers`, `Targets::all()` and everything built on them. Derive `LoraModel` on it (a
/// type without LoRA layers then lists none), or mark the field `#[lora(skip)]`.
///
/// Fields are visited in declaration order, named or tuple structs alike, so the layers come
/// out in the order of their module paths: `blocks.0.query`, `blocks.0.value`,
/// `blocks.1.query`, …, `head`. The immutable and the mutable list are generated from the same
/// field list, so they always agree.
///
/// The backend is the type parameter bounded by `Backend` (or `AutodiffBackend`), else the one
/// named `B`; a field is generic over it when its type takes it as a type argument
/// (`Block<B>`, `Vec<Tensor<B, 2>>`, not `B::Device`). A field whose type names another type
/// parameter (`inner: M`, `layers: Vec<M>`) adds the bound `M: LoraModel<B>` (or
/// `Vec<M>: LoraModel<B>`) to the impl: its layers are listed, and a model whose `M` holds no
/// LoRA layer needs `#[lora(skip)]` on that field. `PhantomData` fields are ignored.
///
/// # Attributes
///
/// `#[lora(skip)]` on a field: never visited, even if it holds LoRA layers (they are then
/// invisible to `attach`, `merge`, `save_adapter`, …).
///
/// # Unsupported
///
/// A field that puts a LoRA layer, a type generic over the backend (`Block<B>`) or another
/// type parameter inside a container the layer list cannot go through is a compile error on
/// the field's type, naming the container and what to use instead (`Vec`, `Option`, an array,
/// a nested struct deriving `LoraModel`, or `#[lora(skip)]`):
///
/// - `HashMap`, `HashSet`: no fixed order;
/// - `BTreeMap`, `BTreeSet`, `VecDeque`, `LinkedList`, `BinaryHeap`, `IndexMap`, `Box`: not Burn
///   module containers, so the layers would have no module path;
/// - `Box<dyn …>` and other trait objects: the concrete type cannot be seen;
/// - `Rc`, `Arc`: shared layers cannot be lent mutably;
/// - `RefCell`, `Cell`, `Mutex`, `RwLock`, `OnceCell`, `OnceLock`: the borrow cannot outlive the
///   call;
/// - references, raw pointers and slices: a model owns its layers;
/// - tuples: their parts are not visited (use a nested struct, or an array when they share a
///   type).
///
/// The check is syntactic: the same containers holding only plain data (`HashMap<String,
/// usize>`, `(usize, usize)`) are accepted and contribute nothing. Enums and unions are a
/// compile error: implement `LoraModel` by hand for them. So is a field generic over the
/// backend whose type is neither a LoRA model nor one of Burn's modules listed above (see
/// "What it finds"). A type written as a macro call is not looked into: it contributes its
/// layers if it is a LoRA model, and nothing otherwise.
///
/// # Example
///
/// On burn-lora's re-export, `burn_lora::LoraModel` (the derive), where it is compiled and run as
/// one of burn-lora's doctests. This crate has no dev-dependency on Burn: as a proc-macro crate,
/// its tests would build their dependencies for the host, a second copy of all of Burn.
#[proc_macro_derive(LoraModel, attributes(lora))]
pub fn derive_lora_model(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
