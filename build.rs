//! Build script: compiles the CUDA kernels twice.
//!
//! 1. `kernels/*.cu` → PTX (compute_80, compute_90) and, where NVRTC can emit one, a cubin for sm_90,
//!    with NVRTC loaded dynamically (cudarc); the images are embedded through
//!    `$OUT_DIR/embedded_kernels.rs` (included by src/cuda/kernels.rs).
//! 2. `kernels/emulated.cpp` (the same sources over kernels/emulation.h) → a host static library,
//!    linked always, so tests can run every kernel without a GPU. Needs a C++17 compiler (g++/clang++).
//!
//! Environment:
//! - `LD_LIBRARY_PATH` must contain the directory of `libnvrtc.so.13` (and `libnvrtc-builtins.so.13.0`),
//!   e.g. `$VENV/lib/python3.X/site-packages/nvidia/cu13/lib` after
//!   `pip install nvidia-cuda-nvrtc==13.0.88`. Without NVRTC the build succeeds with a warning and the
//!   binary is CPU-only (`--device cuda` then reports that the kernels were not built).
//! - `INFNET_REQUIRE_KERNELS=1` turns a missing NVRTC or a kernel compile error into a build failure (CI).
//! - `INFNET_CUDA_INCLUDE` (optional): extra include directories for NVRTC, separated by `:`
//!   (the kernels need no CUDA headers today).

use std::path::{Path, PathBuf};

/// Kernel sources compiled to one module each, in the order of `Module` in src/cuda/kernels.rs.
const MODULES: [&str; 3] = ["conv", "pool", "resize"];

/// (file suffix, NVRTC arch option, cubin instead of PTX)
const TARGETS: [(&str, &str, bool); 3] = [
    ("sm80.ptx", "--gpu-architecture=compute_80", false),
    ("sm90.ptx", "--gpu-architecture=compute_90", false),
    ("sm90.cubin", "--gpu-architecture=sm_90", true),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for v in ["INFNET_REQUIRE_KERNELS", "INFNET_CUDA_INCLUDE", "LD_LIBRARY_PATH"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let kernels = manifest.join("kernels");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    build_emulation(&kernels);

    let require = std::env::var("INFNET_REQUIRE_KERNELS").is_ok_and(|v| v == "1");
    let embedded = match compile_all(&kernels, &out) {
        Ok(images) => images,
        Err(why) => {
            if require {
                eprintln!("error: INFNET_REQUIRE_KERNELS=1 but the CUDA kernels could not be built: {why}");
                std::process::exit(1);
            }
            println!("cargo:warning=CUDA kernels not built ({why}); this build is CPU-only. Put libnvrtc.so.13 on LD_LIBRARY_PATH to enable --device cuda.");
            None
        }
    };
    std::fs::write(out.join("embedded_kernels.rs"), embedded_source(embedded.as_deref()))
        .expect("OUT_DIR is writable");
}

fn build_emulation(kernels: &Path) {
    cc::Build::new()
        .cpp(true)
        .file(kernels.join("emulated.cpp"))
        .include(kernels)
        .std("c++17")
        .opt_level(2)
        .flag_if_supported("-Wno-unknown-pragmas")
        .compile("infnet_emulated");
}

/// Per module, the file names (under OUT_DIR) of its images in TARGETS order (None: target not emitted).
type Images = Vec<Vec<Option<String>>>;

fn compile_all(kernels: &Path, out: &Path) -> Result<Option<Images>, String> {
    // cudarc panics when it cannot load the library or a symbol; probe first, and contain the rest.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("libnvrtc not found on LD_LIBRARY_PATH".into());
    }
    let kernels = kernels.to_path_buf();
    let out = out.to_path_buf();
    match std::panic::catch_unwind(move || compile_modules(&kernels, &out)) {
        Ok(r) => r.map(Some),
        Err(_) => Err("NVRTC failed to load (see the panic message above)".into()),
    }
}

