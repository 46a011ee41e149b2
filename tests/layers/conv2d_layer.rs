//! `LoraConv2d`: record compatibility with Burn's `Conv2d`, forward against a brute-force
//! convolution on the host, PEFT's two-convolution semantics, toggling, merging, grouped
//! convolutions, PEFT adapter files and bad inputs.
//!
//! Tolerance: the reference is a direct convolution computed on the host in f64 with the kernel
//! `W + s · ΔK`, `ΔK[o, c, y, x] = Σ_k A[(c·kh + y)·kw + x, k] B[k, o]` summed by hand from the
//! factors (no transpose or reshape of the library involved). The layer sums the same
//! `in · kh · kw ≤ 72` products per output in f32 (im2col + gemm, in another order), and its
//! unfused path adds the rank-4 update separately. Inputs, kernels and factors are of order
//! one (the update scaled to the same order), so outputs stay below ~30 and the f32 rounding of
//! 72-term sums is a few ulps of values of that size, ≲ 2e-5; we allow 1e-4
//! (`crate::common::matmul_tol` widens it on CUDA's TF32 convolutions). A wrong transpose or reshape
//! of a factor, a missing scale or a wrong padding moves outputs by order one.

use crate::common::safetensors_io::{edit_tensors, raw, raw_mut, read_raw, PEFT_PREFIX};
use crate::common::snapshot::ParamSnapshot;
use crate::common::{assert_bit_identical, max_abs_diff, randn, values, AB, B};
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, PaddingConfig2d};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use burn_lora::{
    load_adapter, save_adapter, save_checkpoint, LayerKind, LoraAdapter, LoraConfig, LoraConv2d,
    LoraConv2dConfig, LoraError, LoraLayer, LoraLinear, LoraModel, PathMap, Targets,
    VisitLoraLayers, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};
use burn_store::{ModuleSnapshot, SafetensorsStore};

const RANK: usize = 4;
const OUT: usize = 16;

fn tol() -> f32 {
    crate::common::matmul_tol(1e-4)
}

/// The settings of one convolution (everything but its values).
#[derive(Debug, Clone)]
struct Setting {
    channels_in: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    padding: PaddingConfig2d,
    groups: usize,
}

impl Setting {
    fn new(channels_in: usize, kernel: [usize; 2], padding: PaddingConfig2d) -> Self {
        Self {
            channels_in,
            kernel,
            stride: [1, 1],
            dilation: [1, 1],
            padding,
            groups: 1,
        }
    }

    fn stride(mut self, stride: [usize; 2]) -> Self {
        self.stride = stride;
        self
    }

    fn dilation(mut self, dilation: [usize; 2]) -> Self {
        self.dilation = dilation;
        self
    }

    fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Burn's `Conv2d` with these settings, `OUT` output channels and host-drawn values.
    fn plain<Bk: Backend>(&self, seed: u64) -> Conv2d<Bk> {
        let [kh, kw] = self.kernel;
        let shape = [OUT, self.channels_in / self.groups, kh, kw];
        Conv2d {
            weight: Param::from_tensor(randn::<Bk, 4>(shape, seed).mul_scalar(0.3)),
            bias: Some(Param::from_tensor(randn([OUT], seed + 1))),
            stride: self.stride,
            kernel_size: self.kernel,
            dilation: self.dilation,
            groups: self.groups,
            padding: self.padding.clone(),
        }
    }

    /// The same layer as a LoRA layer holding adapter "trained" with non-zero factors.
    fn adapted<Bk: Backend>(&self, config: &LoraConfig, seed: u64) -> LoraConv2d<Bk> {
        let mut layer = LoraConv2d::from_conv2d(self.plain(seed));
        let [d_input, d_output] = layer.adapter_dims();
        let adapter = LoraAdapter::from_factors(
            "trained",
            config,
            randn([d_input, config.rank], seed + 2),
            randn::<Bk, 2>([config.rank, d_output], seed + 3).mul_scalar(0.3),
        )
        .unwrap();
        layer.insert_adapter(adapter).unwrap();
        layer
    }

