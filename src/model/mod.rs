//! Inf-Net as a graph, built from a state_dict with the public PyTorch key names.
//!
//! Loading has two phases so that a bad file gets one complete error: first the key set is checked
//! against the keys that the detected structure (blocks per stage, Res2Net scale) requires, listing
//! every missing and unexpected key; then the graph is built from the tensors' shapes, collecting
//! every shape inconsistency. BatchNorm (eps 1e-5) is folded into the preceding convolution.

mod attention;
mod backbone;
mod decoder;
mod rfb;
pub mod synthetic;

use crate::error::{Error, Result};
use crate::graph::{ConvParam, Graph, View};
use crate::weights::{StateDict, Tensor};
use std::collections::BTreeSet;
use std::path::Path;

pub const BN_EPS: f32 = 1e-5;

/// The variant's shape, read from the tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Bottle2neck blocks per stage (public model: 3, 4, 6, 3).
    pub blocks: [usize; 4],
    /// Res2Net scale s (public: 4).
    pub scale: usize,
    /// Res2Net split width per stage (public: 26, 52, 104, 208).
    pub widths: [usize; 4],
    /// Output channels per stage (public: 256, 512, 1024, 2048).
    pub stage_out: [usize; 4],
    /// Stem widths (public: 32, 64).
    pub stem: [usize; 2],
    /// RFB / decoder channel (public: 32).
    pub rfb_channel: usize,
    /// Reverse-attention widths of branches 4, 3, 2 (public: 256, 64, 64).
    pub ra_widths: [usize; 3],
    /// Edge-guidance channels (public: 64).
    pub edge_channel: usize,
}

impl Config {
    pub fn is_public_full(&self) -> bool {
        self.blocks == [3, 4, 6, 3]
            && self.scale == 4
            && self.widths == [26, 52, 104, 208]
            && self.stage_out == [256, 512, 1024, 2048]
            && self.rfb_channel == 32
    }
}

pub struct InfNet {
    pub config: Config,
    /// Shared with the engines built from it (the weights live here once).
    pub graph: std::sync::Arc<Graph>,
}

impl InfNet {
    pub fn load(path: impl AsRef<Path>) -> Result<InfNet> {
        let sd = StateDict::load(path)?;
        InfNet::from_state_dict(&sd)
    }

    pub fn from_state_dict(sd: &StateDict) -> Result<InfNet> {
        let (blocks, nums, downsample) = detect_structure(sd)?;
        check_keys(sd, blocks, nums, downsample)?;
        let mut b = Builder { sd, errors: Vec::new(), g: Graph::default() };
        let input = b.g.add_buf("input", 3, 1);
        b.g.input = input.buf;
        let feats = backbone::build(&mut b, input, blocks, nums, downsample);
        let config_partial = feats.config.clone();
        let rfb2 = rfb::build(&mut b, "rfb2_1", feats.x2, 8);
        let rfb3 = rfb::build(&mut b, "rfb3_1", feats.x3, 16);
        let rfb4 = rfb::build(&mut b, "rfb4_1", feats.x4, 32);
        let ra5 = decoder::build(&mut b, rfb4, rfb3, rfb2);
        if ra5.c != 1 {
            b.errors.push(format!("ParDec.conv5.weight has {} outputs, expected 1 (one class)", ra5.c));
        }
        let heads = attention::build(&mut b, &feats, ra5);
        if !b.errors.is_empty() {
            return Err(Error::file(
                &sd.path,
                format!("{} tensor(s) with the wrong shape: {}", b.errors.len(), b.errors.join("; ")),
            ));
        }
        let config = Config {
            rfb_channel: rfb2.c,
            ra_widths: heads.ra_widths,
            edge_channel: heads.edge_channel,
            ..config_partial
        };
        Ok(InfNet { config, graph: std::sync::Arc::new(b.g) })
    }
}

/// Blocks per stage, number of chained 3×3 convs per block, and whether each stage has a downsample path.
fn detect_structure(sd: &StateDict) -> Result<([usize; 4], usize, [bool; 4])> {
    let has = |k: &str| sd.tensors.contains_key(k);
    let mut blocks = [0; 4];
    let mut downsample = [false; 4];
    for s in 0..4 {
        while has(&format!("resnet.layer{}.{}.conv1.weight", s + 1, blocks[s])) {
            blocks[s] += 1;
        }
        downsample[s] = has(&format!("resnet.layer{}.0.downsample.1.weight", s + 1));
    }
    let mut nums = 0;
    while has(&format!("resnet.layer1.0.convs.{nums}.weight")) {
        nums += 1;
    }
    if blocks.contains(&0) || nums == 0 {
        let found = sd.tensors.keys().take(5).cloned().collect::<Vec<_>>().join(", ");
        return Err(Error::file(
            &sd.path,
            format!(
                "not an Inf-Net (Res2Net) state_dict: no `resnet.layerN.0.conv1.weight` / `resnet.layer1.0.convs.0.weight` (blocks found per stage {blocks:?}); first keys: {found}"
            ),
        ));
    }
    Ok((blocks, nums, downsample))
}