fn compile_modules(kernels: &Path, out: &Path) -> Result<Images, String> {
    let mut includes = vec![format!("--include-path={}", kernels.display())];
    if let Ok(extra) = std::env::var("INFNET_CUDA_INCLUDE") {
        includes.extend(extra.split(':').filter(|d| !d.is_empty()).map(|d| format!("--include-path={d}")));
    }
    let mut images = Vec::new();
    for m in MODULES {
        let path = kernels.join(format!("{m}.cu"));
        let src = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut per_target = Vec::new();
        for (suffix, arch, cubin) in TARGETS {
            let mut opts = vec![arch.to_string(), "--std=c++17".into(), "-lineinfo".into()];
            opts.extend(includes.iter().cloned());
            match nvrtc_compile(&src, &format!("{m}.cu"), &opts, cubin) {
                Ok(bytes) => {
                    let name = format!("{m}.{suffix}");
                    std::fs::write(out.join(&name), bytes).map_err(|e| format!("{name}: {e}"))?;
                    per_target.push(Some(name));
                }
                // A cubin is an optimisation (no JIT at load); PTX is required.
                Err(e) if cubin => {
                    println!("cargo:warning=no sm_90 cubin for {m}.cu ({e}); the sm_90 PTX is JIT-compiled at load");
                    per_target.push(None);
                }
                Err(e) => return Err(e),
            }
        }
        images.push(per_target);
    }
    Ok(images)
}

/// One NVRTC compilation; returns PTX (with its terminating NUL, as cuModuleLoadData wants) or cubin.
fn nvrtc_compile(src: &str, name: &str, opts: &[String], cubin: bool) -> Result<Vec<u8>, String> {
    use cudarc::nvrtc::{result, sys};
    let csrc = std::ffi::CString::new(src).map_err(|_| format!("{name}: NUL byte in source"))?;
    let cname = std::ffi::CString::new(name).map_err(|_| format!("{name}: bad name"))?;
    let prog = result::create_program(&csrc, Some(&cname)).map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    let compiled = unsafe { result::compile_program(prog, opts) };
    let log = unsafe { result::get_program_log(prog) }
        .map(|l| {
            let bytes: Vec<u8> = l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
            String::from_utf8_lossy(&bytes).trim().to_string()
        })
        .unwrap_or_default();
    let image = match compiled {
        Err(e) => Err(format!("{name} ({}): {e:?}\n{log}", opts[0])),
        Ok(()) if cubin => unsafe {
            let mut size = 0usize;
            sys::nvrtcGetCUBINSize(prog, &mut size).result().map_err(|e| format!("nvrtcGetCUBINSize: {e:?}"))?;
            if size == 0 {
                Err("NVRTC returned an empty cubin".to_string())
            } else {
                let mut buf = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut _).result().map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))?;
                Ok(buf)
            }
        },
        Ok(()) => unsafe { result::get_ptx(prog) }
            .map(|p| {
                let mut v: Vec<u8> = p.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                v.push(0);
                v
            })
            .map_err(|e| format!("nvrtcGetPTX: {e:?}")),
    };
    if !log.is_empty() && image.is_ok() {
        println!("cargo:warning=NVRTC {name} {}: {}", opts[0], log.replace('\n', " | "));
    }
    let _ = unsafe { result::destroy_program(prog) };
    image
}

fn embedded_source(images: Option<&[Vec<Option<String>>]>) -> String {
    let Some(images) = images else {
        return "pub const EMBEDDED: Option<&[ModuleImages]> = None;\n".into();
    };
    let bytes = |f: &Option<String>| match f {
        Some(f) => format!("Some(include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{f}\")))"),
        None => "None".into(),
    };
    let mut s = String::from("pub const EMBEDDED: Option<&[ModuleImages]> = Some(&[\n");
    for (m, t) in MODULES.iter().zip(images) {
        s += &format!(
            "    ModuleImages {{ name: \"{m}\", ptx_sm80: {}, ptx_sm90: {}, cubin_sm90: {} }},\n",
            bytes(&t[0]),
            bytes(&t[1]),
            bytes(&t[2])
        );
    }
    s += "]);\n";
    s
}