    /// A small input (fewer output positions than output channels: the adapter's own
    /// convolutions run) and a larger one (the adapter is folded into the kernel).
    fn inputs<Bk: Backend>(&self, seed: u64) -> [Tensor<Bk, 4>; 2] {
        [
            randn([1, self.channels_in, 3, 3], seed),
            randn([2, self.channels_in, 9, 8], seed + 1),
        ]
    }
}

/// Valid, asymmetric explicit padding with stride and dilation, `Same` with an even kernel
/// (asymmetric) and with stride and dilation.
fn settings() -> Vec<Setting> {
    vec![
        Setting::new(3, [3, 3], PaddingConfig2d::Valid),
        Setting::new(4, [3, 2], PaddingConfig2d::Explicit(1, 0, 2, 1))
            .stride([2, 1])
            .dilation([1, 2]),
        Setting::new(4, [2, 2], PaddingConfig2d::Same),
        Setting::new(2, [3, 3], PaddingConfig2d::Same)
            .stride([2, 2])
            .dilation([2, 1]),
    ]
}

/// `((top, bottom), (left, right))` as Burn's `Conv2d` pads (`Same`: `ceil(size / stride)`
/// outputs, the odd pixel at the end, dilation not counted).
fn padding(setting: &Setting, [h, w]: [usize; 2]) -> [usize; 4] {
    let same = |k: usize, s: usize, size: usize| {
        let total = ((size.div_ceil(s) - 1) * s + k).saturating_sub(size);
        (total / 2, total - total / 2)
    };
    match setting.padding {
        PaddingConfig2d::Valid => [0, 0, 0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [top, bottom, left, right],
        PaddingConfig2d::Same => {
            let (top, bottom) = same(setting.kernel[0], setting.stride[0], h);
            let (left, right) = same(setting.kernel[1], setting.stride[1], w);
            [top, bottom, left, right]
        }
    }
}

/// Kernel size, stride, dilation and `[top, bottom, left, right]` padding of a convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pad: [usize; 4],
}

impl Geometry {
    /// The geometry of `setting` (and of PEFT's `lora_A`) on a `[h, w]` input.
    fn of(setting: &Setting, size: [usize; 2]) -> Self {
        Self {
            kernel: setting.kernel,
            stride: setting.stride,
            dilation: setting.dilation,
            pad: padding(setting, size),
        }
    }

    /// A 1x1 convolution (PEFT's `lora_B`).
    fn pointwise() -> Self {
        Self {
            kernel: [1, 1],
            stride: [1, 1],
            dilation: [1, 1],
            pad: [0; 4],
        }
    }
}

