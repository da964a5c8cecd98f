//! Which burn backend paragen runs on, chosen at run time among those compiled in.
//!
//! This is the only crate that names a concrete burn backend. Everything above it is
//! generic over `B: Backend`; a binary turns a user's `--backend` / `--device` into a
//! [`DeviceSpec`] and hands a [`BackendTask`] to [`run_on`], which instantiates the task
//! for the concrete backend. Adding a backend means one cargo feature, one
//! [`BackendKind`] variant and one match arm in [`run_on`].
//!
//! Backend extensions live here too: [`int8`] is the int8 linear op that burn's CPU
//! backends lack (an integer GEMM with VNNI where the CPU has it).
//!
//! **Depends on:** burn, and `rten-gemm` for the int8 kernels. **Invariant:** no model, data or training logic lives here.

#[cfg(feature = "allocator")]
pub mod allocator;
pub mod int8;
pub mod probe;

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

/// A backend paragen knows about, whether or not this build compiled it in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn's ndarray CPU backend (no system dependencies).
    NdArray,
    /// burn's pure-Rust `flex` CPU backend (gemm kernels; fast on small matrices).
    Flex,
    /// burn's wgpu backend (Vulkan, Metal, DX12 or WebGPU).
    Wgpu,
    /// burn's CUDA backend (NVIDIA GPUs).
    Cuda,
}

impl BackendKind {
    /// Every backend paragen knows, in the order `--help` lists them.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::NdArray,
        BackendKind::Flex,
        BackendKind::Wgpu,
        BackendKind::Cuda,
    ];

    /// The name users type (`--backend NAME`), which is also the cargo feature's name.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::NdArray => "ndarray",
            BackendKind::Flex => "flex",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// Whether this build of paragen contains the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            BackendKind::NdArray => cfg!(feature = "ndarray"),
            BackendKind::Flex => cfg!(feature = "flex"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// Backends compiled into this build.
    pub fn compiled() -> Vec<BackendKind> {
        Self::ALL.into_iter().filter(|k| k.is_compiled()).collect()
    }

    /// Whether the backend runs on the CPU (so `--threads` applies to it).
    pub fn is_cpu(self) -> bool {
        matches!(self, BackendKind::NdArray | BackendKind::Flex)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|k| k.name() == wanted)
            .ok_or_else(|| BackendError::Unknown {
                name: s.to_string(),
                known: Self::ALL
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// What can go wrong when choosing a backend.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// The name is not a backend paragen knows.
    #[error("unknown backend `{name}`: expected one of {known}")]
    Unknown { name: String, known: String },
    /// The backend exists but this binary was built without it.
    #[error(
        "backend `{backend}` is not compiled into this build; rebuild with `--features {backend}` \
         (compiled in: {compiled})"
    )]
    NotCompiled {
        backend: BackendKind,
        compiled: String,
    },
    /// The backend is compiled in but cannot start here (no driver, no device).
    #[error("backend `{backend}` cannot start on this machine: {reason}")]
    Unavailable {
        backend: BackendKind,
        reason: String,
    },
    /// The device index is not valid for the backend.
    #[error("backend `{backend}` has a single device, index 0; got index {index}")]
    BadDeviceIndex { backend: BackendKind, index: usize },
}

/// A backend plus the index of the device on it (GPU number; always 0 on the CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    pub backend: BackendKind,
    pub index: usize,
}

