//! The published architecture at full size (Res2Net-50 v1b 26w×4s, 352×352) against PyTorch. The fixture
//! (~130 MB) is generated on the fly by tools/gen_fixtures.py when INFNET_TORCH_PY names a Python with
//! torch and safetensors; otherwise the test says why it skipped.

mod common;

use infnet::{Device, InfNet};

#[test]
fn full_size_model_matches_pytorch() {
    let Some(py) = std::env::var_os("INFNET_TORCH_PY") else {
        eprintln!("SKIPPED full_size_model_matches_pytorch: set INFNET_TORCH_PY to a Python with torch and safetensors to run it");
        return;
    };
    let dir = common::temp_dir("full");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/gen_fixtures.py");
    let status = std::process::Command::new(&py).arg(&script).arg("full").arg(&dir).status().expect("run INFNET_TORCH_PY");
    assert!(status.success(), "tools/gen_fixtures.py full failed");
    let model = InfNet::load(dir.join("full.safetensors")).expect("full weights load");
    assert!(model.config.is_public_full(), "{:?}", model.config);
    let io = infnet::weights::read_safetensors(&dir.join("full_io.safetensors")).expect("io");
    let mut e = infnet::engine::create(&model, Device::Cpu, 0).expect("engine");
    let outs = e.forward(&io["input"]).expect("forward");
    for (name, t) in &outs {
        let err = common::rel_l2(&t.data, &io[name].data);
        eprintln!("{name}: relative L2 {err:.2e}");
        assert!(err <= 1e-4, "{name}: relative L2 error {err:.3e} > 1e-4");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