/// A direct convolution in f64 (groups 1): `x [n, c, h, w]`, `kernel [out, c, kh, kw]`.
fn naive_conv(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    kernel: &[f64],
    out: usize,
    geometry: Geometry,
    bias: Option<&[f32]>,
) -> (Vec<f64>, [usize; 4]) {
    let Geometry {
        kernel: [kh, kw],
        stride,
        dilation: [dh, dw],
        pad: [top, bottom, left, right],
    } = geometry;
    let ho = (h + top + bottom - dh * (kh - 1) - 1) / stride[0] + 1;
    let wo = (w + left + right - dw * (kw - 1) - 1) / stride[1] + 1;
    let mut y = vec![0.0f64; n * out * ho * wo];
    for b in 0..n {
        for o in 0..out {
            for i in 0..ho {
                for j in 0..wo {
                    let mut sum = bias.map_or(0.0, |bias| bias[o] as f64);
                    for ci in 0..c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let row = (i * stride[0] + ky * dh) as isize - top as isize;
                                let col = (j * stride[1] + kx * dw) as isize - left as isize;
                                if row < 0 || col < 0 || row >= h as isize || col >= w as isize {
                                    continue;
                                }
                                let xv = x[((b * c + ci) * h + row as usize) * w + col as usize];
                                sum += xv as f64 * kernel[((o * c + ci) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    y[((b * out + o) * ho + i) * wo + j] = sum;
                }
            }
        }
    }
    (y, [n, out, ho, wo])
}

/// `W + Σ_active s · ΔK`, `ΔK[o, c, y, x] = Σ_k A[(c·kh + y)·kw + x, k] B[k, o]`, in f64.
fn brute_force_kernel<Bk: Backend>(layer: &LoraConv2d<Bk>) -> Vec<f64> {
    let [kh, kw] = layer.kernel_size();
    let c = layer.channels_in();
    let mut kernel: Vec<f64> = values(layer.weight()).iter().map(|&v| v as f64).collect();
    for adapter in layer.adapters().iter().filter(|a| a.is_active()) {
        let (a, b, rank) = (
            values(adapter.lora_a()),
            values(adapter.lora_b()),
            adapter.rank(),
        );
        for o in 0..OUT {
            for ci in 0..c {
                for y in 0..kh {
                    for x in 0..kw {
                        let row = (ci * kh + y) * kw + x;
                        let delta: f64 = (0..rank)
                            .map(|k| a[row * rank + k] as f64 * b[k * OUT + o] as f64)
                            .sum();
                        kernel[((o * c + ci) * kh + y) * kw + x] += adapter.scale() * delta;
                    }
                }
            }
        }
    }
    kernel
}

/// The layer's output computed by [`naive_conv`] with [`brute_force_kernel`] (or the base
/// kernel when disabled).
fn reference<Bk: Backend>(
    setting: &Setting,
    layer: &LoraConv2d<Bk>,
    x: Tensor<Bk, 4>,
) -> Tensor<Bk, 4> {
    let dims = x.dims();
    let kernel = brute_force_kernel(layer);
    let bias = layer.bias().map(values);
    let geometry = Geometry::of(setting, [dims[2], dims[3]]);
    let (y, shape) = naive_conv(&values(x), dims, &kernel, OUT, geometry, bias.as_deref());
    let y: Vec<f32> = y.into_iter().map(|v| v as f32).collect();
    Tensor::from_data(TensorData::new(y, shape), &Default::default())
}

#[test]
fn burn_conv2d_checkpoint_loads_into_the_lora_layer_and_back() {
    let setting = &settings()[1];
    let plain = setting.plain::<B>(1);
    let x = setting.inputs::<B>(2)[1].clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conv.safetensors");
    save_checkpoint(&plain, &path).unwrap();
    let keys: Vec<String> = read_raw(&path).into_iter().map(|t| t.key).collect();
    assert_eq!(keys, ["bias", "weight"]);

    // Through burn-store into a LoRA layer of the same settings with other random values.
    let config = LoraConv2dConfig::new([setting.channels_in, OUT], setting.kernel)
        .with_stride(setting.stride)
        .with_dilation(setting.dilation)
        .with_padding(setting.padding.clone());
    let mut lora = config.init::<B>(&Default::default()).unwrap();
    let result = lora
        .load_from(&mut SafetensorsStore::from_file(&path))
        .unwrap();
    assert!(
        result.errors.is_empty() && result.missing.is_empty(),
        "{result:?}"
    );
    assert_bit_identical(lora.forward(x.clone()), plain.forward(x.clone()));

    // Through Burn's recorder: Conv2d's record is a LoraConv2d record without adapters.
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(plain.clone().into_record(), ()).unwrap();
    let fresh = config.init::<B>(&Default::default()).unwrap();
    let loaded = fresh.load_record(recorder.load(bytes, &Default::default()).unwrap());
    assert_bit_identical(loaded.forward(x.clone()), plain.forward(x.clone()));

    // And back: a merged-and-unloaded LoRA layer is a plain Conv2d record.
    let mut adapted = setting.adapted::<B>(&LoraConfig::new(RANK, 8.0), 3);
    let expected = adapted.forward(x.clone());
    LoraLayer::merge_and_unload(&mut adapted).unwrap();
    let bytes = recorder.record(adapted.into_record(), ()).unwrap();
    let back = Conv2dConfig::new([setting.channels_in, OUT], setting.kernel)
        .with_stride(setting.stride)
        .with_dilation(setting.dilation)
        .with_padding(setting.padding.clone())
        .init::<B>(&Default::default())
        .load_record(recorder.load(bytes, &Default::default()).unwrap());
    let diff = max_abs_diff(back.forward(x), expected);
    assert!(diff < tol(), "{diff}");
}

#[test]
fn without_adapter_the_output_is_bit_identical_to_burn_conv2d() {
    let mut all = settings();
    all.push(Setting::new(4, [3, 3], PaddingConfig2d::Explicit(1, 1, 1, 1)).groups(2));
    for (index, setting) in all.iter().enumerate() {
        let plain = setting.plain::<B>(10 + index as u64);
        let mut layer = LoraConv2d::from_conv2d(plain.clone());
        for x in setting.inputs::<B>(20) {
            assert_bit_identical(layer.forward(x.clone()), plain.forward(x.clone()));
            assert_bit_identical(layer.forward_base(x.clone()), plain.forward(x));
        }
        if setting.groups != 1 {
            continue;
        }
        // A fresh adapter has B = 0: still bit-identical, on both paths.
        layer
            .add_adapter("fresh", &LoraConfig::new(RANK, 8.0))
            .unwrap();
        for x in setting.inputs::<B>(21) {
            assert_bit_identical(layer.forward(x.clone()), plain.forward(x));
        }
    }
}

#[test]
fn adapter_forward_equals_a_brute_force_convolution_with_the_merged_kernel() {
    for (index, setting) in settings().iter().enumerate() {
        let config = LoraConfig::new(RANK, 8.0);
        let layer = setting.adapted::<B>(&config, 30 + 5 * index as u64);
        assert_eq!(
            layer.adapter_dims(),
            [
                setting.channels_in * setting.kernel.iter().product::<usize>(),
                OUT
            ]
        );
        for x in setting.inputs::<B>(40) {
            let out = layer.forward(x.clone());
            let expected = reference(setting, &layer, x.clone());
            assert_eq!(out.dims(), expected.dims(), "{setting:?}");
            let diff = max_abs_diff(out.clone(), expected);
            println!(
                "{setting:?} input {:?}: max |lora - brute force| = {diff:e}",
                x.dims()
            );
            assert!(diff < tol(), "{setting:?} input {:?}: {diff}", x.dims());
            let contribution = max_abs_diff(out, layer.forward_base(x));
            assert!(
                contribution > 0.1,
                "adapter contribution too small: {contribution}"
            );
        }
    }
}

#[test]
fn two_active_adapters_and_rslora_equal_the_brute_force_reference() {
    let setting = &settings()[1];
    let mut layer = setting.adapted::<B>(&LoraConfig::new(RANK, 8.0).with_use_rslora(true), 50);
    let [d_input, d_output] = layer.adapter_dims();
    let second = LoraAdapter::from_factors(
        "second",
        &LoraConfig::new(2, 1.0),
        randn([d_input, 2], 51),
        randn([2, d_output], 52),
    )
    .unwrap();
    layer.insert_adapter(second).unwrap();
    layer.set_active_adapters(&["trained", "second"]).unwrap();
    for x in setting.inputs::<B>(53) {
        let diff = max_abs_diff(layer.forward(x.clone()), reference(setting, &layer, x));
        assert!(diff < tol(), "{diff}");
    }
}

/// A conv layer and a head: the smallest model with a convolution LoRA layer.
#[derive(Module, Debug)]
struct ConvNet<B: Backend> {
    conv: LoraConv2d<B>,
    head: LoraLinear<B>,
}

impl<B: Backend> VisitLoraLayers<B> for ConvNet<B> {
    fn visit_lora_layers<'a>(&'a self, layers: &mut Vec<&'a dyn LoraLayer<B>>) {
        self.conv.visit_lora_layers(layers);
        self.head.visit_lora_layers(layers);
    }

    fn visit_lora_layers_mut<'a>(&'a mut self, layers: &mut Vec<&'a mut dyn LoraLayer<B>>) {
        self.conv.visit_lora_layers_mut(layers);
        self.head.visit_lora_layers_mut(layers);
    }
}