impl DeviceSpec {
    /// Validates that the backend is compiled in and the index makes sense for it.
    pub fn new(backend: BackendKind, index: usize) -> Result<Self, BackendError> {
        if !backend.is_compiled() {
            return Err(BackendError::NotCompiled {
                backend,
                compiled: BackendKind::compiled()
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if backend.is_cpu() && index != 0 {
            return Err(BackendError::BadDeviceIndex { backend, index });
        }
        Ok(Self { backend, index })
    }

    /// Parses a backend name and device index, as given on a command line.
    pub fn parse(backend: &str, index: usize) -> Result<Self, BackendError> {
        Self::new(backend.parse()?, index)
    }

    /// The default CPU backend of this build.
    pub fn cpu() -> Self {
        Self {
            backend: DEFAULT_CPU_BACKEND,
            index: 0,
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.backend, self.index)
    }
}

/// The CPU backend used when the user names none. Measured on the 2-vCPU machines here
/// (`cargo run --release -p paragen-train --example profile_step`, quick teacher, 4096
/// tokens): one training step takes 3.6 s on flex against 5.8 s on ndarray.
#[cfg(feature = "flex")]
pub const DEFAULT_CPU_BACKEND: BackendKind = BackendKind::Flex;
#[cfg(not(feature = "flex"))]
pub const DEFAULT_CPU_BACKEND: BackendKind = BackendKind::NdArray;

/// Work that is generic over the backend; [`run_on`] picks the concrete one.
///
/// The task receives an autodiff backend so that one task type can both train and infer;
/// inference code uses `B::InnerBackend` (via `model.valid()`), which has no tape.
pub trait BackendTask {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `task` on the backend and device named by `spec`.
pub fn run_on<T: BackendTask>(spec: DeviceSpec, task: T) -> Result<T::Output, BackendError> {
    let spec = DeviceSpec::new(spec.backend, spec.index)?;
    // Each arm only exists when its feature is compiled; `DeviceSpec::new` has already
    // rejected the others, so the fallback arm is unreachable in practice.
    #[allow(unreachable_patterns)]
    let out = match spec.backend {
        #[cfg(feature = "ndarray")]
        BackendKind::NdArray => task.run::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(
            burn::backend::ndarray::NdArrayDevice::Cpu,
        ),
        #[cfg(feature = "flex")]
        BackendKind::Flex => task.run::<burn::backend::Autodiff<burn::backend::Flex<f32>>>(
            burn::backend::flex::FlexDevice,
        ),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => task.run::<burn::backend::Autodiff<burn::backend::Wgpu>>(
            burn::backend::wgpu::WgpuDevice::DiscreteGpu(spec.index),
        ),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            probe::probe_cuda(probe::CUDA_DRIVER_LIBRARIES, spec.index)?;
            task.run::<burn::backend::Autodiff<burn::backend::Cuda>>(
                burn::backend::cuda::CudaDevice::new(spec.index),
            )
        }
        other => {
            return Err(BackendError::NotCompiled {
                backend: other,
                compiled: String::new(),
            });
        }
    };
    Ok(out)
}

/// Sets how many threads the CPU backends use. Call once, before any tensor work;
/// later calls have no effect (rayon's global pool can be built only once).
///
/// On 2-vCPU machines a second thread can make small-batch decoding slower, so this is
/// exposed as `--threads` rather than left to rayon's default of one per core.
pub fn set_cpu_threads(threads: usize) -> bool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build_global()
        .is_ok()
}

/// The backend tests run on: ndarray, small and deterministic.
#[cfg(feature = "ndarray")]
pub type TestBackend = burn::backend::NdArray<f32>;
/// [`TestBackend`] with autodiff, for tests that train.
#[cfg(feature = "ndarray")]
pub type TestAutodiffBackend = burn::backend::Autodiff<TestBackend>;
/// The second CPU backend, so that backend-sensitive tests run on both.
#[cfg(feature = "flex")]
pub type FlexTestBackend = burn::backend::Flex<f32>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_backend_names_the_choices() {
        let err = "tpu".parse::<BackendKind>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown backend `tpu`"), "{msg}");
        assert!(msg.contains("ndarray") && msg.contains("cuda"), "{msg}");
    }

    #[test]
    fn names_round_trip_case_insensitively() {
        for kind in BackendKind::ALL {
            assert_eq!(kind.name().to_uppercase().parse::<BackendKind>(), Ok(kind));
        }
    }

    #[test]
    fn backend_missing_from_build_names_the_feature() {
        if let Some(missing) = BackendKind::ALL.into_iter().find(|k| !k.is_compiled()) {
            let msg = DeviceSpec::new(missing, 0).unwrap_err().to_string();
            assert!(
                msg.contains(&format!("--features {}", missing.name())),
                "{msg}"
            );
        }
    }

    #[test]
    fn cpu_backend_rejects_a_device_index() {
        let err = DeviceSpec::new(BackendKind::NdArray, 1).unwrap_err();
        assert!(matches!(err, BackendError::BadDeviceIndex { index: 1, .. }));
    }

    #[test]
    fn run_on_instantiates_the_task_for_the_backend() {
        struct AddOne;
        impl BackendTask for AddOne {
            type Output = f32;
            fn run<B: AutodiffBackend>(self, device: B::Device) -> f32 {
                let t = burn::tensor::Tensor::<B, 1>::from_floats([1.0, 2.0], &device);
                use burn::tensor::ElementConversion;
                (t + 1.0).sum().into_scalar().elem::<f32>()
            }
        }
        for kind in [BackendKind::NdArray, BackendKind::Flex] {
            if kind.is_compiled() {
                assert_eq!(
                    run_on(DeviceSpec::new(kind, 0).unwrap(), AddOne).unwrap(),
                    5.0
                );
            }
        }
    }
}