const BN_KEYS: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

/// Every key the structure requires, in the public names.
pub fn expected_keys(blocks: [usize; 4], nums: usize, downsample: [bool; 4]) -> Vec<String> {
    let mut k = Vec::new();
    let bn = |k: &mut Vec<String>, p: &str| {
        for s in BN_KEYS {
            k.push(format!("{p}.{s}"));
        }
    };
    let basic = |k: &mut Vec<String>, p: &str| {
        k.push(format!("{p}.conv.weight"));
        for s in BN_KEYS {
            k.push(format!("{p}.bn.{s}"));
        }
    };
    k.push("resnet.conv1.0.weight".into());
    bn(&mut k, "resnet.conv1.1");
    k.push("resnet.conv1.3.weight".into());
    bn(&mut k, "resnet.conv1.4");
    k.push("resnet.conv1.6.weight".into());
    bn(&mut k, "resnet.bn1");
    for s in 0..4 {
        for b in 0..blocks[s] {
            let p = format!("resnet.layer{}.{}", s + 1, b);
            k.push(format!("{p}.conv1.weight"));
            bn(&mut k, &format!("{p}.bn1"));
            for i in 0..nums {
                k.push(format!("{p}.convs.{i}.weight"));
                bn(&mut k, &format!("{p}.bns.{i}"));
            }
            k.push(format!("{p}.conv3.weight"));
            bn(&mut k, &format!("{p}.bn3"));
            if b == 0 && downsample[s] {
                k.push(format!("{p}.downsample.1.weight"));
                bn(&mut k, &format!("{p}.downsample.2"));
            }
        }
    }
    for r in ["rfb2_1", "rfb3_1", "rfb4_1"] {
        basic(&mut k, &format!("{r}.branch0.0"));
        for br in 1..4 {
            for j in 0..4 {
                basic(&mut k, &format!("{r}.branch{br}.{j}"));
            }
        }
        basic(&mut k, &format!("{r}.conv_cat"));
        basic(&mut k, &format!("{r}.conv_res"));
    }
    for i in 1..=5 {
        basic(&mut k, &format!("ParDec.conv_upsample{i}"));
    }
    basic(&mut k, "ParDec.conv_concat2");
    basic(&mut k, "ParDec.conv_concat3");
    basic(&mut k, "ParDec.conv4");
    k.push("ParDec.conv5.weight".into());
    k.push("ParDec.conv5.bias".into());
    for i in 1..=5 {
        basic(&mut k, &format!("ra4_conv{i}"));
    }
    for br in ["ra3", "ra2", "edge"] {
        for i in 1..=4 {
            basic(&mut k, &format!("{br}_conv{i}"));
        }
    }
    k
}

fn check_keys(sd: &StateDict, blocks: [usize; 4], nums: usize, downsample: [bool; 4]) -> Result<()> {
    let expected: BTreeSet<String> = expected_keys(blocks, nums, downsample).into_iter().collect();
    let present: BTreeSet<String> = sd.tensors.keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&present).cloned().collect();
    let unexpected: Vec<_> = present.difference(&expected).cloned().collect();
    if missing.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("{} missing: {}", missing.len(), missing.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("{} unexpected: {}", unexpected.len(), unexpected.join(", ")));
    }
    Err(Error::file(
        &sd.path,
        format!("state_dict does not match Inf-Net (blocks {blocks:?}, scale {}): {}", nums + 1, parts.join("; ")),
    ))
}

/// Folds an eval-mode BatchNorm into the preceding convolution:
/// W' = W · γ/√(σ²+ε) per output channel, b' = (b − μ) · γ/√(σ²+ε) + β.
/// weight: cout × (cin·kh·kw), bias / gamma / beta / mean / var: cout.
pub fn fold_batchnorm(weight: &mut [f32], bias: &mut [f32], gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32]) {
    let cout = bias.len();
    let per = weight.len() / cout;
    for o in 0..cout {
        let s = gamma[o] / (var[o] + BN_EPS).sqrt();
        for v in &mut weight[o * per..(o + 1) * per] {
            *v *= s;
        }
        bias[o] = (bias[o] - mean[o]) * s + beta[o];
    }
}

/// Geometry of a convolution as the public code declares it (the weight supplies the channel counts).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub dil: usize,
}