impl<B: Backend> LoraModel<B> for ConvNet<B> {}

/// The convolution of [`ConvNet`]: 4 → 16 channels, 3x3, padding 1, stride 2.
fn net_setting(groups: usize) -> Setting {
    Setting::new(4, [3, 3], PaddingConfig2d::Explicit(1, 1, 1, 1))
        .stride([2, 2])
        .groups(groups)
}

impl<B: Backend> ConvNet<B> {
    /// On `[n, 4, 6, 6]` inputs: conv to `[n, 16, 3, 3]`, flatten, head to 3 outputs.
    fn new(groups: usize, seed: u64) -> Self {
        Self {
            conv: LoraConv2d::from_conv2d(net_setting(groups).plain(seed)),
            head: LoraLinear::from_linear(Linear {
                weight: Param::from_tensor(randn::<B, 2>([OUT * 9, 3], seed + 5).mul_scalar(0.1)),
                bias: Some(Param::from_tensor(randn([3], seed + 6))),
            }),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let y = self.conv.forward(x);
        let [n, c, h, w] = y.dims();
        self.head.forward(y.reshape([n, c * h * w]))
    }
}

/// A [`ConvNet`] with adapter "default" (rank 4, alpha 8) on both layers, trained-looking.
fn trained_net(seed: u64) -> ConvNet<B> {
    let mut net = ConvNet::new(1, seed);
    let config = LoraConfig::new(RANK, 8.0);
    let conv = LoraAdapter::from_factors(
        "default",
        &config,
        randn([36, RANK], 90),
        randn::<B, 2>([RANK, OUT], 91).mul_scalar(0.3),
    )
    .unwrap();
    net.conv.insert_adapter(conv).unwrap();
    let head = LoraAdapter::from_factors(
        "default",
        &config,
        randn::<B, 2>([OUT * 9, RANK], 92).mul_scalar(0.1),
        randn([RANK, 3], 93),
    )
    .unwrap();
    net.head.insert_adapter(head).unwrap();
    net
}

fn net_input() -> Tensor<B, 4> {
    randn([2, 4, 6, 6], 94)
}

#[test]
fn peft_adapter_file_holds_peft_conv_kernels_and_round_trips() {
    let net = trained_net(60);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&net, "default", dir.path(), &PathMap::identity()).unwrap();
    let tensors = read_raw(&dir.path().join(ADAPTER_WEIGHTS_FILE));
    let found: Vec<(&str, &[usize])> = tensors
        .iter()
        .map(|t| (t.key.as_str(), t.shape.as_slice()))
        .collect();
    assert_eq!(
        found,
        [
            ("base_model.model.conv.lora_A.weight", &[RANK, 4, 3, 3][..]),
            (
                "base_model.model.conv.lora_B.weight",
                &[OUT, RANK, 1, 1][..]
            ),
            ("base_model.model.head.lora_A.weight", &[RANK, OUT * 9][..]),
            ("base_model.model.head.lora_B.weight", &[3, RANK][..]),
        ]
    );

