//! State_dicts with the public key names and deterministic pseudo-random values, for any variant:
//! the full public shape for benchmarks, reduced ones for tests. Convolutions get He-scaled weights and
//! BatchNorms non-trivial statistics, so activations stay in a realistic range through the whole net.

use crate::weights::{StateDict, Tensor};

/// The shape of a variant as the public constructors take it.
#[derive(Clone, Debug)]
pub struct Spec {
    pub blocks: [usize; 4],
    /// Res2Net baseWidth (public 26): split width = floor(planes · base_width / 64).
    pub base_width: usize,
    pub scale: usize,
    /// Bottleneck planes per stage (public 64, 128, 256, 512); stage output = 4 · planes.
    pub planes: [usize; 4],
    pub stem: [usize; 2],
    pub channel: usize,
    /// ra4, ra3, ra2 widths (public 256, 64, 64).
    pub ra: [usize; 3],
    pub edge: usize,
}

impl Spec {
    /// Inf-Net as published: Res2Net-50 v1b 26w×4s, channel 32.
    pub fn full() -> Spec {
        Spec {
            blocks: [3, 4, 6, 3],
            base_width: 26,
            scale: 4,
            planes: [64, 128, 256, 512],
            stem: [32, 64],
            channel: 32,
            ra: [256, 64, 64],
            edge: 64,
        }
    }
    /// The bundled demo model's variant (weights/infnet-demo.safetensors): 1.27 M parameters.
    pub fn demo() -> Spec {
        Spec { blocks: [1, 1, 2, 1], base_width: 26, scale: 4, planes: [16, 32, 64, 128], stem: [16, 16], channel: 16, ra: [64, 32, 32], edge: 32 }
    }
    /// A small variant with odd widths, used by tests.
    pub fn tiny() -> Spec {
        Spec { blocks: [2, 1, 2, 1], base_width: 26, scale: 4, planes: [8, 16, 24, 32], stem: [8, 16], channel: 8, ra: [24, 16, 16], edge: 8 }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        // xorshift64*, uniform in [-1, 1)
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        v as f32 / (1u64 << 23) as f32 - 1.0
    }
}

struct Gen {
    sd: StateDict,
    rng: Rng,
}

impl Gen {
    fn put(&mut self, name: String, shape: Vec<usize>, f: impl Fn(f32) -> f32) {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| f(self.rng.next())).collect();
        self.sd.dtypes.insert(name.clone(), "f32".into());
        self.sd.tensors.insert(name, Tensor { shape, data });
    }
    fn conv(&mut self, key: String, cout: usize, cin: usize, kh: usize, kw: usize) {
        let a = (3.0 / (cin * kh * kw) as f32).sqrt(); // uniform with variance 1/fan_in
        self.put(key, vec![cout, cin, kh, kw], |r| r * a);
    }
    fn bn(&mut self, p: &str, c: usize) {
        self.put(format!("{p}.weight"), vec![c], |r| 1.0 + 0.25 * r);
        self.put(format!("{p}.bias"), vec![c], |r| 0.1 * r);
        self.put(format!("{p}.running_mean"), vec![c], |r| 0.1 * r);
        self.put(format!("{p}.running_var"), vec![c], |r| 1.0 + 0.5 * r);
    }
    fn basic(&mut self, p: &str, cout: usize, cin: usize, kh: usize, kw: usize) {
        self.conv(format!("{p}.conv.weight"), cout, cin, kh, kw);
        self.bn(&format!("{p}.bn"), cout);
    }
}

