//! [`BaseWeight`]: a linear layer's frozen base weight, as a parameter or kept quantized.

use std::sync::Arc;

use burn::module::{
    AutodiffModule, Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper,
    ModuleVisitor, Param, ParamId,
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::quantization::QuantScheme;
use burn::tensor::Tensor;
use burn_lora_kernels::QuantizedMatrix;

/// A linear layer's base weight `W` `[d_input, d_output]`: a float parameter, as Burn's
/// `Linear` keeps it, or a [`QuantizedMatrix`] in host memory (QLoRA's frozen base, see
/// [`LoraLinear::quantize_base`](crate::LoraLinear::quantize_base)), dequantized where it is used.
///
/// Its record is the float parameter's in both states, so checkpoints are the same whether the
/// base is quantized or not:
/// - saving a quantized base writes its dequantized values (`into_record`, and visitors that read
///   the values, such as burn-store's, get a parameter that dequantizes when read);
/// - loading a record into a quantized base quantizes the record's values with the same scheme
///   (values that cannot be quantized, not finite, stay a float parameter).
///
/// A quantized base is frozen and is no parameter of Burn's mappers: an optimizer step, freezing
/// or a mapper that loads values (burn-store's `apply`) pass it by. Load the base's values before
/// quantizing it, or through a record.
#[derive(Clone, Debug)]
pub struct BaseWeight<B: Backend> {
    storage: Storage<B>,
}

#[derive(Clone, Debug)]
enum Storage<B: Backend> {
    Dense(Param<Tensor<B, 2>>),
    Quantized(QuantizedBase<B>),
}

/// A quantized base and what it needs to stand for its parameter.
#[derive(Clone, Debug)]
struct QuantizedBase<B: Backend> {
    id: ParamId,
    matrix: Arc<QuantizedMatrix>,
    scheme: QuantScheme,
    device: B::Device,
}

impl<B: Backend> QuantizedBase<B> {
    /// The same base for a backend on the same device type (autodiff and its inner backend).
    fn cast<C: Backend<Device = B::Device>>(self) -> QuantizedBase<C> {
        QuantizedBase {
            id: self.id,
            matrix: self.matrix,
            scheme: self.scheme,
            device: self.device,
        }
    }

    /// As a [`BaseWeight`].
    fn into_weight(self) -> BaseWeight<B> {
        BaseWeight {
            storage: Storage::Quantized(self),
        }
    }

    /// A parameter with this base's id that dequantizes the matrix when first read (frozen).
    fn lazy_param(&self) -> Param<Tensor<B, 2>> {
        let matrix = Arc::clone(&self.matrix);
        Param::uninitialized(
            self.id,
            move |device, _| matrix.to_tensor(device),
            self.device.clone(),
            false,
            self.matrix.shape().into(),
        )
    }
}

impl<B: Backend> BaseWeight<B> {
    /// A float parameter.
    pub(crate) fn dense(param: Param<Tensor<B, 2>>) -> Self {
        Self {
            storage: Storage::Dense(param),
        }
    }

    /// The float parameter, or while quantized one that dequantizes when first read.
    pub(crate) fn param(&self) -> Param<Tensor<B, 2>> {
        match &self.storage {
            Storage::Dense(param) => param.clone(),
            Storage::Quantized(base) => base.lazy_param(),
        }
    }

    /// `W` as a tensor: the parameter's value, or the dequantized matrix (a new tensor).
    pub(crate) fn val(&self) -> Tensor<B, 2> {
        match &self.storage {
            Storage::Dense(param) => param.val(),
            Storage::Quantized(base) => base.matrix.to_tensor(&base.device),
        }
    }

    /// The quantized matrix, while quantized.
    pub(crate) fn quantized(&self) -> Option<&Arc<QuantizedMatrix>> {
        match &self.storage {
            Storage::Dense(_) => None,
            Storage::Quantized(base) => Some(&base.matrix),
        }
    }

    /// The scheme the weight is quantized with, while quantized.
    pub(crate) fn scheme(&self) -> Option<QuantScheme> {
        match &self.storage {
            Storage::Dense(_) => None,
            Storage::Quantized(base) => Some(base.scheme),
        }
    }

    /// The parameter id (kept across quantizing and dequantizing).
    pub(crate) fn id(&self) -> ParamId {
        match &self.storage {
            Storage::Dense(param) => param.id,
            Storage::Quantized(base) => base.id,
        }
    }

    /// `[d_input, d_output]`.
    pub(crate) fn dims(&self) -> [usize; 2] {
        match &self.storage {
            Storage::Dense(param) => param.lazy_shape().dims(),
            Storage::Quantized(base) => base.matrix.shape(),
        }
    }

    /// The device `W` (or its dequantized values) lives on.
    pub(crate) fn device(&self) -> B::Device {
        match &self.storage {
            Storage::Dense(param) => param.lazy_device(),
            Storage::Quantized(base) => base.device.clone(),
        }
    }

    /// The same weight, not requiring gradients.
    pub(crate) fn frozen(self) -> Self {
        match self.storage {
            Storage::Dense(param) => Self::dense(param.set_require_grad(false)),
            quantized => Self { storage: quantized },
        }
    }

    /// `value` in place of `W` (detached), keeping the parameter's id, gradient setting and
    /// mappers; a quantized weight becomes a float parameter again.
    pub(crate) fn replaced(self, value: Tensor<B, 2>) -> Self {
        match self.storage {
            Storage::Dense(param) => {
                Self::dense(crate::layers::linear::replace_value(param, value))
            }
            Storage::Quantized(base) => {
                Self::dense(Param::initialized(base.id, value.detach()).set_require_grad(false))
            }
        }
    }

    /// `matrix` (quantized with `scheme`) in place of `W`, with the same id; frozen.
    pub(crate) fn quantized_as(self, matrix: Arc<QuantizedMatrix>, scheme: QuantScheme) -> Self {
        QuantizedBase {
            id: self.id(),
            matrix,
            scheme,
            device: self.device(),
        }
        .into_weight()
    }

    /// Back to a float parameter holding the dequantized values (frozen, same id); unchanged
    /// when not quantized.
    pub(crate) fn dequantized(self) -> Self {
        match self.storage {
            Storage::Quantized(base) => {
                let value = base.matrix.to_tensor(&base.device);
                Self::dense(Param::initialized(base.id, value).set_require_grad(false))
            }
            dense => Self { storage: dense },
        }
    }
}

/// The id of a layer's base weight, whatever holds it (used by the layers' shared methods).
pub(crate) trait WeightId {
    fn weight_id(&self) -> ParamId;
}

impl<B: Backend, const D: usize> WeightId for Param<Tensor<B, D>> {
    fn weight_id(&self) -> ParamId {
        self.id
    }
}

impl<B: Backend> WeightId for BaseWeight<B> {
    fn weight_id(&self) -> ParamId {
        self.id()
    }
}

impl<B: Backend> Module<B> for BaseWeight<B> {
    type Record = Param<Tensor<B, 2>>;

    fn visit<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        match &self.storage {
            Storage::Dense(param) => param.visit(visitor),
            Storage::Quantized(base) => visitor.visit_float(&base.lazy_param()),
        }
    }

    /// A quantized weight is passed by (see [`BaseWeight`]).
    fn map<M: ModuleMapper<B>>(self, mapper: &mut M) -> Self {
        match self.storage {
            Storage::Dense(param) => Self::dense(Module::map(param, mapper)),
            quantized => Self { storage: quantized },
        }
    }

    /// A quantized weight quantizes the record's values with its scheme.
    fn load_record(self, record: Self::Record) -> Self {
        match self.storage {
            Storage::Dense(param) => Self::dense(param.load_record(record)),
            Storage::Quantized(base) => {
                let (id, tensor, _) = record.consume();
                let tensor = tensor.to_device(&base.device).detach();
                match QuantizedMatrix::from_tensor(tensor.clone(), &base.scheme) {
                    Ok(matrix) => QuantizedBase {
                        id,
                        matrix: Arc::new(matrix),
                        ..base
                    }
                    .into_weight(),
                    Err(_) => Self::dense(Param::initialized(id, tensor).set_require_grad(false)),
                }
            }
        }
    }

    fn into_record(self) -> Self::Record {
        match self.storage {
            Storage::Dense(param) => param.into_record(),
            Storage::Quantized(base) => base.lazy_param(),
        }
    }

    fn to_device(self, device: &B::Device) -> Self {
        match self.storage {
            Storage::Dense(param) => Self::dense(param.to_device(device)),
            Storage::Quantized(base) => QuantizedBase {
                device: device.clone(),
                ..base
            }
            .into_weight(),
        }
    }

    fn fork(self, device: &B::Device) -> Self {
        match self.storage {
            Storage::Dense(param) => Self::dense(param.fork(device)),
            quantized => Self { storage: quantized }.to_device(device),
        }
    }

    fn collect_devices(&self, mut devices: Devices<B>) -> Devices<B> {
        match &self.storage {
            Storage::Dense(param) => param.collect_devices(devices),
            Storage::Quantized(base) => {
                if !devices.contains(&base.device) {
                    devices.push(base.device.clone());
                }
                devices
            }
        }
    }
}

impl<B: AutodiffBackend> AutodiffModule<B> for BaseWeight<B> {
    type InnerModule = BaseWeight<B::InnerBackend>;

    fn valid(&self) -> Self::InnerModule {
        match &self.storage {
            Storage::Dense(param) => BaseWeight::dense(param.valid()),
            Storage::Quantized(base) => base.clone().cast().into_weight(),
        }
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        match module.storage {
            Storage::Dense(param) => Self::dense(
                <Param<Tensor<B, 2>> as AutodiffModule<B>>::from_inner(param),
            ),
            Storage::Quantized(base) => base.cast().into_weight(),
        }
    }
}

impl<B: Backend> ModuleDisplayDefault for BaseWeight<B> {
    fn content(&self, content: Content) -> Option<Content> {
        match &self.storage {
            Storage::Dense(param) => param.content(content),
            Storage::Quantized(base) => content
                .add_formatted(&format!(
                    "QuantizedWeight {{shape: {:?}, bits: {}, values per scale: {}, bytes: {}}}",
                    base.matrix.shape(),
                    base.matrix.bits(),
                    base.matrix.block(),
                    base.matrix.bytes()
                ))
                .optional(),
        }
    }
}

impl<B: Backend> ModuleDisplay for BaseWeight<B> {}