    let mut fresh = ConvNet::<B>::new(1, 60);
    load_adapter(&mut fresh, "default", dir.path(), &PathMap::identity()).unwrap();
    assert_eq!(fresh.conv.active_adapters(), ["default"]);
    assert_bit_identical(fresh.forward(net_input()), net.forward(net_input()));
}

#[test]
fn the_file_kernels_run_as_peft_runs_them_give_the_layer_output() {
    // PEFT's forward: base conv + s · lora_B(lora_A(x)), lora_A a conv with the base's kernel
    // size, stride and padding, lora_B a 1x1 conv; computed here by direct convolutions from
    // the kernels in the saved adapter file.
    let net = trained_net(61);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&net, "default", dir.path(), &PathMap::identity()).unwrap();
    let tensors = read_raw(&dir.path().join(ADAPTER_WEIGHTS_FILE));
    let to_f64 = |key: &str| -> Vec<f64> {
        raw(&tensors, &format!("{PEFT_PREFIX}conv.{key}"))
            .f32_values()
            .into_iter()
            .map(f64::from)
            .collect()
    };
    let (kernel_a, kernel_b) = (to_f64("lora_A.weight"), to_f64("lora_B.weight"));
    let setting = net_setting(1);
    let layer = &net.conv;
    let scale = layer.adapter("default").unwrap().scale();
    for x in [randn::<B, 4>([1, 4, 3, 3], 62), randn([2, 4, 6, 6], 63)] {
        let dims = x.dims();
        let xs = values(x.clone());
        let base_kernel: Vec<f64> = values(layer.weight()).iter().map(|&v| v as f64).collect();
        let bias = values(layer.bias().unwrap());
        let geometry = Geometry::of(&setting, [dims[2], dims[3]]);
        let (base, shape) = naive_conv(&xs, dims, &base_kernel, OUT, geometry, Some(&bias));
        let (hidden, hidden_shape) = naive_conv(&xs, dims, &kernel_a, RANK, geometry, None);
        let hidden: Vec<f32> = hidden.into_iter().map(|v| v as f32).collect();
        let pointwise = Geometry::pointwise();
        let (update, _) = naive_conv(&hidden, hidden_shape, &kernel_b, OUT, pointwise, None);
        let y: Vec<f32> = base
            .iter()
            .zip(&update)
            .map(|(b, u)| (b + scale * u) as f32)
            .collect();
        let peft = Tensor::<B, 4>::from_data(TensorData::new(y, shape), &Default::default());
        let diff = max_abs_diff(layer.forward(x), peft);
        println!("input {dims:?}: max |layer - PEFT's two convs| = {diff:e}");
        assert!(diff < tol(), "input {dims:?}: {diff}");
    }
}