/// A state_dict for `spec` with values from `seed`.
pub fn state_dict(spec: &Spec, seed: u64) -> StateDict {
    let mut g = Gen { sd: StateDict::default(), rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1) };
    g.sd.path = format!("<synthetic seed {seed}>").into();
    let [s0, s1] = spec.stem;
    g.conv("resnet.conv1.0.weight".into(), s0, 3, 3, 3);
    g.bn("resnet.conv1.1", s0);
    g.conv("resnet.conv1.3.weight".into(), s0, s0, 3, 3);
    g.bn("resnet.conv1.4", s0);
    g.conv("resnet.conv1.6.weight".into(), s1, s0, 3, 3);
    g.bn("resnet.bn1", s1);
    let mut inplanes = s1;
    let mut outs = [0; 4];
    #[allow(clippy::needless_range_loop)] // s names the stage in keys and picks its stride
    for s in 0..4 {
        let planes = spec.planes[s];
        let width = planes * spec.base_width / 64;
        let out = planes * 4;
        let stride = if s == 0 { 1 } else { 2 };
        for b in 0..spec.blocks[s] {
            let p = format!("resnet.layer{}.{b}", s + 1);
            let cin = if b == 0 { inplanes } else { out };
            g.conv(format!("{p}.conv1.weight"), width * spec.scale, cin, 1, 1);
            g.bn(&format!("{p}.bn1"), width * spec.scale);
            for i in 0..spec.scale - 1 {
                g.conv(format!("{p}.convs.{i}.weight"), width, width, 3, 3);
                g.bn(&format!("{p}.bns.{i}"), width);
            }
            g.conv(format!("{p}.conv3.weight"), out, width * spec.scale, 1, 1);
            // A smaller last BN keeps the residual stream from growing block after block.
            g.bn(&format!("{p}.bn3"), out);
            if b == 0 && (stride != 1 || inplanes != out) {
                g.conv(format!("{p}.downsample.1.weight"), out, inplanes, 1, 1);
                g.bn(&format!("{p}.downsample.2"), out);
            }
        }
        inplanes = out;
        outs[s] = out;
    }
    let ch = spec.channel;
    for (r, cin) in [("rfb2_1", outs[1]), ("rfb3_1", outs[2]), ("rfb4_1", outs[3])] {
        g.basic(&format!("{r}.branch0.0"), ch, cin, 1, 1);
        for br in 1..4 {
            let k = 2 * br + 1;
            g.basic(&format!("{r}.branch{br}.0"), ch, cin, 1, 1);
            g.basic(&format!("{r}.branch{br}.1"), ch, ch, 1, k);
            g.basic(&format!("{r}.branch{br}.2"), ch, ch, k, 1);
            g.basic(&format!("{r}.branch{br}.3"), ch, ch, 3, 3);
        }
        g.basic(&format!("{r}.conv_cat"), ch, 4 * ch, 3, 3);
        g.basic(&format!("{r}.conv_res"), ch, cin, 1, 1);
    }
    for i in 1..=4 {
        g.basic(&format!("ParDec.conv_upsample{i}"), ch, ch, 3, 3);
    }
    g.basic("ParDec.conv_upsample5", 2 * ch, 2 * ch, 3, 3);
    g.basic("ParDec.conv_concat2", 2 * ch, 2 * ch, 3, 3);
    g.basic("ParDec.conv_concat3", 3 * ch, 3 * ch, 3, 3);
    g.basic("ParDec.conv4", 3 * ch, 3 * ch, 3, 3);
    g.conv("ParDec.conv5.weight".into(), 1, 3 * ch, 1, 1);
    g.put("ParDec.conv5.bias".into(), vec![1], |r| 0.1 * r);
    let [r4, r3, r2] = spec.ra;
    let e = spec.edge;
    g.basic("ra4_conv1", r4, outs[3], 1, 1);
    g.basic("ra4_conv2", r4, r4 + e, 5, 5);
    g.basic("ra4_conv3", r4, r4, 5, 5);
    g.basic("ra4_conv4", r4, r4, 5, 5);
    g.basic("ra4_conv5", 1, r4, 1, 1);
    for (p, r, cin) in [("ra3", r3, outs[2]), ("ra2", r2, outs[1])] {
        g.basic(&format!("{p}_conv1"), r, cin, 1, 1);
        g.basic(&format!("{p}_conv2"), r, r + e, 3, 3);
        g.basic(&format!("{p}_conv3"), r, r, 3, 3);
        g.basic(&format!("{p}_conv4"), 1, r, 3, 3);
    }
    g.basic("edge_conv1", e, outs[0], 1, 1);
    g.basic("edge_conv2", e, e, 3, 3);
    g.basic("edge_conv3", e, e, 3, 3);
    g.basic("edge_conv4", 1, e, 3, 3);
    g.sd
}