impl Geom {
    pub fn k(k: usize) -> Geom {
        Geom { kh: k, kw: k, stride: 1, pad_h: k / 2, pad_w: k / 2, dil: 1 }
    }
    pub fn strided(k: usize, stride: usize) -> Geom {
        Geom { stride, ..Geom::k(k) }
    }
    pub fn rect(kh: usize, kw: usize) -> Geom {
        Geom { kh, kw, stride: 1, pad_h: kh / 2, pad_w: kw / 2, dil: 1 }
    }
    pub fn dilated(d: usize) -> Geom {
        Geom { kh: 3, kw: 3, stride: 1, pad_h: d, pad_w: d, dil: d }
    }
}

pub(crate) struct Builder<'a> {
    pub sd: &'a StateDict,
    pub errors: Vec<String>,
    pub g: Graph,
}

impl<'a> Builder<'a> {
    fn tensor(&self, key: &str) -> &'a Tensor {
        // Presence of every key was checked by `check_keys` before building.
        &self.sd.tensors[key]
    }

    /// Reads a conv weight (`wkey`), optionally a conv bias and a BatchNorm to fold, and checks the
    /// input channels and kernel size against what the graph feeds it.
    pub fn conv(&mut self, wkey: &str, bias: Option<&str>, bn: Option<&str>, cin: usize, geom: Geom) -> ConvParam {
        let w = self.tensor(wkey);
        let name = wkey.trim_end_matches(".weight").trim_end_matches(".conv").to_string();
        let ok = w.shape.len() == 4 && w.shape[1] == cin && w.shape[2] == geom.kh && w.shape[3] == geom.kw && w.shape[0] > 0;
        let cout = if w.shape.len() == 4 { w.shape[0] } else { 0 };
        if !ok {
            self.errors.push(format!(
                "{wkey} is {:?}, expected [out, {cin}, {}, {}]",
                w.shape, geom.kh, geom.kw
            ));
            // Keep building with a well-formed stand-in so that every later problem is reported too.
            return ConvParam {
                name,
                cout: cout.max(1),
                cin,
                kh: geom.kh,
                kw: geom.kw,
                stride: geom.stride,
                pad_h: geom.pad_h,
                pad_w: geom.pad_w,
                dil: geom.dil,
                weight: vec![0.0; cout.max(1) * cin * geom.kh * geom.kw],
                bias: vec![0.0; cout.max(1)],
            };
        }
        let mut weight = w.data.clone();
        let mut b = vec![0.0f32; cout];
        if let Some(bk) = bias {
            let t = self.tensor(bk);
            if t.shape != [cout] {
                self.errors.push(format!("{bk} is {:?}, expected [{cout}]", t.shape));
            } else {
                b.copy_from_slice(&t.data);
            }
        }
        if let Some(p) = bn {
            let get = |s: &str| self.tensor(&format!("{p}.{s}"));
            let (gamma, beta, mean, var) = (get("weight"), get("bias"), get("running_mean"), get("running_var"));
            let mut bad = false;
            for (s, t) in BN_KEYS.iter().zip([gamma, beta, mean, var]) {
                if t.shape != [cout] {
                    self.errors.push(format!("{p}.{s} is {:?}, expected [{cout}]", t.shape));
                    bad = true;
                }
            }
            if !bad {
                fold_batchnorm(&mut weight, &mut b, &gamma.data, &beta.data, &mean.data, &var.data);
            }
        }
        ConvParam {
            name,
            cout,
            cin,
            kh: geom.kh,
            kw: geom.kw,
            stride: geom.stride,
            pad_h: geom.pad_h,
            pad_w: geom.pad_w,
            dil: geom.dil,
            weight,
            bias: b,
        }
    }

    /// BasicConv2d: conv (no bias) + BatchNorm, no activation.
    pub fn basic(&mut self, prefix: &str, cin: usize, geom: Geom) -> ConvParam {
        self.conv(&format!("{prefix}.conv.weight"), None, Some(&format!("{prefix}.bn")), cin, geom)
    }

    /// Output channels a weight declares (0 if malformed; the shape error is reported when it is built).
    pub fn cout_of(&self, wkey: &str) -> usize {
        self.tensor(wkey).shape.first().copied().unwrap_or(0)
    }

    /// Adds a conv node writing into a new buffer of the conv's width.
    pub fn conv_node(&mut self, p: ConvParam, x: View, relu: bool, name: &str) -> View {
        let div = self.g.div_of(x) * p.stride;
        let y = self.g.add_buf(name, p.cout, div);
        self.conv_into(p, x, y, None, relu, None);
        y
    }

    pub fn conv_into(&mut self, p: ConvParam, x: View, y: View, residual: Option<View>, relu: bool, mul: Option<View>) {
        if p.cout != y.c {
            self.errors.push(format!("{} produces {} channels where {} are needed", p.name, p.cout, y.c));
            return;
        }
        let conv = self.g.add_conv(p);
        self.g.push(crate::graph::Node::Conv { conv, x, x_add: None, y, residual, relu, mul });
    }
}