#[test]
fn merged_kernel_is_the_brute_force_kernel_and_unmerge_is_exact() {
    let setting = &settings()[1];
    let mut layer = setting.adapted::<B>(&LoraConfig::new(RANK, 8.0), 70);
    let [small, large] = setting.inputs::<B>(71);
    let weight = layer.weight();
    let unmerged = [layer.forward(small.clone()), layer.forward(large.clone())];

    let kernel = layer.merge_to_conv2d().unwrap().weight.val();
    let expected: Vec<f32> = brute_force_kernel(&layer)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let expected = Tensor::<B, 4>::from_data(
        TensorData::new(expected, kernel.dims()),
        &Default::default(),
    );
    let diff = max_abs_diff(kernel, expected);
    assert!(diff < 1e-5, "merged kernel vs W + s·ΔK: {diff}");

    layer.merge().unwrap();
    assert_eq!(layer.merged_adapters(), ["trained"]);
    // Folding in forward uses the kernel merging installs: the large input agrees bit for bit.
    assert_bit_identical(layer.forward(large.clone()), unmerged[1].clone());
    let diff = max_abs_diff(layer.forward(small.clone()), unmerged[0].clone());
    assert!(diff < tol(), "merged vs unmerged (small input): {diff}");
    assert_bit_identical(layer.weight(), weight.clone());
    assert_eq!(
        layer.merge(),
        Err(LoraError::Merged(vec!["trained".into()]))
    );

    layer.unmerge().unwrap();
    assert_bit_identical(layer.weight(), weight);
    assert_bit_identical(layer.forward(small), unmerged[0].clone());
    assert_bit_identical(layer.forward(large), unmerged[1].clone());
    assert_eq!(layer.unmerge(), Err(LoraError::NotMerged));
}

#[test]
fn disabled_is_bit_identical_to_the_base_merged_or_not() {
    let setting = &settings()[2];
    let mut layer = setting.adapted::<B>(&LoraConfig::new(RANK, 8.0), 80);
    let plain = setting.plain::<B>(80);
    for merge in [false, true] {
        if merge {
            layer.merge().unwrap();
        }
        for x in setting.inputs::<B>(81) {
            layer.set_enabled(false);
            assert_bit_identical(layer.forward(x.clone()), plain.forward(x.clone()));
            layer.set_enabled(true);
            assert!(max_abs_diff(layer.forward(x.clone()), plain.forward(x)) > 0.1);
        }
    }
}

#[test]
fn merge_and_unload_leaves_a_plain_conv_with_the_same_output() {
    let setting = &settings()[3];
    let layer = setting.adapted::<B>(&LoraConfig::new(RANK, 8.0), 90);
    let plain = layer.merge_to_conv2d().unwrap();
    let mut unloaded = layer.clone();
    LoraLayer::merge_and_unload(&mut unloaded).unwrap();
    assert!(unloaded.adapters().is_empty() && !unloaded.is_merged());
    for x in setting.inputs::<B>(91) {
        let diff = max_abs_diff(plain.forward(x.clone()), layer.forward(x.clone()));
        assert!(diff < tol(), "merge_to_conv2d: {diff}");
        assert_bit_identical(unloaded.forward(x.clone()), plain.forward(x));
    }
    assert_eq!(unloaded.bias().map(values), layer.bias().map(values));
    unloaded
        .add_adapter("next", &LoraConfig::new(2, 2.0))
        .unwrap();
}

#[test]
fn grouped_convolutions_refuse_adapters_from_every_entry_point() {
    let unsupported = |err: &LoraError| matches!(err, LoraError::Unsupported(what) if what.contains("groups = 2"));
    let mut layer = LoraConv2d::from_conv2d(net_setting(2).plain::<B>(100));
    assert_eq!(layer.adapter_dims(), [2 * 9, OUT]);
    let err = layer
        .add_adapter("a", &LoraConfig::new(2, 2.0))
        .unwrap_err();
    assert!(unsupported(&err), "{err:?}");
    let adapter = LoraAdapter::from_factors(
        "a",
        &LoraConfig::new(2, 2.0),
        randn([18, 2], 1),
        randn([2, OUT], 2),
    )
    .unwrap();
    let err = layer.insert_adapter(adapter).unwrap_err();
    assert!(unsupported(&err), "{err:?}");
    assert!(layer.adapters().is_empty());

    // Model-wide: nothing is attached, not even to the head.
    let mut net = ConvNet::<B>::new(2, 101);
    let before = ParamSnapshot::of::<B, _>(&net);
    let err = net
        .attach("a", &LoraConfig::new(2, 2.0), &Targets::all())
        .unwrap_err();
    assert!(unsupported(&err), "{err:?}");
    assert!(net.adapter_names().is_empty());
    ParamSnapshot::of::<B, _>(&net).assert_same(&before, "attach");
    // Linear layers alone are fine.
    net.attach("lin", &LoraConfig::new(2, 2.0), &Targets::all_linear())
        .unwrap();
    net.remove_adapter("lin").unwrap();

    // Loading a file that adapts the conv: refused before anything is inserted.
    let dir = tempfile::tempdir().unwrap();
    save_adapter(
        &trained_net(102),
        "default",
        dir.path(),
        &PathMap::identity(),
    )
    .unwrap();
    let before = ParamSnapshot::of::<B, _>(&net);
    let err = load_adapter(&mut net, "default", dir.path(), &PathMap::identity()).unwrap_err();
    assert!(unsupported(&err), "{err:?}");
    assert!(net.adapter_names().is_empty());
    ParamSnapshot::of::<B, _>(&net).assert_same(&before, "load_adapter");
}

#[test]
fn rank_too_large_wrong_file_shapes_and_wrong_channels_are_errors_leaving_things_unchanged() {
    // Rank above min(in·kh·kw, out) = min(36, 16).
    let mut net = trained_net(110);
    let before = ParamSnapshot::of::<B, _>(&net);
    let err = net
        .conv
        .add_adapter("big", &LoraConfig::new(OUT + 1, 1.0))
        .unwrap_err();
    assert_eq!(
        err,
        LoraError::RankTooLarge {
            rank: OUT + 1,
            d_input: 36,
            d_output: OUT,
            max: OUT
        }
    );
    ParamSnapshot::of::<B, _>(&net).assert_same(&before, "rank too large");

    // A kernel of the wrong spatial size in the file.
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&net, "default", dir.path(), &PathMap::identity()).unwrap();
    let key = format!("{PEFT_PREFIX}conv.lora_A.weight");
    edit_tensors(dir.path(), |tensors| {
        let a = raw_mut(tensors, &key);
        a.shape = vec![RANK, 4, 3, 2];
        a.data.truncate(RANK * 4 * 3 * 2 * 4);
    });
    let mut fresh = ConvNet::<B>::new(1, 110);
    let before = ParamSnapshot::of::<B, _>(&fresh);
    let err = load_adapter(&mut fresh, "default", dir.path(), &PathMap::identity()).unwrap_err();
    crate::common::assert_error::assert_shape_mismatch(
        &err,
        &key,
        &[RANK, 4, 3, 3],
        &[RANK, 4, 3, 2],
    );
    ParamSnapshot::of::<B, _>(&fresh).assert_same(&before, "wrong kernel shape");
    assert!(fresh.adapter_names().is_empty());
    assert!(std::fs::metadata(dir.path().join(ADAPTER_CONFIG_FILE)).is_ok());

    // An input with the wrong number of channels.
    let err = net.conv.try_forward(randn([1, 3, 6, 6], 111)).unwrap_err();
    assert_eq!(
        err,
        LoraError::ShapeMismatch {
            what: "conv2d input".into(),
            expected: vec![1, 4, 6, 6],
            found: vec![1, 3, 6, 6]
        }
    );
    assert_eq!(
        net.conv.try_forward(net_input()).unwrap().dims(),
        [2, OUT, 3, 3]
    );
}

#[test]
fn training_runs_the_adapter_convolutions_with_dropout_and_gradients_on_the_factors_only() {
    let setting = &settings()[1];
    let config = LoraConfig::new(RANK, 8.0);
    let mut layer = setting.adapted::<AB>(&config, 120);
    layer.freeze_base();
    let [small, large] = setting.inputs::<AB>(121);
    for x in [small.clone(), large.clone()] {
        let diff = max_abs_diff(layer.forward(x.clone()), reference(setting, &layer, x));
        assert!(diff < tol(), "autodiff forward: {diff}");
    }
    let grads = layer.forward(large.clone()).powi_scalar(2).sum().backward();
    let adapter = layer.adapter("trained").unwrap();
    assert!(
        layer.weight_param().grad(&grads).is_none(),
        "the base is frozen"
    );
    assert!(layer.bias_param().unwrap().grad(&grads).is_none());
    for grad in [
        adapter
            .lora_a_param()
            .grad(&grads)
            .expect("A has a gradient"),
        adapter
            .lora_b_param()
            .grad(&grads)
            .expect("B has a gradient"),
    ] {
        assert!(values(grad).iter().any(|g| *g != 0.0));
    }

    // Dropout on the adapter's input: random in training, off at inference.
    let config = LoraConfig::new(RANK, 8.0).with_dropout(0.5);
    let layer = setting.adapted::<AB>(&config, 122);
    let (t1, t2) = (layer.forward(large.clone()), layer.forward(large.clone()));
    assert!(
        max_abs_diff(t1.clone(), t2) > 1e-3,
        "dropout was not applied in training"
    );
    // The base is untouched by dropout: only the adapter's share varies.
    let base = layer.forward_base(large.clone());
    assert!(max_abs_diff(t1, base) > 1e-3);
    let valid = layer.valid();
    let x = large.inner();
    assert_bit_identical(valid.forward(x.clone()), valid.forward(x.clone()));
    let diff = max_abs_diff(valid.forward(x.clone()), reference(setting, &valid, x));
    assert!(diff < tol(), "{diff}");
}

#[test]
fn kind_shapes_report_and_config_errors() {
    let net = trained_net(130);
    assert_eq!(net.conv.kind(), LayerKind::Conv2d);
    assert_eq!(net.conv.base_weight_shape(), [OUT, 4, 3, 3]);
    assert_eq!(
        net.conv.peft_factor_shapes(RANK),
        [vec![RANK, 4, 3, 3], vec![OUT, RANK, 1, 1]]
    );
    let report = net.parameter_report().unwrap();
    assert_eq!(report.layers[0].weight, [OUT, 4, 3, 3]);
    assert_eq!(report.layers[0].bias, Some(OUT));
    assert_eq!(report.layers[0].lora_params(), RANK * (36 + OUT));

    let device = Default::default();
    let invalid = |config: LoraConv2dConfig| {
        matches!(config.init::<B>(&device), Err(LoraError::InvalidModel(_)))
    };
    assert!(invalid(LoraConv2dConfig::new([0, 4], [3, 3])));
    assert!(invalid(LoraConv2dConfig::new([4, 4], [0, 3])));
    assert!(invalid(
        LoraConv2dConfig::new([4, 4], [3, 3]).with_stride([1, 0])
    ));
    assert!(invalid(
        LoraConv2dConfig::new([4, 4], [3, 3]).with_dilation([0, 1])
    ));
    assert!(invalid(
        LoraConv2dConfig::new([4, 6], [3, 3]).with_groups(4)
    ));
    assert!(invalid(
        LoraConv2dConfig::new([4, 4], [3, 3]).with_groups(0)
    ));
    let grouped = LoraConv2dConfig::new([4, 6], [3, 3])
        .with_groups(2)
        .init::<B>(&device)
        .unwrap();
    assert_eq!(grouped.channels_in(), 4);
    assert_eq!(grouped.weight().dims(), [6, 2, 3, 3]);
}
